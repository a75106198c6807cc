"""Figure 2's race: one image tower trained with three objectives, zero-shot accuracy against pairs seen.

The paper compares a caption language model, bag-of-words prediction and the contrastive objective on
the same ResNet-50 and the same data, by how many image-text pairs each needs to reach a given zero-shot
accuracy. Here the contrastive run is the book's trainer itself (`clipmini.cache.load_or_train`); the
two predictive baselines (`clipmini.baselines`) are trained by `train_objective` with the trainer's own
pieces: the same world and batches, tokenizer, image tower (same initialization), AdamW groups,
schedule, gradient clipping and zero-shot tasks. Every run returns a history in the trainer's format, so
`zero_shot_curve` and `samples_to_reach` read all three alike.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
from pathlib import Path
from typing import NamedTuple, Sequence

import torch
from torch import nn

from .baselines import BagOfWords, CaptionLM
from .train import EVAL_TASK_SEED, TrainConfig, make_model, make_optimizer, make_schedule, make_tokenizer, make_world

__all__ = [
    "OBJECTIVES",
    "make_baseline",
    "baseline_zeroshot_logits",
    "train_objective",
    "load_or_train_objective",
    "zero_shot_curve",
    "samples_to_reach",
    "Speedup",
    "speedup",
]

# The three objectives of Figure 2, slowest (in the paper) first.
OBJECTIVES: tuple[str, ...] = ("caption_lm", "bag_of_words", "contrastive")


def _check_objective(objective: str, allowed: Sequence[str] = OBJECTIVES) -> str:
    if objective not in allowed:
        raise ValueError(f"objective must be one of {', '.join(allowed)}; got {objective!r}")
    return objective


def _as_config(config: TrainConfig | dict) -> TrainConfig:
    if isinstance(config, dict):
        return TrainConfig.from_dict(config)
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig (or a dict of its fields); got {type(config).__name__}")
    return config


def _check_for_baselines(config: TrainConfig) -> None:
    if config.data != "world":
        raise ValueError(f"the baselines train on the caption world (data='world'); got data={config.data!r}")
    if config.micro_batch is not None or config.precision != "fp32":
        raise ValueError("the baselines' loop has no micro-batches or mixed precision: set micro_batch=None, precision='fp32'")
    from .data import TASKS

    with_candidates = [t for t in config.eval_tasks if t in ("count", "relation")]
    if with_candidates or not config.eval_tasks:
        raise ValueError(
            "the baselines score class prompts, so 'eval_tasks' must be non-empty and among "
            f"{', '.join(t for t in TASKS if t not in ('count', 'relation'))}; got {config.eval_tasks}"
        )


def make_baseline(config: TrainConfig | dict, objective: str) -> nn.Module:
    """A fresh `CaptionLM` or `BagOfWords` on `config`'s image tower; the decoder is sized like its text tower.

    The tower is `make_model(config).visual`: built right after seeding, it starts from the same weights
    as the contrastive run's image tower.
    """
    config = _as_config(config)
    _check_objective(objective, OBJECTIVES[:2])
    text = config.clip_config().text
    tower = make_model(config).visual  # [B, 3, R, R] -> [B, E]
    if objective == "bag_of_words":
        return BagOfWords(tower, text.vocab_size)
    return CaptionLM(tower, text.vocab_size, text.context_length, width=text.width, layers=text.layers, heads=text.heads)


@torch.no_grad()
def baseline_zeroshot_logits(model: nn.Module, tokenizer, task, *, batch_size: int = 256) -> torch.Tensor:
    """[N, C] zero-shot scores of a baseline on a task: every template filled with every class name."""
    if not isinstance(model, (CaptionLM, BagOfWords)):
        raise TypeError(f"model must be a CaptionLM or a BagOfWords; got {type(model).__name__} (a CLIP uses clipmini.zeroshot)")
    if getattr(task, "candidates", None) is not None:
        raise ValueError(f"task {task.name!r} has per-image candidate captions; the baselines score class prompts only")
    prompts = task.prompts()  # [C][T] strings
    C, T = len(prompts), len(prompts[0])
    device = next(model.parameters()).device
    flat = [p for row in prompts for p in row]  # class-major
    if isinstance(model, CaptionLM):
        tokens = tokenizer(flat, context_length=model.context_length, truncate=True)  # [C·T, L]
    else:
        tokens = tokenizer(flat, truncate=True)  # [C·T, L]; a bag of words has no context length
    tokens = tokens.to(device).view(C, T, -1)  # [C, T, L]
    return torch.cat([
        model.zeroshot_logits(task.images[i : i + batch_size].to(device), tokens).cpu()  # [b, C]
        for i in range(0, task.images.shape[0], batch_size)
    ])  # [N, C]


def _evaluate(model: nn.Module, tokenizer, tasks: dict) -> dict[str, dict]:
    model.eval()
    try:
        return {
            name: {"top1": round((baseline_zeroshot_logits(model, tokenizer, task).argmax(1) == task.labels).float().mean().item(), 6)}
            for name, task in tasks.items()
        }
    finally:
        model.train()


def train_objective(config: TrainConfig | dict, objective: str) -> dict:
    """Train a predictive baseline with `config`'s recipe; `{"objective", "history", "metrics"}`.

    The history holds the trainer's records: `{"step", "loss", "lr", "samples_seen"}` every `log_every`
    steps and `{"step", "eval": {task: {"top1"}}}` every `eval_every` steps and at the end.
    """
    config = _as_config(config)
    _check_objective(objective, OBJECTIVES[:2])
    _check_for_baselines(config)
    from .seeding import pick_device, seed_everything

    if config.threads is not None:
        torch.set_num_threads(config.threads)
    seed_everything(config.seed)
    device = pick_device(config.device)
    world = make_world(config)
    tokenizer = make_tokenizer(config, world)
    model = make_baseline(config, objective).to(device)
    optimizer = make_optimizer(model, config)
    schedule = make_schedule(config)
    context_length = config.clip_config().text.context_length
    tasks = {name: world.task(name, n=config.eval_n, seed=EVAL_TASK_SEED) for name in config.eval_tasks}

    history: list[dict] = []
    window: list[float] = []
    model.train()
    for step in range(config.steps):
        images, captions = world.batch(step, config.batch_size)  # the trainer's batch `step`
        images = torch.as_tensor(images, dtype=torch.float32).to(device)  # [B, 3, R, R]
        tokens = tokenizer(list(captions), context_length=context_length, truncate=True).to(device)  # [B, L]
        lr = schedule.apply(optimizer, step)
        loss = model.loss(images, tokens)
        value = loss.item()  # the step's one sync with the device
        if not math.isfinite(value):
            raise FloatingPointError(f"{objective}: non-finite loss at step {step} (lr={lr:.3g}); lower 'lr' or raise 'warmup_steps'")
        loss.backward()
        if config.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        window.append(value)
        done = step + 1
        if done % config.log_every == 0 or done == config.steps:
            history.append({"step": done, "loss": round(sum(window) / len(window), 6), "lr": lr,
                            "samples_seen": done * config.batch_size})
            window = []
        if done == config.steps or (config.eval_every and done % config.eval_every == 0):
            history.append({"step": done, "eval": _evaluate(model, tokenizer, tasks)})
    metrics = {
        "steps": config.steps,
        "loss": [r["loss"] for r in history if "loss" in r][-1],  # the last log window's
        "samples_seen": config.steps * config.batch_size,
        "eval": history[-1]["eval"],
        "params": sum(p.numel() for p in model.parameters()),
    }
    return {"objective": objective, "history": history, "metrics": metrics}


@functools.lru_cache(maxsize=1)
def _source_digest() -> str:
    """sha256 of the two modules that decide a baseline's numbers beyond the trainer's (this one and baselines).

    Computed once per process, like `clipmini.cache.code_fingerprint`: the code that runs is the code imported.
    """
    from . import baselines

    digest = hashlib.sha256()
    for file in (baselines.__file__, __file__):
        digest.update(Path(file).read_bytes())
    return digest.hexdigest()


def _entry(config: TrainConfig, objective: str, cache_dir: str | os.PathLike | None) -> Path:
    from .cache import cache_key, default_cache_dir

    payload = json.dumps({"objective": objective, "config": cache_key(config), "baselines": _source_digest()}, sort_keys=True)
    key = hashlib.sha256(payload.encode()).hexdigest()[:32]
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return root / "objectives" / f"{objective}-{config.model}-{config.steps}steps-{key}.json"


def load_or_train_objective(config: TrainConfig | dict, objective: str, cache_dir: str | os.PathLike | None = None) -> dict:
    """`train_objective`'s result, from the cache when this config, objective and code ran before.

    `objective="contrastive"` is the trainer's own run (`clipmini.cache.load_or_train`), returned in the
    same form. Baseline results are stored as JSON (the history, not the weights), keyed like
    `load_or_train` plus the source of `baselines.py` and this module.
    """
    config = _as_config(config)
    _check_objective(objective)
    if objective == "contrastive":
        from .cache import load_or_train

        _, _, metrics = load_or_train(config, cache_dir)
        history = metrics.pop("history")
        return {"objective": objective, "history": history, "metrics": metrics}
    _check_for_baselines(config)
    entry = _entry(config, objective, cache_dir)
    if entry.is_file():
        try:
            stored = json.loads(entry.read_text())
            if stored.get("objective") == objective and "history" in stored:
                return stored
        except ValueError:
            pass  # a damaged entry is trained again
    from .fileio import atomic_write_json

    result = train_objective(dataclasses.replace(config, out_dir=None, progress=False), objective)
    atomic_write_json(entry, result)
    return json.loads(json.dumps(result))  # the same JSON types a cached call returns


def zero_shot_curve(result_or_history: dict | list, task: str, batch_size: int | None = None) -> tuple[list[int], list[float]]:
    """(samples seen, zero-shot top-1) of one task, from a result of this module or a trainer history.

    Samples are `step * batch_size` (a trainer history carries `samples_seen` in its log records, from
    which the batch size is read when not given).
    """
    history = result_or_history["history"] if isinstance(result_or_history, dict) else result_or_history
    if batch_size is None:
        logged = [r for r in history if "samples_seen" in r and r.get("step")]
        if not logged:
            raise ValueError("the history has no 'samples_seen' records; pass batch_size")
        batch_size = logged[0]["samples_seen"] // logged[0]["step"]
    points = {r["step"] * batch_size: r["eval"][task]["top1"] for r in history if task in r.get("eval", {})}
    if not points:
        found = sorted({t for r in history for t in r.get("eval", {})})
        raise ValueError(f"no zero-shot evaluation of task {task!r} in this history; it evaluated {found}")
    samples = sorted(points)
    return samples, [points[s] for s in samples]


def samples_to_reach(samples: Sequence[float], accuracy: Sequence[float], target: float, *, chance: float = 0.0) -> float:
    """Samples seen when the curve first reaches `target`, linearly interpolated; `inf` if it never does.

    The curve starts at (0, `chance`): before any sample, a classifier is at chance. A curve whose first
    evaluation is already above `target` is interpolated from that start.
    """
    if len(samples) != len(accuracy) or not len(samples):
        raise ValueError(f"samples and accuracy must be equally long and non-empty; got {len(samples)} and {len(accuracy)}")
    if not 0.0 <= chance < target <= 1.0:
        raise ValueError(f"need 0 <= chance < target <= 1 (a target at or below chance is reached before training); "
                         f"got chance={chance}, target={target}")
    xs, ys = [0.0, *map(float, samples)], [float(chance), *map(float, accuracy)]
    if any(b <= a for a, b in zip(xs, xs[1:])):
        raise ValueError("samples must be positive and increasing")
    for (x0, y0), (x1, y1) in zip(zip(xs, ys), zip(xs[1:], ys[1:])):
        if y1 >= target:
            return x0 + (x1 - x0) * (target - y0) / (y1 - y0)  # y0 < target: the first crossing
    return math.inf


class Speedup(NamedTuple):
    """How many times fewer samples one objective needed than another to reach the same accuracy."""

    value: float  # samples(slower) / samples(faster); nan when neither run reached the target
    bound: str  # "=" both reached it; ">" only the faster did (at least `value`); "<" only the slower did (at most)

    def __str__(self) -> str:
        if math.isnan(self.value):
            return "n/a"
        return f"{'' if self.bound == '=' else self.bound + ' '}{self.value:.2f}×"


def speedup(slower: float, faster: float, *, run_samples: float) -> Speedup:
    """`slower / faster` of two samples-to-target; a run that never got there counts as `run_samples`.

    Then the ratio is a bound: the run would have needed more than all its samples.
    """
    if not run_samples > 0:
        raise ValueError(f"run_samples must be > 0 (the samples each run saw); got {run_samples}")
    for name, value in (("slower", slower), ("faster", faster)):
        if not (value > 0 or math.isinf(value)):
            raise ValueError(f"{name} must be a positive sample count or inf (never reached); got {value}")
    if math.isinf(slower) and math.isinf(faster):
        return Speedup(math.nan, "=")
    if math.isinf(slower):
        return Speedup(run_samples / faster, ">")
    if math.isinf(faster):
        return Speedup(slower / run_samples, "<")
    return Speedup(slower / faster, "=")
