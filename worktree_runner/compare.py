"""`compare`: read what `collect` brought back under `results/<run>/` and compare a run's
workers and their groups (the seeds of one branch + vars): per worker the final and best
metrics, training time, throughput, parameters, FLOPs and checkpoint size; per group the
mean, sample std and 95% interval of each metric, the winner of each metric and whether its
lead is significant, and what else differs (confounders).

A worker that was not collected yet is shown with its state from the run manifest and a note;
compare never copies anything itself (run `wt-run collect` first: it is incremental).

Reading a worker's files: `compare_read.py`; statistics: `compare_stats.py`; groups and
winners: `compare_groups.py`; confounders: `compare_confounders.py`; code differences:
`compare_code.py`; rendering: `compare_report.py` (files) and `display_compare.py` (terminal).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .compare_code import CodeDiff, code_diffs
from .compare_confounders import Confounder, between, within
from .compare_groups import FAILED_STATES, Group, Winner, build_groups, winners
from .compare_read import (
    BranchResult,
    Curve,
    direction,
    metric_columns,
    read_branch,
    read_summary,
    read_tensorboard,
)
from .config import Config
from .errors import WtRunError
from .runs import RunStore, WorkerRecord

__all__ = ["BranchResult", "Comparison", "Curve", "compare", "direction", "read_tensorboard"]


@dataclass(frozen=True)
class Comparison:
    run: str
    results_dir: Path
    branches: tuple[BranchResult, ...]
    metrics: tuple[str, ...]
    baseline: str | None = None  # a worker's or a group's name
    base_ref: str = ""
    diffs: Mapping[str, CodeDiff] = field(default_factory=dict)
    groups: tuple[Group, ...] = ()
    winners: Mapping[str, Winner] = field(default_factory=dict)
    confounders: tuple[Confounder, ...] = ()

    @property
    def grouped(self) -> bool:
        """True when some group has several workers (seeds): then groups are the rows."""
        return any(len(g.members) > 1 for g in self.groups)

    def branch(self, name: str) -> BranchResult:
        return next(b for b in self.branches if b.name == name)

    def group(self, name: str) -> Group:
        return next(g for g in self.groups if g.name == name)

    def best_name(self, metric: str, best_of_curve: bool = False) -> set[str]:
        """Workers holding the best value of a metric column (ties all win; reference
        workers never do, nor failed ones; once any succeeded, only those that did)."""
        how = direction(metric)
        if how is None:
            return set()
        candidates = [b for b in self.branches if not b.reference]
        if any(b.state == "succeeded" for b in candidates):
            candidates = [b for b in candidates if b.state == "succeeded"]
        else:  # nothing finished yet: the live ones lead, never the failed
            candidates = [b for b in candidates if b.state not in FAILED_STATES]
        values = {b.name: (b.best(metric) if best_of_curve else b.value(metric))
                  for b in candidates}
        present = {n: v for n, v in values.items() if v is not None and not math.isnan(v)}
        if len(present) < 2:
            return set()
        target = min(present.values()) if how == "min" else max(present.values())
        return {n for n, v in present.items() if v == target}

    def baseline_value(self, metric: str) -> float | None:
        if self.baseline is None:
            return None
        if any(b.name == self.baseline for b in self.branches):
            return self.branch(self.baseline).value(metric)
        stat = self.group(self.baseline).metrics.get(metric)
        return stat.mean if stat else None

    def delta(self, name: str, metric: str) -> float | None:
        """A worker's final value minus the baseline's."""
        base = self.baseline_value(metric)
        mine = self.branch(name).value(metric)
        return None if mine is None or base is None else mine - base

    def group_delta(self, name: str, metric: str) -> float | None:
        """A group's mean minus the baseline's value (a worker's, or a group's mean)."""
        base = self.baseline_value(metric)
        stat = self.group(name).metrics.get(metric)
        mine = stat.mean if stat else None
        return None if mine is None or base is None else mine - base

    def confounders_of(self, scope: str) -> list[Confounder]:
        return [c for c in self.confounders if c.scope == scope]


# ---------------------------------------------------------------- the run

def _records(config: Config, run: str | None, results: Path
             ) -> tuple[str, list[WorkerRecord], dict[str, str]]:
    """The run's workers and their states: from the manifest (live state from `status` when
    the run is still known here), else from the collected worker.json files."""
    store = RunStore(config.state_dir)
    if run is None or store.exists(run):
        run_id = store.resolve(run)
        from .api import status

        report = status(config, run_id, store=store)
        return (run_id, [w.record for w in report.workers],
                {w.record.name: w.state.value for w in report.workers})
    run_dir = results / run
    if not run_dir.is_dir():
        raise WtRunError(f"run '{run}' is neither in this repository's runs nor under {results}",
                         "check the id (`ls .wt-run/runs`, `ls results`) and pass it to --run")
    recs, states = [], {}
    for meta_path in sorted(run_dir.glob("*/worker.json")):
        meta = read_summary(meta_path)
        try:
            rec = WorkerRecord.from_json(meta)
        except TypeError:
            continue
        recs.append(rec)
        states[rec.name] = str(meta.get("observed_state") or rec.state or "unknown")
    return run, recs, states


def compare(config: Config, *, run: str | None = None, baseline: str | None = None,
            results: Path | None = None, with_diffs: bool = False) -> Comparison:
    """Read a run's collected results; `with_diffs` adds code differences against `base`."""
    results = (results or config.repo / "results").expanduser().resolve()
    run_id, records, states = _records(config, run, results)
    if not records:
        raise WtRunError(f"run {run_id} has no workers", "launch some with `wt-run launch`")
    branches = tuple(
        read_branch(r, results / run_id / r.name, states.get(r.name, "unknown"),
                    config.branches[r.branch_entry].vars if r.branch_entry in config.branches
                    else {})
        for r in records)
    metrics = metric_columns(branches)
    groups = build_groups(branches, metrics)
    names = [b.name for b in branches] + [g.name for g in groups if g.name not in
                                          {b.name for b in branches}]
    if baseline is not None and baseline not in names:
        raise WtRunError(f"--baseline '{baseline}' is neither a worker nor a group of run "
                         f"{run_id}", f"pick one of: {', '.join(names)}")
    found: list[Confounder] = []
    for g in groups:
        found += within(g.name, g.members)
    found += between({g.name: g.members for g in groups if not g.reference})
    diffs = code_diffs(config.repo, config.base, branches) if with_diffs else {}
    return Comparison(run_id, results / run_id, branches, metrics, baseline, config.base,
                      diffs, groups, winners(groups, metrics), tuple(found))
