"""A real learning test: a tiny CLIP trained on the caption world names colors it never saw on those shapes.

The world holds out 10% of the color x shape pairs (a "red star" is never drawn nor written). A tiny
CLIP trained contrastively for 150 steps on web-like alt-text, through the book's own trainer, must
still classify zero-shot the color of held-out objects far above chance (10-way), and name the color x
shape pair of an image among all 100 well above chance. The untrained model, scored the same way, sits
near chance: the gain is learned. (Picking the exact held-out pair among 100 is not reliable at this
size: the model prefers the pairs it saw, which is the compositionality chapter's point.)
"""

from __future__ import annotations

import math

import pytest

from clipmini.seeding import seed_everything
from clipmini.train import TrainConfig, make_model, make_tokenizer, make_world, train
from clipmini.zeroshot import evaluate_zeroshot

BATCH = 96  # pairs per step (the paper: 32,768)
CONFIG = dict(
    model="tiny-rn",
    model_overrides={
        "embed_dim": 64,
        "vision": {"layers": [1, 1, 1, 1], "width": 16},
        "text": {"context_length": 24, "vocab_size": 600, "width": 64, "layers": 2, "head_width": 32},
    },
    world={"seed": 0, "domains": ["flat"]},  # alt-text, noise and all; one visual style
    steps=150,  # color is learned by ~100 steps, the held-out pairs need a few more
    batch_size=BATCH,
    lr=3e-3,
    warmup_steps=20,
    weight_decay=0.05,
    eval_tasks=[],  # scored below, before and after
    log_every=1,
    progress=False,
    out_dir=None,
    threads=1,  # tiny matrices: one thread is as fast, and fair to a shared machine
    seed=0,
)


def accuracy(model, tokenizer, task) -> float:
    return evaluate_zeroshot(model, tokenizer, task, topk=(1,))["top1"]


@pytest.fixture(scope="module")
def runs():
    config = TrainConfig.from_dict(CONFIG)
    world = make_world(config)
    tokenizer = make_tokenizer(config, world)
    tasks = {name: world.task(name, n=1000, domain="flat") for name in ("color", "color_shape")}
    tasks["color_heldout"] = tasks["color"].subset(tasks["color"].heldout)
    seed_everything(config.seed)
    untrained = make_model(config).eval()
    before = {name: accuracy(untrained, tokenizer, task) for name, task in tasks.items()}
    result = train(config)
    after = {name: accuracy(result.model, result.tokenizer, task) for name, task in tasks.items()}
    losses = [record["loss"] for record in result.history if record.get("loss") is not None]
    return tasks, before, after, losses


def test_contrastive_loss_falls_well_below_chance(runs):
    *_, losses = runs
    chance = math.log(BATCH)  # uniform over the batch
    assert losses[0] > 0.9 * chance
    assert sum(losses[-10:]) / 10 < 0.6 * chance


def test_zero_shot_color_of_heldout_pairs(runs):
    tasks, before, after, _ = runs
    assert 60 < len(tasks["color_heldout"]) < 140  # ~10% of 1000 samples show a held-out pair
    chance = 1 / 10
    assert before["color_heldout"] < 2.5 * chance  # untrained: near chance
    assert after["color_heldout"] >= 5 * chance  # trained: never saw these pairs, still names the color
    assert after["color"] >= 5 * chance


def test_zero_shot_color_and_shape_pairs_among_all_100(runs):
    _, before, after, _ = runs
    chance = 1 / 100
    assert before["color_shape"] < 3 * chance
    assert after["color_shape"] >= 5 * chance
