"""How `collect` moves files into a local staging directory, resuming what an interrupted collect
left there: a plain copy from this machine, rsync over the host's own OpenSSH settings, or
SFTP on the wt-run connection when the host lacks rsync. Nothing here verifies: `collect.py`
checks every staged copy against the sha256 the host computed.

Why rsync and not a sender of wt-run's own: measured with `scripts/bench_collect.py` (every
contender with the same ssh options and cipher), a custom stream over OpenSSH was no faster
than rsync, so rsync does the bulk work and wt-run only lists, hashes and checks. Measured
again over the same loopback sshd: a host-side python sender that hashes each file as it
streams it, into a receiver that hashes as it writes, took as long as rsync without the
hashing and 10-27% longer with it: the sha256 on both ends, not the transport, is the cost.
What rsync leaves is latency: each rsync is started ahead (`prepare`), so its SSH session,
the host's login shell and its rsync start while the host lists or other files copy."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from .collect_model import CollectObserver
from .errors import WtRunError
from .hosts import Host

CHUNK = 1 << 20
TRANSPORTS = ("auto", "rsync", "sftp", "copy")
# Lets a user (or a test) force rsync or SFTP.
TRANSPORT_ENV = "WT_RUN_COLLECT_TRANSPORT"
# Bulk data: AES-GCM (hardware-accelerated almost everywhere) is faster than OpenSSH's default
# ChaCha20; `^` only puts it first in the default list, so a server without it still works.
FAST_CIPHER = "aes128-gcm@openssh.com"


@dataclass(frozen=True)
class TransferResult:
    files: int = 0
    bytes: int = 0
    unreadable: tuple[tuple[str, str], ...] = ()  # (rel, why): gone since the listing


class Transport(ABC):
    """Copies listed files from one root on a host into a local staging directory."""

    name: str

    @abstractmethod
    def fetch(self, root: str, rels: Sequence[str], staging: Path, sizes: dict[str, int],
              observer: CollectObserver) -> TransferResult: ...

    def connect_early(self) -> None:  # noqa: B027 - optional hook
        """Start connecting now, while the host lists and hashes its files."""

    def prepare(self, root: str, staging: Path) -> None:  # noqa: B027 - optional hook
        """A `fetch` from `root` into `staging` will follow: start what can start already."""

    def close(self) -> None:  # noqa: B027 - optional hook
        pass


class CopyTransport(Transport):
    """Reads each file through `open_source` (a local file, or an SFTP file) and appends to the
    staged copy from where it stopped; the copy gets the source's mtime as seen after reading,
    so a file that changed meanwhile fails verification instead of looking whole."""

    def __init__(self, name: str, open_source: Callable[[str], Any],
                 mtime_ns: Callable[[Any], int]) -> None:
        self.name = name
        self._open = open_source
        self._mtime_ns = mtime_ns

    def fetch(self, root: str, rels: Sequence[str], staging: Path, sizes: dict[str, int],
              observer: CollectObserver) -> TransferResult:
        files = moved_bytes = 0
        unreadable = []
        for rel in rels:
            target = staging / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            have = target.stat().st_size if target.is_file() and not target.is_symlink() else 0
            if have > sizes[rel] or target.is_symlink():
                target.unlink()
                have = 0
            try:
                moved = self._copy(f"{root}/{rel}", target, have, sizes[rel], observer)
            except OSError as exc:
                unreadable.append((rel, f"unreadable: {exc.strerror or exc}"))
                continue
            moved_bytes += moved
            if moved or sizes[rel] == 0:
                files += 1
                observer.file_done()
        return TransferResult(files, moved_bytes, tuple(unreadable))

    def _copy(self, source: str, target: Path, offset: int, size: int,
              observer: CollectObserver) -> int:
        moved = 0
        with contextlib.closing(self._open(source)) as src:
            if offset < size:
                src.seek(offset)
                prefetch = getattr(src, "prefetch", None)
                if prefetch is not None:
                    prefetch(size)
                with open(target, "ab") as dst:
                    while chunk := src.read(CHUNK):
                        dst.write(chunk)
                        moved += len(chunk)
                        observer.advance(len(chunk))
            mtime_ns = self._mtime_ns(src)
        target.touch()  # an empty file has no bytes to copy, but its copy must exist
        os.utime(target, ns=(mtime_ns, mtime_ns))
        return moved


def local_transport() -> CopyTransport:
    return CopyTransport("copy", lambda p: open(p, "rb"),
                         lambda fh: os.fstat(fh.fileno()).st_mtime_ns)


def sftp_transport(sftp: Any) -> CopyTransport:
    def open_remote(path: str) -> Any:
        fh = sftp.open(path, "rb")
        fh.set_pipelined(True)
        return fh

    # SFTP carries whole seconds only; verification compares at that precision.
    return CopyTransport("sftp", open_remote, lambda fh: int(fh.stat().st_mtime) * 10**9)


def ssh_options(host: Host) -> list[str]:
    """The OpenSSH client options collect uses for bulk data from `host` (no `ssh`, no
    destination): the host's own settings (see `SSHHost.ssh_argv`) and the fast cipher."""
    argv = host.ssh_argv() or []
    return [*argv[1:-1], "-o", f"Ciphers=^{FAST_CIPHER}"]


class OpenSSHMaster:
    """One shared OpenSSH connection (ControlMaster) for every rsync call to one host, opened
    in the background while the host lists its files, closed at the end."""

    def __init__(self, host: Host) -> None:
        # A short private directory: unix socket paths are limited to ~100 bytes.
        self._control_dir = tempfile.mkdtemp(prefix="wtc-")
        self.destination = (host.ssh_argv() or [""])[-1]
        self._base = ["ssh", *ssh_options(host), "-o", f"ControlPath={self._control_dir}/%C"]
        self.argv = [*self._base, "-o", "ControlMaster=auto", "-o", "ControlPersist=60"]
        self._early: threading.Thread | None = None

    def connect_early(self) -> None:
        def connect() -> None:
            # -f: back once logged in; the master stays (ControlPersist). No pipes: the
            # master would hold them open.
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                subprocess.run([*self.argv, "-f", "-N", self.destination],
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, timeout=60, check=False)

        self._early = threading.Thread(target=connect, name="collect-ssh-connect", daemon=True)
        self._early.start()

    def ready(self) -> None:
        """Wait for the early connection, if any (from any thread)."""
        early = self._early
        if early is not None:
            early.join()

    def close(self) -> None:
        self.ready()
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run([*self._base, "-O", "exit", self.destination], capture_output=True,
                           timeout=10, check=False)
        shutil.rmtree(self._control_dir, ignore_errors=True)


_PROGRESS2 = re.compile(rb"^\s*([\d,]+)\s+\d+%(?:.*xfr#(\d+))?")
_LITERAL = re.compile(r"^Literal data: ([\d,]+)", re.MULTILINE)
_XFERRED = re.compile(r"^Number of regular files transferred: ([\d,]+)", re.MULTILINE)
# A file removed on the host since the listing (a rotated checkpoint): skipped, not an error.
_GONE = re.compile(r'(?:file has vanished: "(.+)"|link_stat "(.+)" failed: No such file)')


class _Rsync:
    """One started rsync that reads its file list on stdin: the host's rsync is started (an
    SSH session, a login shell) before the list is known."""

    def __init__(self, argv: list[str]) -> None:
        # stderr to a file, not a pipe: the backgrounded ControlMaster inherits it and would
        # hold a pipe open long after rsync ended.
        self.err_file = tempfile.TemporaryFile()  # noqa: SIM115 - closed by run or stop
        # Its own process group, so that an interrupt reaches rsync's receiver too.
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.err_file, start_new_session=True)

    def run(self, rels: Sequence[str], observer: CollectObserver) -> tuple[int, str, str]:
        """Send the list, follow the progress; (exit code, stats, stderr)."""
        proc = self.proc
        assert proc.stdin and proc.stdout
        try:
            with contextlib.suppress(BrokenPipeError):  # it ended early: its code says why
                proc.stdin.write(b"".join(r.encode() + b"\0" for r in rels))
            with contextlib.suppress(BrokenPipeError):
                proc.stdin.close()
            out = _follow_progress(proc.stdout, observer)
            code = proc.wait()
        except BaseException:
            self.stop()
            raise
        finally:
            proc.stdout.close()
        self.err_file.seek(0)
        err = self.err_file.read().decode(errors="replace")
        self.err_file.close()
        return code, out, err

    def stop(self) -> None:
        # TERM, not KILL, to the receiver as well: it keeps what it has of the current file
        # in the partial dir for the next collect to resume from.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait()
        for fh in (self.proc.stdin, self.proc.stdout, self.err_file):
            with contextlib.suppress(OSError):
                fh.close()  # type: ignore[union-attr]


class RsyncTransport(Transport):
    """rsync over the host's OpenSSH settings: only the listed files (never a symlink), their
    mtimes kept; an interrupted file waits in a partial dir (never under its own name), and
    the next collect resumes from it. `prepare` starts the rsync of a later `fetch` ahead, so
    starting the host's rsync (its SSH session and login shell) overlaps the listing or the
    copy before it."""

    name = "rsync"

    def __init__(self, host: Host) -> None:
        self._master = OpenSSHMaster(host)
        self._started: dict[tuple[str, Path], threading.Thread | _Rsync] = {}
        self._lock = threading.Lock()

    def connect_early(self) -> None:
        self._master.connect_early()

    def argv(self, root: str, staging: Path) -> list[str]:
        ssh = " ".join(_rsync_quote(a) for a in self._master.argv)
        return ["rsync", "--times", "--protect-args", "--from0", "--files-from=-",
                "--partial-dir=.rsync-partial",
                "--no-motd", "--info=progress2", "--stats", "-e", ssh,
                f"{self._master.destination}:{root.rstrip('/')}/", f"{staging}/"]

    def prepare(self, root: str, staging: Path) -> None:
        key = (root, staging)
        if key in self._started:
            return
        staging.mkdir(parents=True, exist_ok=True)

        def start() -> None:
            self._master.ready()  # on the shared connection, once it is up
            with self._lock, contextlib.suppress(OSError):  # fetch will say what failed
                if self._started.get(key) is thread:
                    self._started[key] = _Rsync(self.argv(root, staging))

        thread = threading.Thread(target=start, name="collect-rsync-start", daemon=True)
        self._started[key] = thread
        thread.start()

    def _claim(self, key: tuple[str, Path]) -> _Rsync | None:
        """The rsync `prepare` started for `key`, once started (None if it could not be)."""
        started = self._started.get(key)
        if isinstance(started, threading.Thread):
            started.join()
        with self._lock:
            started = self._started.pop(key, None)
        return started if isinstance(started, _Rsync) else None

    def fetch(self, root: str, rels: Sequence[str], staging: Path, sizes: dict[str, int],
              observer: CollectObserver) -> TransferResult:
        staging.mkdir(parents=True, exist_ok=True)
        rsync = self._claim((root, staging))
        if rsync is None:
            self._master.ready()
            rsync = _Rsync(self.argv(root, staging))
        code, out, err = rsync.run(rels, observer)
        if code not in (0, 23, 24):  # 23/24: some files vanished or were unreadable
            raise WtRunError(f"rsync from {self._master.destination}:{root} exited {code}: "
                             f"{' | '.join(err.strip().splitlines()[-3:])}",
                             "check the host's disk and permissions, then collect again")
        literal = _LITERAL.search(out)
        count = _XFERRED.search(out)
        gone = {a or b for a, b in _GONE.findall(err)}
        return TransferResult(int(count.group(1).replace(",", "")) if count else 0,
                              int(literal.group(1).replace(",", "")) if literal else 0,
                              tuple((rel, "unreadable: no such file") for rel in rels
                                    if any(g.endswith(f"/{rel}") for g in gone)))

    def close(self) -> None:
        for key in list(self._started):
            rsync = self._claim(key)
            if rsync is not None:
                rsync.stop()  # prepared, never used: it still waits for its file list
        self._master.close()


def _follow_progress(stream: IO[bytes], observer: CollectObserver) -> str:
    """Turn --info=progress2 lines into progress events; return the rest (the stats)."""
    seen_bytes = seen_files = 0
    tail: list[bytes] = []
    buf = b""
    while chunk := stream.read1(65536):  # type: ignore[attr-defined]
        buf += chunk
        *lines, buf = re.split(rb"[\r\n]", buf)
        for line in lines:
            m = _PROGRESS2.match(line)
            if not m:
                tail.append(line)
                continue
            done = int(m.group(1).replace(b",", b""))
            if done > seen_bytes:
                observer.advance(done - seen_bytes)
                seen_bytes = done
            files = int(m.group(2)) if m.group(2) else seen_files
            for _ in range(files - seen_files):
                observer.file_done()
            seen_files = max(seen_files, files)
    tail.append(buf)
    return b"\n".join(tail).decode(errors="replace")


def _rsync_quote(arg: str) -> str:
    # rsync splits -e on spaces and honours single and double quotes (no backslashes).
    if arg and not re.search(r"[\s'\"]", arg):
        return arg
    if "'" not in arg:
        return f"'{arg}'"
    return f'"{arg}"'


def rsync_here(host: Host) -> bool:
    """This end can rsync from `host`: rsync and ssh here, and the host can say how OpenSSH
    reaches it (`ssh_argv()`)."""
    return (not host.local and host.ssh_argv() is not None
            and shutil.which("rsync") is not None and shutil.which("ssh") is not None)


def choose_transport(host: Host, has_remote_rsync: bool, wanted: str) -> Transport:
    """copy for this machine; rsync when both ends have it and the host can say how OpenSSH
    reaches it (`ssh_argv()`); SFTP otherwise."""
    if host.local:
        return local_transport()
    if wanted == "copy":
        raise WtRunError(f"host {host.name} is not this machine: cannot copy directly",
                         f"use {TRANSPORT_ENV}=auto, rsync or sftp")
    can_rsync = has_remote_rsync and rsync_here(host)
    if wanted == "rsync" and not can_rsync:
        raise WtRunError(f"host {host.name}: rsync is not available at both ends",
                         f"install rsync on both machines, or set {TRANSPORT_ENV}=sftp")
    if can_rsync and wanted in ("auto", "rsync"):
        return RsyncTransport(host)
    session = host.sftp()
    if session is not None:
        return sftp_transport(session)
    raise WtRunError(f"host {host.name}: no way to copy files from it (no rsync, no SFTP)",
                     "install rsync on both machines or enable sshd's sftp subsystem")
