"""Checkpoints that survive a crash: a folder per step, written aside and renamed into place.

A checkpoint of step 123 is the folder `ckpt-000123/` holding

- `model.safetensors`: the model's `state_dict`, with a CLIP's configuration in its metadata (so
  `clipmini.load` rebuilds the model from this one file),
- `optimizer.safetensors`: the optimizer's tensors (Adam moments, step counts),
- `state.json`: everything else (training config, step, optimizer structure, schedule, grad-scaler,
  the RNG states of Python, NumPy and PyTorch, the data position),
- optionally `tokenizer.json` and any `extra` tensors file,
- `MANIFEST.json`, written last: the sha256 and size of every other file.

The files are written into a hidden `.ckpt-000123.partial/` folder, each one atomically; the manifest
is written last, and only then is the folder renamed to `ckpt-000123/`. A run killed at any moment
therefore leaves the previous complete checkpoint untouched, and `latest_checkpoint` returns the newest
folder whose manifest checks out.
"""

from __future__ import annotations

import base64
import json
import os
import random
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from .config import CLIPConfig
from .fileio import atomic_write_bytes, atomic_write_json, fsync_dir, sha256_file

__all__ = [
    "CheckpointError",
    "Checkpoint",
    "checkpoint_name",
    "save_checkpoint",
    "load_checkpoint",
    "latest_checkpoint",
    "list_checkpoints",
    "verify_checkpoint",
    "clean_incomplete",
    "delete_checkpoints",
    "save_weights",
    "load_weights",
    "rng_state",
    "set_rng_state",
]

MANIFEST = "MANIFEST.json"
MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "state.json"
TOKENIZER_FILE = "tokenizer.json"
FORMAT_VERSION = 1
_NAME = re.compile(r"^ckpt-(\d{6,})$")


class CheckpointError(ValueError):
    """A checkpoint (or weights file) that is incomplete, corrupt, or does not fit the model."""


def checkpoint_name(step: int) -> str:
    return f"ckpt-{step:06d}"


# ----------------------------------------------------------------------------------------------
# Weights: one safetensors file


def _to_storable(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors wants contiguous CPU tensors (no copy for those that already are)
    return {k: v.detach().cpu().contiguous() for k, v in tensors.items()}


def _write_safetensors(path: Path, tensors: Mapping[str, torch.Tensor], metadata: dict | None = None) -> None:
    """safetensors' own writer into a temporary file beside `path`, fsync, then rename over `path`."""
    from safetensors.torch import save as safetensors_bytes

    atomic_write_bytes(path, safetensors_bytes(_to_storable(tensors), metadata=metadata))


def _weights_metadata(model: nn.Module | Mapping) -> dict[str, str]:
    """safetensors metadata of a model's weights: a CLIP's configuration too, as `clipmini.save` writes it."""
    from .model import config_metadata

    config = getattr(model, "config", None)
    return {"format": "pt", **(config_metadata(config) if isinstance(config, CLIPConfig) else {})}


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        return load_file(str(path))
    except Exception as err:  # safetensors raises its own error types for torn files
        raise CheckpointError(
            f"{path} is truncated or corrupt and cannot be read as safetensors ({type(err).__name__}: {err})"
        ) from err


def save_weights(path: str | os.PathLike, model: nn.Module | Mapping[str, torch.Tensor]) -> Path:
    """Write a model's `state_dict` (or a dict of tensors) to a safetensors file, atomically."""
    path = Path(path)
    state = model.state_dict() if isinstance(model, nn.Module) else model
    _write_safetensors(path, state, metadata=_weights_metadata(model))
    return path


def _check_fits(path: Path, tensors: Mapping[str, torch.Tensor], model: nn.Module) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = [
        f"{k}: file {list(tensors[k].shape)} vs model {list(expected[k].shape)}"
        for k in expected
        if k in tensors and tensors[k].shape != expected[k].shape
    ]
    if missing or unexpected or wrong:

        def show(items: list[str]) -> str:
            return ", ".join(items[:5]) + (f", ... ({len(items)} in all)" if len(items) > 5 else "")

        problems = []
        if wrong:
            problems.append(f"shape mismatch for {show(wrong)}")
        if missing:
            problems.append(f"missing keys {show(missing)}")
        if unexpected:
            problems.append(f"unexpected keys {show(unexpected)}")
        raise CheckpointError(
            f"{path} holds weights of a different architecture than this model: " + "; ".join(problems)
        )


def load_weights(path: str | os.PathLike, model: nn.Module) -> nn.Module:
    """Load a safetensors `state_dict` into `model` in place; a clear error if it does not fit."""
    path = Path(path)
    tensors = _read_safetensors(path)
    _check_fits(path, tensors, model)
    model.load_state_dict(tensors, strict=True)
    return model


# ----------------------------------------------------------------------------------------------
# Optimizer state: tensors to safetensors, structure to JSON


def _json_safe(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if torch.is_tensor(value):
        raise TypeError("tensors belong in the safetensors file, not in JSON")
    return value


def _split_optimizer_state(state_dict: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors: dict[str, torch.Tensor] = {}
    state: dict[str, dict] = {}
    for pid, param_state in state_dict["state"].items():
        entry = {}
        for key, value in param_state.items():
            if torch.is_tensor(value):
                name = f"state.{pid}.{key}"
                tensors[name] = value
                entry[key] = {"__tensor__": name}
            else:
                entry[key] = _json_safe(value)
        state[str(pid)] = entry
    structure = {"state": state, "param_groups": _json_safe(state_dict["param_groups"])}
    return tensors, structure


def _join_optimizer_state(tensors: dict[str, torch.Tensor], structure: dict, optimizer: torch.optim.Optimizer) -> dict:
    state = {}
    for pid, entry in structure["state"].items():
        state[int(pid)] = {
            k: tensors[v["__tensor__"]] if isinstance(v, dict) and "__tensor__" in v else v for k, v in entry.items()
        }
    groups = []
    for saved, current in zip(structure["param_groups"], optimizer.param_groups):
        group = dict(saved)
        for key, value in current.items():  # JSON turned tuples (betas) into lists: turn them back
            if isinstance(value, tuple) and isinstance(group.get(key), list):
                group[key] = tuple(group[key])
        groups.append(group)
    return {"state": state, "param_groups": groups}


# ----------------------------------------------------------------------------------------------
# RNG states


def rng_state() -> dict:
    """The states of Python's, NumPy's and PyTorch's global RNGs, as JSON-ready values."""
    py_version, py_state, py_gauss = random.getstate()
    np_state = np.random.get_state()
    state = {
        "python": [py_version, list(py_state), py_gauss],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode("ascii"),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [base64.b64encode(s.numpy().tobytes()).decode("ascii") for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict) -> None:
    """Restore what `rng_state` returned."""
    version, py_state, gauss = state["python"]
    random.setstate((version, tuple(py_state), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))

    def tensor(b64: str) -> torch.Tensor:
        return torch.frombuffer(bytearray(base64.b64decode(b64)), dtype=torch.uint8)

    torch.set_rng_state(tensor(state["torch"]))
    if "cuda" in state and torch.cuda.is_available():
        saved = state["cuda"]
        if len(saved) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([tensor(s) for s in saved])


# ----------------------------------------------------------------------------------------------
# Checkpoint folders


@dataclass
class Checkpoint:
    """What `load_checkpoint` read: the folder, its step and the JSON run state."""

    path: Path
    step: int
    state: dict = field(repr=False)

    @property
    def config(self) -> dict | None:
        return self.state.get("config")

    @property
    def schedule(self) -> dict | None:
        return self.state.get("schedule")

    @property
    def extra(self) -> dict:
        return self.state.get("extra", {})


def _step_of(path: Path) -> int | None:
    match = _NAME.match(path.name)
    return int(match.group(1)) if match else None


def save_checkpoint(
    directory: str | os.PathLike,
    step: int,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scaler: Any = None,
    schedule: dict | None = None,
    config: dict | None = None,
    tokenizer: Any = None,
    extra: dict | None = None,
    keep: int | None = None,
    modules: Mapping[str, nn.Module] | None = None,
) -> Path:
    """Write `ckpt-{step:06d}/` under `directory` crash-safely; keep the newest `keep` (None = all).

    Rotation counts only checkpoints up to `step`: the one just written is never deleted, and neither
    is a later step's folder (e.g. of the run this one resumed from an earlier checkpoint).

    `step` counts the optimizer steps done (and is the index of the next batch: data positions are
    step indices). `config` and `extra` must be JSON-ready; `tokenizer` needs a `.save(path)`;
    each of `modules` (e.g. a SigLIP head) is stored as `{name}.safetensors`.
    """
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"step must be an int >= 0; got {step!r}")
    if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or keep < 1):
        raise ValueError(f"keep must be an int >= 1 or None; got {keep!r}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    name = checkpoint_name(step)
    final = directory / name
    partial = directory / f".{name}.partial"
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir()

    _write_safetensors(partial / MODEL_FILE, model.state_dict(), metadata=_weights_metadata(model))
    for name_, module in (modules or {}).items():
        if name_ in ("model", "optimizer"):
            raise ValueError(f"module name {name_!r} is reserved")
        _write_safetensors(partial / f"{name_}.safetensors", module.state_dict(), metadata=_weights_metadata(module))
    state: dict[str, Any] = {
        "format": FORMAT_VERSION,
        "step": step,
        "data_position": step,  # batches are random access by step index
        "config": _json_safe(config) if config is not None else None,
        "schedule": _json_safe(schedule) if schedule is not None else None,
        "rng": rng_state(),
        "extra": _json_safe(extra or {}),
    }
    if optimizer is not None:
        tensors, structure = _split_optimizer_state(optimizer.state_dict())
        _write_safetensors(partial / OPTIMIZER_FILE, tensors)
        state["optimizer"] = structure
    if scaler is not None:
        state["scaler"] = _json_safe(scaler.state_dict())
    if tokenizer is not None:
        tokenizer.save(partial / TOKENIZER_FILE)
    atomic_write_json(partial / STATE_FILE, state)

    files = sorted(p.name for p in partial.iterdir() if p.is_file() and not p.name.startswith("."))
    manifest = {
        "format": FORMAT_VERSION,
        "step": step,
        "files": {f: {"bytes": (partial / f).stat().st_size, "sha256": sha256_file(partial / f)} for f in files},
    }
    atomic_write_json(partial / MANIFEST, manifest)  # last: its presence marks the folder complete
    fsync_dir(partial)
    if final.exists():  # re-saving a step (e.g. the final step of a resumed run): replace it
        shutil.rmtree(final)
    os.replace(partial, final)
    fsync_dir(directory)

    if keep is not None:
        older = [p for p in list_checkpoints(directory, verify=False) if _step_of(p) <= step]  # ends with `final`
        for old in older[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def verify_checkpoint(path: str | os.PathLike) -> dict:
    """Check a checkpoint folder against its manifest; return the manifest or raise CheckpointError."""
    path = Path(path)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise CheckpointError(f"{path} is incomplete: it has no {MANIFEST} (the write was interrupted)")
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{manifest_path} is corrupt: {err}") from err
    for required in (MODEL_FILE, STATE_FILE):
        if required not in files:
            raise CheckpointError(f"{manifest_path} does not list {required}")
    for name, info in files.items():
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"{file} is missing (listed in {manifest_path})")
        size = file.stat().st_size
        if size != info["bytes"]:
            raise CheckpointError(f"{file} has {size} bytes but its manifest says {info['bytes']}: the file is truncated or was changed")
        if sha256_file(file) != info["sha256"]:
            raise CheckpointError(f"{file} does not match the sha256 in its manifest: the file is corrupt")
    return manifest


def list_checkpoints(directory: str | os.PathLike, *, verify: bool = True) -> list[Path]:
    """The complete checkpoint folders under `directory`, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for path in directory.iterdir():
        step = _step_of(path)
        if step is None or not path.is_dir():
            continue
        if verify:
            try:
                verify_checkpoint(path)
            except CheckpointError:
                continue
        elif not (path / MANIFEST).is_file():
            continue
        found.append((step, path))
    return [p for _, p in sorted(found)]


def _checkpoint_folders(directory: Path) -> list[tuple[Path, bool]]:
    """(folder, is a writer's hidden `.ckpt-*.partial` work folder) for every checkpoint folder under `directory`."""
    if not directory.is_dir():
        return []
    found = []
    for path in sorted(directory.iterdir()):
        partial = path.name.startswith(".ckpt-") and path.name.endswith(".partial")
        if path.is_dir() and (partial or _step_of(path) is not None):
            found.append((path, partial))
    return found


def clean_incomplete(directory: str | os.PathLike, *, partial: bool = True) -> list[Path]:
    """Delete the checkpoint folders under `directory` that fail verification; return them.

    With `partial=True` also delete leftover `.ckpt-*.partial` folders of an interrupted writer; only
    the process that owns `directory` (the trainer) should ask for that.
    """
    removed = []
    for path, is_partial in _checkpoint_folders(Path(directory)):
        stale = partial and is_partial
        if not is_partial:
            try:
                verify_checkpoint(path)
            except CheckpointError:
                stale = True
        if stale:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def delete_checkpoints(directory: str | os.PathLike) -> list[Path]:
    """Delete every checkpoint folder under `directory`, complete or not (a run replaced on purpose)."""
    removed = []
    for path, _ in _checkpoint_folders(Path(directory)):
        shutil.rmtree(path)
        removed.append(path)
    return removed


def latest_checkpoint(directory: str | os.PathLike, *, cleanup: bool = True) -> Path | None:
    """The newest COMPLETE checkpoint under `directory` (None if there is none).

    Folders that fail their manifest check are ignored and, with `cleanup=True`, deleted.
    """
    if cleanup:
        clean_incomplete(directory, partial=False)
    found = list_checkpoints(directory, verify=True)
    return found[-1] if found else None


def load_checkpoint(
    path: str | os.PathLike,
    *,
    model: nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    scaler: Any = None,
    modules: Mapping[str, nn.Module] | None = None,
    restore_rng: bool = True,
    verify: bool = True,
) -> Checkpoint:
    """Verify a checkpoint folder (sha256 of every file) and load it into the given objects (each optional)."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a checkpoint folder (expected ckpt-NNNNNN/ with a {MANIFEST})")
    if verify:
        verify_checkpoint(path)
    try:
        state = json.loads((path / STATE_FILE).read_text())
    except ValueError as err:
        raise CheckpointError(f"{path / STATE_FILE} is corrupt: {err}") from err
    if state.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{path / STATE_FILE} has format {state.get('format')!r}; this clipmini reads {FORMAT_VERSION}")
    if model is not None:
        load_weights(path / MODEL_FILE, model)
    for name, module in (modules or {}).items():
        load_weights(path / f"{name}.safetensors", module)
    if optimizer is not None:
        if "optimizer" not in state:
            raise CheckpointError(f"{path} holds no optimizer state")
        tensors = _read_safetensors(path / OPTIMIZER_FILE)
        structure = state["optimizer"]
        if len(structure["param_groups"]) != len(optimizer.param_groups) or any(
            len(s["params"]) != len(g["params"]) for s, g in zip(structure["param_groups"], optimizer.param_groups)
        ):
            raise CheckpointError(
                f"{path / OPTIMIZER_FILE}: the optimizer's parameter groups "
                f"({[len(s['params']) for s in structure['param_groups']]} parameters) do not match this "
                f"optimizer's ({[len(g['params']) for g in optimizer.param_groups]})"
            )
        optimizer.load_state_dict(_join_optimizer_state(tensors, structure, optimizer))
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    if restore_rng:
        set_rng_state(state["rng"])
    return Checkpoint(path=path, step=int(state["step"]), state=state)
