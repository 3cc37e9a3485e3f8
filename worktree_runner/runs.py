"""The run manifest under `.wt-run/runs/<run>/manifest.json`: typed records, atomic writes,
and a file lock that serialises concurrent wt-run processes on one repository."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
import threading
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
    entry: str | None = None  # the `branches:` entry a sweep worker comes from
    vars: Mapping[str, str] = field(default_factory=dict)  # final template values
    seed: int | None = None
    group: str | None = None  # shared by the seeds of one branch + vars
    env: Mapping[str, Any] = field(default_factory=dict)  # recorded at start (envinfo.py)
    retry_max: int = 0  # retries its policy allows (attempt k of retry_max + 1)

    @property
    def branch_entry(self) -> str:
        return self.entry or self.name

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


@dataclass(frozen=True)
class HostLayout:
    """Every path wt-run uses on one host, derived from its root: the state directory (runs,
    worker dirs, host programs, queue), the repository, the worktrees and the dataset. On the
    local host these are the user's own repository and `worktrees:`; on remote hosts they sit
    under the host's root (`<root>/repo`, `<root>/worktrees/<name>`)."""

    root: str
    repo: str
    worktrees: str
    data: str
    data_rel: str | None = None  # repo-relative dataset dir on a remote host; None: absolute

    @classmethod
    def local(cls, state_dir: Path, repo: Path, worktrees: Path, data: Path) -> HostLayout:
        return cls(str(state_dir), str(repo), str(worktrees), str(data))

    @classmethod
    def remote(cls, root: str, data: str) -> HostLayout:
        """`root` is the host's resolved root (`~` expanded there); `data` the config's."""
        base = root.rstrip("/") or "/"
        if os.path.isabs(data):
            return cls(base, f"{base}/repo", f"{base}/worktrees", data)
        rel = data.strip("/")
        return cls(base, f"{base}/repo", f"{base}/worktrees", f"{base}/repo/{rel}", rel)

    @property
    def tmp(self) -> str:
        return f"{self.root}/tmp"

    def worktree(self, name: str) -> str:
        return f"{self.worktrees}/{name}"

    def run_dir(self, run: str) -> str:
        return f"{self.root}/runs/{run}"

    def worker_dir(self, run: str, name: str) -> str:
        return f"{self.run_dir(run)}/workers/{name}"


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


_guards: dict[tuple[Path, int], threading.RLock] = {}
_depth: dict[tuple[Path, int], int] = {}
_guards_lock = threading.Lock()


@contextlib.contextmanager
def _file_lock(path: Path, mode: int) -> Iterator[None]:
    """flock on `path`, re-entrant in this process (flock itself would deadlock on a second
    open of the same file); the threads of this process take turns at each lock file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    key = (path, mode)
    with _guards_lock:
        guard = _guards.setdefault(key, threading.RLock())
    with guard:
        if _depth.get(key):
            _depth[key] += 1
            try:
                yield
            finally:
                _depth[key] -= 1
            return
        with open(path, "a+") as fh:
            fcntl.flock(fh, mode)
            _depth[key] = 1
            try:
                yield
            finally:
                _depth[key] = 0
                fcntl.flock(fh, fcntl.LOCK_UN)


class RunStore:
    """All runs of one repository: `<state_dir>/runs/<run>/manifest.json`."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.runs_dir = state_dir / "runs"

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the repository's manifest lock (blocking) for a read-modify-write. Held only
        around manifest reads and writes, never across a host round trip; re-entrant within
        one process."""
        with _file_lock(self.state_dir / "lock", fcntl.LOCK_EX):
            yield

    @contextlib.contextmanager
    def planning(self) -> Iterator[None]:
        """Serialise the planning of launches (worktrees, GPU and slot choice) without
        blocking status, stop, logs or collect."""
        with _file_lock(self.state_dir / "plan.lock", fcntl.LOCK_EX):
            yield

    @contextlib.contextmanager
    def launching(self) -> Iterator[None]:
        """Mark a launch in progress (shared: launches may overlap) until its workers are
        started and recorded; `busy` tells."""
        with _file_lock(self.state_dir / "launch.lock", fcntl.LOCK_SH):
            yield

    def busy(self) -> bool:
        """True while a launch is in progress (it has recorded its workers and may still be
        starting them); never blocks."""
        try:
            fh = open(self.state_dir / "launch.lock", "a+")  # noqa: SIM115 - closed below
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
        created = not path.exists()
        atomic_write_text(path, json.dumps(manifest.to_json(), indent=1, sort_keys=True) + "\n")
        if created:
            # `runs/latest` names the run created last, for scripts; saving a run again (as
            # stop or status do) never moves it.
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
        """The newest run: the one created last (looking at a run never changes this)."""
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
