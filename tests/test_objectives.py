"""Figure 2's race: the baselines train with the trainer's recipe, score zero-shot, cache, and count samples."""

from __future__ import annotations

import functools
import json
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from clipmini import objectives
from clipmini.baselines import BagOfWords, CaptionLM
from clipmini.objectives import (
    baseline_zeroshot_logits,
    load_or_train_objective,
    make_baseline,
    samples_to_reach,
    speedup,
    train_objective,
    zero_shot_curve,
)
from clipmini.seeding import seed_everything
from clipmini.train import TrainConfig, make_model


@pytest.fixture(autouse=True, scope="module")
def _one_thread(request):
    """Tiny ops on 2 shared cores run fastest on one thread (`threads=1` runs set it too); restored after the module."""
    request.addfinalizer(functools.partial(torch.set_num_threads, torch.get_num_threads()))
    torch.set_num_threads(1)


# The smallest recipe that still learns: a one-layer ViT on 16-pixel patches, a one-layer text tower.
TINY = {
    "model": "tiny-vit",
    "model_overrides": {"embed_dim": 32, "vision": {"patch_size": 16, "width": 32, "layers": 1},
                        "text": {"width": 32, "layers": 1}},
    "world": {"domains": ["flat"]},
    "steps": 16,
    "batch_size": 32,
    "lr": 3e-3,
    "warmup_steps": 2,
    "eval_every": 8,
    "eval_tasks": ["color"],
    "eval_n": 20,
    "log_every": 4,
    "threads": 1,
    "device": "cpu",
    "out_dir": None,
    "progress": False,
}


def tiny_config(**changes) -> TrainConfig:
    return TrainConfig.from_dict({**TINY, **changes})


@pytest.fixture(scope="module")
def bow_run():
    return train_objective(tiny_config(), "bag_of_words")


def test_bag_of_words_loss_decreases_and_history_reads_like_the_trainers(bow_run):
    history = bow_run["history"]
    losses = [r["loss"] for r in history if "loss" in r]
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.9 * losses[0], losses
    assert [r["samples_seen"] for r in history if "loss" in r] == [128, 256, 384, 512]
    samples, top1 = zero_shot_curve(bow_run, "color")
    assert samples == [256, 512] and all(0.0 <= a <= 1.0 for a in top1)
    assert bow_run["metrics"]["eval"] == {"color": {"top1": top1[-1]}}


def test_caption_lm_loss_decreases():
    result = train_objective(tiny_config(steps=8, eval_every=0, log_every=2, eval_n=10, lr=1e-2), "caption_lm")
    losses = [r["loss"] for r in result["history"] if "loss" in r]
    assert all(b < a for a, b in zip(losses, losses[1:])), losses  # from ln(1024) ~ 6.9 toward the captions' entropy
    assert losses[-1] < 0.85 * losses[0], losses


def test_baselines_start_from_the_contrastive_runs_image_tower():
    config = tiny_config()
    seed_everything(3)
    clip_tower = make_model(config).visual.state_dict()
    for objective in ("bag_of_words", "caption_lm"):
        seed_everything(3)
        model = make_baseline(config, objective)
        for name, value in model.visual.state_dict().items():
            torch.testing.assert_close(value, clip_tower[name], rtol=0, atol=0)
    lm = make_baseline(config, "caption_lm")
    assert isinstance(lm, CaptionLM) and lm.context_length == config.clip_config().text.context_length
    assert isinstance(make_baseline(config, "bag_of_words"), BagOfWords)


# ----- zero-shot scoring on a hand-made world of three colors

WORDS = ["a", "thing", "something", "red", "green", "blue", "."]
SOT, EOT = len(WORDS), len(WORDS) + 1
VOCAB = len(WORDS) + 2


def word_tokenizer(texts, context_length=77, truncate=False):
    """Our tokenizer's layout (SOT, ids, EOT, zero padding) over a seven-word vocabulary."""
    rows = torch.zeros(len(texts), context_length, dtype=torch.long)
    for i, text in enumerate(texts):
        ids = [SOT, *(WORDS.index(w) for w in text.replace(".", " .").split()), EOT]
        rows[i, : len(ids)] = torch.tensor(ids)
    return rows


class Pixel(nn.Module):
    """A fixed image tower: the mean color of the image, [B, 3, R, R] -> [B, 3]."""

    output_dim = 3

    def forward(self, images):
        return images.mean(dim=(2, 3))


def color_task(n_per_class: int = 2):
    labels = torch.arange(3).repeat(n_per_class)  # [N]
    images = torch.eye(3)[labels][:, :, None, None].expand(-1, -1, 4, 4).contiguous()  # [N, 3, 4, 4]: pure red/green/blue
    classnames = ("red", "green", "blue")
    templates = ("a {} thing.", "something {}.")
    return SimpleNamespace(
        name="color", images=images, labels=labels, classnames=classnames, candidates=None,
        prompts=lambda: [[t.format(c) for t in templates] for c in classnames],
    )


def test_bag_of_words_scorer_picks_the_named_color():
    model = BagOfWords(Pixel(), VOCAB)
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.zero_()
        for channel, word in enumerate(("red", "green", "blue")):
            model.head.weight[WORDS.index(word), channel] = 5.0  # a red image makes "red" likely
    task = color_task()
    logits = baseline_zeroshot_logits(model, word_tokenizer, task, batch_size=4)  # batches cut across classes
    assert logits.shape == (6, 3)
    assert torch.equal(logits.argmax(dim=1), task.labels)
    prompts = word_tokenizer([p for row in task.prompts() for p in row]).view(3, 2, -1)  # [C, T, L]
    torch.testing.assert_close(logits, model.zeroshot_logits(task.images, prompts))


def test_caption_lm_scorer_picks_the_color_it_learned():
    torch.manual_seed(0)
    model = CaptionLM(Pixel(), VOCAB, context_length=8, width=16, layers=1, heads=2)
    task = color_task(1)
    captions = word_tokenizer(["a red thing.", "a green thing.", "a blue thing."], context_length=8)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        optimizer.zero_grad()
        model.loss(task.images, captions).backward()
        optimizer.step()
    logits = baseline_zeroshot_logits(model, word_tokenizer, task)
    assert torch.equal(logits.argmax(dim=1), task.labels), logits


def test_scorer_errors_teach():
    task = color_task()
    with pytest.raises(TypeError, match="CaptionLM or a BagOfWords"):
        baseline_zeroshot_logits(nn.Linear(3, 3), word_tokenizer, task)
    task.candidates = [["one red thing", "two red things"]] * 6
    with pytest.raises(ValueError, match="candidate captions"):
        baseline_zeroshot_logits(BagOfWords(Pixel(), VOCAB), word_tokenizer, task)


# ----- caching


def test_cached_and_fresh_results_are_identical(tmp_path, bow_run, monkeypatch):
    config = tiny_config()
    first = load_or_train_objective(config, "bag_of_words", cache_dir=tmp_path)
    assert first == json.loads(json.dumps(bow_run))  # training is deterministic: the cache holds a fresh run
    (entry,) = (tmp_path / "objectives").glob("bag_of_words-*.json")

    def no_training(*args, **kwargs):
        raise AssertionError("a cached result was trained again")

    monkeypatch.setattr(objectives, "train_objective", no_training)
    assert load_or_train_objective(config, "bag_of_words", cache_dir=tmp_path) == first
    # another config is another entry (and would train)
    with pytest.raises(AssertionError, match="trained again"):
        load_or_train_objective(tiny_config(seed=1), "bag_of_words", cache_dir=tmp_path)
    entry.write_text("{torn")  # a damaged entry is trained again, not loaded
    with pytest.raises(AssertionError, match="trained again"):
        load_or_train_objective(config, "bag_of_words", cache_dir=tmp_path)


# ----- counting samples


def test_samples_to_reach_interpolates_from_chance():
    samples, top1 = [100, 200, 300], [0.2, 0.4, 0.8]
    assert samples_to_reach(samples, top1, 0.6, chance=0.1) == pytest.approx(250.0)
    assert samples_to_reach(samples, top1, 0.4, chance=0.1) == pytest.approx(200.0)
    assert samples_to_reach(samples, top1, 0.15, chance=0.1) == pytest.approx(50.0)  # before the first evaluation
    assert samples_to_reach(samples, top1, 0.9, chance=0.1) == math.inf
    assert samples_to_reach([100, 200], [0.5, 0.3], 0.45, chance=0.1) == pytest.approx(87.5)  # the first crossing


def test_zero_shot_curve_reads_a_trainer_history():
    history = [
        {"step": 10, "loss": 4.0, "samples_seen": 640},
        {"step": 10, "eval": {"color": {"top1": 0.3, "top5": 0.7}}},
        {"step": 20, "loss": 3.0, "samples_seen": 1280},
        {"step": 20, "eval": {"color": {"top1": 0.5, "top5": 0.9}}},
    ]
    assert zero_shot_curve(history, "color") == ([640, 1280], [0.3, 0.5])
    assert zero_shot_curve(history, "color", batch_size=8) == ([80, 160], [0.3, 0.5])
    with pytest.raises(ValueError, match=r"no zero-shot evaluation of task 'shape'.*\['color'\]"):
        zero_shot_curve(history, "shape")


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="objective must be one of caption_lm, bag_of_words, contrastive"):
        load_or_train_objective(tiny_config(), "masked_lm")
    with pytest.raises(ValueError, match="objective must be one of caption_lm, bag_of_words; got 'contrastive'"):
        train_objective(tiny_config(), "contrastive")  # the trainer runs that one
    with pytest.raises(ValueError, match="score class prompts"):
        train_objective(tiny_config(eval_tasks=["color", "count"]), "bag_of_words")
    with pytest.raises(ValueError, match="mixed precision"):
        train_objective(tiny_config(precision="bf16"), "bag_of_words")
    with pytest.raises(TypeError, match="TrainConfig"):
        train_objective("tiny-vit", "bag_of_words")
    with pytest.raises(ValueError, match="chance < target"):
        samples_to_reach([1, 2], [0.1, 0.2], 0.05, chance=0.1)
    with pytest.raises(ValueError, match="equally long"):
        samples_to_reach([1, 2], [0.1], 0.5)
    with pytest.raises(ValueError, match="increasing"):
        samples_to_reach([2, 1], [0.1, 0.2], 0.5)


def test_speedup_marks_bounds_for_runs_that_never_got_there():
    assert speedup(300.0, 100.0, run_samples=400) == (3.0, "=")
    assert str(speedup(300.0, 100.0, run_samples=400)) == "3.00×"
    assert speedup(math.inf, 100.0, run_samples=400) == (4.0, ">")  # the slower one needed more than 400
    assert str(speedup(math.inf, 100.0, run_samples=400)) == "> 4.00×"
    assert speedup(200.0, math.inf, run_samples=400) == (0.5, "<")
    assert str(speedup(math.inf, math.inf, run_samples=400)) == "n/a"
    with pytest.raises(ValueError, match="run_samples"):
        speedup(1.0, 1.0, run_samples=0)
    with pytest.raises(ValueError, match="slower must be a positive sample count"):
        speedup(-1.0, 1.0, run_samples=10)
