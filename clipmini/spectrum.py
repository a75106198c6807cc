"""How spread out a set of embeddings is: effective rank and uniformity.

A contrastive loss keeps features apart only where it pushes them. These measures say how much of
the embedding space a tower actually uses. `effective_rank` (Roy & Vetterli, 2007) is exp of the
entropy of the normalized singular values: E for features spread evenly over E directions, 1 for
features on one line. `uniformity` is the spread half of Wang & Isola's (2020) reading of a
contrastive objective: how evenly the features cover the unit sphere.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["singular_spectrum", "effective_rank", "uniformity"]


def _check_matrix(features: torch.Tensor, name: str, min_rows: int = 1) -> torch.Tensor:
    if not isinstance(features, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor [N, E]; got {type(features).__name__}")
    if features.dim() != 2:
        raise ValueError(f"{name} must be a matrix [N, E] of N feature vectors; got shape {list(features.shape)}")
    if features.shape[0] < min_rows or features.shape[1] < 1:
        raise ValueError(f"{name} needs at least {min_rows} rows and 1 column; got shape {list(features.shape)}")
    if not torch.isfinite(features).all():
        raise ValueError(f"{name} holds NaN or inf values")
    return features.detach().double()  # float64: the spectrum of small, nearly collapsed sets stays exact


def singular_spectrum(features: torch.Tensor, *, normalize: bool = True, center: bool = True) -> torch.Tensor:
    """The singular values of `features` [N, E] as a distribution p (sums to 1), largest first.

    `normalize` L2-normalizes each row first (the sphere the loss works on); `center` removes the
    mean, so that a cloud sitting around one common direction is not counted as one used direction.
    Values within round-off of the input's precision count as 0.
    """
    x = _check_matrix(features, "features")
    if normalize:
        x = F.normalize(x, dim=-1)
    # Singular values below the input precision's round-off are zeros (as in torch.linalg.matrix_rank)
    eps = torch.finfo(features.dtype if features.is_floating_point() else torch.float32).eps
    tolerance = eps * max(x.shape) * float(x.norm())
    if center:
        x = x - x.mean(dim=0, keepdim=True)  # [N, E]
    sigma = torch.linalg.svdvals(x)  # [min(N, E)]
    sigma = torch.where(sigma > tolerance, sigma, torch.zeros_like(sigma))
    total = sigma.sum()
    if total <= 0:
        return torch.zeros_like(sigma)  # every row identical: no direction is used
    return sigma / total


def effective_rank(features: torch.Tensor, *, normalize: bool = True, center: bool = True) -> float:
    """exp(entropy of the normalized singular values): between 1 (a line) and min(N, E) (even spread).

    A fully collapsed set (every row the same after `center`) has effective rank 0.
    """
    p = singular_spectrum(features, normalize=normalize, center=center)
    if p.sum() == 0:
        return 0.0
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def uniformity(features: torch.Tensor, t: float = 2.0) -> float:
    """log of the mean Gaussian potential ``exp(-t * ||x_i - x_j||^2)`` over pairs i ≠ j of L2-normalized rows.

    0 when every row is the same point; more negative the more evenly the rows cover the sphere.
    """
    x = F.normalize(_check_matrix(features, "features", min_rows=2), dim=-1)
    if not t > 0:
        raise ValueError(f"t must be > 0 (the potential's sharpness; Wang & Isola use 2); got {t}")
    n = x.shape[0]
    squared = (2 - 2 * x @ x.t()).clamp_min(0)  # [N, N]: |x_i - x_j|² of unit vectors
    off_diagonal = squared[~torch.eye(n, dtype=torch.bool, device=x.device)]  # [N·(N-1)]
    return float(torch.logsumexp(-t * off_diagonal, dim=0)) - math.log(off_diagonal.numel())

