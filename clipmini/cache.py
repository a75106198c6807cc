"""Train once, reuse everywhere: trained models cached under a key of their config and of the code.

Several chapters need "a trained tiny CLIP". Training is deterministic, so the same `TrainConfig` run by
the same code gives the same weights; `load_or_train` trains on the first call and loads the stored
result on the next ones. The key hashes the config's canonical JSON (minus the fields that only change
where and how a run reports) and the source of every module that decides the weights, so editing the
model or the loop invalidates the cache by itself. Entries are written aside and renamed into place,
and verified (sha256) on load; a damaged entry (or anything else in its place) is removed and trained
again, never loaded, and the work folders of writers that were killed are cleaned away.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import re
import shutil
import uuid
import warnings
from pathlib import Path

import torch
from torch import nn

from .checkpoint import TOKENIZER_FILE, CheckpointError, load_checkpoint, save_checkpoint
from .fileio import fsync_dir
from .train import DistInfo, TrainConfig, _resolve_device, make_model, result_fields, train

__all__ = ["default_cache_dir", "code_fingerprint", "cache_key", "cache_entry", "load_or_train"]

CACHE_ENV = "CLIPMINI_CACHE"

# The modules (or packages) whose source decides a trained model's weights and its metrics.
_CODE_MODULES = (
    "config", "towers", "model", "losses", "temperature", "tokenizer", "data",
    "train", "schedule", "seeding", "zeroshot", "eval", "prompts",
)


def default_cache_dir() -> Path:
    """`$CLIPMINI_CACHE`, else `$XDG_CACHE_HOME/clipmini/models`, else `~/.cache/clipmini/models`."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = Path(os.environ["XDG_CACHE_HOME"]) if os.environ.get("XDG_CACHE_HOME") else Path.home() / ".cache"
    return base / "clipmini" / "models"


@functools.lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """sha256 of the source files of clipmini's model-defining and training modules.

    Computed once per process: the code that runs is the code that was imported, even if the files
    change on disk afterwards.
    """
    package = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for name in _CODE_MODULES:
        target = package / name
        files = sorted(target.rglob("*.py")) if target.is_dir() else [package / f"{name}.py"]
        for file in files:
            if file.is_file():
                digest.update(file.relative_to(package).as_posix().encode() + b"\0")
                digest.update(file.read_bytes() + b"\0")
    return digest.hexdigest()


def _key_payload(config: TrainConfig) -> dict:
    values = result_fields(config)  # canonical, without the fields that only change where and how a run reports
    values["device"] = _resolve_device(config.device, DistInfo()).type  # "auto" means different things on different machines
    return {"config": values, "code": code_fingerprint(), "torch": torch.__version__}


def cache_key(config: TrainConfig) -> str:
    """The hex key of `config`'s trained model (config, resolved device type, code, torch version)."""
    payload = json.dumps(_key_payload(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def cache_entry(config: TrainConfig, cache_dir: str | os.PathLike | None = None) -> Path:
    """The folder where `config`'s trained model is (or would be) stored."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    readable = "".join(c if c.isalnum() or c in "-_" else "-" for c in config.model)
    return root / f"{readable}-{config.steps}steps-{cache_key(config)}"


def _load(entry: Path, config: TrainConfig):
    from .tokenizer import Tokenizer

    model = make_model(config)
    checkpoint = load_checkpoint(entry, model=model, restore_rng=False)  # verifies every file's sha256
    tokenizer = Tokenizer.load(entry / TOKENIZER_FILE)
    extra = checkpoint.extra
    if extra.get("key") != cache_key(config):
        raise CheckpointError(f"{entry} holds key {extra.get('key')!r}, not this config's")
    metrics = dict(extra["metrics"])
    metrics["history"] = extra.get("history", [])
    model.eval()
    return model, tokenizer, metrics


_WORK = re.compile(r"^\..+\.tmp-(?P<pid>\d+)-[0-9a-f]{8}$")  # a writer's work folder: .<entry>.tmp-<pid>-<hex>


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, and belongs to another user
        return True
    return True


def _clean_stale_work(root: Path) -> list[Path]:
    """Delete the work folders under `root` whose writer no longer runs (it was killed mid-store)."""
    removed = []
    if root.is_dir():
        for path in root.iterdir():
            match = _WORK.match(path.name)
            if match and path.is_dir() and not _running(int(match["pid"])):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
    return removed


def _discard(entry: Path) -> None:
    """Remove an unusable entry, whatever stands there (a folder, a file, a link); say so if it cannot be."""
    try:
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    except FileNotFoundError:
        pass  # another process removed it first
    except OSError as err:
        raise OSError(
            f"the cached model {entry} cannot be used and cannot be removed ({err}); delete it by hand, "
            f"or set {CACHE_ENV} to another folder"
        ) from err


def load_or_train(config: TrainConfig | dict, cache_dir: str | os.PathLike | None = None):
    """`(model, tokenizer, metrics)` of `config`'s run: from the cache if present, else trained and stored.

    The model comes back on the CPU in eval mode; `metrics` is `train`'s final metrics plus `history`.
    """
    if isinstance(config, dict):
        config = TrainConfig.from_dict(config)
    entry = cache_entry(config, cache_dir)
    _clean_stale_work(entry.parent)
    if entry.exists() or entry.is_symlink():
        try:
            return _load(entry, config)
        except (CheckpointError, ValueError, KeyError, OSError) as err:
            warnings.warn(f"the cached model {entry} is damaged ({err}); training it again", stacklevel=2)
            _discard(entry)

    run_config = dataclasses.replace(config, out_dir=None, resume=False, checkpoint_every=0)
    result = train(run_config)
    model: nn.Module = result.model.to("cpu")
    metrics = dict(result.metrics)

    entry.parent.mkdir(parents=True, exist_ok=True)
    work = entry.parent / f".{entry.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"  # see _WORK
    try:
        written = save_checkpoint(
            work,
            config.steps,
            model=model,
            config=config.to_dict(),
            tokenizer=result.tokenizer,
            extra={"key": cache_key(config), "metrics": metrics, "history": result.history},
        )
        try:
            os.replace(written, entry)  # atomic; fails if another process stored the entry meanwhile
            fsync_dir(entry.parent)
        except OSError:
            if not entry.exists():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    metrics["history"] = result.history
    model.eval()
    return model, result.tokenizer, metrics
