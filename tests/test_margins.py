"""Similarity margins, the loss's derivative in the scale, the best temperature and the InfoNCE floor."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from clipmini.losses import clip_loss
from clipmini.margins import best_temperature, infonce_floor, pair_cosines, scale_gradient, similarity_margin


def _features(n=12, e=16, noise=0.5, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = F.normalize(torch.randn(n, e, generator=g), dim=-1)
    texts = F.normalize(images + noise * torch.randn(n, e, generator=g), dim=-1)
    return images, texts


def _simplex(n):
    """N unit vectors in R^N with every pairwise cosine −1/(N−1)."""
    return F.normalize(torch.eye(n, dtype=torch.float64) - 1.0 / n, dim=-1)


def test_pair_cosines_split_the_diagonal_from_the_rest():
    images, texts = _features(n=5)
    matched, unmatched = pair_cosines(images, texts)
    cosines = images.double() @ texts.double().T
    assert matched.shape == (5,) and unmatched.shape == (20,)
    assert torch.allclose(matched, cosines.diag())
    assert torch.allclose(unmatched.sort().values, cosines[~torch.eye(5, dtype=torch.bool)].sort().values)
    assert similarity_margin(images, texts) == pytest.approx((matched.mean() - unmatched.mean()).item())


def test_identical_features_have_matched_cosines_of_one():
    images, _ = _features(n=6)
    matched, _ = pair_cosines(images, images)
    assert torch.allclose(matched, torch.ones(6, dtype=torch.float64), atol=1e-6)
    assert similarity_margin(images, images) > 0.5


def test_scale_gradient_is_softmax_weighted_cosine_minus_matched_cosine():
    images, texts = _features(n=8)
    scale = 7.0
    cosines = images.double() @ texts.double().T  # [N, N]
    rows = (torch.softmax(scale * cosines, dim=1) * cosines).sum(1) - cosines.diag()
    cols = (torch.softmax(scale * cosines, dim=0) * cosines).sum(0) - cosines.diag()
    expected = ((rows.mean() + cols.mean()) / 2).item()
    assert scale_gradient(images, texts, scale) == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_scale_gradient_matches_a_finite_difference():
    images, texts = _features(n=10)
    s, h = 12.0, 1e-4
    loss = lambda x: clip_loss(images.double(), texts.double(), x).item()  # noqa: E731
    assert scale_gradient(images, texts, s) == pytest.approx((loss(s + h) - loss(s - h)) / (2 * h), rel=1e-5)


def test_best_temperature_minimizes_the_loss():
    images, texts = _features(n=16, noise=0.8)
    tau = best_temperature(images, texts)
    assert 1e-3 < tau < 10
    loss = lambda t: clip_loss(images.double(), texts.double(), 1 / t).item()  # noqa: E731
    assert loss(tau) <= loss(tau * 1.05) + 1e-9 and loss(tau) <= loss(tau / 1.05) + 1e-9
    assert abs(scale_gradient(images, texts, 1 / tau)) < 1e-6


def test_best_temperature_falls_as_the_pairs_separate():
    noisy = best_temperature(*_features(n=16, noise=1.5))
    clean = best_temperature(*_features(n=16, noise=0.3))
    assert clean < noisy


def test_best_temperature_returns_a_bound_when_the_minimum_lies_beyond_it():
    simplex = _simplex(8).float()
    assert best_temperature(simplex, simplex, min_tau=0.01) == 0.01  # perfect pairs: always sharper
    shuffled = simplex[torch.roll(torch.arange(8), 1)]
    assert best_temperature(simplex, shuffled, max_tau=5.0) == 5.0  # matched pairs are the worst ones


def test_infonce_floor_is_the_loss_of_perfect_simplex_features():
    for n, tau in ((2, 1.0), (8, 0.3), (64, 1.0), (64, 0.07)):
        simplex = _simplex(n)
        assert clip_loss(simplex, simplex, 1 / tau).item() == pytest.approx(infonce_floor(n, tau), rel=1e-9, abs=1e-15)


def test_no_features_beat_the_floor():
    images, texts = _features(n=16, e=32, noise=0.1)
    for tau in (1.0, 0.3, 0.07):
        assert clip_loss(images, texts, 1 / tau).item() >= infonce_floor(16, tau)
    assert infonce_floor(64, 1.0) > 0.7 * math.log(64)  # a large τ cannot make the softmax confident
    assert infonce_floor(64, 0.07) < 1e-4


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: pair_cosines(torch.zeros(3, 4), torch.zeros(3, 5)), ValueError, r"\[3, 4\] and text_features \[3, 5\]"),
        (lambda: pair_cosines(torch.zeros(1, 4), torch.zeros(1, 4)), ValueError, "at least 2 pairs"),
        (lambda: pair_cosines([[1.0]], [[1.0]]), TypeError, "must be a torch.Tensor"),
        (lambda: best_temperature(torch.full((4, 8), math.nan), torch.zeros(4, 8)), ValueError, "non-finite"),
        (lambda: scale_gradient(*_features(), math.inf), ValueError, "finite"),
        (lambda: scale_gradient(*_features(), -1.0), ValueError, "multiplier"),
        (lambda: best_temperature(*_features(), min_tau=1.0, max_tau=0.5), ValueError, "min_tau < max_tau"),
        (lambda: infonce_floor(1, 0.07), ValueError, "int >= 2"),
        (lambda: infonce_floor(64, 0.0), ValueError, "positive finite temperature"),
    ],
)
def test_errors_name_the_problem(call, error, match):
    with pytest.raises(error, match=match):
        call()
