"""The learned temperature τ, stored as ``logit_scale`` = ln(1/τ), and the helpers that keep it sane.

CLIP learns ln(1/τ) rather than τ so that the multiplier s = exp(logit_scale) stays positive and its
gradient is well scaled. The paper starts at τ = 0.07 and clips s at 100 (τ ≥ 0.01); like open_clip we
clamp the parameter in place right after each ``optimizer.step()``.
"""

from __future__ import annotations

import math
from typing import Union

import torch
from torch import nn

from clipmini.losses import siglip_loss

DEFAULT_TAU = 0.07  # the paper's (and SimCLR's) initial temperature
MAX_SCALE = 100.0  # the paper's clip on s = 1/τ, i.e. τ never below 0.01


def init_logit_scale(tau: float = DEFAULT_TAU) -> float:
    """The value ln(1/τ) a ``logit_scale`` parameter starts from (≈ 2.6593 for τ = 0.07)."""
    if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not math.isfinite(tau) or tau <= 0:
        raise ValueError(f"tau must be a positive finite temperature such as 0.07, got {tau!r}")
    return math.log(1.0 / tau)


def _logit_scale_of(model_or_param: Union[nn.Module, torch.Tensor]) -> torch.Tensor:
    """The ``logit_scale`` parameter of a model (DDP/compile wrappers unwrapped), or the tensor itself."""
    if isinstance(model_or_param, torch.Tensor):
        param = model_or_param
    elif isinstance(model_or_param, nn.Module):
        module = model_or_param
        while not hasattr(module, "logit_scale") and hasattr(module, "module"):  # DistributedDataParallel
            module = module.module
        if not hasattr(module, "logit_scale") and hasattr(module, "_orig_mod"):  # torch.compile
            module = module._orig_mod
        param = getattr(module, "logit_scale", None)
        if not isinstance(param, torch.Tensor):
            raise ValueError(f"{type(model_or_param).__name__} has no tensor attribute 'logit_scale' to clamp or fix")
    else:
        raise TypeError(
            f"expected an nn.Module with a logit_scale or the parameter itself, got {type(model_or_param).__name__}"
        )
    if param.numel() != 1:
        raise ValueError(f"logit_scale must be a scalar, got shape {list(param.shape)}")
    return param


@torch.no_grad()
def clamp_logit_scale_(model_or_param: Union[nn.Module, torch.Tensor], max_scale: float = MAX_SCALE) -> torch.Tensor:
    """Clamp ln(1/τ) in place to [0, ln max_scale], i.e. 1 ≤ s ≤ 100 and 0.01 ≤ τ ≤ 1. Call after each step.

    The lower bound 0 (τ ≤ 1) matches open_clip's training loop; the paper only states the upper clip.
    """
    if isinstance(max_scale, bool) or not isinstance(max_scale, (int, float)) or not (1 <= max_scale < math.inf):
        raise ValueError(f"max_scale is the largest multiplier s = 1/τ and must be finite and >= 1, got {max_scale!r}")
    param = _logit_scale_of(model_or_param)
    param.clamp_(0.0, math.log(max_scale))
    return param


@torch.no_grad()
def fix_temperature(model: nn.Module, tau: float) -> nn.Module:
    """The fixed-τ ablation: set ``logit_scale`` to ln(1/τ) and stop it learning (``requires_grad_(False)``).

    Call before building the optimizer; a parameter without gradient is skipped by AdamW (and its weight decay).
    """
    param = _logit_scale_of(model)
    param.fill_(init_logit_scale(tau))
    param.requires_grad_(False)
    return model


def temperature(model: Union[nn.Module, torch.Tensor]) -> float:
    """The current τ = exp(−logit_scale) as a Python float."""
    return math.exp(-float(_logit_scale_of(model).detach().reshape(())))


class SigLIPHead(nn.Module):
    """SigLIP's two learned scalars: ``logit_scale`` (as ln s, init ln 10) and ``logit_bias`` (init −10).

    The bias starts very negative because almost every pair in a batch is a negative: σ(−10) ≈ 4.5e-5
    matches that prior, so the first steps are not spent pushing N² − N logits down.
    """

    def __init__(self, init_scale: float = 10.0, init_bias: float = -10.0):
        super().__init__()
        if not math.isfinite(init_scale) or init_scale <= 0:
            raise ValueError(f"init_scale is the multiplier s and must be positive and finite, got {init_scale!r}")
        if not math.isfinite(init_bias):
            raise ValueError(f"init_bias must be finite, got {init_bias!r}")
        self.logit_scale = nn.Parameter(torch.tensor(math.log(init_scale)))  # ln s
        self.logit_bias = nn.Parameter(torch.tensor(float(init_bias)))  # b

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(s, b) ready for :func:`clipmini.losses.siglip_loss` (s already exponentiated)."""
        return self.logit_scale.exp(), self.logit_bias

    def loss(self, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        """SigLIP loss of L2-normalized features with this head's scale and bias."""
        scale, bias = self()
        return siglip_loss(image_features, text_features, scale, bias)


SigLIPParameters = SigLIPHead  # the same module under the name the SigLIP chapter may use
