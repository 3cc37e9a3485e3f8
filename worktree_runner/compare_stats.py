"""Statistics for comparing groups of seeds: mean, sample standard deviation and the half-width
of the 95% Student-t interval, and learning curves averaged over seeds with that band.

Pure Python (no scipy): the Student-t quantile is found by bisection on its CDF, which is the
regularized incomplete beta function, evaluated with Lentz's continued fraction."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

_EPS = 1e-15
_TINY = 1e-300


def _beta_cf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    h = d
    for m in range(1, 1000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > _TINY else _TINY)
        c = 1.0 + aa / c
        c = c if abs(c) > _TINY else _TINY
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > _TINY else _TINY)
        c = 1.0 + aa / c
        c = c if abs(c) > _TINY else _TINY
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < _EPS:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                 + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_cf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_cf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with `df` degrees of freedom."""
    if df <= 0:
        raise ValueError("degrees of freedom must be positive")
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_ppf(p: float, df: float) -> float:
    """The p-quantile of Student's t (inverse CDF), to about 1e-12 relative."""
    if not 0.0 < p < 1.0:
        raise ValueError("p must be in (0, 1)")
    if p < 0.5:
        return -t_ppf(1.0 - p, df)
    if p == 0.5:
        return 0.0
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        lo, hi = hi, hi * 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-13 * hi:
            break
    return 0.5 * (lo + hi)


@dataclass(frozen=True)
class Summary:
    """Mean, sample standard deviation (ddof=1) and the 95% Student-t half-width of a sample;
    std and ci95 are None below two values."""

    values: tuple[float, ...]
    mean: float | None
    std: float | None
    ci95: float | None
    diverged: int = 0  # NaN values left out (a run that diverged)

    @property
    def n(self) -> int:
        return len(self.values)

    def to_json(self) -> dict[str, object]:
        doc: dict[str, object] = {"mean": self.mean, "std": self.std, "ci95": self.ci95,
                                  "n": self.n, "values": list(self.values)}
        if self.diverged:
            doc["diverged"] = self.diverged
        return doc


def summarize(values: Sequence[float]) -> Summary:
    given = [float(v) for v in values if v is not None]
    vals = tuple(v for v in given if not math.isnan(v))
    nan = len(given) - len(vals)
    n = len(vals)
    if n == 0:
        return Summary((), None, None, None, nan)
    mean = math.fsum(vals) / n
    if n < 2:
        return Summary(vals, mean, None, None, nan)
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in vals) / (n - 1))
    return Summary(vals, mean, std, t_ppf(0.975, n - 1) * std / math.sqrt(n), nan)


@dataclass(frozen=True)
class Lead:
    """How the best of several summaries leads the runner-up. `significant` is True when the
    lead is larger than both 95% intervals together (they do not overlap), False when it is
    not, None when either side has fewer than two values (no interval to compare)."""

    lead: float
    significant: bool | None


def lead_of(best: Summary, runner_up: Summary) -> Lead | None:
    if best.mean is None or runner_up.mean is None:
        return None
    lead = abs(best.mean - runner_up.mean)
    if best.ci95 is None or runner_up.ci95 is None:
        return Lead(lead, None)
    return Lead(lead, lead > best.ci95 + runner_up.ci95)


@dataclass(frozen=True)
class Band:
    """A learning curve averaged over seeds: at each step the mean and the 95% half-width
    (None where fewer than two seeds reached that step)."""

    steps: tuple[float, ...]
    mean: tuple[float, ...]
    ci95: tuple[float | None, ...]
    n: tuple[int, ...]


def band(curves: Sequence[tuple[Sequence[float], Sequence[float]]]) -> Band:
    """Average (steps, values) curves step by step over the seeds that logged each step (the
    last value wins when a step repeats, e.g. after a resume)."""
    per_step: dict[float, list[float]] = {}
    for steps, values in curves:
        latest = dict(zip(steps, values))
        for s, v in latest.items():
            if not math.isnan(v):
                per_step.setdefault(float(s), []).append(float(v))
    steps = tuple(sorted(per_step))
    sums = [summarize(per_step[s]) for s in steps]
    return Band(steps, tuple(s.mean or 0.0 for s in sums), tuple(s.ci95 for s in sums),
                tuple(s.n for s in sums))
