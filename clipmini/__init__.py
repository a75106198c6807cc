"""clipmini: OpenAI's CLIP, small enough to read.

The names below load lazily (PEP 562), so ``import clipmini`` stays cheap: importing the tokenizer does
not pull in the towers, and the towers do not pull in the data or the trainer.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it (each concept is defined once, in its own module)
_EXPORTS = {
    # towers, configs and checkpoints
    "CLIP": "clipmini.model",
    "build_model": "clipmini.model",
    "create_model": "clipmini.model",
    "load": "clipmini.model",
    "CLIPConfig": "clipmini.config",
    "VisionConfig": "clipmini.config",
    "TextConfig": "clipmini.config",
    "MODEL_CONFIGS": "clipmini.config",
    "get_config": "clipmini.config",
    # tokenizer
    "Tokenizer": "clipmini.tokenizer",
    "tokenize": "clipmini.tokenizer",
    # objectives and temperature
    "clip_loss": "clipmini.losses",
    "siglip_loss": "clipmini.losses",
    "clamp_logit_scale_": "clipmini.temperature",
    "fix_temperature": "clipmini.temperature",
    "temperature": "clipmini.temperature",
    # zero-shot and evaluation
    "build_classifier": "clipmini.zeroshot",
    "PrototypeCache": "clipmini.zeroshot",
    "evaluate_zeroshot": "clipmini.zeroshot",
    "retrieval_metrics": "clipmini.eval",
    "linear_probe": "clipmini.eval",
    "few_shot_probe": "clipmini.eval",
    # training
    "TrainConfig": "clipmini.train",
    "train": "clipmini.train",
    "load_or_train": "clipmini.cache",
    # machinery
    "seed_everything": "clipmini.seeding",
    "pick_device": "clipmini.seeding",
    "save_results": "clipmini.jobs",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    try:  # submodules: clipmini.data, clipmini.plots, ...
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as err:
        if err.name != f"{__name__}.{name}":
            raise
    raise AttributeError(f"module 'clipmini' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
