"""Effective robustness: the logit-space line of a model family, and labelled images from a CLIP's stream."""

import numpy as np
import pytest
import torch

from clipmini.data import CaptionWorld, WorldConfig
from clipmini.data.attributes import SHAPES
from clipmini.robustness import (
    RobustnessLine,
    clipped_logit,
    fit_robustness_line,
    labelled_training_images,
    off_chance_and_ceiling,
)


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def test_clipped_logit_is_the_logit_and_finite_at_the_ends():
    assert clipped_logit(0.5) == pytest.approx(0.0)
    assert clipped_logit([0.9])[0] == pytest.approx(np.log(9))
    both = clipped_logit([0.0, 1.0], n=100)  # clipped half an image from the ends
    assert both == pytest.approx([np.log(0.005 / 0.995), np.log(0.995 / 0.005)])
    assert np.isfinite(clipped_logit([0.0, 1.0])).all()


@pytest.mark.parametrize("bad", [[1.5], [-0.1], [float("nan")]])
def test_clipped_logit_rejects_non_fractions(bad):
    with pytest.raises(ValueError, match="fractions in \\[0, 1\\]"):
        clipped_logit(bad)


def test_clipped_logit_rejects_a_bad_test_set_size():
    with pytest.raises(ValueError, match="positive int"):
        clipped_logit([0.5], n=0)


def test_the_fit_recovers_a_line_in_logit_space():
    x = _sigmoid(np.linspace(-2, 3, 6))
    y = _sigmoid(0.7 * np.linspace(-2, 3, 6) - 1.1)
    line = fit_robustness_line(x, y)
    assert line.slope == pytest.approx(0.7, abs=1e-6)
    assert line.intercept == pytest.approx(-1.1, abs=1e-6)
    assert line.expected(x) == pytest.approx(y, abs=1e-6)  # the family sits on its own line
    assert line.effective_robustness(x, y) == pytest.approx(np.zeros(6), abs=1e-6)


def test_effective_robustness_of_a_model_above_the_line():
    line = RobustnessLine(slope=1.0, intercept=np.log(0.25))  # odds under the shift: a quarter of the ID odds
    expected = line.expected(0.8)  # ID odds 4 -> shifted odds 1
    assert expected == pytest.approx(0.5)
    assert line.effective_robustness(0.8, 0.65) == pytest.approx(0.15)
    assert line.effective_robustness(0.8, 0.5) == pytest.approx(0.0)  # on the line


def test_off_chance_and_ceiling_admits_only_points_resolved_from_both_ends():
    assert off_chance_and_ceiling(0.5, 500, chance=0.1)
    assert not off_chance_and_ceiling(0.1, 500, chance=0.1)  # at chance
    assert not off_chance_and_ceiling(0.11, 500, chance=0.1)  # 55 of 500: the interval still holds 0.1
    assert off_chance_and_ceiling(0.14, 500, chance=0.1)  # 70 of 500: [0.112, 0.173]
    assert not off_chance_and_ceiling(1.0, 500, chance=0.1)  # at the ceiling
    assert off_chance_and_ceiling(0.99, 500, chance=0.1)  # 495 of 500: its interval stays below 1
    assert not off_chance_and_ceiling(0.12, 2000, chance=0.2)  # below chance is no better than at it
    with pytest.raises(ValueError, match="chance"):
        off_chance_and_ceiling(0.5, 500, chance=0.0)
    with pytest.raises(ValueError, match="accuracy"):
        off_chance_and_ceiling(1.5, 500, chance=0.1)


def test_the_fit_needs_two_different_in_distribution_accuracies():
    with pytest.raises(ValueError, match="at least two different in-distribution accuracies"):
        fit_robustness_line([1.0, 1.0], [0.2, 0.3], n=500)
    with pytest.raises(ValueError, match="one shifted accuracy per"):
        fit_robustness_line([0.5, 0.9], [0.2])


@pytest.fixture(scope="module")
def world():
    return CaptionWorld(WorldConfig(domains=("flat",)))


def test_labelled_training_images_are_the_single_object_images_of_the_stream(world):
    images, labels = labelled_training_images(world, 1, label="color_shape", batch_size=64)
    batch, _, meta = world.batch_with_meta(0, 64)
    single = meta.scenes.kind == 0
    assert images.shape == (int(single.sum()), 3, 32, 32)
    assert torch.equal(images, batch[torch.from_numpy(single)])  # the very pixels the CLIP trains on
    expected = meta.scenes.color[single, 0] * len(SHAPES) + meta.scenes.shape[single, 0]
    assert labels.dtype == torch.int64 and labels.tolist() == expected.tolist()


def test_labelled_training_images_labels_and_errors(world):
    _, shapes = labelled_training_images(world, 2, label="shape", batch_size=32)
    _, colors = labelled_training_images(world, 2, label="color", batch_size=32)
    assert shapes.max() < 10 and colors.max() < 10 and shapes.shape == colors.shape
    with pytest.raises(ValueError, match="label must be one of"):
        labelled_training_images(world, 1, label="count")
    with pytest.raises(ValueError, match="positive int"):
        labelled_training_images(world, 0)
