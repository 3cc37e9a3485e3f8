"""`collect`'s transfer from SSH hosts: OpenSSH's sftp client in batch mode, on one shared
OpenSSH connection with the host's own settings; and the choice of transport for a host (this,
SFTP on wt-run's own connection where this machine lacks the OpenSSH client, or a plain copy on
this machine).

Why OpenSSH's sftp: measured with `scripts/bench_collect.py` (every contender with the same ssh
options and cipher, 1 GiB in 8 files over loopback), `sftp -b` on a shared connection copies
as fast as `scp -r` and 25-35% faster than `rsync -a`, which collect used before; a sender of
wt-run's own was no faster than rsync. It needs nothing on the host but sshd's SFTP subsystem.
What is left of its cost is latency: each sftp is started ahead (`prepare`), so its SSH session
and the host's sftp-server start while the host lists or other files copy."""


from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import stat
import subprocess
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from .collect_model import CollectObserver
from .collect_transfer import (
    TRANSPORT_ENV,
    TransferResult,
    Transport,
    clear_way,
    local_transport,
    sftp_session,
)
from .errors import WtRunError
from .hosts import Host

# Bulk data: AES-GCM (hardware-accelerated almost everywhere) is faster than OpenSSH's default
# ChaCha20; `^` only puts it first in the default list, so a server without it still works.
FAST_CIPHER = "aes128-gcm@openssh.com"


def ssh_options(host: Host) -> list[str]:
    """The OpenSSH client options collect uses for bulk data from `host` (no `ssh`, no
    destination): the host's own settings (see `SSHHost.ssh_argv`) and the fast cipher."""
    argv = host.ssh_argv() or []
    return [*argv[1:-1], "-o", f"Ciphers=^{FAST_CIPHER}"]


def scp_options(ssh_options: Sequence[str]) -> list[str]:
    """OpenSSH client options as sftp and scp spell them: the port is -P, and there is no -l."""
    out: list[str] = []
    it = iter(ssh_options)
    for arg in it:
        if arg == "-p":
            out += ["-P", next(it)]
        elif arg == "-l":
            out += ["-o", f"User={next(it)}"]
        else:
            out.append(arg)
    return out


class OpenSSHMaster:
    """One shared OpenSSH connection (ControlMaster) for every sftp call to one host, opened
    in the background while the host lists its files, closed at the end."""

    def __init__(self, host: Host) -> None:
        # A short private directory: unix socket paths are limited to ~100 bytes.
        self._control_dir = tempfile.mkdtemp(prefix="wtc-")
        self.destination = (host.ssh_argv() or [""])[-1]
        self._base = ["ssh", *ssh_options(host), "-o", f"ControlPath={self._control_dir}/%C"]
        self.argv = [*self._base, "-o", "ControlMaster=auto", "-o", "ControlPersist=60"]
        self._early: threading.Thread | None = None

    def sftp_options(self) -> list[str]:
        """The master's options as sftp (and scp) spell them, for sftp on this connection."""
        return scp_options(self.argv[1:])

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


# sftp's batch mode reads one command a line into a 2,048-byte buffer; longer lines are split.
_MAX_BATCH_LINE = 2000
# `-reget`: a failed get does not end the batch; what did not arrive is found afterwards.
_NOT_FOUND = re.compile(r'^File "(.*)" not found\.\r?$', re.MULTILINE)


def _sftp_quote(path: str) -> str:
    r"""One argument of an sftp batch command. Inside double quotes sftp escapes glob
    characters itself; only `"` and `\` need a backslash (collect never asks for a name with
    a backslash or a control character: `collect_files.safe_rel` refuses those)."""
    return '"' + path.replace("\\", "\\\\").replace('"', '\\"') + '"'


def sftp_batch(root: str, staging: Path, rels: Sequence[str]) -> tuple[bytes, list[str]]:
    """The sftp batch that fetches `rels` from `root` into `staging`, resuming each staged
    copy (`reget`), keeping mtimes (`-p`); and the rels whose line would be too long for sftp
    (fetched another way)."""
    lines = [f"cd {_sftp_quote(root)}", f"lcd {_sftp_quote(str(staging))}"]
    too_long = []
    for rel in rels:
        line = f"-reget -p -- {_sftp_quote(rel)} {_sftp_quote(rel)}"
        if len(line.encode()) > _MAX_BATCH_LINE:
            too_long.append(rel)
        else:
            lines.append(line)
    if any(len(line.encode()) > _MAX_BATCH_LINE for line in lines[:2]):
        return b"", list(rels)
    return ("\n".join(lines) + "\n").encode(), too_long


class _Sftp:
    """One started OpenSSH `sftp -b -`: the SSH session and the host's sftp-server start
    before the batch of files is known, which then arrives on stdin."""

    POLL_S = 0.1

    def __init__(self, argv: list[str]) -> None:
        # stderr to a file, not a pipe: the backgrounded ControlMaster inherits it and would
        # hold a pipe open long after sftp ended.
        self.err_file = tempfile.TemporaryFile()  # noqa: SIM115 - closed by run or stop
        # Its own process group, so that an interrupt stops it without reaching the master.
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                     stderr=self.err_file, start_new_session=True)

    def run(self, batch: bytes, progress: Callable[[bool], None]) -> tuple[int, str]:
        """Send the batch and wait, calling `progress` meanwhile; (exit code, stderr)."""
        proc = self.proc
        assert proc.stdin
        try:
            with contextlib.suppress(BrokenPipeError):  # it ended early: its code says why
                proc.stdin.write(batch)
                proc.stdin.close()
            while True:
                try:
                    code = proc.wait(self.POLL_S)
                    break
                except subprocess.TimeoutExpired:
                    progress()
            progress(True)
        except BaseException:
            self.stop()
            raise
        self.err_file.seek(0)
        err = self.err_file.read().decode(errors="replace")
        self.err_file.close()
        return code, err

    def stop(self) -> None:
        # What arrived of the current file stays in staging; the next collect resumes it.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait()
        for fh in (self.proc.stdin, self.err_file):
            with contextlib.suppress(OSError):
                fh.close()  # type: ignore[union-attr]


class _StagedProgress:
    """Progress of an sftp batch, read from the staged files' sizes (sftp prints none)."""

    def __init__(self, staging: Path, sizes: dict[str, int], observer: CollectObserver
                 ) -> None:
        self._staging = staging
        self._observer = observer
        self._seen = {rel: _size(staging / rel) for rel in sizes}
        # A copy complete before this batch (an interrupted collect finished it) is not
        # transferred again, nor counted.
        self._todo = {rel: size for rel, size in sizes.items()
                      if size == 0 or self._seen[rel] < size}
        self._missing = {rel for rel in sizes if not (staging / rel).exists()}
        self.moved = self.files = 0

    def __call__(self, final: bool = False) -> None:
        for rel, size in list(self._todo.items()):
            now = _size(self._staging / rel)
            if now > self._seen[rel]:
                self.moved += now - self._seen[rel]
                self._observer.advance(now - self._seen[rel])
                self._seen[rel] = now
            if (now >= size > 0) or (final and size == 0 and rel in self._missing
                                     and (self._staging / rel).is_file()):
                del self._todo[rel]
                self.files += 1
                self._observer.file_done()


def _size(path: Path) -> int:
    try:
        return path.lstat().st_size
    except OSError:
        return 0


def _usable_modes(staging: Path, rels: Sequence[str]) -> None:
    """`get -p` gives each copy its mode on the host: keep it readable and writable by this
    user (to verify it, and resume or replace it later), without setuid, setgid or sticky."""
    for rel in rels:
        with contextlib.suppress(OSError):
            st = (staging / rel).lstat()
            mode = (st.st_mode & 0o777) | 0o600
            if stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) != mode:
                os.chmod(staging / rel, mode)


class OpenSSHTransport(Transport):
    """OpenSSH's `sftp` client in batch mode, on one shared OpenSSH connection per host (the
    host's own ssh settings): only the listed files (never a symlink: the host refuses
    those), their mtimes kept; an interrupted file stays in staging and the next collect
    resumes it (`reget`). `prepare` starts the sftp of a later `fetch` ahead, so that its SSH
    session and the host's sftp-server start while the host lists or the copy before runs."""

    name = "openssh"

    def __init__(self, host: Host) -> None:
        self._host = host  # its own SFTP session takes names too long for an sftp batch line
        self._master = OpenSSHMaster(host)
        self._started: dict[tuple[str, Path], threading.Thread | _Sftp] = {}
        self._lock = threading.Lock()

    def connect_early(self) -> None:
        self._master.connect_early()

    def argv(self) -> list[str]:
        return ["sftp", *self._master.sftp_options(), "-q", "-b", "-",
                self._master.destination]

    def prepare(self, root: str, staging: Path) -> None:
        key = (root, staging)
        if key in self._started:
            return
        staging.mkdir(parents=True, exist_ok=True)

        def start() -> None:
            self._master.ready()  # on the shared connection, once it is up
            with self._lock, contextlib.suppress(OSError):  # fetch will say what failed
                if self._started.get(key) is thread:
                    self._started[key] = _Sftp(self.argv())

        thread = threading.Thread(target=start, name="collect-sftp-start", daemon=True)
        self._started[key] = thread
        thread.start()

    def _claim(self, key: tuple[str, Path]) -> _Sftp | None:
        """The sftp `prepare` started for `key`, once started (None if it could not be)."""
        started = self._started.get(key)
        if isinstance(started, threading.Thread):
            started.join()
        with self._lock:
            started = self._started.pop(key, None)
        return started if isinstance(started, _Sftp) else None

    def fetch(self, root: str, rels: Sequence[str], staging: Path, sizes: dict[str, int],
              observer: CollectObserver) -> TransferResult:
        staging.mkdir(parents=True, exist_ok=True)
        sftp = self._claim((root, staging))
        batch, too_long = sftp_batch(root, staging, rels)
        for rel in rels:
            clear_way(staging / rel, sizes[rel])
        progress = _StagedProgress(staging, {r: sizes[r] for r in rels if r not in too_long},
                                   observer)
        code, err = 0, ""
        if batch:
            if sftp is None:
                self._master.ready()
                sftp = _Sftp(self.argv())
            code, err = sftp.run(batch, progress)
        elif sftp is not None:
            sftp.stop()
        _usable_modes(staging, rels)
        if code != 0:
            raise WtRunError(f"sftp from {self._master.destination}:{root} exited {code}: "
                             f"{' | '.join(err.strip().splitlines()[-3:])}",
                             "check that the host's sshd offers SFTP (`Subsystem sftp`) and "
                             "its disk and permissions, then collect again")
        gone = [m.replace("\\", "") for m in _NOT_FOUND.findall(err)]
        result = TransferResult(progress.files, progress.moved,
                                tuple((rel, "unreadable: no such file") for rel in rels
                                      if any(g.endswith(f"/{rel}") for g in gone)))
        if too_long:
            result = _merge(result, self._fetch_long(root, too_long, staging, sizes, observer))
        return result

    def _fetch_long(self, root: str, rels: Sequence[str], staging: Path, sizes: dict[str, int],
                    observer: CollectObserver) -> TransferResult:
        other = sftp_session(self._host)
        if other is None:
            return TransferResult(unreadable=tuple(
                (rel, "unreadable: name too long for sftp, and no SFTP session")
                for rel in rels))
        return other.fetch(root, rels, staging, sizes, observer)

    def close(self) -> None:
        for key in list(self._started):
            sftp = self._claim(key)
            if sftp is not None:
                sftp.stop()  # prepared, never used: it still waits for its batch
        self._master.close()


def _merge(a: TransferResult, b: TransferResult) -> TransferResult:
    return TransferResult(a.files + b.files, a.bytes + b.bytes, a.unreadable + b.unreadable)


def openssh_here(host: Host) -> bool:
    """This end can fetch from `host` with the OpenSSH client: ssh and sftp here, and the
    host can say how OpenSSH reaches it (`ssh_argv()`)."""
    return (not host.local and host.ssh_argv() is not None
            and shutil.which("sftp") is not None and shutil.which("ssh") is not None)


def choose_transport(host: Host, wanted: str) -> Transport:
    """copy for this machine; the OpenSSH sftp client when this end has it and the host can
    say how OpenSSH reaches it (`ssh_argv()`); SFTP on wt-run's own connection otherwise."""
    if host.local:
        return local_transport()
    if wanted == "copy":
        raise WtRunError(f"host {host.name} is not this machine: cannot copy directly",
                         f"use {TRANSPORT_ENV}=auto, openssh or sftp")
    can_openssh = openssh_here(host)
    if wanted == "openssh" and not can_openssh:
        raise WtRunError(f"host {host.name}: the OpenSSH client (ssh and sftp) is not "
                         "available here", f"install openssh-client, or set {TRANSPORT_ENV}=sftp")
    if can_openssh and wanted in ("auto", "openssh"):
        return OpenSSHTransport(host)
    transport = sftp_session(host)
    if transport is not None:
        return transport
    raise WtRunError(f"host {host.name}: no way to copy files from it (no SFTP)",
                     "enable sshd's sftp subsystem (`Subsystem sftp` in sshd_config)")
