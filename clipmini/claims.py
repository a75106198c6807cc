"""One way to state a claim: a verdict only as strong as its interval.

A chapter keeps one `Claims` ledger and states each finding through it:

- `greater`: "A > B" holds only when the interval of A - B lies above 0;
- `equivalent`: "A ≈ B" holds only when the interval of A - B lies inside ±margin, a margin the chapter
  justifies in words (`why`);
- `at_least` / `at_most`: "A ≥ x" on the interval's lower end, "A ≤ x" on its upper end;
- `unresolved`: the effect is inside the noise at our scale; it is shown with its interval and nothing
  stronger is asserted.

A failed claim raises `ClaimFailed`, saying what was estimated, the interval, n, the seeds and the
paper's value. Under ``CLIPMINI_CLAIMS=collect`` (what ``make claims`` sets) failures are recorded and
raised together by `Claims.check`, so a sweep sees every claim of a chapter, not only the first to fail.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from .stats import Interval

COLLECT_ENV = "CLIPMINI_CLAIMS"
KINDS = ("greater", "equivalent", "at least", "at most", "unresolved")


class ClaimFailed(AssertionError):
    """A chapter's claim that its own measurement does not support."""


@dataclass
class Claim:
    """One verdict, with everything needed to re-judge it: the interval, the bound, the seeds, the paper."""

    chapter: str
    name: str  # what was estimated, in words
    kind: str  # one of KINDS
    bound: float | None  # 0 for greater, x for at least/at most, the margin for equivalent
    interval: Interval
    seeds: list[int]
    paper: str = ""  # the paper's value and where it stands ("+1.3 points (Section 3.1.4)")
    why: str = ""  # equivalent: why this margin; unresolved: why our scale cannot tell
    passed: bool | None = None  # None for unresolved
    percent: bool = True  # shown as percent (accuracies and their differences), else as plain numbers

    @property
    def verdict(self) -> str:
        return "not resolved at this scale" if self.passed is None else ("holds" if self.passed else "FAILS")

    @property
    def needed(self) -> str:
        return {
            "greater": f"the interval above {self.bound:g}",
            "equivalent": f"the interval inside ±{self.bound:g}",
            "at least": f"the interval's lower end ≥ {self.bound:g}",
            "at most": f"the interval's upper end ≤ {self.bound:g}",
            "unresolved": "nothing (shown with its interval)",
        }[self.kind]

    def describe(self) -> str:
        paper = f"; the paper: {self.paper}" if self.paper else ""
        return (
            f"{self.chapter}: {self.name}: {self.verdict}. Estimated {self.interval.estimate:.4g}, "
            f"{self.interval.confidence:.0%} interval [{self.interval.low:.4g}, {self.interval.high:.4g}] "
            f"({self.interval.method}, n={self.interval.n}), seeds {self.seeds}; needed {self.needed}{paper}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "chapter": self.chapter,
            "name": self.name,
            "kind": self.kind,
            "bound": self.bound,
            "estimate": self.interval.estimate,
            "low": self.interval.low,
            "high": self.interval.high,
            "n": self.interval.n,
            "confidence": self.interval.confidence,
            "method": self.interval.method,
            "values": list(self.interval.values),
            "seeds": list(self.seeds),
            "paper": self.paper,
            "why": self.why,
            "passed": self.passed,
            "verdict": self.verdict,
            "percent": self.percent,
        }


def _collecting() -> bool:
    mode = os.environ.get(COLLECT_ENV, "")
    if mode not in ("", "raise", "collect"):
        raise ValueError(f"{COLLECT_ENV} must be 'collect' or 'raise' (the default); got {mode!r}")
    return mode == "collect"


@dataclass
class Claims:
    """A chapter's ledger of claims; `records()` goes into its results JSON, `table()` onto its page."""

    chapter: str
    seeds: Sequence[int]
    claims: list[Claim] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.seeds = [int(s) for s in self.seeds]
        if not self.seeds:
            raise ValueError("a claim names the seeds it was measured on; got none")

    def _state(self, name: str, kind: str, interval: Interval, bound: float | None, why: str,
               rule: Callable[[Interval], bool] | None, paper: str = "", seeds: Sequence[int] | None = None,
               percent: bool = True) -> Claim:
        if not isinstance(interval, Interval):
            raise TypeError(f"{name}: a claim is judged on a clipmini.stats.Interval; got {type(interval).__name__}")
        passed = None if rule is None else bool(rule(interval))
        if any(c.name == name for c in self.claims):
            raise ValueError(f"{self.chapter} already states a claim named {name!r}; each claim needs its own name")
        claim = Claim(self.chapter, name, kind, bound, interval, list(seeds) if seeds is not None else list(self.seeds),
                      paper, why, passed, percent)
        self.claims.append(claim)
        if passed is False and not _collecting():
            raise ClaimFailed(claim.describe())
        return claim

    def greater(self, name: str, difference: Interval, *, than: float = 0.0, **context: Any) -> Claim:
        """A > B: the interval of the difference A - B lies wholly above `than` (0 by default).

        `context` (every method): `paper` (its value and figure), `seeds` (if not the ledger's), `percent`.
        """
        return self._state(name, "greater", difference, than, "", lambda i: i.low > than, **context)

    def equivalent(self, name: str, difference: Interval, *, margin: float, why: str, **context: Any) -> Claim:
        """A ≈ B: the interval of A - B lies inside ±margin. `why` says where the margin comes from."""
        if not margin > 0:
            raise ValueError(f"{name}: an equivalence margin must be positive; got {margin}")
        if not why.strip():
            raise ValueError(f"{name}: an equivalence claim must say why its margin of {margin:g} is the right one")
        rule = lambda i: -margin < i.low and i.high < margin  # noqa: E731
        return self._state(name, "equivalent", difference, margin, why, rule, **context)

    def at_least(self, name: str, interval: Interval, bound: float, **context: Any) -> Claim:
        """A ≥ bound, judged on the interval's lower end."""
        return self._state(name, "at least", interval, bound, "", lambda i: i.low >= bound, **context)

    def at_most(self, name: str, interval: Interval, bound: float, **context: Any) -> Claim:
        """A ≤ bound, judged on the interval's upper end."""
        return self._state(name, "at most", interval, bound, "", lambda i: i.high <= bound, **context)

    def unresolved(self, name: str, interval: Interval, *, why: str, **context: Any) -> Claim:
        """An effect our scale cannot resolve: recorded with its interval, nothing asserted."""
        if not why.strip():
            raise ValueError(f"{name}: say why this scale cannot resolve the effect")
        return self._state(name, "unresolved", interval, None, why, None, **context)

    def failures(self) -> list[Claim]:
        return [c for c in self.claims if c.passed is False]

    def check(self) -> None:
        """Raise `ClaimFailed` listing every failed claim (the end of a chapter run under collect mode)."""
        failed = self.failures()
        if failed:
            raise ClaimFailed(f"{len(failed)} of {len(self.claims)} claims failed:\n" + "\n".join(c.describe() for c in failed))

    def records(self) -> list[dict[str, Any]]:
        return [c.to_dict() for c in self.claims]

    def table(self) -> str:
        """The claims as a Markdown table: claim, estimate, interval, needed, verdict, the paper."""
        return claims_table(self.claims)


def format_value(value: float, percent: bool) -> str:
    return f"{100 * value:.1f}%" if percent else f"{value:.3g}"


def needed_text(kind: str, bound: float | None, percent: bool) -> str:
    """What a claim of `kind` needs, in a table cell: "> 0.0%", "within ±2.0%", "≥ 85.0%", "—"."""
    if kind == "unresolved":
        return "—"
    value = format_value(bound, percent)
    return {"greater": f"> {value}", "equivalent": f"within ±{value}", "at least": f"≥ {value}", "at most": f"≤ {value}"}[kind]


def claims_table(claims: Sequence[Claim]) -> str:
    """A Markdown table of one chapter's claims."""
    rows = ["| claim | estimate | 95% interval | needed | verdict | the paper |", "|---|---|---|---|---|---|"]
    for c in claims:
        fmt = functools.partial(format_value, percent=c.percent)
        needed = needed_text(c.kind, c.bound, c.percent)
        rows.append(f"| {c.name} | {fmt(c.interval.estimate)} | [{fmt(c.interval.low)}, {fmt(c.interval.high)}] "
                    f"| {needed} | {c.verdict} | {c.paper or '—'} |")
    return "\n".join(rows)
