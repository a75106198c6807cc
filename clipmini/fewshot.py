"""How many labelled examples is a zero-shot classifier worth? Few-shot probe curves and their crossing.

The paper fits logistic-regression probes on k labelled examples per class of the same frozen image
features its zero-shot classifier reads, for k = 1, 2, 4, 8, 16, and asks where the probe's accuracy
reaches the zero-shot accuracy: the zero-shot classifier's "effective number of labelled examples per
class" (its Figures 6 and 7). `few_shot_curve` measures the probe at each k, averaged over seeded draws
of the k examples; `effective_shots` reads off where a curve first reaches a target accuracy,
interpolating linearly in log k between the measured shots.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from clipmini.eval import DEFAULT_L2_GRID, few_shot_probe

__all__ = ["FewShotCurve", "few_shot_curve", "Crossing", "effective_shots", "ONE_SHOT_L2"]

# The L2 strength of a probe that has no examples to validate one on (k = 1: one example per class).
# On standardized features, a moderate strength; the search of `linear_probe` takes over from k = 2.
ONE_SHOT_L2 = 1e-2


@dataclass(frozen=True)
class FewShotCurve:
    """Test accuracy of k-shot linear probes: `accuracy[i, d]` is draw d of `shots[i]` examples per class."""

    shots: tuple[int, ...]
    accuracy: Tensor  # [K, D]

    @property
    def mean(self) -> Tensor:
        """Mean over draws [K]."""
        return self.accuracy.mean(dim=1)

    @property
    def std(self) -> Tensor:
        """Spread over draws [K] (0 for a single draw)."""
        if self.accuracy.shape[1] < 2:
            return torch.zeros(self.accuracy.shape[0], dtype=self.accuracy.dtype)
        return self.accuracy.std(dim=1)

    def as_dict(self) -> dict[str, list[float]]:
        """JSON-ready: {"shots", "mean", "std"}."""
        return {"shots": list(self.shots), "mean": self.mean.tolist(), "std": self.std.tolist()}


def _check_shots(shots: Sequence[int]) -> tuple[int, ...]:
    shots = tuple(shots)
    if not shots:
        raise ValueError("shots is empty; pass the numbers of examples per class to try, e.g. (1, 2, 4, 8, 16)")
    if any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in shots):
        raise ValueError(f"shots must be positive ints (examples per class); got {shots!r}")
    if list(shots) != sorted(set(shots)):
        raise ValueError(f"shots must be strictly increasing; got {shots!r}")
    return shots


def few_shot_curve(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    shots: Sequence[int] = (1, 2, 4, 8, 16),
    *,
    draws: int = 3,
    seed: int = 0,
    l2_grid: Sequence[float] = DEFAULT_L2_GRID,
    one_shot_l2: float = ONE_SHOT_L2,
    max_iter: int = 200,
) -> FewShotCurve:
    """k-shot probes (`clipmini.eval.few_shot_probe`) for every k in `shots`, `draws` times each.

    Draw d samples its k examples per class from (train_features, train_labels) with seed
    `seed * draws + d`, so chapter seeds never share a draw; every probe is scored on the same test set.
    The L2 strength is searched on `l2_grid` (validated on the drawn examples) except at k = 1, which
    has nothing to validate on and uses `one_shot_l2`.
    """
    shots = _check_shots(shots)
    if isinstance(draws, bool) or not isinstance(draws, int) or draws < 1:
        raise ValueError(f"draws must be a positive int; got {draws!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int; got {seed!r}")
    accuracy = torch.empty(len(shots), draws, dtype=torch.float64)  # [K, D]
    for i, k in enumerate(shots):
        grid = (one_shot_l2,) if k == 1 else tuple(l2_grid)
        for d in range(draws):
            result = few_shot_probe(
                train_features, train_labels, k, test_features=test_features, test_labels=test_labels,
                seed=seed * draws + d, l2_grid=grid, max_iter=max_iter,
            )
            accuracy[i, d] = result["accuracy"]
    return FewShotCurve(shots=shots, accuracy=accuracy)


@dataclass(frozen=True)
class Crossing:
    """Where a k-shot curve reaches a target accuracy.

    `relation` is "=" when it crosses between two measured shots (k interpolated in log k), "<" when the
    fewest shots measured already reach it (k < shots[0]) and ">" when no measured k does (k > shots[-1]);
    `k` is then the bound.
    """

    k: float
    relation: str

    def __str__(self) -> str:
        if self.relation == "=":
            return f"{self.k:.1f}"
        return f"{self.relation} {self.k:g}"


def effective_shots(shots: Sequence[int], accuracy: Sequence[float] | Tensor, target: float) -> Crossing:
    """The number of examples per class at which `accuracy` (one value per k in `shots`) first reaches
    `target`, interpolated linearly in log k between the two measured shots around the crossing."""
    shots = _check_shots(shots)
    acc = torch.as_tensor(accuracy, dtype=torch.float64).flatten().tolist()
    if len(acc) != len(shots):
        raise ValueError(f"got {len(acc)} accuracies for {len(shots)} shots; pass one accuracy per k")
    if not all(math.isfinite(a) for a in acc) or not math.isfinite(target):
        raise ValueError("accuracies and target must be finite numbers")
    if acc[0] >= target:
        return Crossing(float(shots[0]), "<" if acc[0] > target else "=")
    for (k0, a0), (k1, a1) in zip(zip(shots, acc), zip(shots[1:], acc[1:])):
        if a1 >= target:  # a0 < target <= a1
            t = (target - a0) / (a1 - a0)
            return Crossing(math.exp(math.log(k0) + t * (math.log(k1) - math.log(k0))), "=")
    return Crossing(float(shots[-1]), ">")
