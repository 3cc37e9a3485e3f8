"""The one seam between the commands and the places workers run.

A `Backend` offers what the commands need from a host: prepare code and worktrees, start
workers, observe them, stop them, say where a log is, and resume a queue. `ShellBackend`
implements it once for every host that runs POSIX scripts (the local machine and SSH hosts
run the very same scripts); `slurm.SlurmBackend` implements it for Slurm. `backends.py`
builds the right one from the config: the only place outside config validation that looks at
a host's type."""

from __future__ import annotations

import shlex
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from .config import BranchConfig, Config, HostConfig
from .errors import ConfigError, HostUnreachable
from .hosts import Host, LocalHost
from .observe import query_workers
from .runs import HostLayout, WorkerRecord
from .states import HostHealth, Observation
from .workers import (
    LaunchSpec,
    QueueSettings,
    resume_script,
    start_workers,
    stop_workers,
)


@dataclass(frozen=True)
class Checkout:
    """Code prepared on a host: a worktree (or the repository) at a commit."""

    path: str
    commit: str
    branch: str = ""


@dataclass(frozen=True)
class Started:
    """What a start round trip did: records of started (or queued) workers, errors per
    worker, and whether the connection died after the script may have run."""

    records: list[WorkerRecord] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    maybe_ran: bool = False


def worker_env(config: Config, rec: WorkerRecord, run: str, data: str) -> dict[str, str]:
    """The environment a worker's command sees: config, host and branch env, then wt-run's."""
    hc = config.host(rec.host)
    b = config.branches.get(rec.branch_entry)
    env = {**config.env, **hc.env, **(b.env if b else {})}
    env.update({"WT_RUN_OUT": rec.out, "WT_RUN_NAME": rec.name, "WT_RUN_BRANCH": rec.branch,
                "WT_RUN_RUN": run, "WT_RUN_DATA": data, "WT_RUN_COMMIT": rec.commit,
                "WT_RUN_ATTEMPT": str(rec.attempt)})
    if rec.seed is not None:
        env["WT_RUN_SEED"] = str(rec.seed)
    if rec.gpus:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(rec.gpus)
    return env


def worker_meta(config: Config, rec: WorkerRecord, run: str, gpu: bool, data: str
                ) -> dict[str, Any]:
    """meta.json: what the host-side wrapper and queue need to know about a worker."""
    policy = config.retry_for(rec.branch_entry)
    return {"name": rec.name, "run": run, "notify": config.notify,
            "retry": {"max": policy.max, "on": list(policy.on)}, "grace": config.stop_grace,
            "gpu": gpu, "worktree": rec.worktree, "data": data,
            "gpus": ",".join(rec.gpus) or None}


class Backend(ABC):
    """One host of the config, as the commands see it."""

    def __init__(self, config: Config, hc: HostConfig) -> None:
        self.config = config
        self.hc = hc

    @property
    def name(self) -> str:
        return self.hc.name

    @abstractmethod
    def connect(self) -> Host:
        """A Host to run scripts on (pooled: one connection per host per command)."""

    @abstractmethod
    def layout(self) -> HostLayout:
        """Every path on this host."""

    @abstractmethod
    def prepare_worktrees(self, branches: Sequence[BranchConfig], *, force: bool,
                          dry_run: bool) -> list[Checkout]:
        """One worktree per branch entry at its branch's commit (refusals before changes)."""

    @abstractmethod
    def prepare_repo(self, *, dry_run: bool) -> Checkout:
        """The repository itself at this checkout's HEAD (for `generate`)."""

    @abstractmethod
    def start(self, run: str, records: Sequence[WorkerRecord]) -> Started:
        """Start (or queue) the workers in one round trip."""

    @abstractmethod
    def observe(self, records: Sequence[WorkerRecord], timeout: float | None = None
                ) -> tuple[HostHealth, list[Observation]]:
        """One round trip: host health and every record's observation."""

    @abstractmethod
    def stop(self, records: Sequence[WorkerRecord]) -> list[str]:
        """Stop the workers; per worker: signalled, done, marked, dequeued, mismatch or
        `unknown: <why>`."""

    def log_path(self, rec: WorkerRecord) -> str:
        return rec.log

    def queue(self) -> QueueSettings | None:
        """The host's capacity when its workers wait in its own queue."""
        return None

    def resume(self) -> str:
        return "has no queue (no slots: or gpus:)"

    @abstractmethod
    def setup(self, *, dry_run: bool) -> list[str]:
        """Prepare the host (idempotent); lines to show."""

    def remove_run_files(self, run: str) -> str:
        """Delete a run's worker directories on the host; returns what was removed."""
        path = self.layout().run_dir(run)
        self.connect().run_script(f"rm -rf -- {shlex.quote(path)}\n").check()
        return path


class ShellBackend(Backend):
    """Hosts that run wt-run's POSIX scripts directly: detached workers, the host queue."""

    def queue(self) -> QueueSettings | None:
        if self.hc.capacity is None:
            return None
        return QueueSettings(self.hc.slots if not self.hc.gpus else None, self.hc.gpus,
                             self.hc.gpu_free_mib)

    def start(self, run: str, records: Sequence[WorkerRecord]) -> Started:
        now = time.time()
        host = self.connect()
        data = self.layout().data
        specs = [LaunchSpec(r.name, r.worker_dir, r.worktree, r.command,
                            worker_env(self.config, r, run, data),
                            worker_meta(self.config, r, run, bool(self.hc.gpus), data))
                 for r in records]
        try:
            started = start_workers(host, specs, self.config.stop_grace, self.queue())
        except HostUnreachable as exc:
            if not getattr(exc, "maybe_ran", False):
                raise
            # The connection died after the launch script was sent: it may have run. Never
            # send it again (that could start workers twice); keep the records so that
            # `status` reads the truth from the worker files.
            return Started([replace(r, launched_at=now) for r in records],
                           [f"{exc} (the workers may have started: `wt-run status` shows "
                            "them; nothing was retried)"], maybe_ran=True)
        done = [replace(r, launched_at=now, state=None, exit_code=None, signal=None, pid=None,
                        ended_at=None, started_at=None)
                for r in records if isinstance(started.get(r.name), int)]
        errors = [f"{n}: {v}" for n, v in started.items() if not isinstance(v, int)]
        return Started(done, errors)

    def observe(self, records: Sequence[WorkerRecord], timeout: float | None = None
                ) -> tuple[HostHealth, list[Observation]]:
        return query_workers(self.connect(), [r.worker_dir for r in records],
                             timeout=timeout or self.hc.command_timeout)

    def stop(self, records: Sequence[WorkerRecord]) -> list[str]:
        return stop_workers(self.connect(), [r.worker_dir for r in records],
                            self.config.stop_grace)

    def resume(self) -> str:
        if self.queue() is None:
            return super().resume()
        host = self.connect()
        out = host.run_script(resume_script(host.root)).check()
        words = out.stdout.split()
        waiting = words[-1] if words and words[-1].isdigit() else "0"
        return f"queue drainer started ({waiting} waiting)"


class LocalBackend(ShellBackend):
    """This machine: the user's own repository, worktrees made by the same script as on
    remote hosts."""

    def connect(self) -> Host:
        return LocalHost(self.name, self.config.state_dir)

    def layout(self) -> HostLayout:
        c = self.config
        return HostLayout.local(c.state_dir, c.repo, c.worktrees, c.data_path())

    def prepare_worktrees(self, branches: Sequence[BranchConfig], *, force: bool,
                          dry_run: bool) -> list[Checkout]:
        from .worktrees import prepare_local_worktrees

        done = prepare_local_worktrees(self.config, self.connect(), self.layout(), branches,
                                       force=force, dry_run=dry_run)
        return [Checkout(path, commit) for path, commit in done]

    def prepare_repo(self, *, dry_run: bool) -> Checkout:
        from .repo_refs import current_branch, git_out

        if not dry_run:
            from pathlib import Path

            Path(self.layout().data).mkdir(parents=True, exist_ok=True)
        head = git_out(self.config, "rev-parse", "HEAD", check=False).strip()
        return Checkout(str(self.config.repo), head, current_branch(self.config))

    def setup(self, *, dry_run: bool) -> list[str]:
        raise ConfigError(f"host {self.name} is the local machine; setup is for remote hosts",
                          "run setup with --host set to an ssh or slurm host")

    def remove_run_files(self, run: str) -> str:
        # Local worker dirs sit in the run's own directory, which clean removes itself.
        return self.layout().run_dir(run)


class RemoteBackend(Backend):
    """Hosts reached through a Host whose root holds a repository fed by git bundles."""

    def layout(self) -> HostLayout:
        return HostLayout.remote(self.connect().root, self.config.data)

    def prepare_worktrees(self, branches: Sequence[BranchConfig], *, force: bool,
                          dry_run: bool) -> list[Checkout]:
        from .sync import prepare_remote_worktrees

        done = prepare_remote_worktrees(self.config, self.connect(), branches, force=force,
                                        dry_run=dry_run)
        return [Checkout(path, commit) for _, path, commit in done]

    def prepare_repo(self, *, dry_run: bool) -> Checkout:
        from .sync import prepare_remote_repo

        path, commit, branch = prepare_remote_repo(self.config, self.connect(),
                                                   dry_run=dry_run)
        return Checkout(path, commit, branch)

    def setup(self, *, dry_run: bool) -> list[str]:
        from .remote_setup import setup_host

        return setup_host(self.config, self.hc, self.connect(), dry_run=dry_run)


class SSHBackend(RemoteBackend, ShellBackend):
    """A machine over SSH (Fabric), running the same scripts as the local host."""

    def connect(self) -> Host:
        from .ssh import shared_ssh_host

        return shared_ssh_host(self.hc)
