"""Groups of seeds: the workers of one branch + vars, summarised per metric (mean, sample std,
95% Student-t half-width), and the winner of each metric with whether its lead is larger than
the noise.

A worker's group is the `group` launch recorded. Runs from before sweeps have none: their
workers are grouped by (branch, vars), a `seed` var not counting, so two workers that differ
only in their seed still form one group.

Only workers that succeeded and were collected count towards a group's statistics; the
others are counted as failed (failed, killed, lost, stopped) or missing (still running,
pending, unreachable, or not collected yet)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .compare_read import REFERENCE_PREFIX, BranchResult, direction
from .compare_stats import Lead, Summary, lead_of, summarize

FAILED_STATES = ("failed", "killed", "lost", "stopped")  # in the order shown
_SEED_SUFFIX = re.compile(r"[-_.]?(?:s|seed)[-_]?\d+$")


@dataclass(frozen=True)
class Group:
    name: str
    branch: str
    vars: Mapping[str, Any]
    members: tuple[BranchResult, ...]
    metrics: Mapping[str, Summary] = field(default_factory=dict)

    @property
    def reference(self) -> bool:
        """A group of reference workers: shown as a reference, never ranked best."""
        if not self.members:
            return self.name.startswith(REFERENCE_PREFIX)
        return all(b.reference for b in self.members)

    @property
    def n(self) -> int:
        """Workers that succeeded and were collected: the ones the statistics come from."""
        return sum(b.finished for b in self.members)

    @property
    def failed(self) -> int:
        return sum(b.state in FAILED_STATES for b in self.members)

    @property
    def missing(self) -> int:
        return len(self.members) - self.n - self.failed

    @property
    def seeds(self) -> tuple[int | None, ...]:
        return tuple(b.seed for b in self.members)

    @property
    def command(self) -> str:
        return self.members[0].command if self.members else ""

    def shortfall(self) -> str:
        """'1 failed, 1 stopped, 2 missing' (empty when every member counts): each way a
        member did not succeed, by its own name."""
        states = [b.state for b in self.members]
        parts = [f"{states.count(s)} {s}" for s in FAILED_STATES if s in states]
        if self.missing:
            parts.append(f"{self.missing} missing")
        return ", ".join(parts)


@dataclass(frozen=True)
class Winner:
    """The best group of a metric and how far it leads the runner-up."""

    metric: str
    how: str  # "min" | "max"
    best: str
    best_stat: Summary
    runner_up: str | None = None
    runner_stat: Summary | None = None
    lead: Lead | None = None

    @property
    def verdict(self) -> str:
        if self.runner_up is None:
            return "no other group to compare with"
        if self.lead is None:
            return "runner-up has no value"
        if self.lead.significant is None:
            return "not testable: a group has fewer than 2 seeds"
        return ("significant: lead larger than both 95% intervals" if self.lead.significant
                else "not significant: the 95% intervals overlap")

    def to_json(self) -> dict[str, Any]:
        return {"metric": self.metric, "direction": self.how, "best": self.best,
                "runner_up": self.runner_up, "lead": self.lead.lead if self.lead else None,
                "significant": self.lead.significant if self.lead else None,
                "verdict": self.verdict}


def _fallback_key(b: BranchResult) -> str:
    vars_ = {k: v for k, v in b.vars.items() if k != "seed"}
    return json.dumps([b.branch, vars_], sort_keys=True, default=str)


def _fallback_name(members: Sequence[BranchResult]) -> str:
    names = [b.name for b in members]
    if len(names) == 1:
        return names[0]
    stripped = {_SEED_SUFFIX.sub("", n) for n in names}
    if len(stripped) == 1 and next(iter(stripped)):
        return stripped.pop()
    prefix = names[0]
    for n in names[1:]:
        while not n.startswith(prefix):
            prefix = prefix[:-1]
    return prefix.rstrip("-_.") or names[0]


def build_groups(branches: Sequence[BranchResult], metrics: Sequence[str]) -> tuple[Group, ...]:
    """Groups in the order their first worker appears, `baseline-*` references last; names
    made unique."""
    by_key: dict[str, list[BranchResult]] = {}
    for b in branches:
        key = "group:" + b.group if b.group else "auto:" + _fallback_key(b)
        by_key.setdefault(key, []).append(b)
    groups, taken = [], set()
    for key, members in by_key.items():
        name = key[len("group:"):] if key.startswith("group:") else _fallback_name(members)
        base, i = name, 2
        while name in taken:
            name, i = f"{base}-{i}", i + 1
        taken.add(name)
        stats = {m: summarize([v for b in members if b.finished
                               and (v := b.value(m)) is not None]) for m in metrics}
        first = members[0]
        groups.append(Group(name, first.branch,
                            {k: v for k, v in first.vars.items()
                             if not (k == "seed" and first.seed is not None)},
                            tuple(members), stats))
    return tuple(sorted(groups, key=lambda g: g.reference))


def ranked(groups: Sequence[Group], metric: str) -> list[Group]:
    """Groups with a mean for a directed metric, best first (references left out)."""
    how = direction(metric)
    present = [g for g in groups if not g.reference and metric in g.metrics
               and g.metrics[metric].mean is not None]
    if how is None:
        return []
    return sorted(present, key=lambda g: g.metrics[metric].mean * (1 if how == "min" else -1))


def winners(groups: Sequence[Group], metrics: Sequence[str]) -> dict[str, Winner]:
    """Per directed metric with a value in any ranked group: the best group, the runner-up,
    the lead and whether it is larger than both groups' 95% intervals."""
    out: dict[str, Winner] = {}
    for m in metrics:
        order = ranked(groups, m)
        if not order:
            continue
        best, how = order[0], direction(m) or "max"
        if len(order) == 1:
            out[m] = Winner(m, how, best.name, best.metrics[m])
            continue
        second = order[1]
        out[m] = Winner(m, how, best.name, best.metrics[m], second.name, second.metrics[m],
                        lead_of(best.metrics[m], second.metrics[m]))
    return out


def group_json(g: Group, metrics: Sequence[str]) -> dict[str, Any]:
    return {"name": g.name, "branch": g.branch, "vars": dict(g.vars), "n": g.n,
            "failed": g.failed, "missing": g.missing, "reference": g.reference,
            "workers": [b.name for b in g.members], "seeds": list(g.seeds),
            "metrics": {m: g.metrics[m].to_json() for m in metrics
                        if m in g.metrics and (g.metrics[m].n or g.metrics[m].diverged)}}
