"""How far apart matched and unmatched pairs sit, and which temperature those distances call for.

The symmetric InfoNCE loss sees cosines only through the logits s·cos, with s = 1/τ. Three views of
that product, all on features that are already L2-normalized:

* :func:`pair_cosines` and :func:`similarity_margin`: the cosines of the matched pairs (the diagonal)
  and of the unmatched ones, and the gap between their means;
* :func:`scale_gradient` and :func:`best_temperature`: on fixed features the loss is convex in s, so
  the sign of dL/ds says which way a learned τ is pushed, and its zero is the τ these features call for;
* :func:`infonce_floor`: the lowest loss any N pairs can reach at a given τ (perfectly separated,
  evenly spread features), which is far above zero when τ is large.
"""

from __future__ import annotations

import math

import torch

from clipmini.losses import _check_features, _check_scale

__all__ = ["pair_cosines", "similarity_margin", "scale_gradient", "best_temperature", "infonce_floor"]


def _cosines(image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
    """[N, N] cosines in float64, after the same input checks as the loss (shape, dtype, finite values)."""
    _check_features(image_features, text_features)
    if image_features.shape[0] < 2:
        raise ValueError(f"need at least 2 pairs to have unmatched ones; got N = {image_features.shape[0]}")
    return image_features.detach().double() @ text_features.detach().double().T  # [N, N]


def pair_cosines(image_features: torch.Tensor, text_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(matched [N], unmatched [N·(N−1)]) in float64: the cosines of image i with caption i, and with every other caption."""
    cosines = _cosines(image_features, text_features)  # [N, N]
    on_diagonal = torch.eye(cosines.shape[0], dtype=torch.bool, device=cosines.device)  # [N, N]
    return cosines[on_diagonal], cosines[~on_diagonal]  # [N], [N·(N−1)]


def similarity_margin(image_features: torch.Tensor, text_features: torch.Tensor) -> float:
    """Mean cosine of the matched pairs minus the mean cosine of the unmatched ones."""
    matched, unmatched = pair_cosines(image_features, text_features)
    return (matched.mean() - unmatched.mean()).item()


def _gradient(cosines: torch.Tensor, scale: float) -> float:
    logits = scale * cosines  # [N, N]
    rows = (logits.softmax(dim=1) * cosines).sum(dim=1)  # [N] softmax-weighted cosine of each row
    columns = (logits.softmax(dim=0) * cosines).sum(dim=0)  # [N] ... and of each column
    return ((rows + columns) / 2 - cosines.diagonal()).mean().item()


def scale_gradient(image_features: torch.Tensor, text_features: torch.Tensor, scale: float) -> float:
    """dL/ds of the symmetric InfoNCE (`clip_loss`) at multiplier s = 1/τ, with the features held fixed.

    It equals the softmax-weighted mean cosine minus the matched cosine, averaged over rows and columns:
    negative when the matched pairs already stand out (a sharper softmax helps, so s grows and τ falls).
    """
    scale = float(_check_scale(scale, "scale", positive=True))
    return _gradient(_cosines(image_features, text_features), scale)


def best_temperature(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    *,
    min_tau: float = 1e-3,
    max_tau: float = 10.0,
    iterations: int = 40,
) -> float:
    """The τ in [min_tau, max_tau] that minimizes the symmetric InfoNCE of these fixed features.

    The loss is convex in s = 1/τ (a log-sum-exp of linear functions of s, minus a linear one), so its
    derivative rises with s and a bisection on the derivative's sign (in ln s) finds the minimum. A
    bound comes back when the minimum lies beyond it.
    """
    if not (0 < min_tau < max_tau) or not math.isfinite(max_tau):
        raise ValueError(f"need 0 < min_tau < max_tau < inf; got min_tau={min_tau!r}, max_tau={max_tau!r}")
    cosines = _cosines(image_features, text_features)  # [N, N]
    low, high = math.log(1 / max_tau), math.log(1 / min_tau)  # ln s
    if _gradient(cosines, math.exp(high)) <= 0:
        return min_tau  # still falling at the sharpest scale allowed
    if _gradient(cosines, math.exp(low)) >= 0:
        return max_tau  # already rising at the softest scale allowed
    for _ in range(iterations):
        middle = (low + high) / 2
        if _gradient(cosines, math.exp(middle)) < 0:
            low = middle
        else:
            high = middle
    return math.exp(-(low + high) / 2)


def infonce_floor(n: int, tau: float) -> float:
    """The lowest symmetric InfoNCE that N pairs can reach at temperature τ.

    Reached when every matched cosine is 1 and every unmatched one is −1/(N−1), the most that N unit
    vectors can spread out (a regular simplex; it needs an embedding of at least N − 1 dimensions):
    each row's cross-entropy is then ln(1 + (N−1)·exp(−N / ((N−1)·τ))).
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"n is the number of pairs in the batch and must be an int >= 2, got {n!r}")
    if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not math.isfinite(tau) or tau <= 0:
        raise ValueError(f"tau must be a positive finite temperature such as 0.07, got {tau!r}")
    return math.log1p((n - 1) * math.exp(-n / ((n - 1) * tau)))
