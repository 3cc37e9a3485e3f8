"""Worker states and what one look at a host saw: the vocabulary every backend shares."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


class WorkerState(str, enum.Enum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    KILLED = "killed"
    STOPPED = "stopped"
    LOST = "lost"
    UNKNOWN = "unknown"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({WorkerState.SUCCEEDED, WorkerState.FAILED, WorkerState.KILLED,
                      WorkerState.STOPPED, WorkerState.LOST})

# Why a worker whose directory does not exist is lost: nothing ever ran there, or the directory
# was deleted. A launch records its workers before it starts them; while it runs, status shows
# such a worker as pending instead (api._observe_manifest).
NEVER_STARTED = ("its worker directory is missing (the launch was interrupted before it, or "
                 "the directory was deleted)")


@dataclass(frozen=True)
class Observation:
    """What one status round trip saw in a worker directory."""

    state: WorkerState
    pid: int | None = None
    exit_code: int | None = None
    signal: int | None = None
    started_at: float | None = None
    ended_at: float | None = None
    progress: Mapping[str, Any] | None = None
    host_time: float | None = None
    reason: str | None = None
    env: Mapping[str, Any] | None = None  # what the worker ran with (env.json)
    queue_position: int | None = None  # 0: next to start
    attempt: int | None = None  # the host's attempt number (retries count up)
    gpus: tuple[str, ...] = ()  # what the host's queue gave it


@dataclass(frozen=True)
class HostHealth:
    name: str
    reachable: bool
    reason: str | None = None
    load: tuple[float, float, float] | None = None
    disk_free_bytes: int | None = None
    gpus: tuple[dict[str, Any], ...] = field(default_factory=tuple)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "reachable": self.reachable, "reason": self.reason,
                "load": list(self.load) if self.load else None,
                "disk_free_bytes": self.disk_free_bytes, "gpus": list(self.gpus)}
