"""Hosts: where worktrees live and workers run. Worktree, worker and collect logic is written
once as POSIX shell scripts run through `Host.run_script`; local and remote hosts differ only
in how a script reaches a shell and how files move."""

from __future__ import annotations

import shutil
import subprocess
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from .errors import CommandFailed, HostUnreachable


@dataclass(frozen=True)
class CommandResult:
    host: str
    command: str
    exit_code: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    def check(self) -> CommandResult:
        if self.exit_code != 0:
            raise CommandFailed(self.host, self.command, self.exit_code, self.stderr)
        return self


class Host(ABC):
    """A machine that runs shell scripts. `root` is wt-run's directory on it (runs, repo,
    worktrees for remote hosts)."""

    name: str
    root: str
    local = False  # this machine: files are reached directly, without a transfer

    @abstractmethod
    def run_script(self, script: str, *, timeout: float | None = None) -> CommandResult:
        """Run a POSIX sh script (sent on stdin, never on a command line) and return its
        result whatever the exit code; raise HostUnreachable when the host cannot be reached."""

    @abstractmethod
    def stream_script(self, script: str, out: TextIO) -> int:
        """Run a script, copying its stdout to `out` as it comes (for `logs -f`)."""

    @abstractmethod
    def put(self, local: Path, remote: str) -> None:
        """Copy a local file to a path on the host."""

    @abstractmethod
    def get(self, remote: str, local: Path) -> None:
        """Copy a file on the host to a local path."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    def ssh_argv(self) -> list[str] | None:
        """The OpenSSH client command that reaches this host (for collect's sftp), if any."""
        return None

    def sftp(self) -> Any:
        """An SFTP session to this host, if it has one."""
        return None

    def __enter__(self) -> Host:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LocalHost(Host):
    """This machine. Its root is the repository's `.wt-run` directory."""

    local = True

    def __init__(self, name: str, root: Path) -> None:
        self.name = name
        self.root = str(root)

    def run_script(self, script: str, *, timeout: float | None = None) -> CommandResult:
        try:
            # Workers' bytes (a log) need not be UTF-8: replaced, as over SSH.
            proc = subprocess.run(["sh", "-s"], input=script, capture_output=True, text=True,
                                  errors="replace", timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise HostUnreachable(self.name, f"local command timed out after {timeout} s",
                                  "check the machine's load and retry") from None
        return CommandResult(self.name, script, proc.returncode, proc.stdout, proc.stderr)

    def stream_script(self, script: str, out: TextIO) -> int:
        proc = subprocess.Popen(["sh", "-c", script], stdout=subprocess.PIPE, text=True,
                                errors="replace", stdin=subprocess.DEVNULL)
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                out.write(line)
                out.flush()
            return proc.wait()
        except KeyboardInterrupt:
            proc.terminate()
            proc.wait()
            return 130

    def put(self, local: Path, remote: str) -> None:
        Path(remote).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(local, remote)

    def get(self, remote: str, local: Path) -> None:
        local.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(remote, local)
