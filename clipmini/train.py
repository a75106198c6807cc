"""The training engine: one loop for every model in the book, from a CPU tiny CLIP to a multi-GPU run.

`TrainConfig` holds every knob; notebooks (papermill parameters), YAML profiles in `params/` and the
command line all fill it. `train(config)` runs the paper's recipe: AdamW (β2 = 0.98, eps 1e-6, no
weight decay on gains, biases and `logit_scale`), linear warmup then cosine decay, gradient clipping,
the clamp of `logit_scale` at ln 100 after every step, mixed precision, gradient checkpointing and
contrastive gradient accumulation. The same code runs under `torchrun` (DDP).

    python -m clipmini.train --config params/train-tiny.yaml --steps 500 --lr 1e-3
    torchrun --nproc_per_node=2 -m clipmini.train --config params/train-tiny.yaml
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import difflib
import hashlib
import inspect
import json
import math
import os
import re
import sys
import tempfile
import time
import types
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import torch
import torch.distributed as dist
import torch.nn.functional as F
import yaml
from torch import nn

from .checkpoint import (
    TOKENIZER_FILE,
    CheckpointError,
    clean_incomplete,
    delete_checkpoints,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from .config import MODEL_CONFIGS, CLIPConfig, get_config
from .fileio import atomic_write_json, atomic_write_text
from .schedule import CosineSchedule

__all__ = [
    "TrainConfig",
    "MAIN_JOB",
    "main_job_config",
    "TrainResult",
    "StepResult",
    "ContrastiveModel",
    "DistInfo",
    "init_distributed",
    "make_model",
    "make_world",
    "make_tokenizer",
    "make_optimizer",
    "make_schedule",
    "compute_gradients",
    "train_step",
    "train",
    "TrainSetupError",
    "result_fields",
    "read_yaml",
    "build_parser",
    "parse_args",
    "main",
]


# ==============================================================================================
# The configuration
# ==============================================================================================


@dataclass
class TrainConfig:
    """Every setting of a training run. Build it with `from_sources` / `from_yaml` / `from_dict`."""

    # --- model
    model: str = "tiny-vit"  # a name from clipmini.config.MODEL_CONFIGS
    model_overrides: dict = field(default_factory=dict)  # CLIPConfig fields merged over the named model, e.g. {vision: {layers: 2}}
    # --- data
    data: Literal["world", "csv", "webdataset"] = "world"  # "world" = the synthetic caption world; else a real image-text set
    world: dict = field(default_factory=dict)  # WorldConfig fields for data="world" (its image size follows the model)
    train_data: str | None = None  # CSV file or WebDataset shard pattern, for data="csv"/"webdataset"
    tokenizer: Literal["world", "openai"] = "world"  # "world": a BPE trained on the world's captions with the model's vocab_size
    # --- optimization (the paper's AdamW; its betas/eps are the ViT ones)
    steps: int = 600  # optimizer steps; the paper trains 32 epochs of 400M pairs (~12.8B samples)
    batch_size: int = 256  # global batch per step, summed over all ranks (the paper: 32,768)
    micro_batch: int | None = None  # global size of an accumulation micro-batch; None = no accumulation
    lr: float = 1e-3  # peak learning rate, reached after the warmup
    weight_decay: float = 0.1  # AdamW's decoupled decay; never applied to gains, biases or logit_scale
    warmup_steps: int = 50  # linear warmup from lr/warmup_steps to lr; then cosine decay to 0
    grad_clip: float | None = 1.0  # max global gradient norm; None = no clipping
    beta1: float = 0.9
    beta2: float = 0.98  # the paper's; PyTorch's default 0.999 is less stable with large batches
    eps: float = 1e-6  # the paper's; PyTorch's default is 1e-8
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # bf16 autocast (CPU or CUDA); fp16 autocast + GradScaler (CUDA only)
    grad_checkpointing: bool = False  # recompute each block's activations in backward to save memory
    loss: Literal["clip", "siglip"] = "clip"  # symmetric InfoNCE, or SigLIP's sigmoid loss with its own scale and bias
    siglip_init_bias: float = -10.0  # loss="siglip": where the bias b starts; SigLIP's -10, or -ln(N-1), the best b for features that know nothing
    fixed_tau: float | None = None  # a fixed temperature (the ablation); None = learn logit_scale = ln(1/tau)
    loss_direction: Literal["both", "image", "text"] = "both"  # loss="clip": image→text rows only, text→image columns only, or both (the paper)
    dedupe_captions: bool = True  # identical captions in a batch are not each other's negatives
    on_nonfinite: Literal["skip", "stop"] = "skip"  # a NaN/inf loss or gradient: skip the step (counted), or raise
    max_nonfinite_steps: int = 3  # on_nonfinite="skip": this many skipped steps in a row stop the run; 0 = never stop
    # --- evaluation and logging
    eval_every: int = 0  # zero-shot evaluation every this many steps; 0 = only at the end
    eval_tasks: list[str] = field(default_factory=lambda: ["color_shape"])  # caption-world tasks to evaluate
    eval_n: int = 1000  # images per evaluation task
    log_every: int = 10  # steps per line of the JSONL log (and per progress-bar refresh)
    progress: bool = True  # show a tqdm progress bar (rank 0 only)
    # --- files
    out_dir: str | None = "runs/train"  # metrics.jsonl, config.json and ckpt-*/ go here; None = write nothing
    checkpoint_every: int = 0  # save a checkpoint every this many steps; 0 = only the final one
    keep_checkpoints: int = 2  # complete checkpoints kept (older ones are deleted)
    resume: bool | str = False  # True = continue from the latest complete checkpoint in out_dir; a path = from that one
    overwrite: bool = False  # replace the run already in out_dir (its checkpoints and log are deleted); else refuse to start
    # --- machinery
    seed: int = 0  # seeds the model init and every RNG; data are a pure function of (world seed, step)
    device: str = "auto"  # "auto" = CUDA when present (cuda:LOCAL_RANK under torchrun), else the CPU
    data_workers: int = 1  # batches prepared ahead: threads (world) or DataLoader processes (real data); 0 = in the loop
    threads: int | None = None  # torch.set_num_threads for the run (process-wide); None = leave PyTorch's choice

    def __post_init__(self) -> None:
        hints = _field_types()
        for f in dataclasses.fields(self):
            setattr(self, f.name, _check_type(f.name, getattr(self, f.name), hints[f.name]))
        self._check_values()

    # ----- validation

    def _check_values(self) -> None:
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ValueError(message)

        need(self.model in MODEL_CONFIGS, f"'model' must be one of {', '.join(MODEL_CONFIGS)}; got {self.model!r}")
        self.clip_config()  # model_overrides must make a valid CLIPConfig
        if self.data == "world":
            self.world_config()  # and world a valid WorldConfig
            from .data import TASKS

            unknown = [t for t in self.eval_tasks if t not in TASKS]
            need(not unknown, f"'eval_tasks' has unknown task(s) {unknown}; the caption world's tasks are {', '.join(TASKS)}")
        need(self.steps >= 1, f"'steps' must be >= 1, got {self.steps}")
        need(self.batch_size >= 1, f"'batch_size' must be >= 1, got {self.batch_size}")
        if self.micro_batch is not None:
            need(self.micro_batch >= 1, f"'micro_batch' must be >= 1 or None, got {self.micro_batch}")
            need(
                self.batch_size % self.micro_batch == 0,
                f"'batch_size' ({self.batch_size}) must be divisible by 'micro_batch' ({self.micro_batch})",
            )
        need(math.isfinite(self.lr) and self.lr > 0, f"'lr' must be a finite number > 0, got {self.lr}")
        need(
            math.isfinite(self.weight_decay) and self.weight_decay >= 0,
            f"'weight_decay' must be a finite number >= 0, got {self.weight_decay}",
        )
        need(self.warmup_steps >= 0, f"'warmup_steps' must be >= 0, got {self.warmup_steps}")
        need(self.grad_clip is None or self.grad_clip > 0, f"'grad_clip' must be > 0 or None, got {self.grad_clip}")
        for name in ("beta1", "beta2"):
            need(0 <= getattr(self, name) < 1, f"'{name}' must be in [0, 1), got {getattr(self, name)}")
        need(self.eps > 0, f"'eps' must be > 0, got {self.eps}")
        need(
            self.fixed_tau is None or (math.isfinite(self.fixed_tau) and self.fixed_tau > 0),
            f"'fixed_tau' must be a temperature > 0 (e.g. 0.07) or None, got {self.fixed_tau}",
        )
        need(self.loss != "siglip" or self.fixed_tau is None, "'fixed_tau' applies to loss='clip' only")
        need(self.loss != "siglip" or self.loss_direction == "both", "'loss_direction' applies to loss='clip' only")
        need(math.isfinite(self.siglip_init_bias), f"'siglip_init_bias' must be finite, got {self.siglip_init_bias}")
        need(self.eval_every >= 0, f"'eval_every' must be >= 0 (0 = only at the end), got {self.eval_every}")
        need(self.eval_n >= 1, f"'eval_n' must be >= 1, got {self.eval_n}")
        need(self.log_every >= 1, f"'log_every' must be >= 1, got {self.log_every}")
        need(self.checkpoint_every >= 0, f"'checkpoint_every' must be >= 0 (0 = only at the end), got {self.checkpoint_every}")
        need(self.keep_checkpoints >= 1, f"'keep_checkpoints' must be >= 1, got {self.keep_checkpoints}")
        need(self.resume != "", "'resume' must be true, false or the path of a checkpoint (or run folder), got ''")
        need(self.out_dir != "", "'out_dir' must be a folder or None (write nothing), got '' (it would be the current folder)")
        need(
            not (self.overwrite and self.resume is not False),
            f"'overwrite' deletes the run in out_dir and 'resume' continues one (resume={self.resume!r}): set only one",
        )
        need(
            self.max_nonfinite_steps >= 0,
            f"'max_nonfinite_steps' must be >= 0 (0 = never stop), got {self.max_nonfinite_steps}",
        )
        need(0 <= self.seed < 2**32, f"'seed' must be in [0, 2**32), got {self.seed}")
        need(self.data_workers >= 0, f"'data_workers' must be >= 0, got {self.data_workers}")
        need(self.threads is None or self.threads >= 1, f"'threads' must be >= 1 or None, got {self.threads}")
        need(
            self.data == "world" or bool(self.train_data),
            f"data={self.data!r} needs 'train_data' (a CSV file or WebDataset shards)",
        )
        need(
            self.data == "world" or self.tokenizer == "openai",
            f"tokenizer='world' is trained on the caption world's captions; data={self.data!r} needs tokenizer='openai'",
        )
        if self.tokenizer == "openai":
            vocab = self.clip_config().text.vocab_size
            need(vocab == 49408, f"tokenizer='openai' needs a text vocab_size of 49408; model {self.model!r} has {vocab}")
        if self.precision == "fp16":
            need(self.device != "cpu", "precision='fp16' needs CUDA (a GradScaler); use 'bf16' on the CPU")

    def check_world_size(self, world_size: int) -> None:
        """Batch sizes must split evenly over `world_size` ranks."""
        if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
            raise ValueError(f"world_size must be an int >= 1 (the number of ranks), got {world_size!r}")
        if self.batch_size < world_size or self.batch_size % world_size:
            raise ValueError(
                f"'batch_size' ({self.batch_size}) must be a multiple of the world size ({world_size}): "
                "it is the global batch, split evenly over the ranks"
            )
        if self.micro_batch is not None and (self.micro_batch < world_size or self.micro_batch % world_size):
            raise ValueError(
                f"'micro_batch' ({self.micro_batch}) must be a multiple of the world size ({world_size}): "
                "it is the global micro-batch, split evenly over the ranks"
            )

    # ----- derived values

    def clip_config(self) -> CLIPConfig:
        """The model's `CLIPConfig`: the named one with `model_overrides` merged in."""
        base = get_config(self.model).to_dict()
        try:
            return CLIPConfig.from_dict(_deep_merge(base, self.model_overrides, "model_overrides"))
        except (TypeError, ValueError) as err:
            raise ValueError(f"'model_overrides' do not make a valid model: {err}") from err

    def world_config(self):
        """The caption world's `WorldConfig`: `world`'s fields, at the model's image size."""
        from .data import WorldConfig

        values = dict(self.world)
        image_size = self.clip_config().vision.image_size
        if values.setdefault("image_size", image_size) != image_size:
            raise ValueError(f"world.image_size={values['image_size']} differs from the model's image_size={image_size}")
        known = [f.name for f in dataclasses.fields(WorldConfig)]
        unknown = [k for k in values if k not in known]
        if unknown:
            hints = []
            for key in unknown:
                close = difflib.get_close_matches(str(key), known, n=1)
                hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            raise ValueError(f"unknown key(s) in 'world': {', '.join(hints)}; WorldConfig fields are {', '.join(known)}")
        try:
            return WorldConfig(**values)
        except (TypeError, ValueError) as err:
            raise ValueError(f"'world' does not make a valid caption world: {err}") from err

    # ----- conversions

    def to_dict(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))  # deep copy, JSON types only

    @classmethod
    def from_dict(cls, data: dict, *, source: str = "overrides") -> "TrainConfig":
        """A config from a (partial) dict; unknown keys and wrong types raise, naming `source`."""
        return cls.from_sources(overrides=data, source=source)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> "TrainConfig":
        return cls.from_sources(yaml_path=path)

    @classmethod
    def from_sources(
        cls,
        yaml_path: str | os.PathLike | None = None,
        overrides: dict | None = None,
        *,
        source: str = "overrides",
    ) -> "TrainConfig":
        """Defaults, then the YAML profile's values, then `overrides` (papermill parameters, CLI flags)."""
        values: dict[str, Any] = {}
        if yaml_path is not None:
            values.update(_check_keys(read_yaml(yaml_path), str(yaml_path)))
        if overrides:
            values.update(_check_keys(overrides, source))
        try:
            return cls(**values)
        except (TypeError, ValueError) as err:
            where = " and ".join(s for s, given in ((str(yaml_path), yaml_path is not None), (source, bool(overrides))) if given)
            raise type(err)(f"{err} (in {where})" if where else str(err)) from None


# The book's main job: the tiny CLIP that notebooks/07_training.ipynb trains (about 3 minutes on 2 CPU
# cores) and that later chapters load from the cache with `load_or_train(main_job_config())`. The
# chapter's parameters and params/train-tiny.yaml hold the same values; tests/test_main_job.py checks.
# Why these values (the measurements are in the chapter): a ModifiedResNet learns shapes from alt-text
# several times faster than a ViT of equal cost at this size, and on flat images only; with all six
# visual domains the shapes are not learned within the budget (colors are).
MAIN_JOB: dict[str, Any] = {
    "model": "tiny-rn",  # ModifiedResNet, width 16, one bottleneck per stage; 2-layer text tower of width 64
    "model_overrides": {"init_logit_scale": math.log(1 / 0.07)},  # tau starts at the paper's 0.07
    "world": {"domains": ["flat"]},  # otherwise the caption world's defaults: alt-text, 5% wrong captions
    "steps": 900,  # x 128 = 115,200 pairs; the paper: 32 epochs of 400M pairs (12.8B)
    "batch_size": 128,  # the paper: 32,768
    "lr": 3e-3,  # the paper: 5e-4 (RN50, ViT-B/32); a tiny model and batch take a larger step
    "warmup_steps": 40,  # the paper: 2,000
    "weight_decay": 0.1,  # the paper: 0.2
    "precision": "fp32",  # bf16 autocast is ~18x slower on a CPU without bf16 matrix units
    "eval_every": 150,  # zero-shot curves for the chapter (evaluation does not change the weights)
    "eval_tasks": ["color_shape", "shape", "color"],
    "eval_n": 1000,
    "threads": 2,  # the book's CPU budget
    "out_dir": None,
}


def main_job_config(**overrides: Any) -> TrainConfig:
    """The main job's `TrainConfig` (`MAIN_JOB`), with `overrides` (TrainConfig fields) on top."""
    values = json.loads(json.dumps(MAIN_JOB))  # a deep copy: callers never change MAIN_JOB
    values.update(overrides)
    return TrainConfig.from_dict(values, source="main_job_config overrides")


def _field_types() -> dict[str, Any]:
    return get_type_hints(TrainConfig)


def _deep_merge(base: dict, over: dict, where: str) -> dict:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value, f"{where}.{key}")
        else:
            out[key] = value
    return out


def _check_keys(data: Any, source: str) -> dict:
    if not isinstance(data, dict):
        raise TypeError(f"{source} must be a mapping of TrainConfig fields; got {type(data).__name__}")
    known = [f.name for f in dataclasses.fields(TrainConfig)]
    problems = []
    for key in data:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.append(f"unknown key {key!r} in {source}{hint}")
    if problems:
        raise ValueError("; ".join(problems) + f". Valid keys: {', '.join(known)}")
    return dict(data)


def _type_name(tp: Any) -> str:
    origin, args = get_origin(tp), get_args(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is list:
        return f"list of {_type_name(args[0])}"
    if tp is type(None):
        return "None"
    return getattr(tp, "__name__", str(tp))


def _check_type(name: str, value: Any, tp: Any) -> Any:
    """`value` if it is a `tp` (ints are accepted as floats, tuples as lists); else TypeError."""
    origin, args = get_origin(tp), get_args(tp)

    def fail() -> TypeError:
        return TypeError(f"'{name}' must be {_type_name(tp)}, got {type(value).__name__} {value!r}")

    if origin in (Union, types.UnionType):
        for arg in args:
            try:
                return _check_type(name, value, arg)
            except (TypeError, ValueError):
                continue
        raise fail()
    if origin is Literal:
        if any(value == a and type(value) is type(a) for a in args):
            return value
        if isinstance(value, str):
            raise ValueError(f"'{name}' must be {_type_name(tp)}, got {value!r}")
        raise fail()
    if tp is type(None):
        if value is None:
            return None
        raise fail()
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise fail()
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise fail()
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise fail()
    if tp is str:
        if isinstance(value, str):
            return value
        raise fail()
    if origin is list:
        if isinstance(value, (list, tuple)):
            return [_check_type(f"{name}[{i}]", v, args[0]) for i, v in enumerate(value)]
        raise fail()
    if tp is dict or origin is dict:
        if isinstance(value, dict):
            return json.loads(json.dumps(value))  # a private deep copy; JSON-ready or it fails here
        raise fail()
    raise TypeError(f"TrainConfig field {name!r} has an unsupported type {tp!r}")


# YAML 1.1 (PyYAML) reads 1e-3 as a *string*; this loader reads it as the float everyone means.
class _YamlLoader(yaml.SafeLoader):
    pass


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def read_yaml(path: str | os.PathLike) -> dict:
    """A YAML profile as a dict (floats like `1e-3` included); a clear error if it is not a mapping."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} not found")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_YamlLoader)
    except yaml.YAMLError as err:
        raise ValueError(f"{path} is not valid YAML: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a mapping of TrainConfig fields; got a {type(data).__name__}")
    return data


# ==============================================================================================
# Distributed: the minimal pieces (torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT)
# ==============================================================================================


# DistInfo, init_distributed, process_group (join; barrier and destroy on the way out), wrap_ddp and
# resolve_device live in clipmini.distributed; DistInfo and init_distributed stay importable from here.
from .distributed import DistInfo, init_distributed, is_main_process, process_group, wrap_ddp  # noqa: E402
from .distributed import resolve_device as _resolve_device  # noqa: E402


# ==============================================================================================
# The pieces: model, data, tokenizer, optimizer, schedule
# ==============================================================================================


def make_model(config: TrainConfig) -> nn.Module:
    """A freshly initialized CLIP of the configured architecture (seed first for a repeatable init)."""
    from .model import CLIP

    return CLIP(config.clip_config())


def make_world(config: TrainConfig):
    """The caption world of `config.world`, rendering images at the model's resolution."""
    from .data import CaptionWorld

    return CaptionWorld(config.world_config())


WORLD_BPE_CORPUS = 20_000  # captions the world's BPE is trained on (the first ones of the training stream)


def _world_corpus(world) -> list[str]:
    """Captions to train the world's BPE on (deterministic: the world is random access)."""
    return list(world.caption_corpus(WORLD_BPE_CORPUS))


def make_tokenizer(config: TrainConfig, world=None):
    """The run's tokenizer: OpenAI's, or a BPE trained (deterministically) on the world's captions."""
    from .tokenizer import Tokenizer

    if config.tokenizer == "openai":
        from .tokenizer import default_tokenizer

        return default_tokenizer()  # built once per process
    if world is None:
        world = make_world(config)
    vocab_size = config.clip_config().text.vocab_size
    key = (json.dumps(world.config.to_dict(), sort_keys=True), vocab_size)
    if key not in _WORLD_TOKENIZERS:  # the same world and size always train the same BPE: once per process
        # A plain world (e.g. caption_style="label") has too few distinct words for vocab_size ids:
        # take every merge its captions support; the model's extra embedding rows stay unused.
        tokenizer = Tokenizer.train(_world_corpus(world), vocab_size, allow_smaller=True)
        _WORLD_TOKENIZERS[key] = tokenizer
    return _WORLD_TOKENIZERS[key]


_WORLD_TOKENIZERS: dict[tuple[str, int], Any] = {}


def _decays(name: str, param: nn.Parameter) -> bool:
    # The paper: no weight decay on gains, biases (every 1-D/0-D tensor: norms' weights, biases,
    # class embedding) or the temperature.
    return param.ndim >= 2 and not name.endswith("logit_scale")


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW with two groups: matrices decay, gains/biases/`logit_scale` do not (named in each group)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (decay if _decays(name, param) else no_decay).append(param)
    groups = [
        {"params": decay, "weight_decay": config.weight_decay, "name": "decay"},
        {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"},
    ]
    return torch.optim.AdamW(groups, lr=config.lr, betas=(config.beta1, config.beta2), eps=config.eps)


def make_schedule(config: TrainConfig) -> CosineSchedule:
    """Linear warmup over `warmup_steps`, then cosine decay to 0 at `steps`."""
    return CosineSchedule(base_lr=config.lr, warmup_steps=config.warmup_steps, total_steps=config.steps)


# ==============================================================================================
# One optimizer step
# ==============================================================================================


class ContrastiveModel(nn.Module):
    """A CLIP plus the loss's own parameters; `forward` returns exactly what the loss takes.

    `forward(images, tokens) -> (image_features [B, E], text_features [B, E], scale, bias)`, the
    features L2-normalized in fp32 and `scale` = exp(logit_scale). `bias` is SigLIP's (else None).
    Wrapping this (not the CLIP) in DDP keeps every trained parameter inside the DDP forward.
    """

    def __init__(self, clip: nn.Module, siglip_head: nn.Module | None = None):
        super().__init__()
        self.clip = clip
        self.siglip_head = siglip_head

    def forward(self, images: torch.Tensor, tokens: torch.Tensor):
        image_features = F.normalize(self.clip.encode_image(images).float(), dim=-1)  # [B, E]
        text_features = F.normalize(self.clip.encode_text(tokens).float(), dim=-1)  # [B, E]
        if self.siglip_head is None:
            return image_features, text_features, self.clip.logit_scale.float().exp(), None
        scale, bias = self.siglip_head()
        return image_features, text_features, scale.float(), bias.float()


@dataclass
class StepResult:
    loss: float  # the (global) batch loss
    grad_norm: float  # before clipping
    lr: float
    skipped: bool = False  # True when the step was skipped for a non-finite loss or gradient
    overflow: bool = False  # fp16: the GradScaler skipped the step (normal while it calibrates)


def _autocast(precision: str, device: torch.device):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


@contextlib.contextmanager
def _batchnorm_stats_kept(module: nn.Module):
    """Restore BatchNorm running statistics afterwards (the no-grad feature pass must not count)."""
    saved = [
        (m, {k: v.clone() for k, v in m.named_buffers(recurse=False)})
        for m in module.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
    ]
    try:
        yield
    finally:
        with torch.no_grad():
            for m, buffers in saved:
                for k, v in buffers.items():
                    getattr(m, k).copy_(v)


def _contrastive_loss(config: TrainConfig, image_features, text_features, scale, bias, caption_ids):
    from .losses import clip_loss, siglip_loss

    with torch.autocast(device_type=image_features.device.type, enabled=False):  # the loss in fp32
        if config.loss == "siglip":
            return siglip_loss(image_features, text_features, scale, bias)
        return clip_loss(image_features, text_features, scale, direction=config.loss_direction, caption_ids=caption_ids)


def _nonfinite_cause(config: TrainConfig, lr: float) -> str:
    cause = f"the learning rate is too high (lr={lr:.3g})"
    if config.precision == "fp16":
        cause += " or fp16 overflowed (try precision='bf16')"
    elif config.precision == "bf16":
        cause += " or bf16 lost too much precision"
    return cause


def _nonfinite_message(kind: str, step: int, config: TrainConfig, lr: float, loss: float, grad_norm: float) -> str:
    return (
        f"non-finite {kind} at step {step} (loss={loss}, grad_norm={grad_norm}); likely cause: "
        f"{_nonfinite_cause(config, lr)}. Lower 'lr', raise 'warmup_steps', or set on_nonfinite='skip'"
    )


def compute_gradients(
    model: nn.Module,
    images: torch.Tensor,  # [b, 3, R, R], this rank's share of the batch
    tokens: torch.Tensor,  # [b, L]
    config: TrainConfig,
    *,
    scaler: Any = None,
    caption_ids: torch.Tensor | None = None,  # [b]; equal ids = identical captions
) -> torch.Tensor:
    """Forward and backward of one batch, ADDING the gradients to `.grad`; returns the detached loss.

    With `config.micro_batch` set this is contrastive gradient accumulation, equal in gradient to the
    large batch: (1) the features of every micro-batch without gradient; (2) each micro-batch again
    with gradient, substituted for its cached rows, the full-batch loss, backward. Non-finite
    features give a NaN loss and no backward (on every rank alike).
    """
    if not isinstance(model, (ContrastiveModel, nn.parallel.DistributedDataParallel)):
        model = ContrastiveModel(model)
    ddp = model if isinstance(model, nn.parallel.DistributedDataParallel) else None
    inner: ContrastiveModel = ddp.module if ddp is not None else model
    device = images.device
    world_size = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    b = images.shape[0]
    m = config.micro_batch // world_size if config.micro_batch is not None else b
    if m <= 0 or b % m:
        raise ValueError(f"this rank's batch ({b}) must be divisible by its micro-batch ({m})")
    chunks = b // m

    def backward(loss: torch.Tensor) -> None:
        (scaler.scale(loss) if scaler is not None else loss).backward()

    def finite(image_features: torch.Tensor, text_features: torch.Tensor) -> bool:
        bad = (~torch.isfinite(image_features)).any().float() + (~torch.isfinite(text_features)).any().float()
        if world_size > 1:  # every rank must take the same branch
            dist.all_reduce(bad)
        return bad.item() == 0

    nan = torch.tensor(math.nan, device=device)
    if chunks == 1:
        with _autocast(config.precision, device):
            image_features, text_features, scale, bias = model(images, tokens)  # [b, E] x2
        if not finite(image_features, text_features):
            return nan
        loss = _contrastive_loss(config, image_features, text_features, scale, bias, caption_ids)
        backward(loss)
        return loss.detach()

    # 1) every micro-batch's features, without gradient (BatchNorm statistics left as they were)
    with torch.no_grad(), _autocast(config.precision, device), _batchnorm_stats_kept(inner):
        cached = [inner(images[s : s + m], tokens[s : s + m]) for s in range(0, b, m)]
    image_cache = torch.cat([c[0] for c in cached])  # [b, E]
    text_cache = torch.cat([c[1] for c in cached])  # [b, E]
    if not finite(image_cache, text_cache):
        return nan
    # 2) each micro-batch with gradient in place of its cached rows; the full-batch loss reaches only
    # this micro-batch's activations, so the sum over micro-batches is the large batch's gradient.
    for j, s in enumerate(range(0, b, m)):
        last = j == chunks - 1
        sync = ddp.no_sync() if ddp is not None and not last else contextlib.nullcontext()  # all-reduce once
        with sync:
            with _autocast(config.precision, device):
                image_j, text_j, scale, bias = model(images[s : s + m], tokens[s : s + m])  # [m, E] x2
            if not last:  # the temperature's (and bias') gradient is counted once, on the last pass
                scale = scale.detach()
                bias = bias.detach() if bias is not None else None
            image_features = torch.cat([image_cache[:s], image_j, image_cache[s + m :]])  # [b, E]
            text_features = torch.cat([text_cache[:s], text_j, text_cache[s + m :]])  # [b, E]
            loss = _contrastive_loss(config, image_features, text_features, scale, bias, caption_ids)
            backward(loss)
    return loss.detach()


def train_step(
    model: nn.Module,
    images: torch.Tensor,  # [b, 3, R, R], this rank's share of the batch
    tokens: torch.Tensor,  # [b, L]
    optimizer: torch.optim.Optimizer,
    config: TrainConfig,
    *,
    step: int = 0,
    schedule: CosineSchedule | None = None,
    scaler: Any = None,
    caption_ids: torch.Tensor | None = None,  # [b]; equal ids = identical captions
) -> StepResult:
    """One optimizer step: set the lr, `compute_gradients`, clip, check, step, clamp `logit_scale`.

    `model` is a `ContrastiveModel` (maybe DDP-wrapped) or a bare CLIP. A non-finite loss or gradient
    skips the step (`on_nonfinite="skip"`) or raises `FloatingPointError` naming the step.
    """
    if not isinstance(model, (ContrastiveModel, nn.parallel.DistributedDataParallel)):
        model = ContrastiveModel(model)
    inner = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    lr = schedule.apply(optimizer, step) if schedule is not None else optimizer.param_groups[0]["lr"]

    optimizer.zero_grad(set_to_none=True)
    loss = compute_gradients(model, images, tokens, config, scaler=scaler, caption_ids=caption_ids)
    if scaler is not None:
        scaler.unscale_(optimizer)
    params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params]) if params else loss.new_zeros(())
    if config.grad_clip is not None and params:
        torch.nn.utils.clip_grads_with_norm_(params, config.grad_clip, grad_norm)  # scale all by min(1, clip/norm)
    loss_value, norm_value = torch.stack([loss.float(), grad_norm.float()]).tolist()  # the step's one sync

    if not math.isfinite(loss_value):
        return _skip_or_stop("loss", step, config, lr, loss_value, norm_value, optimizer, scaler)
    if not math.isfinite(norm_value):
        if scaler is not None:  # fp16: an overflowing gradient is the GradScaler's business
            scaler.step(optimizer)  # skips the update, since unscale_ found inf
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            return StepResult(loss_value, norm_value, lr, overflow=True)
        return _skip_or_stop("gradient", step, config, lr, loss_value, norm_value, optimizer, scaler)

    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    _clamp_temperature(inner, config)
    return StepResult(loss_value, norm_value, lr)


def _skip_or_stop(kind, step, config, lr, loss_value, norm_value, optimizer, scaler) -> StepResult:
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:  # close the scaler's iteration as an overflow would: back off the scale
        scaler.update(scaler.get_scale() * scaler.get_backoff_factor())
    if config.on_nonfinite == "stop":
        raise FloatingPointError(_nonfinite_message(kind, step, config, lr, loss_value, norm_value))
    return StepResult(loss_value, norm_value, lr, skipped=True)


def _clamp_temperature(module: ContrastiveModel, config: TrainConfig) -> None:
    from .temperature import clamp_logit_scale_

    if module.siglip_head is not None:
        clamp_logit_scale_(module.siglip_head)
    elif config.fixed_tau is None:
        clamp_logit_scale_(module.clip)  # ln(1/tau) <= ln 100, right after the step (the paper)


# ==============================================================================================
# Batches
# ==============================================================================================


def _caption_ids(captions: list[str]) -> torch.Tensor:
    """[B] int64 ids equal exactly for equal captions, on every rank (a 64-bit hash)."""
    ids = [int.from_bytes(hashlib.blake2b(c.encode("utf-8"), digest_size=8).digest(), "little", signed=True) for c in captions]
    return torch.tensor(ids, dtype=torch.int64)


class _Batches:
    """Batch `step` of this rank, prepared `workers` steps ahead in background threads.

    The world is random access, so batch `step` is the same whoever asks and whenever: prefetching
    changes nothing in the result, and a resumed run sees exactly the batches the first run would have.
    """

    def __init__(self, config: TrainConfig, world, tokenizer, info: DistInfo, device: torch.device, context_length: int):
        self.config, self.world, self.tokenizer, self.info = config, world, tokenizer, info
        self.device, self.context_length = device, context_length
        self.local_batch = config.batch_size // info.world_size
        self.pin = device.type == "cuda"
        self.pool = ThreadPoolExecutor(config.data_workers) if config.data_workers > 0 else None
        self.pending: dict[int, Any] = {}

    def _make(self, step: int):
        images, captions = self.world.batch(step, self.local_batch, rank=self.info.rank, world_size=self.info.world_size)
        images = torch.as_tensor(images, dtype=torch.float32)
        tokens = self.tokenizer(list(captions), context_length=self.context_length, truncate=True)  # [b, L]
        ids = _caption_ids(list(captions)) if self.config.dedupe_captions and self.config.loss == "clip" else None
        if self.pin:
            images, tokens = images.pin_memory(), tokens.pin_memory()
        return images, tokens, ids

    def get(self, step: int):
        if self.pool is None:
            out = self._make(step)
        else:
            for ahead in range(step, min(step + 1 + self.config.data_workers, self.config.steps)):
                if ahead not in self.pending:
                    self.pending[ahead] = self.pool.submit(self._make, ahead)
            out = self.pending.pop(step).result()
        images, tokens, ids = out
        nb = self.pin
        return (
            images.to(self.device, non_blocking=nb),
            tokens.to(self.device, non_blocking=nb),
            ids.to(self.device, non_blocking=nb) if ids is not None else None,
        )

    def close(self) -> None:
        if self.pool is not None:
            for future in self.pending.values():
                future.cancel()
            self.pool.shutdown(wait=True)


class _Collate:
    """Stack images, tokenize captions, and attach what this worker skipped since its last batch (runs in
    the DataLoader's workers, so it must pickle; the skips travel with the batch to the main process)."""

    def __init__(self, tokenizer, context_length: int, dedupe: bool, skips):
        self.tokenizer, self.context_length, self.dedupe, self.skips = tokenizer, context_length, dedupe, skips

    def __call__(self, samples):
        images = torch.stack([image for image, _ in samples])  # [b, 3, R, R]
        captions = [caption for _, caption in samples]
        tokens = self.tokenizer(captions, context_length=self.context_length, truncate=True)  # [b, L]
        return images, tokens, _caption_ids(captions) if self.dedupe else None, self.skips.take()


class _LoaderBatches:
    """Batches of a real image-text set (CSV or WebDataset), epoch after epoch.

    Not random access: batch `step` is found by reading the stream from its start (each epoch's order
    is fixed by the seed), so a resumed run fast-forwards over the batches it has already seen.

    Broken samples are skipped and counted: each batch brings the skips that came before it (in
    whichever worker), and at the end of an epoch the shared counts add those after the last batch and
    one warning reports the epoch. `skips` holds the totals by reason, in samples (shards apart).
    """

    def __init__(self, config: TrainConfig, tokenizer, info: DistInfo, device: torch.device, context_length: int, image_size: int):
        from torch.utils.data import DataLoader

        from .data import CsvImageText, SkipCounter, WebDatasetImageText, clip_transform

        transform = clip_transform(image_size, train=True)
        self.skip_counter = SkipCounter(Path(config.train_data).name, warn_each_epoch=False)  # this class warns
        if config.data == "csv":
            self.dataset = CsvImageText(
                config.train_data, transform=transform, rank=info.rank, world_size=info.world_size, shuffle=True,
                seed=config.seed, skips=self.skip_counter,
            )
        else:
            self.dataset = WebDatasetImageText(
                config.train_data, transform=transform, rank=info.rank, world_size=info.world_size,
                shuffle_shards=True, seed=config.seed, skips=self.skip_counter,
            )
        self.local_batch = config.batch_size // info.world_size
        self.loader = DataLoader(
            self.dataset,
            batch_size=self.local_batch,
            num_workers=config.data_workers,
            drop_last=True,  # every rank must pass the same batch size to the loss
            collate_fn=_Collate(tokenizer, context_length, config.dedupe_captions and config.loss == "clip", self.skip_counter),
            pin_memory=device.type == "cuda",
        )
        self.device, self.source, self.seed = device, config.train_data, config.seed
        self.epoch, self.iterator, self.position, self.in_epoch = 0, None, 0, 0
        self.skips: dict[str, int] = {}  # skipped samples (and damaged shards) by reason, this run so far
        self.epoch_skips: dict[str, int] = {}  # ... of this epoch, as the batches brought them
        self.epoch_examples: list = []
        self.replaying = False  # a resumed run's fast-forward: its epochs were reported by the first run

    def _count(self, counts: dict[str, int]) -> None:
        for reason, n in counts.items():
            self.skips[reason] = self.skips.get(reason, 0) + n
            self.epoch_skips[reason] = self.epoch_skips.get(reason, 0) + n

    def _end_epoch(self) -> None:
        """Count the skips after the epoch's last batch (the workers are done: the shared counts are whole)."""
        counter = self.skip_counter
        self._count({r: n - self.epoch_skips.get(r, 0) for r, n in counter.counts.items() if n > self.epoch_skips.get(r, 0)})
        if not self.replaying:
            counter.warn(f"epoch {self.epoch} of ", self.epoch_examples)
        counter.reset()
        self.epoch_skips, self.epoch_examples = {}, []

    def skip_totals(self) -> dict[str, int]:
        shards = self.skip_counter.SHARD_REASONS
        return {
            "skipped_samples": sum(n for r, n in self.skips.items() if r not in shards),
            "damaged_shards": sum(n for r, n in self.skips.items() if r in shards),
        }

    def _next(self):
        while True:
            if self.iterator is None:
                self.dataset.set_epoch(self.epoch)
                # the workers' RNG seeds (random crops) are a function of (seed, epoch), not of the global RNG
                self.loader.generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
                self.iterator, self.in_epoch = iter(self.loader), 0
            try:
                *batch, skipped = next(self.iterator)
                self.in_epoch += 1
                self._count(skipped["counts"])
                self.epoch_examples += skipped["examples"][: max(0, 3 - len(self.epoch_examples))]
                return batch
            except StopIteration:
                if self.in_epoch == 0:
                    raise ValueError(
                        f"{self.source} gave no complete batch of {self.local_batch} usable samples on this rank "
                        f"({self.skip_counter.report()})"
                    ) from None
                self._end_epoch()
                self.epoch, self.iterator = self.epoch + 1, None

    def get(self, step: int):
        if self.position < step:  # resume: skip what the first run already trained on, leaving the
            self.replaying = True
            with torch.random.fork_rng(devices=[]):  # restored RNG as the checkpoint had it
                while self.position < step:
                    self._next()
                    self.position += 1
            self.replaying = False
        images, tokens, ids = self._next()
        self.position += 1
        nb = self.device.type == "cuda"
        return (
            images.to(self.device, non_blocking=nb),
            tokens.to(self.device, non_blocking=nb),
            ids.to(self.device, non_blocking=nb) if ids is not None else None,
        )

    def close(self) -> None:
        self.iterator = None


# ==============================================================================================
# Evaluation
# ==============================================================================================


EVAL_TASK_SEED = 0  # every run is scored on the same task images, whatever its training seed


def _make_tasks(config: TrainConfig, world) -> dict[str, Any]:
    if config.data != "world" or not config.eval_tasks:
        return {}
    return {name: world.task(name, n=config.eval_n, seed=EVAL_TASK_SEED) for name in config.eval_tasks}


@torch.no_grad()
def _candidate_accuracy(model: nn.Module, tokenizer, task) -> dict[str, float]:
    """Tasks whose classes are per-image captions (count, relation): pick the right one of C."""
    images, labels = task.images, task.labels
    device = next(model.parameters()).device
    context_length = model.config.text.context_length
    n, C = len(task.candidates), len(task.candidates[0])
    texts = [caption for row in task.candidates for caption in row]  # n*C, image-major
    text_features = torch.cat([
        F.normalize(model.encode_text(tokenizer(texts[i : i + 512], context_length=context_length, truncate=True).to(device)).float(), dim=-1)
        for i in range(0, len(texts), 512)
    ]).view(n, C, -1)  # [n, C, E]
    image_features = torch.cat([
        F.normalize(model.encode_image(images[i : i + 512].to(device)).float(), dim=-1) for i in range(0, n, 512)
    ])  # [n, E]
    scores = torch.einsum("ne,nce->nc", image_features, text_features)  # [n, C]
    return {"top1": (scores.argmax(dim=1).cpu() == labels).float().mean().item()}


def _evaluate(model: nn.Module, tokenizer, tasks: dict[str, Any]) -> dict[str, dict]:
    """Zero-shot top-1 (and top-5 where there are >= 5 classes) of each task."""
    if not tasks:
        return {}
    from . import zeroshot

    results = {}
    was_training = model.training
    model.eval()
    try:
        for name, task in tasks.items():
            if hasattr(zeroshot, "evaluate_zeroshot"):
                out = zeroshot.evaluate_zeroshot(model, tokenizer, task)
            elif getattr(task, "candidates", None) is not None:
                out = _candidate_accuracy(model, tokenizer, task)
            else:
                classifier = zeroshot.build_classifier(model, tokenizer, task.classnames, task.templates)
                topk = (1, 5) if len(task.classnames) >= 5 else (1,)
                out = zeroshot.evaluate(model, task.images, task.labels, classifier, topk)
            results[name] = {k: round(float(out[k]), 6) for k in ("top1", "top5") if k in out}
    finally:
        model.train(was_training)
    return results


# ==============================================================================================
# The loop
# ==============================================================================================


@dataclass
class TrainResult:
    model: nn.Module  # the trained CLIP (unwrapped, on its device, in eval mode)
    tokenizer: Any
    history: list[dict]  # the JSONL log's records
    metrics: dict  # final numbers: loss, tau, zero-shot results, skipped steps, throughput
    config: TrainConfig
    checkpoint: Path | None = None  # the final checkpoint folder (None when out_dir is None)
    siglip_head: nn.Module | None = None


METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.json"


class TrainSetupError(ValueError):
    """The run cannot start as configured: out_dir is unusable or holds another run, or `resume` does not fit.

    Raised before any training, with one line that says what to do.
    """


# Fields that change where and how a run reports, never the weights or metrics it produces.
REPORTING_FIELDS = ("out_dir", "progress", "log_every", "checkpoint_every", "keep_checkpoints", "resume", "overwrite")
# A resumed run may change these too: how often it evaluates, how it meets a failure, its CPU threads. Its
# device and world size are compared as they ran (resolved), from the checkpoint.
RESUME_MAY_CHANGE = REPORTING_FIELDS + ("eval_every", "on_nonfinite", "max_nonfinite_steps", "threads", "device")


def result_fields(config: TrainConfig) -> dict:
    """`config`'s values that decide a run's weights and metrics, canonical (one model or world spelled two
    ways is one value). The cache keys trained models by them; a resumed run must match them."""
    values = config.to_dict()
    for name in REPORTING_FIELDS:
        del values[name]
    values["model_overrides"] = config.clip_config().to_dict()
    if config.data == "world":
        values["world"] = config.world_config().to_dict()
        del values["data_workers"]  # threads preparing a random-access world's batches change nothing
    return values  # (real data: the DataLoader's workers split the samples, so their number changes the batches)


def _check_same_run(saved: Any, config: TrainConfig, where: str, ran: dict | None = None, runs: dict | None = None) -> None:
    """Refuse to continue `where` (a checkpoint or a run folder) unless it was trained with `config`'s result
    fields, and (`ran` vs `runs`) on the same kind of device and number of ranks."""
    fix = "resume with the same values, train into a new out_dir, or replace that run with overwrite=True"
    if not isinstance(saved, dict):
        raise TrainSetupError(f"{where} records no training configuration, so it cannot be continued safely: {fix}")
    try:
        before = result_fields(TrainConfig.from_dict(saved, source=where))
    except (TypeError, ValueError) as err:
        raise TrainSetupError(f"{where} holds a configuration this clipmini cannot read ({err}): {fix}") from None
    now = result_fields(config)
    differ = [k for k in now if k not in RESUME_MAY_CHANGE and before.get(k) != now[k]]
    old = [f"{k}={saved.get(k)!r}" for k in differ]  # as written, not canonical
    new = [f"{k}={getattr(config, k)!r}" for k in differ]
    for key in ("device", "world_size"):  # how it ran: recorded in checkpoints since these were
        if ran and runs and key in ran and ran[key] != runs[key]:
            old.append(f"{key}={ran[key]!r}")
            new.append(f"{key}={runs[key]!r}")
    if old:
        raise TrainSetupError(
            f"{where} was trained with {', '.join(old)}; this run has {', '.join(new)}. "
            f"These change the result: {fix}"
        )


def _check_out_dir(out_dir: Path) -> None:
    """`out_dir` is a folder (made if needed) that this process can write in; else one line that says so."""
    if out_dir.exists() and not out_dir.is_dir():
        raise TrainSetupError(f"out_dir {out_dir} is a file, not a folder: name a folder for the run's checkpoints and log")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=out_dir)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise TrainSetupError(f"out_dir {out_dir} cannot be written ({err.strerror or err}): choose another out_dir") from None


def _run_in(out_dir: Path) -> list[str]:
    """What a run already in `out_dir` would lose: its complete checkpoints and a non-empty log."""
    found = [p.name for p in list_checkpoints(out_dir, verify=False)]
    log = out_dir / METRICS_FILE
    if log.is_file() and log.stat().st_size > 0:
        found.append(METRICS_FILE)
    return found


def _continues(config: TrainConfig, out_dir: Path) -> bool:
    """Whether this run continues the run in `out_dir` (resume=True, or a checkpoint or the folder itself)."""
    if config.resume is True:
        return True
    if config.resume is False:
        return False
    path = Path(config.resume).resolve()
    return out_dir.resolve() in (path, path.parent)


def _claim_out_dir(config: TrainConfig, out_dir: Path) -> None:
    """Before any work: `out_dir` must be writable, and another run's files in it are never overwritten by
    accident (a fresh run refuses; overwrite=True deletes them first)."""
    _check_out_dir(out_dir)
    if config.overwrite:
        delete_checkpoints(out_dir)
        for name in (METRICS_FILE, CONFIG_FILE):
            (out_dir / name).unlink(missing_ok=True)
        return
    found = _run_in(out_dir)
    if found and not _continues(config, out_dir):
        shown = ", ".join(found) if len(found) <= 3 else f"{found[0]}, ..., {', '.join(found[-2:])}"
        raise TrainSetupError(
            f"out_dir {out_dir} already holds a run ({shown}); continue it with resume=True (--resume true), "
            "train into a new out_dir, or replace it with overwrite=True (--overwrite)"
        )


def _read_history(path: Path, up_to_step: int) -> list[dict]:
    if not path.is_file():
        return []
    history = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line torn by a kill
        if record.get("step", 0) <= up_to_step:
            history.append(record)
    return history


def _read_json(path: Path) -> Any:
    """The JSON in `path`, or None where it is missing or torn."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _resume_path(config: TrainConfig, out_dir: Path | None, info: DistInfo) -> Path | None:
    """The checkpoint to resume from. Only rank 0 deletes incomplete folders; the others wait, then look."""
    if config.resume is False:
        return None
    if isinstance(config.resume, str):
        path = Path(config.resume)
        if path.is_dir() and not (path / "MANIFEST.json").exists():  # a run folder: its latest checkpoint
            found = latest_checkpoint(path, cleanup=False)  # another run's folder: ignore incomplete ones, delete nothing
            if found is None:
                raise TrainSetupError(f"resume={config.resume!r}: no complete checkpoint in {path}")
            return found
        return path
    if out_dir is None:
        return None
    if info.is_main:
        clean_incomplete(out_dir, partial=False)  # what a killed write left behind
    if info.world_size > 1:
        dist.barrier()  # no rank reads the folder while rank 0 is cleaning it
    return latest_checkpoint(out_dir, cleanup=False)


def train(config: TrainConfig | dict) -> TrainResult:
    """Train a CLIP as `config` says; return the model, tokenizer, history and final metrics.

    Deterministic on the CPU: the same config gives bit-identical weights, with or without a resume.
    Under torchrun (WORLD_SIZE > 1) it joins the process group, trains with DDP, and leaves the group.
    """
    if isinstance(config, dict):
        config = TrainConfig.from_dict(config)
    with process_group(config.device) as info:  # after an error: no barrier, so torchrun can restart the job
        config.check_world_size(info.world_size)
        device = _resolve_device(config.device, info)
        if config.precision == "fp16" and device.type != "cuda":
            raise ValueError(f"precision='fp16' needs a CUDA device (GradScaler); this run is on {device}. Use 'bf16'")
        return _Run(config, info, device).train()


class _Run:
    """The state of one training run: built in `__init__` (fresh or resumed), advanced by `train`."""

    def __init__(self, config: TrainConfig, info: DistInfo, device: torch.device):
        from .seeding import seed_everything
        from .temperature import SigLIPHead, fix_temperature

        self.config, self.info, self.device = config, info, device
        self.out_dir = Path(config.out_dir) if config.out_dir is not None else None
        self.writes = info.is_main and self.out_dir is not None  # rank 0 logs and checkpoints
        if self.writes:
            _claim_out_dir(config, self.out_dir)
        self.ran_as = {"device": device.type, "world_size": info.world_size}  # checked when a run resumes
        if config.threads is not None:
            torch.set_num_threads(config.threads)
        seed_everything(config.seed)
        clip_config = config.clip_config()
        self.world = make_world(config) if config.data == "world" else None
        resume_from = _resume_path(config, self.out_dir, info)
        if resume_from is not None:  # checked before any work: every file verified, the configuration compared
            try:
                resumed = load_checkpoint(resume_from, restore_rng=False)
            except CheckpointError as err:
                raise TrainSetupError(f"resume={config.resume!r}: {err}") from None
            _check_same_run(resumed.config, config, f"checkpoint {resume_from}", resumed.extra, self.ran_as)
        elif self.writes and config.resume is True and _run_in(self.out_dir):  # a log, but no complete checkpoint
            _check_same_run(_read_json(self.out_dir / CONFIG_FILE), config, f"the run in out_dir {self.out_dir}")
        if resume_from is not None and (Path(resume_from) / TOKENIZER_FILE).is_file():
            from .tokenizer import Tokenizer

            self.tokenizer = Tokenizer.load(Path(resume_from) / TOKENIZER_FILE)
        else:
            self.tokenizer = make_tokenizer(config, self.world)

        self.model = make_model(config).to(device)
        self.siglip_head = SigLIPHead(init_bias=config.siglip_init_bias).to(device) if config.loss == "siglip" else None
        if self.siglip_head is not None:
            self.model.logit_scale.requires_grad_(False)  # SigLIP learns its own scale (in the head)
        if config.fixed_tau is not None:
            fix_temperature(self.model, config.fixed_tau)
        if config.grad_checkpointing:
            self.model.set_grad_checkpointing(True)
        self.module = ContrastiveModel(self.model, self.siglip_head)
        self.optimizer = make_optimizer(self.module, config)
        self.schedule = make_schedule(config)
        self.scaler = torch.amp.GradScaler("cuda") if config.precision == "fp16" else None
        self.extra_modules = {"siglip_head": self.siglip_head} if self.siglip_head is not None else None

        self.start_step, self.skipped, self.skipped_in_a_row, self.history = 0, 0, 0, []
        if resume_from is not None:
            self._resume(resume_from)
        if self.writes:
            clean_incomplete(self.out_dir)  # leftovers of a killed writer
            atomic_write_json(self.out_dir / CONFIG_FILE, config.to_dict())
            # the log holds exactly the steps up to where this run starts (a killed run may have logged more)
            atomic_write_text(self.out_dir / METRICS_FILE, "".join(json.dumps(r) + "\n" for r in self.history))
        self.last_checkpoint = latest_checkpoint(self.out_dir, cleanup=False) if self.writes else None

        self.train_module: nn.Module = wrap_ddp(self.module, device)  # DDP when there is more than one rank
        self.tasks = _make_tasks(config, self.world) if info.is_main else {}
        context_length = clip_config.text.context_length
        if self.world is not None:
            self.batches = _Batches(config, self.world, self.tokenizer, info, device, context_length)
        else:
            self.batches = _LoaderBatches(config, self.tokenizer, info, device, context_length, clip_config.vision.image_size)

    def _resume(self, path: Path) -> None:
        checkpoint = load_checkpoint(
            path, model=self.model, optimizer=self.optimizer, scaler=self.scaler, modules=self.extra_modules, verify=False
        )  # verified (and its configuration checked) in __init__
        self.start_step = checkpoint.step
        self.skipped = int(checkpoint.extra.get("nonfinite_skips", 0))
        self.skipped_in_a_row = int(checkpoint.extra.get("nonfinite_in_a_row", 0))
        if self.out_dir is not None:
            self.history = _read_history(self.out_dir / METRICS_FILE, self.start_step)

    def _stopped(self, message: str) -> FloatingPointError:
        kept = f"; the last complete checkpoint {self.last_checkpoint} is intact" if self.last_checkpoint else ""
        return FloatingPointError(f"{message}{kept}")

    def record(self, entry: dict) -> None:
        self.history.append(entry)
        if self.log is not None:
            self.log.write(json.dumps(entry) + "\n")
            self.log.flush()

    def save(self, step: int) -> None:
        if self.writes:
            self.last_checkpoint = save_checkpoint(
                self.out_dir,
                step,
                model=self.model,
                optimizer=self.optimizer,
                scaler=self.scaler,
                schedule=self.schedule.state_dict(),
                config=self.config.to_dict(),
                tokenizer=self.tokenizer,
                extra={"nonfinite_skips": self.skipped, "nonfinite_in_a_row": self.skipped_in_a_row, **self.ran_as},
                keep=self.config.keep_checkpoints,
                modules=self.extra_modules,
            )

    def data_skips(self) -> dict[str, int]:
        """Real data: broken samples skipped (and damaged shards) so far, all ranks together; the world has none.
        Every rank must call it at the same points."""
        if not isinstance(self.batches, _LoaderBatches):
            return {}
        totals = self.batches.skip_totals()
        if self.info.world_size > 1:  # every rank logs at the same steps: a collective is safe here
            summed = torch.tensor(list(totals.values()), dtype=torch.int64, device=self.device)
            dist.all_reduce(summed)
            totals = dict(zip(totals, summed.tolist()))
        return totals

    def tau(self) -> float:
        scale = self.siglip_head.logit_scale if self.siglip_head is not None else self.model.logit_scale
        return math.exp(-float(scale.detach()))  # a host sync: only when logging

    def train(self) -> TrainResult:
        from tqdm.auto import tqdm

        config = self.config
        bar = tqdm(
            total=config.steps, initial=self.start_step, desc="train", dynamic_ncols=True,
            disable=not (config.progress and self.info.is_main), mininterval=1.0,
        )
        self.log = open(self.out_dir / METRICS_FILE, "a") if self.writes else None
        window_losses: list[float] = []
        data_skips: dict[str, int] = {}
        window_start, window_steps = time.perf_counter(), 0
        busy, last_loss = 0.0, math.nan  # seconds spent training (not evaluating or saving)
        self.model.validate_inputs = True  # check the first batch's values; later ones skip those host syncs
        self.module.train()
        try:
            for step in range(self.start_step, config.steps):
                images, tokens, ids = self.batches.get(step)
                try:
                    out = train_step(
                        self.train_module, images, tokens, self.optimizer, config,
                        step=step, schedule=self.schedule, scaler=self.scaler, caption_ids=ids,
                    )
                except FloatingPointError as err:
                    raise self._stopped(str(err)) from None
                self.model.validate_inputs = False
                done, window_steps = step + 1, window_steps + 1
                self.skipped_in_a_row = self.skipped_in_a_row + 1 if out.skipped else 0
                if out.skipped:
                    self.skipped += 1
                else:
                    window_losses.append(out.loss)
                    last_loss = out.loss
                bar.update(1)

                periodic = done % config.log_every == 0 or done == config.steps  # the same steps on every rank
                if periodic:
                    data_skips = self.data_skips()  # (a collective under DDP: never on a rank's own condition)
                if periodic or out.skipped:
                    seconds = time.perf_counter() - window_start
                    busy += seconds
                    samples_per_s = window_steps * config.batch_size / max(seconds, 1e-9)
                    tau = self.tau()
                    entry = {
                        "step": done,
                        "loss": round(sum(window_losses) / len(window_losses), 6) if window_losses else None,
                        "tau": round(tau, 6),
                        "lr": out.lr,
                        "grad_norm": round(out.grad_norm, 6) if math.isfinite(out.grad_norm) else None,
                        "samples_seen": done * config.batch_size,
                        "samples_per_s": round(samples_per_s, 1),
                        "nonfinite_skips": self.skipped,
                        **data_skips,
                    }
                    if out.skipped:
                        entry["skipped"] = True
                    self.record(entry)
                    bar.set_postfix(
                        loss=entry["loss"], tau=f"{tau:.4f}", samples_s=f"{samples_per_s:.0f}",
                        **({"skipped_samples": entry["skipped_samples"]} if entry.get("skipped_samples") else {}), refresh=False,
                    )
                    window_losses, window_steps = [], 0
                    window_start = time.perf_counter()
                if config.max_nonfinite_steps and self.skipped_in_a_row >= config.max_nonfinite_steps:
                    kind = "loss" if not math.isfinite(out.loss) else "gradient"
                    raise self._stopped(
                        f"{self.skipped_in_a_row} non-finite steps in a row, the last at step {step} (non-finite {kind}, "
                        f"loss={out.loss}, grad_norm={out.grad_norm}): the run is diverging; likely cause: "
                        f"{_nonfinite_cause(config, out.lr)}. Lower 'lr' or raise 'warmup_steps' "
                        "('max_nonfinite_steps' sets how many in a row stop a run; 0 = never)"
                    )
                if done == config.steps:
                    break
                if config.eval_every and done % config.eval_every == 0 and self.info.is_main:
                    busy += time.perf_counter() - window_start
                    self.record({"step": done, "eval": _evaluate(self.model, self.tokenizer, self.tasks)})
                    window_start = time.perf_counter()  # evaluation is not training throughput
                if config.checkpoint_every and done % config.checkpoint_every == 0:
                    busy += time.perf_counter() - window_start
                    self.save(done)
                    window_start = time.perf_counter()
            ran = config.steps - self.start_step
            if ran > 0 or self.last_checkpoint is None:
                self.save(config.steps)  # the final checkpoint, before the final evaluation
            evaluation = _evaluate(self.model, self.tokenizer, self.tasks)
            final = {"step": config.steps, "eval": evaluation}
            if evaluation and final not in self.history:  # resuming a finished run: its final row is there
                self.record(final)
        finally:
            bar.close()
            self.batches.close()
            if self.log is not None:
                self.log.close()

        metrics = {
            "steps": config.steps,
            "loss": last_loss if math.isfinite(last_loss) else None,  # the last step's
            "tau": self.tau(),
            "nonfinite_skips": self.skipped,
            **self.data_skips(),
            "samples_seen": config.steps * config.batch_size,
            "steps_per_s": round(ran / busy, 3) if busy > 0 else None,  # this process's steps, without eval/saving
            "samples_per_s": round(ran * config.batch_size / busy, 1) if busy > 0 else None,
            "eval": evaluation,
        }
        self.model.validate_inputs = True
        self.model.eval()
        return TrainResult(
            model=self.model,
            tokenizer=self.tokenizer,
            history=self.history,
            metrics=metrics,
            config=config,
            checkpoint=self.last_checkpoint,
            siglip_head=self.siglip_head,
        )


# ==============================================================================================
# The command line: one flag per TrainConfig field
# ==============================================================================================


def _field_help() -> dict[str, str]:
    """The trailing comment of each field in TrainConfig's source: the flags' help texts."""
    helps: dict[str, str] = {}
    try:
        source = inspect.getsource(TrainConfig)
    except (OSError, TypeError):
        return helps
    for line in source.splitlines():
        match = re.match(r"^    (\w+): [^=]+=.*?#\s*(.+)$", line)
        if match:
            helps[match.group(1)] = match.group(2).replace("%", "%%")
    return helps


def _parse_optional(convert):
    def parse(text: str):
        if text.lower() in ("none", "null"):
            return None
        return convert(text)

    parse.__name__ = getattr(convert, "__name__", "value")
    return parse


def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("true", "yes", "1", "on"):
        return True
    if lowered in ("false", "no", "0", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _parse_mapping(text: str) -> dict:
    value = yaml.load(text, Loader=_YamlLoader)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a YAML/JSON mapping such as '{{layers: 2}}', got {text!r}")
    return value


def _parse_bool_or_str(text: str) -> bool | str:
    lowered = text.lower()
    if lowered in ("true", "yes", "on"):
        return True
    if lowered in ("false", "no", "off"):
        return False
    return text


def build_parser() -> argparse.ArgumentParser:
    """argparse generated from TrainConfig: `--config FILE`, then one flag per field."""
    parser = argparse.ArgumentParser(
        prog="python -m clipmini.train",
        description="Train a CLIP. Values: defaults < --config YAML < flags.",
    )
    parser.add_argument("--config", default=None, help="a YAML profile of TrainConfig fields (e.g. params/train-tiny.yaml)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")
    hints, helps = _field_types(), _field_help()
    for f in dataclasses.fields(TrainConfig):
        tp = hints[f.name]
        origin, args = get_origin(tp), get_args(tp)
        flags = [f"--{f.name}"] + ([f"--{f.name.replace('_', '-')}"] if "_" in f.name else [])
        kwargs: dict[str, Any] = {"default": argparse.SUPPRESS, "dest": f.name, "help": helps.get(f.name)}
        optional = origin in (Union, types.UnionType) and type(None) in args
        core = [a for a in args if a is not type(None)] if origin in (Union, types.UnionType) else [tp]
        if tp is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif set(core) == {bool, str}:
            kwargs["type"], kwargs["metavar"] = _parse_bool_or_str, "true|false|PATH"
        elif get_origin(core[0]) is Literal:
            kwargs["choices"] = list(get_args(core[0]))
        elif get_origin(core[0]) is list:
            kwargs["nargs"], kwargs["type"] = "*", get_args(core[0])[0]
        elif core[0] is dict:
            kwargs["type"], kwargs["metavar"] = _parse_mapping, "YAML"
        elif core[0] in (int, float, str):
            kwargs["type"] = _parse_optional(core[0]) if optional else core[0]
        else:  # pragma: no cover - a new field type must be taught to the CLI
            raise TypeError(f"no command-line parser for TrainConfig.{f.name}: {tp!r}")
        parser.add_argument(*flags, **kwargs)
    return parser


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    """The `TrainConfig` that `python -m clipmini.train ARGV` would run."""
    args = vars(build_parser().parse_args(argv))
    yaml_path = args.pop("config")
    args.pop("print_config")
    return TrainConfig.from_sources(yaml_path, args, source="command-line flags")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    namespace = parser.parse_args(argv)
    try:
        config = parse_args(argv)
    except (TypeError, ValueError, FileNotFoundError) as err:
        parser.error(str(err))
    if namespace.print_config:
        print(json.dumps(config.to_dict(), indent=2, sort_keys=True))
        return 0
    try:
        result = train(config)
    except (TrainSetupError, FloatingPointError) as err:  # no traceback: the message says what to do
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2 if isinstance(err, TrainSetupError) else 1
    if is_main_process():
        print(json.dumps({k: v for k, v in result.metrics.items()}, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
