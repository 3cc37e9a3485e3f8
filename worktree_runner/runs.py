"""The run manifest under `.wt-run/runs/<run>/manifest.json`: typed records, atomic writes,
and a file lock that serialises concurrent wt-run processes on one repository."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .errors import WtRunError
from .names import check_run_id

MANIFEST_VERSION = 1


@dataclass(frozen=True)
class WorkerRecord:
    """What wt-run knows about one worker of a run. Live state comes from the host's files;
    `state` here only caches a terminal state once seen, so it never goes back."""

    name: str
    branch: str
    commit: str
    host: str
    kind: str  # train | generate
    command: str
    worktree: str
    worker_dir: str  # on the host: pid, exit, stop, log, out/
    attempt: int = 1
    launched_at: float | None = None
    state: str | None = None  # cached terminal state
    exit_code: int | None = None
    signal: int | None = None
    pid: int | None = None
    started_at: float | None = None
    ended_at: float | None = None
    gpus: tuple[str, ...] = ()
    job_id: str | None = None  # Slurm
    scheduler_state: str | None = None  # Slurm's own word, kept next to ours
    reason: str | None = None
    collected_at: float | None = None
    # Sweeps: the final template values, the seed (None when none) and the group shared by
    # every seed of one branch + vars; `env` is what the worker recorded at start (host, gpu,
    # driver, python, torch, numpy, packages_hash, dirty, snapshot, data_fingerprint).
    vars: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None
    group: str | None = None
    env: dict[str, Any] = field(default_factory=dict)

    @property
    def log(self) -> str:
        return f"{self.worker_dir}/log"

    @property
    def out(self) -> str:
        return f"{self.worker_dir}/out"

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> WorkerRecord:
        known = {f.name for f in fields(cls)}
        data = {k: v for k, v in raw.items() if k in known}
        data["gpus"] = tuple(data.get("gpus") or ())
        for key in ("vars", "env"):
            data[key] = dict(data[key]) if isinstance(data.get(key), dict) else {}
        return cls(**data)


@dataclass(frozen=True)
class RunManifest:
    run: str
    created_at: float
    config: str
    workers: dict[str, WorkerRecord] = field(default_factory=dict)

    def with_worker(self, record: WorkerRecord) -> RunManifest:
        return replace(self, workers={**self.workers, record.name: record})

    def select(self, names: Sequence[str]) -> list[WorkerRecord]:
        """The named workers (all of them for no names); an unknown name is an error."""
        unknown = [n for n in names if n not in self.workers]
        if unknown:
            raise WtRunError(f"run {self.run} has no worker '{unknown[0]}'",
                             f"pick one of: {', '.join(self.workers) or '(none)'}")
        return [self.workers[n] for n in (names or self.workers)]

    def to_json(self) -> dict[str, Any]:
        return {"version": MANIFEST_VERSION, "run": self.run, "created_at": self.created_at,
                "config": self.config,
                "workers": {n: asdict(w) for n, w in self.workers.items()}}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> RunManifest:
        return cls(run=raw["run"], created_at=raw["created_at"], config=raw.get("config", ""),
                   workers={n: WorkerRecord.from_json(w) for n, w in raw["workers"].items()})


def group_by_host(records: Iterable[WorkerRecord]) -> dict[str, list[WorkerRecord]]:
    """Records per host, in order: each host is handled in one round trip."""
    by_host: dict[str, list[WorkerRecord]] = {}
    for rec in records:
        by_host.setdefault(rec.host, []).append(rec)
    return by_host


def atomic_write_text(path: Path, text: str, mode: int = 0o600) -> None:
    """Write `text` to `path` so that readers see the old or the new file, never a torn one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


class RunStore:
    """All runs of one repository: `<state_dir>/runs/<run>/manifest.json` plus `latest`."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.runs_dir = state_dir / "runs"

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the repository's wt-run lock (blocking) for a read-modify-write."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.state_dir / "lock", "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def busy(self) -> bool:
        """True while another process holds the lock (e.g. a launch that has recorded its
        workers and is starting them); never blocks."""
        try:
            fh = open(self.state_dir / "lock", "a+")  # noqa: SIM115 - closed below
        except OSError:
            return False
        with fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(fh, fcntl.LOCK_UN)
            return False

    def run_dir(self, run: str) -> Path:
        return self.runs_dir / check_run_id(run)

    def new_run_id(self) -> str:
        base = time.strftime("%Y%m%d-%H%M%S")
        run, n = base, 1
        while (self.runs_dir / run).exists():
            n += 1
            run = f"{base}-{n}"
        return run

    def exists(self, run: str) -> bool:
        return (self.run_dir(run) / "manifest.json").is_file()

    def load(self, run: str) -> RunManifest:
        path = self.run_dir(run) / "manifest.json"
        try:
            return RunManifest.from_json(json.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            known = self.list_runs()
            raise WtRunError(f"run '{run}' does not exist",
                             f"pick one of: {', '.join(known[-5:])}" if known
                             else "launch one with `wt-run launch --branches NAME...`"
                             ) from None
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            # AttributeError: valid JSON of the wrong shape (`"workers": []`).
            raise WtRunError(f"manifest {path} is unreadable: {exc}",
                             "restore it from a backup or remove the run directory") from None

    def save(self, manifest: RunManifest) -> None:
        path = self.run_dir(manifest.run) / "manifest.json"
        atomic_write_text(path, json.dumps(manifest.to_json(), indent=1, sort_keys=True) + "\n")
        atomic_write_text(self.runs_dir / "latest", manifest.run + "\n")

    def update(self, run: str, *records: WorkerRecord,
               expected: Mapping[str, WorkerRecord] | None = None) -> RunManifest:
        """Merge records into the stored manifest under the lock (for status/stop writers).
        With `expected` (name -> the record the caller's change was based on), a record is
        merged only while the stored one is still that record: a launch may have replaced it
        with a new attempt meanwhile, which an old observation must not overwrite."""
        with self.locked():
            manifest = self.load(run)
            for rec in records:
                if expected is not None and manifest.workers.get(rec.name) != expected.get(
                        rec.name):
                    continue
                manifest = manifest.with_worker(rec)
            self.save(manifest)
            return manifest

    def latest(self) -> str:
        try:
            run = (self.runs_dir / "latest").read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            run = ""
        if run and self.exists(run):
            return run
        runs = self.list_runs()
        if not runs:
            raise WtRunError("no runs yet in this repository",
                             "start one with `wt-run launch --branches NAME...`")
        return runs[-1]

    def resolve(self, run: str | None) -> str:
        return self.latest() if run is None else check_run_id(run)

    def open_for_launch(self, run: str | None, config_path: str) -> RunManifest:
        """The manifest a launch adds to: the given run (new or existing), else a new run."""
        run_id = self.resolve(run) if run else self.new_run_id()
        if run and self.exists(run_id):
            return self.load(run_id)
        return RunManifest(run_id, time.time(), config_path)

    def list_runs(self) -> list[str]:
        if not self.runs_dir.is_dir():
            return []
        found = [(self._created(p), p.name) for p in self.runs_dir.iterdir()
                 if (p / "manifest.json").is_file()]
        return [name for _, name in sorted(found)]

    @staticmethod
    def _created(run_dir: Path) -> float:
        try:
            return float(json.loads((run_dir / "manifest.json").read_text())["created_at"])
        except (OSError, ValueError, KeyError, TypeError):
            return 0.0
