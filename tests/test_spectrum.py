"""Effective rank and uniformity on feature sets whose answer is known by hand."""

from __future__ import annotations

import pytest
import torch

from clipmini.spectrum import effective_rank, singular_spectrum, uniformity


def test_orthonormal_rows_use_every_direction():
    basis = torch.eye(8)  # 8 orthonormal features in 8 dimensions
    assert effective_rank(basis, center=False) == pytest.approx(8.0)
    # centering removes their common mean (1/8 each): I - J/8 has seven singular values 1 and one 0
    assert effective_rank(basis) == pytest.approx(7.0)
    p = singular_spectrum(basis, center=False)
    assert p.sum() == pytest.approx(1.0) and torch.allclose(p, torch.full((8,), 1 / 8, dtype=p.dtype))


def test_collapsed_features_have_rank_one_or_zero():
    direction = torch.randn(16)
    collapsed = torch.rand(50, 1) * direction  # every row a positive multiple of one vector
    assert effective_rank(collapsed, center=False) == pytest.approx(1.0)
    assert effective_rank(collapsed) == 0.0  # after centering nothing is left
    two_points = torch.stack([direction, -direction] * 10)  # a line through the origin
    assert effective_rank(two_points) == pytest.approx(1.0)


def test_effective_rank_ignores_rotations_and_row_lengths():
    torch.manual_seed(0)
    x = torch.randn(200, 12) @ torch.diag(torch.linspace(0.1, 2.0, 12))  # an anisotropic cloud
    rotation, _ = torch.linalg.qr(torch.randn(12, 12))
    lengths = torch.rand(200, 1) + 0.5
    assert effective_rank(x @ rotation) == pytest.approx(effective_rank(x), rel=1e-6)  # float32 round-off
    assert effective_rank(x * lengths) == pytest.approx(effective_rank(x), rel=1e-6)  # rows are normalized first


def test_an_isotropic_cloud_is_close_to_full_rank_and_a_skewed_one_is_not():
    torch.manual_seed(0)
    iso = torch.randn(4000, 16)
    skew = iso * torch.tensor([10.0, 10.0] + [0.01] * 14)  # two strong directions, fourteen faint ones
    assert 15.0 < effective_rank(iso) <= 16.0
    assert effective_rank(skew) < 4.0


def test_uniformity_known_values():
    torch.manual_seed(0)
    assert uniformity(torch.ones(10, 4)) == pytest.approx(0.0, abs=1e-12)  # one point: the maximum
    assert uniformity(torch.eye(5)) == pytest.approx(-4.0)  # all pairs at |x - y|² = 2: log exp(-2·2)
    assert uniformity(torch.tensor([[1.0, 0.0], [-1.0, 0.0]])) == pytest.approx(-8.0)  # antipodes, |x - y|² = 4
    assert uniformity(torch.eye(5), t=1.0) == pytest.approx(-2.0)
    spread, clumped = torch.randn(300, 8), torch.randn(300, 8) * 0.1 + torch.ones(8)
    assert uniformity(spread) < uniformity(clumped) < 0


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match=r"matrix \[N, E\]"):
        effective_rank(torch.randn(8))
    with pytest.raises(TypeError, match="torch.Tensor"):
        effective_rank([[1.0, 0.0]])
    with pytest.raises(ValueError, match="NaN or inf"):
        uniformity(torch.tensor([[1.0, float("nan")], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="at least 2 rows"):
        uniformity(torch.randn(1, 4))
    with pytest.raises(ValueError, match="t must be > 0"):
        uniformity(torch.randn(4, 3), t=0.0)
