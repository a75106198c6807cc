"""A real learning test: a tiny CLIP trained on the caption world names colors it never saw on those shapes.

The world holds out 10% of the color x shape pairs (a "red star" is never drawn nor written). A tiny
CLIP trained contrastively for 150 steps on web-like alt-text must still classify, zero-shot, the color
of held-out objects far above chance (10-way), and name the color x shape pair of an image among all
100 well above chance. The untrained model, scored the same way, sits near chance: the gain is learned.
(Picking the exact held-out pair among 100 is not reliable at this size: the model prefers the pairs
it saw, which is the compositionality chapter's point.)
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from clipmini.config import CLIPConfig, TextConfig, VisionConfig
from clipmini.data import CaptionWorld, WorldConfig
from clipmini.losses import clip_loss
from clipmini.model import CLIP
from clipmini.tokenizer import Tokenizer

SEED = 0
STEPS = 150  # optimizer steps; color is learned by ~100, the held-out pairs need a few more
BATCH = 96  # pairs per step (the paper: 32,768)
LR = 3e-3  # peak AdamW learning rate, 20 warm-up steps then cosine decay
CONTEXT = 24  # tokens per caption; longer alt-texts are truncated
VOCAB = 600  # BPE vocabulary learned on the world's captions (86 merges over the byte alphabet)


@pytest.fixture(scope="module")
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is as fast, and fair to a shared machine
    yield
    torch.set_num_threads(old)


@torch.no_grad()
def zero_shot_accuracy(model, tokenizer, task) -> torch.Tensor:
    """Per-sample correctness [n] of the prompt-ensemble zero-shot classifier on a world task."""
    model.eval()
    prompts = task.prompts()  # [C][T]
    flat = [p for row in prompts for p in row]
    text = F.normalize(model.encode_text(tokenizer(flat, context_length=CONTEXT, truncate=True)), dim=-1)
    classifier = F.normalize(text.view(len(prompts), len(prompts[0]), -1).mean(1), dim=-1)  # [C, E]
    image = F.normalize(model.encode_image(task.images), dim=-1)  # [n, E]
    model.train()
    return ((image @ classifier.T).argmax(1) == task.labels).float()


@pytest.fixture(scope="module")
def trained(one_thread):
    torch.manual_seed(SEED)
    world = CaptionWorld(WorldConfig(seed=SEED, domains=("flat",)))  # alt-text, noise and all
    tokenizer = Tokenizer.train(world.caption_corpus(3000), VOCAB)
    config = CLIPConfig(
        embed_dim=64,
        vision=VisionConfig(image_size=32, layers=(1, 1, 1, 1), width=16, patch_size=None, head_width=64),
        text=TextConfig(context_length=CONTEXT, vocab_size=tokenizer.vocab_size, width=64, layers=2, head_width=32),
    )
    model = CLIP(config)
    tasks = {name: world.task(name, n=1000, domain="flat") for name in ("color", "color_shape")}
    before = {name: zero_shot_accuracy(model, tokenizer, task) for name, task in tasks.items()}
    opt = torch.optim.AdamW(model.parameters(), lr=LR, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.05)
    losses = []
    for step in range(STEPS):
        lr = LR * min(1.0, (step + 1) / 20) * 0.5 * (1 + math.cos(math.pi * step / STEPS))
        for group in opt.param_groups:
            group["lr"] = lr
        images, captions = world.batch(step, BATCH)
        tokens = tokenizer(captions, context_length=CONTEXT, truncate=True)
        image_features = F.normalize(model.encode_image(images), dim=-1)
        text_features = F.normalize(model.encode_text(tokens), dim=-1)
        loss = clip_loss(image_features, text_features, model.logit_scale.exp())
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        losses.append(loss.item())
    after = {name: zero_shot_accuracy(model, tokenizer, task) for name, task in tasks.items()}
    return world, tasks, before, after, losses


def test_contrastive_loss_falls_well_below_chance(trained):
    *_, losses = trained
    chance = math.log(BATCH)  # uniform over the batch
    assert losses[0] > 0.9 * chance
    assert sum(losses[-10:]) / 10 < 0.6 * chance


def test_zero_shot_color_of_heldout_pairs(trained):
    world, tasks, before, after, _ = trained
    held = tasks["color"].heldout
    assert 60 < int(held.sum()) < 140  # ~10% of 1000 samples show a held-out pair
    chance = 1 / 10
    assert before["color"][held].mean() < 2.5 * chance  # untrained: near chance
    assert after["color"][held].mean() >= 5 * chance  # trained: never saw these pairs, still names the color
    assert after["color"].mean() >= 5 * chance


def test_zero_shot_color_and_shape_pairs_among_all_100(trained):
    world, tasks, before, after, _ = trained
    chance = 1 / 100
    assert before["color_shape"].mean() < 3 * chance
    assert after["color_shape"].mean() >= 5 * chance
