"""What the commands report: the typed results that the CLI renders and `--json` prints."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from .observe import eta_seconds, progress_fraction
from .runs import WorkerRecord
from .states import HostHealth, Observation, WorkerState


@dataclass(frozen=True)
class WorkerView:
    """A record joined with what status observed now."""

    record: WorkerRecord
    obs: Observation

    @property
    def state(self) -> WorkerState:
        return self.obs.state

    def to_json(self) -> dict[str, Any]:
        r, o = self.record, self.obs
        progress = dict(o.progress) if o.progress else None
        if progress is not None:
            progress["eta_s"] = eta_seconds(o)
            progress["fraction"] = progress_fraction(o.progress)
        return {
            "name": r.name, "branch": r.branch, "commit": r.commit, "host": r.host,
            "kind": r.kind, "state": o.state.value, "pid": o.pid if o.pid else r.pid,
            "exit_code": o.exit_code, "signal": o.signal,
            "started_at": _iso(o.started_at or r.started_at),
            "ended_at": _iso(o.ended_at or r.ended_at),
            "worktree": r.worktree, "log": r.log, "out": r.out,
            "attempt": max(o.attempt or 0, r.attempt), "max_attempts": r.retry_max + 1,
            "command": r.command, "gpus": list(o.gpus or r.gpus), "job_id": r.job_id,
            "scheduler_state": getattr(o, "scheduler_state", r.scheduler_state),
            "reason": o.reason,
            "progress": progress,
            "vars": dict(r.vars), "seed": r.seed, "group": r.group or r.name,
            "env": dict(r.env) if r.env else (dict(o.env) if o.env else None),
            "queue_position": o.queue_position,
        }


@dataclass(frozen=True)
class StatusReport:
    run: str
    workers: list[WorkerView]
    hosts: list[HostHealth]

    def to_json(self) -> dict[str, Any]:
        return {"run": self.run, "workers": [w.to_json() for w in self.workers],
                "hosts": [h.to_json() for h in self.hosts]}

    @property
    def done(self) -> bool:
        return all(w.state.terminal for w in self.workers)

    @property
    def all_succeeded(self) -> bool:
        return all(w.state == WorkerState.SUCCEEDED for w in self.workers)


@dataclass(frozen=True)
class HostOutcome:
    host: str
    started: list[str] = field(default_factory=list)
    error: str | None = None
    queued: list[str] = field(default_factory=list)  # waiting in the host's queue


@dataclass(frozen=True)
class LaunchReport:
    run: str
    planned: list[WorkerRecord]
    outcomes: list[HostOutcome]
    dry_run: bool = False
    notes: tuple[str, ...] = ()  # things the user should know, not errors

    @property
    def ok(self) -> bool:
        return all(o.error is None for o in self.outcomes)


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


@dataclass(frozen=True)
class StopOutcome:
    name: str
    host: str
    result: str  # signalled | done | marked | mismatch | unknown: <why>
