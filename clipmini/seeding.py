"""One call that makes a run repeatable: the seeds of every RNG the book touches."""

from __future__ import annotations

import os
import random

import numpy as np
import torch


def seed_everything(seed: int, *, deterministic: bool = True) -> None:
    """Seed Python, NumPy and PyTorch (CPU and CUDA) and ask PyTorch for deterministic kernels.

    Chapters call this first. ``deterministic=True`` also selects deterministic cuDNN/cuBLAS paths on a
    GPU (at a small cost in speed); on the CPU the kernels PyTorch uses are deterministic already.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {type(seed).__name__} {seed!r}")
    if not 0 <= int(seed) < 2**32:
        raise ValueError(f"seed must be in [0, 2**32), got {seed}")
    seed = int(seed)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # seeds every CUDA device too
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True, warn_only=True)


def pick_device(device: str = "auto") -> torch.device:
    """Resolve a chapter's ``device`` parameter: ``"auto"`` is CUDA when present, else the CPU."""
    if not isinstance(device, str):
        raise TypeError(f"device must be a string such as 'auto', 'cpu' or 'cuda:0', got {device!r}")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"device {device!r} is not a device PyTorch knows ('auto', 'cpu', 'cuda', 'cuda:1', ...)") from err
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for CUDA, but this machine has no CUDA GPU; use 'auto' or 'cpu'")
    return resolved
