"""The learning-rate schedule of the paper: a linear warmup, then a cosine decay to zero.

The schedule is a pure function of the step index, so a resumed run needs nothing but the step to
continue it exactly; `CosineSchedule.state_dict()` is stored in checkpoints only to be checked.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

__all__ = ["cosine_lr", "CosineSchedule"]


def cosine_lr(step: int, *, base_lr: float, warmup_steps: int, total_steps: int, min_lr: float = 0.0) -> float:
    """The learning rate for the optimizer step with 0-based index `step`.

    Warmup: `base_lr * (step + 1) / warmup_steps` for the first `warmup_steps` steps (so the very first
    step already moves). Then half a cosine from `base_lr` down to `min_lr`, reached after the last step.
    """
    if step < 0:
        raise ValueError(f"step must be >= 0; got {step}")
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    decay_steps = total_steps - warmup_steps
    if decay_steps <= 0:  # all warmup, no decay: hold the peak
        return base_lr
    progress = min(1.0, (step - warmup_steps) / decay_steps)  # 0 at the first decay step
    return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class CosineSchedule:
    """`cosine_lr` bound to a run's numbers; `apply(optimizer, step)` sets every group's `lr`."""

    base_lr: float
    warmup_steps: int
    total_steps: int
    min_lr: float = 0.0  # the paper decays to zero

    def __post_init__(self) -> None:
        if not (isinstance(self.base_lr, (int, float)) and math.isfinite(self.base_lr) and self.base_lr >= 0):
            raise ValueError(f"base_lr must be a finite number >= 0; got {self.base_lr!r}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0; got {self.warmup_steps}")
        if self.total_steps < 1:
            raise ValueError(f"total_steps must be >= 1; got {self.total_steps}")

    def __call__(self, step: int) -> float:
        return cosine_lr(
            step,
            base_lr=self.base_lr,
            warmup_steps=self.warmup_steps,
            total_steps=self.total_steps,
            min_lr=self.min_lr,
        )

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        """Set the learning rate of every parameter group for step `step`; return it."""
        lr = self(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr

    def state_dict(self) -> dict:
        return {"name": "cosine", **asdict(self)}

    @classmethod
    def from_state_dict(cls, state: dict) -> "CosineSchedule":
        state = dict(state)
        name = state.pop("name", "cosine")
        if name != "cosine":
            raise ValueError(f"not a cosine schedule state: name={name!r}")
        return cls(**state)
