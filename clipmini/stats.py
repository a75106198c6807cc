"""How sure a measured number is: intervals for accuracies, paired comparisons, and seeds.

Every verdict in the book rests on one of three estimates:

- an accuracy on n evaluation images: the Wilson score interval (`accuracy_interval`);
- the difference of two classifiers scored on the *same* images: a paired bootstrap of the per-image
  differences, with McNemar's exact test beside it (`paired_difference`);
- accuracies on different images: Newcombe's interval of the difference (`independent_difference`);
- a number measured once per training seed: the mean with Student's t-interval (`over_seeds`);
- the mean of real-valued per-item numbers (a cosine gap per image): a bootstrap (`bootstrap_mean`).

Each returns an `Interval`. `clipmini.claims` turns intervals into asserted verdicts.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from statistics import NormalDist
from typing import Any, Sequence

import numpy as np

CONFIDENCE = 0.95  # the book's default: two-sided 95% intervals
BOOTSTRAP_DRAWS = 4000  # paired-bootstrap resamples; the interval's ends move by ~0.1 point between draws
BOOTSTRAP_SEED = 20210226  # a fixed generator, so an interval is a pure function of its data (CLIP's arXiv date)


@dataclass(frozen=True)
class Interval:
    """An estimate with its two-sided confidence interval, and how it was made."""

    estimate: float
    low: float
    high: float
    n: int  # images (accuracies, paired differences) or seeds (over_seeds)
    method: str
    confidence: float = CONFIDENCE
    values: tuple[float, ...] = field(default=())  # the per-seed values, for over_seeds

    def __post_init__(self) -> None:
        if not self.low <= self.estimate <= self.high:
            raise ValueError(f"an interval must hold its estimate: {self.low} <= {self.estimate} <= {self.high}")

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def excludes(self, value: float) -> bool:
        return not self.low <= value <= self.high

    def minus(self, value: float) -> "Interval":
        """The interval of (estimate - value): how far from a reference value, such as chance."""
        return Interval(self.estimate - value, self.low - value, self.high - value, self.n,
                        f"{self.method}, minus {value:g}", self.confidence,
                        tuple(v - value for v in self.values))

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["values"] = list(self.values)
        return out

    def __str__(self) -> str:
        return f"{self.estimate:.4g} [{self.low:.4g}, {self.high:.4g}] ({self.method}, n={self.n})"


def _check_confidence(confidence: float) -> float:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1); got {confidence}")
    return float(confidence)


def _z(confidence: float) -> float:
    return NormalDist().inv_cdf(0.5 + _check_confidence(confidence) / 2)


def accuracy_interval(correct: int | Sequence[bool] | np.ndarray | Any, n: int | None = None, confidence: float = CONFIDENCE) -> Interval:
    """Wilson score interval of an accuracy: `correct` is a count out of `n`, or one bool per image.

    Wilson rather than the normal approximation: it stays inside [0, 1] and keeps its coverage near 0%
    and 100%, where the book's saturated tasks sit.
    """
    if n is None:
        flags = _as_flags(correct, "correct")
        k, n = int(flags.sum()), int(flags.size)
    else:
        k = int(correct)
        if isinstance(correct, bool) or k != correct:
            raise TypeError(f"correct must be a whole count when n is given; got {correct!r}")
    if n <= 0:
        raise ValueError(f"an accuracy needs at least one image; got n={n}")
    if not 0 <= k <= n:
        raise ValueError(f"correct must be between 0 and n={n}; got {k}")
    z = _z(confidence)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return Interval(p, min(p, max(0.0, centre - half)), max(p, min(1.0, centre + half)), n, "wilson", confidence)


def _as_flags(values: Any, name: str) -> np.ndarray:
    if hasattr(values, "detach"):  # a torch tensor
        values = values.detach().cpu().numpy()
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one value per evaluation image, a 1-d array; got shape {array.shape}")
    if array.dtype != bool and not np.isin(array, (0, 1)).all():
        raise ValueError(f"{name} must hold right/wrong flags (bool or 0/1); got values such as {array[:3].tolist()}")
    return array.astype(bool)


def independent_difference(a: Interval, b: Interval) -> Interval:
    """Accuracy A minus accuracy B measured on *different* images: Newcombe's hybrid score interval.

    It combines the two Wilson intervals (Newcombe 1998, method 10); use `paired_difference` instead
    when both were scored on the same images, which is tighter.
    """
    for name, x in (("a", a), ("b", b)):
        if not isinstance(x, Interval) or x.method != "wilson":
            raise TypeError(f"{name} must be a Wilson interval from accuracy_interval; got {x}")
    if a.confidence != b.confidence:
        raise ValueError(f"both intervals need the same confidence; got {a.confidence} and {b.confidence}")
    d = a.estimate - b.estimate
    low = d - math.hypot(a.estimate - a.low, b.high - b.estimate)
    high = d + math.hypot(a.high - a.estimate, b.estimate - b.low)
    return Interval(d, low, high, min(a.n, b.n), f"Newcombe (n={a.n} and {b.n})", a.confidence)


def mcnemar_p(correct_a: Any, correct_b: Any) -> float:
    """Two-sided exact McNemar p-value: do A and B err on the same images at different rates?

    Only the discordant images count (A right and B wrong, or the reverse); under "no difference" each
    is a fair coin, so the p-value is a two-sided binomial tail.
    """
    a, b = _as_flags(correct_a, "correct_a"), _as_flags(correct_b, "correct_b")
    if a.shape != b.shape:
        raise ValueError(f"a paired comparison scores both classifiers on the same images; got {a.size} and {b.size} flags")
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    m = only_a + only_b
    if m == 0:
        return 1.0
    tail = sum(math.comb(m, i) for i in range(min(only_a, only_b) + 1)) / 2**m
    return min(1.0, 2 * tail)


def paired_difference(
    correct_a: Any, correct_b: Any, confidence: float = CONFIDENCE, draws: int = BOOTSTRAP_DRAWS
) -> Interval:
    """Accuracy of A minus accuracy of B on the same images, with a paired-bootstrap percentile interval.

    Resampling images (not the two classifiers separately) keeps their correlation: two models that
    err on the same hard images differ by less noise than two independent samples would.
    """
    a, b = _as_flags(correct_a, "correct_a"), _as_flags(correct_b, "correct_b")
    if a.shape != b.shape:
        raise ValueError(f"a paired comparison scores both classifiers on the same images; got {a.size} and {b.size} flags")
    if a.size == 0:
        raise ValueError("a paired comparison needs at least one image")
    if draws < 100:
        raise ValueError(f"a bootstrap needs at least 100 draws for a 95% interval; got {draws}")
    _check_confidence(confidence)
    diff = a.astype(np.int8) - b.astype(np.int8)  # [n], each -1, 0 or +1
    estimate, low, high = _bootstrap_mean(diff, confidence, draws)
    p = mcnemar_p(a, b)
    return Interval(estimate, low, high, int(a.size), f"paired bootstrap (McNemar p={p:.2g})", confidence)


def _bootstrap_mean(values: np.ndarray, confidence: float, draws: int) -> tuple[float, float, float]:
    """The mean of `values` [n] and its percentile-bootstrap interval (a fixed generator: no randomness)."""
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    means = np.empty(draws)
    for start in range(0, draws, 500):  # chunks keep the [draws, n] index matrix small
        rows = rng.integers(0, values.size, size=(min(500, draws - start), values.size))  # [d, n]
        means[start : start + rows.shape[0]] = values[rows].mean(axis=1)
    tail = (1 - confidence) / 2
    estimate = float(values.mean())
    low, high = np.quantile(means, [tail, 1 - tail])
    return estimate, min(estimate, float(low)), max(estimate, float(high))


def bootstrap_mean(values: Any, confidence: float = CONFIDENCE, draws: int = BOOTSTRAP_DRAWS) -> Interval:
    """The mean of per-item numbers with a bootstrap interval, e.g. per-image differences of two scores.

    For a paired comparison of real-valued scores (a cosine under two captions of the same image),
    pass the per-item differences; resampling items keeps the pairing, as `paired_difference` does
    for right/wrong flags.
    """
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or x.size < 2:
        raise ValueError(f"a bootstrap mean needs a 1-D array of at least 2 values; got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("every value must be finite; got NaN or infinity")
    if draws < 100:
        raise ValueError(f"a bootstrap needs at least 100 draws for a 95% interval; got {draws}")
    _check_confidence(confidence)
    estimate, low, high = _bootstrap_mean(x, confidence, draws)
    return Interval(estimate, low, high, int(x.size), "bootstrap of the mean", confidence)


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularized incomplete beta function (modified Lentz)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        for num in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def _incomplete_beta(a: float, b: float, x: float) -> float:
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """Student's t distribution function with `df` degrees of freedom."""
    if df <= 0:
        raise ValueError(f"degrees of freedom must be positive; got {df}")
    tail = 0.5 * _incomplete_beta(df / 2, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_quantile(q: float, df: float) -> float:
    """The q-quantile of Student's t with `df` degrees of freedom (bisection on `t_cdf`)."""
    if not 0 < q < 1:
        raise ValueError(f"a quantile needs 0 < q < 1; got {q}")
    if q < 0.5:
        return -t_quantile(1 - q, df)
    low, high = 0.0, 1.0
    while t_cdf(high, df) < q:
        high *= 2
    for _ in range(200):
        mid = (low + high) / 2
        low, high = (mid, high) if t_cdf(mid, df) < q else (low, mid)
        if high - low < 1e-12 * max(1.0, high):
            break
    return (low + high) / 2


def over_seeds(values: Sequence[float], confidence: float = CONFIDENCE) -> Interval:
    """Mean over training seeds with Student's t-interval: what another seed's run would average to.

    With k seeds the interval is mean ± t(k-1) · s / √k; three seeds give t = 4.30 at 95%, so only an
    effect well above the seed-to-seed spread is resolved.
    """
    x = np.asarray([float(v) for v in values], dtype=np.float64)
    if x.ndim != 1 or x.size < 2:
        raise ValueError(f"an interval over seeds needs at least 2 seeds' values; got {x.size}")
    if not np.isfinite(x).all():
        raise ValueError(f"every seed's value must be finite; got {x.tolist()}")
    mean, sd = float(x.mean()), float(x.std(ddof=1))
    half = t_quantile(0.5 + _check_confidence(confidence) / 2, x.size - 1) * sd / math.sqrt(x.size)
    return Interval(mean, mean - half, mean + half, int(x.size), f"t over {x.size} seeds (sd {sd:.3g})", confidence, tuple(x.tolist()))


def difference_over_seeds(a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE) -> Interval:
    """Mean of A - B over seeds where seed i ran both A and B (paired by seed), with its t-interval."""
    if len(a) != len(b):
        raise ValueError(f"a paired comparison over seeds needs one value of each per seed; got {len(a)} and {len(b)}")
    return over_seeds([x - y for x, y in zip(a, b)], confidence)
