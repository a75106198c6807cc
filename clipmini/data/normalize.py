"""CLIP's pixel normalization: the per-channel mean and std OpenAI's models were trained with."""

from __future__ import annotations

import torch

CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)


def normalize(images: torch.Tensor) -> torch.Tensor:
    """[B, 3, R, R] RGB in [0, 1] -> model input."""
    _check(images)
    mean = torch.tensor(CLIP_MEAN, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return (images - mean) / std


def denormalize(images: torch.Tensor) -> torch.Tensor:
    """Model input -> RGB in [0, 1] for display ([B, 3, R, R] or one [3, R, R] image)."""
    _check(images)
    shape = (1, 3, 1, 1) if images.dim() == 4 else (3, 1, 1)
    mean = torch.tensor(CLIP_MEAN, dtype=images.dtype, device=images.device).view(shape)
    std = torch.tensor(CLIP_STD, dtype=images.dtype, device=images.device).view(shape)
    return (images * std + mean).clamp(0.0, 1.0)


def _check(images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor; got {type(images).__name__}")
    if images.dim() not in (3, 4) or images.shape[-3] != 3:
        raise ValueError(f"images must be [B, 3, R, R] or [3, R, R]; got {list(images.shape)}")
