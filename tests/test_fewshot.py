"""Few-shot probe curves and the effective number of shots, on hand-built features."""

import math

import pytest
import torch

from clipmini.fewshot import Crossing, FewShotCurve, effective_shots, few_shot_curve


def _clusters(n_per_class: int, num_classes: int = 4, dim: int = 8, spread: float = 1.0, seed: int = 0):
    """Gaussian clusters around fixed class means (the same for every seed; `seed` draws the noise):
    features [C*n, dim], labels [C*n]."""
    means = 3 * torch.randn(num_classes, dim, generator=torch.Generator().manual_seed(1234))  # [C, D]
    labels = torch.arange(num_classes).repeat_interleave(n_per_class)  # [N]
    noise = torch.randn(labels.shape[0], dim, generator=torch.Generator().manual_seed(seed))  # [N, D]
    return means[labels] + spread * noise, labels


FAST = {"l2_grid": (1e-3, 1e-1), "max_iter": 50}  # a short search: these tests are about the curve, not the fit


# ----------------------------------------------------------------------------- effective_shots


def test_crossing_is_interpolated_in_log_k():
    # 0.3 lies half way between k=2 (0.2) and k=4 (0.4): half way in log k is sqrt(2 * 4).
    crossing = effective_shots((1, 2, 4, 8), [0.1, 0.2, 0.4, 0.8], 0.3)
    assert crossing.relation == "="
    assert crossing.k == pytest.approx(math.sqrt(8))
    assert str(crossing) == "2.8"


def test_a_measured_point_that_equals_the_target_is_the_answer():
    assert effective_shots((1, 2, 4), [0.1, 0.5, 0.9], 0.5).k == pytest.approx(2.0)
    assert effective_shots((1, 2, 4), [0.5, 0.6, 0.9], 0.5) == Crossing(1.0, "=")


def test_bounds_when_the_curve_starts_above_or_never_reaches_the_target():
    above = effective_shots((1, 2, 4), [0.6, 0.7, 0.8], 0.5)
    assert above == Crossing(1.0, "<") and str(above) == "< 1"
    never = effective_shots((1, 2, 4, 16), [0.1, 0.2, 0.3, 0.4], 0.9)
    assert never == Crossing(16.0, ">") and str(never) == "> 16"


def test_the_first_crossing_counts_on_a_noisy_curve():
    # Reaches 0.5 between 1 and 2, dips below, reaches it again later: the first crossing is reported.
    crossing = effective_shots((1, 2, 4, 8), [0.4, 0.6, 0.45, 0.7], 0.5)
    assert 1.0 < crossing.k < 2.0


def test_accepts_a_tensor_of_accuracies():
    assert effective_shots((1, 4), torch.tensor([0.0, 1.0]), 0.5).k == pytest.approx(2.0)


@pytest.mark.parametrize(
    "shots, accuracy, message",
    [
        ((), [], "shots is empty"),
        ((2, 1), [0.1, 0.2], "strictly increasing"),
        ((1, 1), [0.1, 0.2], "strictly increasing"),
        ((0, 1), [0.1, 0.2], "positive ints"),
        ((1.5, 2), [0.1, 0.2], "positive ints"),
        ((1, 2, 4), [0.1, 0.2], "one accuracy per k"),
        ((1, 2), [0.1, float("nan")], "finite"),
    ],
)
def test_bad_inputs_are_named(shots, accuracy, message):
    with pytest.raises(ValueError, match=message):
        effective_shots(shots, accuracy, 0.5)


# ----------------------------------------------------------------------------- few_shot_curve


def test_curve_has_one_row_per_k_and_one_column_per_draw():
    train_x, train_y = _clusters(20, spread=2.0)
    test_x, test_y = _clusters(30, spread=2.0, seed=1)
    curve = few_shot_curve(train_x, train_y, test_x, test_y, (1, 2, 8), draws=2, seed=0, **FAST)
    assert isinstance(curve, FewShotCurve)
    assert curve.shots == (1, 2, 8)
    assert curve.accuracy.shape == (3, 2)
    assert curve.mean.shape == (3,) and curve.std.shape == (3,)
    assert ((curve.accuracy >= 0) & (curve.accuracy <= 1)).all()
    assert curve.as_dict()["shots"] == [1, 2, 8]


def test_more_shots_help_on_overlapping_clusters():
    # Noise larger than the distance between class means: one example per class is a poor guess of its class.
    train_x, train_y = _clusters(40, spread=4.0)
    test_x, test_y = _clusters(100, spread=4.0, seed=1)
    curve = few_shot_curve(train_x, train_y, test_x, test_y, (1, 32), draws=3, seed=0, **FAST)
    assert curve.mean[1] > curve.mean[0] + 0.05


def test_separable_clusters_are_learned_from_one_example():
    train_x, train_y = _clusters(10, spread=0.1)
    test_x, test_y = _clusters(10, spread=0.1, seed=1)
    curve = few_shot_curve(train_x, train_y, test_x, test_y, (1,), draws=2)
    assert curve.accuracy.min() == 1.0


def test_same_seed_same_curve_other_seed_other_draws():
    train_x, train_y = _clusters(20, spread=3.0)
    test_x, test_y = _clusters(30, spread=3.0, seed=1)
    a = few_shot_curve(train_x, train_y, test_x, test_y, (1, 2), draws=2, seed=0, **FAST)
    b = few_shot_curve(train_x, train_y, test_x, test_y, (1, 2), draws=2, seed=0, **FAST)
    c = few_shot_curve(train_x, train_y, test_x, test_y, (1, 2), draws=2, seed=5, **FAST)
    assert torch.equal(a.accuracy, b.accuracy)
    assert not torch.equal(a.accuracy, c.accuracy)


def test_draws_differ_within_one_curve():
    train_x, train_y = _clusters(20, spread=3.0)
    test_x, test_y = _clusters(50, spread=3.0, seed=1)
    curve = few_shot_curve(train_x, train_y, test_x, test_y, (1,), draws=4, seed=0)
    assert curve.std[0] > 0


def test_single_draw_has_zero_spread():
    train_x, train_y = _clusters(5)
    curve = few_shot_curve(train_x, train_y, train_x, train_y, (1,), draws=1)
    assert curve.std.tolist() == [0.0]


def test_too_many_shots_for_the_pool_is_an_error_that_names_the_class():
    train_x, train_y = _clusters(3)
    with pytest.raises(ValueError, match="only 3 examples"):
        few_shot_curve(train_x, train_y, train_x, train_y, (1, 4), draws=1)


@pytest.mark.parametrize("kwargs, message", [({"draws": 0}, "draws"), ({"seed": -1}, "seed"), ({"shots": ()}, "empty")])
def test_bad_arguments_are_named(kwargs, message):
    train_x, train_y = _clusters(5)
    with pytest.raises(ValueError, match=message):
        few_shot_curve(train_x, train_y, train_x, train_y, **{"shots": (1,), **kwargs})
