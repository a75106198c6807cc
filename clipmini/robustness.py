"""Effective robustness: accuracy under distribution shift beyond what in-distribution accuracy predicts.

Models trained on one distribution fall on a line when their accuracy on a shifted test set is plotted
against their accuracy on the training distribution, both axes logit-scaled (Taori et al., 2020; the CLIP
paper's Figure 13). A model above the line is *effectively* robust: it keeps more accuracy under the
shift than a model of the same in-distribution accuracy from the family. `fit_robustness_line` fits that
line, to the family members that `off_chance_and_ceiling` admits; `RobustnessLine` measures a model
against it. `labelled_training_images` gives a supervised
baseline the images a CLIP trained on, with labels read from the scenes instead of captions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["clipped_logit", "off_chance_and_ceiling", "RobustnessLine", "fit_robustness_line",
           "labelled_training_images"]

LABELS = ("shape", "color", "color_shape")  # what a single-object scene can be labelled with


def clipped_logit(accuracy, n: int | None = None) -> np.ndarray:
    """log(p / (1 - p)) of accuracies, clipped half a sample away from 0 and 1 when `n` (the test-set
    size) is given, else at 1e-4: a perfect score on n images has a finite logit."""
    p = np.asarray(accuracy, dtype=np.float64)
    if np.any(~np.isfinite(p)) or np.any((p < 0) | (p > 1)):
        raise ValueError(f"accuracies must be fractions in [0, 1]; got {p.tolist()}")
    if n is not None and (isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1):
        raise ValueError(f"n must be a positive int (the number of test images); got {n!r}")
    eps = 0.5 / n if n is not None else 1e-4
    p = np.clip(p, eps, 1.0 - eps)
    return np.log(p) - np.log1p(-p)


def off_chance_and_ceiling(accuracy: float, n: int, *, chance: float) -> bool:
    """Whether an accuracy on `n` test images is resolved away from both ends of the scale: its 95% Wilson
    interval lies above `chance` and below 1. A point at chance or at 100% is a floor or a ceiling, not a
    place on the line, and would pull a logit-space fit wherever its clipped logit happens to fall."""
    from clipmini.stats import accuracy_interval

    if not 0 < chance < 1:
        raise ValueError(f"chance must be a fraction in (0, 1); got {chance!r}")
    if not 0 <= accuracy <= 1:
        raise ValueError(f"accuracy must be a fraction in [0, 1]; got {accuracy!r}")
    interval = accuracy_interval(round(accuracy * n), n)
    return bool(interval.low > chance and interval.high < 1.0)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


@dataclass(frozen=True)
class RobustnessLine:
    """logit(shifted accuracy) = slope * logit(in-distribution accuracy) + intercept."""

    slope: float
    intercept: float
    n: int | None = None  # test-set size used to clip accuracies before the logit

    def expected(self, id_accuracy):
        """The shifted-domain accuracy the line predicts for a model with this in-distribution accuracy."""
        return _sigmoid(self.slope * clipped_logit(id_accuracy, self.n) + self.intercept)

    def effective_robustness(self, id_accuracy, ood_accuracy):
        """Shifted accuracy above the line's prediction, in accuracy units (0.2 = 20 points above)."""
        return np.asarray(ood_accuracy, dtype=np.float64) - self.expected(id_accuracy)


def fit_robustness_line(id_accuracies: Sequence[float], ood_accuracies: Sequence[float], *, n: int | None = None) -> RobustnessLine:
    """Least-squares line through (logit ID accuracy, logit shifted accuracy) of a family of models,
    e.g. supervised models of different training lengths. Needs two distinct in-distribution accuracies."""
    x = clipped_logit(id_accuracies, n)
    y = clipped_logit(ood_accuracies, n)
    if x.ndim != 1 or x.shape != y.shape:
        raise ValueError(f"need one shifted accuracy per in-distribution accuracy; got {x.shape} and {y.shape}")
    if x.size < 2 or np.ptp(x) < 1e-9:
        raise ValueError(
            f"a line needs models of at least two different in-distribution accuracies; got {np.round(x, 3).tolist()} "
            "(logits): train the family for more different lengths"
        )
    slope, intercept = np.polyfit(x, y, 1)
    return RobustnessLine(float(slope), float(intercept), n)


def labelled_training_images(world, n_batches: int, *, label: str = "shape", batch_size: int = 256,
                             start_index: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The single-object images of training batches start_index .. start_index + n_batches - 1 of `world`
    (the pictures a CLIP on this world trains on), images [N, 3, R, R] with labels [N] read from the scene
    instead of the caption: the shape, the color or the color x shape class (color * 10 + shape).
    Scenes with several objects have no single label and are left out."""
    if label not in LABELS:
        raise ValueError(f"label must be one of {LABELS}; got {label!r}")
    if isinstance(n_batches, bool) or not isinstance(n_batches, int) or n_batches < 1:
        raise ValueError(f"n_batches must be a positive int; got {n_batches!r}")
    from clipmini.data.attributes import SHAPES
    from clipmini.data.scenes import SINGLE

    images, labels = [], []
    for index in range(start_index, start_index + n_batches):
        batch, _, meta = world.batch_with_meta(index, batch_size)  # [B, 3, R, R]
        scenes = meta.scenes
        single = scenes.kind == SINGLE  # [B]
        color, shape = scenes.color[single, 0], scenes.shape[single, 0]  # [b]
        labels.append({"shape": shape, "color": color, "color_shape": color * len(SHAPES) + shape}[label])
        images.append(batch[torch.from_numpy(single)])  # [b, 3, R, R]
    return torch.cat(images), torch.from_numpy(np.concatenate(labels).astype(np.int64))
