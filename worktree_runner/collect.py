"""`collect`: pull each worker's outputs, logs and metadata back to this machine, verified,
incrementally and resumably, from local and SSH hosts.

Layout of what is collected (`results/` in the repository unless `--dest`)::

    results/<run>/<name>/
      worker.json          the WorkerRecord as JSON, plus the observed state and a collect summary
      log                  the worker's stdout+stderr (latest attempt)
      attempts/<n>/log     logs of earlier attempts
      out/...              the worker's $WT_RUN_OUT: metrics.jsonl, metrics.json, progress.json,
                           checkpoints, TensorBoard event files...
      worktree/...         files matching `collect:` globs, at their worktree-relative paths
      .collect/            bookkeeping: index.json (verified sha256 of every file collected),
                           incoming/ (staging: partial and unverified copies)

How a worker is collected:
1. One round trip per host lists every candidate file of every worker (path, size, mtime,
   sha256; see `collect_lister.py`) and says why anything else was skipped or refused. For the
   `stream` transport the listing only stats: a file's sha256 is given when the host's
   checksum cache knows it, and is otherwise computed by the sender while it sends the file,
   so the transfer starts at once and the host reads each file once.
2. A file whose local copy already has the host's sha256 is left alone (a local index keyed by
   inode, size, mtime and ctime avoids re-hashing), so an unchanged collect moves no data. A
   file the host has no sha256 for yet is fetched at once when its local copy is missing or
   of another size; a same-size local copy is compared with a sha256 the host computes first.
3. Other files are copied into `.collect/incoming/`: from SSH hosts by `stream` (the host's
   python sends and hashes each file over one OpenSSH connection, with the host's ssh
   settings), or rsync / SFTP when asked for; a plain copy on this machine. Copies resume:
   the stream and plain copies append to what is staged, rsync keeps a partial dir.
4. Each copy is checked: same size and mtime as listed (otherwise the file changed during the
   collect and is skipped until next time) and the same sha256 as computed on the host
   (otherwise: an error, retried once), hashed here from the staged file on disk while the
   next files arrive. Only then is it renamed to its final path, so a partial file never
   appears there.
5. A worker whose files all verified, and that has ended, is marked collected in the manifest.

Files removed on the host after an earlier collect are kept here.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import queue
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import IO, Any

from .backends import open_host
from .config import Config
from .errors import HostUnreachable, WtRunError
from .hosts import Host, LocalHost
from .observe import query_workers
from .runs import RunStore, WorkerRecord, atomic_write_text, group_by_host
from .states import Observation, WorkerState

CHUNK = 1 << 20
# Receiving: a buffer that stays in the CPU cache between the pipe read and the file write.
# Measured on the collect bench: 1 MiB costs 4x the kernel time of 128 KiB (the copy into
# the page cache then reads the buffer back from memory, competing with ssh for it).
RECV_CHUNK = 1 << 17
SETTLE_S = 2.0
WORKER_PATTERNS = ("log", "attempts/*/log", "out/**")
BOOKKEEPING = ".collect"
TRANSPORTS = ("auto", "stream", "rsync", "sftp", "copy")
FAST_CIPHER = "aes128-gcm@openssh.com"
# Lets a user (or a test) force rsync or SFTP instead of the stream over OpenSSH.
TRANSPORT_ENV = "WT_RUN_COLLECT_TRANSPORT"


# ---------------------------------------------------------------- typed results

@dataclass(frozen=True)
class RemoteFile:
    """A candidate file as listed on the host."""

    root: str  # "worker" (the worker dir) or "worktree"
    rel: str
    size: int
    mtime_ns: int
    sha256: str  # "" when a stat-only listing did not know it: the sender computes it

    @property
    def local_rel(self) -> str:
        return self.rel if self.root == "worker" else f"worktree/{self.rel}"


@dataclass(frozen=True)
class Skipped:
    path: str
    reason: str


@dataclass(frozen=True)
class WorkerListing:
    files: tuple[RemoteFile, ...]
    skipped: tuple[Skipped, ...]


@dataclass(frozen=True)
class WorkerCollect:
    """The outcome of collecting one worker."""

    name: str
    host: str
    state: str
    dest: Path
    transport: str = ""
    files: int = 0  # files now verified locally
    bytes: int = 0
    transferred_files: int = 0
    transferred_bytes: int = 0  # file data copied this time (rsync: literal data sent)
    skipped: tuple[Skipped, ...] = ()
    errors: tuple[str, ...] = ()
    marked: bool = False  # marked collected in the manifest

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["dest"] = str(self.dest)
        data["skipped"] = [asdict(s) for s in self.skipped]
        data["errors"] = list(self.errors)
        return data


@dataclass(frozen=True)
class CollectReport:
    run: str
    dest: Path
    workers: tuple[WorkerCollect, ...]

    @property
    def ok(self) -> bool:
        return all(w.ok for w in self.workers)

    def to_json(self) -> dict[str, Any]:
        return {"run": self.run, "dest": str(self.dest),
                "workers": [w.to_json() for w in self.workers]}


class CollectObserver:
    """Receives progress as files move (the CLI draws a progress bar from it). Methods may be
    called from one thread per host."""

    def listed(self, name: str, host: Host, listing: WorkerListing) -> None:
        """After a worker's files were listed, before anything is copied."""

    def planned(self, files: int, nbytes: int) -> None:
        """More files and bytes to transfer."""

    def advance(self, nbytes: int) -> None:
        """File data arrived."""

    def file_done(self) -> None:
        """One file transferred and verified."""

    def written(self, path: Path, upto: int) -> None:
        """A transport wrote bytes [0, upto) of a staged copy (used to hash it meanwhile)."""


# ---------------------------------------------------------------- listing on the host

def lister_source() -> str:
    return (Path(__file__).with_name("collect_lister.py")).read_text(encoding="utf-8")


def python_for(config: Config, host: Host) -> str:
    if isinstance(host, LocalHost):
        return sys.executable
    return config.host(host.name).python if host.name in config.hosts else "python3"


def listing_spec(records: Sequence[WorkerRecord], patterns: Sequence[str],
                 running: Mapping[str, bool], hash_files: bool = True) -> dict[str, Any]:
    workers = []
    for rec in records:
        roots = [{"key": "worker", "path": rec.worker_dir, "patterns": list(WORKER_PATTERNS)}]
        if rec.worktree and patterns:
            roots.append({"key": "worktree", "path": rec.worktree, "patterns": list(patterns)})
        workers.append({"id": rec.name, "roots": roots, "running": running[rec.name],
                        "cache": f"{rec.worker_dir}/.collect-sums.json"})
    return {"workers": workers, "settle_s": SETTLE_S, "hash": hash_files}


def listing_script(python: str, spec: Mapping[str, Any]) -> str:
    """A sh script that runs the lister with the host's python, the code on a quoted heredoc
    (nothing in it is expanded) and the spec as one quoted argument."""
    source = lister_source()
    marker = "WT_RUN_COLLECT_LISTER_EOF"
    assert marker not in source
    return (f"command -v {shlex.quote(python)} >/dev/null 2>&1 || "
            f"{{ echo 'python not found: {python}' >&2; exit 127; }}\n"
            f"exec {shlex.quote(python)} - {shlex.quote(json.dumps(spec))} <<'{marker}'\n"
            f"{source}\n{marker}\n")


@dataclass(frozen=True)
class HostListing:
    now: float
    has_rsync: bool
    workers: dict[str, WorkerListing]


def list_host(config: Config, host: Host, records: Sequence[WorkerRecord],
              running: Mapping[str, bool], hash_files: bool = True) -> HostListing:
    """One round trip: every candidate file of every given worker on this host (without
    hashing what the host's cache does not know, unless `hash_files`)."""
    spec = listing_spec(records, config.collect, running, hash_files)
    result = host.run_script(listing_script(python_for(config, host), spec),
                             timeout=_command_timeout(config, host))
    if result.exit_code == 127:
        raise WtRunError(f"host {host.name}: {result.stderr.strip()}",
                         f"install python3 there or set hosts.{host.name}.python")
    raw = json.loads(result.check().stdout)
    listings = {}
    for name, data in raw["workers"].items():
        files = tuple(RemoteFile(str(k), str(r), int(s), int(m), str(h))
                      for k, r, s, m, h in data["files"])
        skipped = tuple(Skipped(f"{k}:{r}" if k != "worker" else r, why)
                        for k, r, why in data["skipped"])
        listings[name] = WorkerListing(files, skipped)
    return HostListing(float(raw["now"]), bool(raw["rsync"]), listings)


def _command_timeout(config: Config, host: Host) -> float | None:
    # A Slurm host's login node (via: an ssh host) is named after the Slurm host.
    if host.name in config.hosts and config.host(host.name).type in ("ssh", "slurm"):
        # Hashing gigabytes of checkpoints the first time takes a while.
        return max(config.host(host.name).command_timeout, 3600.0)
    return None


# ---------------------------------------------------------------- local paths and index

def safe_rel(rel: str) -> str | None:
    """Why a host-supplied relative path may not be written locally, or None. The host is not
    trusted: the lister already refuses these, this is the check that matters."""
    if not rel or rel.startswith("/") or "\\" in rel:
        return "not a plain relative path"
    parts = rel.split("/")
    if any(p in ("", ".", "..") for p in parts):
        return "path contains empty, . or .. components"
    if re.search(r"[\x00-\x1f\x7f]", rel):
        return "name has control characters"
    if parts[0] == BOOKKEEPING or rel in ("worker.json",):
        return "name is reserved for wt-run's own files"
    return None


def inside(base: Path, path: Path) -> bool:
    """True when `path`, with every symlink resolved, lies under `base`."""
    real_base = os.path.realpath(base)
    real = os.path.realpath(path)
    return real.startswith(real_base + os.sep)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


class LocalIndex:
    """sha256 of every file already collected for a worker, keyed by what stat says, so that
    an unchanged multi-GB checkpoint is not read again; any change to the file (its ctime)
    makes it hashed again."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.entries: dict[str, list[Any]] = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            self.entries = {}
        self.dirty = False

    @staticmethod
    def ident(st: os.stat_result) -> list[int]:
        return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]

    def sha256(self, rel: str, path: Path, size: int) -> str | None:
        """The file's sha256, or None when it is missing, not a plain file or not `size`."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return None
        if not os.path.isfile(path) or os.path.islink(path) or st.st_size != size:
            return None
        hit = self.entries.get(rel)
        if hit and hit[:4] == self.ident(st):
            return str(hit[4])
        digest = sha256_file(path)
        self.record(rel, path, digest)
        return digest

    def record(self, rel: str, path: Path, digest: str) -> None:
        self.entries[rel] = [*self.ident(os.lstat(path)), digest]
        self.dirty = True

    def save(self) -> None:
        if self.dirty:
            atomic_write_text(self.path, json.dumps(self.entries, sort_keys=True))
            self.dirty = False


# ---------------------------------------------------------------- transports

@dataclass(frozen=True)
class HostReport:
    """What the sender saw of one file while it read it: its sha256 (of the whole file), size
    and mtime, whether it changed during the read, or why it could not be read."""

    sha256: str = ""
    size: int = -1
    mtime_ns: int = -1
    changed: bool = False
    error: str = ""


@dataclass
class TransferResult:
    files: int = 0
    bytes: int = 0
    reports: dict[str, HostReport] = field(default_factory=dict)  # by rel, from `stream`


class Transport(ABC):
    """Copies listed files from one root on a host into a local staging directory, resuming
    what an interrupted collect left there."""

    name: str

    @abstractmethod
    def fetch(self, root: str, rels: Sequence[str], staging: Path, sizes: Mapping[str, int],
              observer: CollectObserver, cache: CacheRef | None = None) -> TransferResult: ...

    def digests(self, root: str, rels: Sequence[str], cache: CacheRef | None = None
                ) -> dict[str, HostReport]:
        """The host's sha256 of files a stat-only listing left unknown (`stream` only)."""
        raise AssertionError(f"{self.name}: the listing hashed every file")

    def connect_early(self) -> None:  # noqa: B027 - optional hook
        """Start connecting now, while the host lists its files."""

    def close(self) -> None:  # noqa: B027 - optional hook
        pass


@dataclass(frozen=True)
class CacheRef:
    """Where the host caches checksums of a worker's files, and the key prefix of one root:
    the sender records what it hashed there, so the next listing does not read the file."""

    path: str
    root_key: str

    def key(self, rel: str) -> str:
        return f"{self.root_key}\0{rel}"


class StreamTransport(Transport):
    """Reads each file through `open_source` (a local file, or an SFTP file) and appends to the
    staged copy from where it stopped; the copy gets the source's mtime as seen after reading,
    so a file that changed meanwhile fails verification instead of looking whole."""

    def __init__(self, name: str, open_source: Callable[[str], Any],
                 stat_source: Callable[[Any], tuple[int, int]]) -> None:
        self.name = name
        self._open = open_source
        self._stat = stat_source

    def fetch(self, root: str, rels: Sequence[str], staging: Path, sizes: Mapping[str, int],
              observer: CollectObserver, cache: CacheRef | None = None) -> TransferResult:
        result = TransferResult()
        for rel in rels:
            target = staging / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            have = target.stat().st_size if target.is_file() else 0
            if have > sizes[rel]:
                target.unlink()
                have = 0
            try:
                moved = self._copy(f"{root}/{rel}", target, have, sizes[rel], observer)
            except OSError as exc:
                # Gone or unreadable since the listing (a rotated checkpoint): skipped.
                result.reports[rel] = HostReport(error=f"unreadable: {exc.strerror or exc}")
                continue
            result.bytes += moved
            if moved or sizes[rel] == 0:
                result.files += 1
                observer.file_done()
        return result

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
                    while True:
                        chunk = src.read(CHUNK)
                        if not chunk:
                            break
                        dst.write(chunk)
                        moved += len(chunk)
                        observer.advance(len(chunk))
            _, mtime_ns = self._stat(src)
        target.touch()  # an empty file has no bytes to copy, but its copy must exist
        os.utime(target, ns=(mtime_ns, mtime_ns))
        return moved


def local_transport() -> StreamTransport:
    def stat(fh: IO[bytes]) -> tuple[int, int]:
        st = os.fstat(fh.fileno())
        return st.st_size, st.st_mtime_ns

    return StreamTransport("copy", lambda p: open(p, "rb"), stat)


def sftp_transport(sftp: Any) -> StreamTransport:
    def open_remote(path: str) -> Any:
        fh = sftp.open(path, "rb")
        fh.set_pipelined(True)
        return fh

    def stat(fh: Any) -> tuple[int, int]:
        st = fh.stat()
        # SFTP carries whole seconds only; verification compares at that precision.
        return int(st.st_size), int(st.st_mtime) * 1_000_000_000

    return StreamTransport("sftp", open_remote, stat)


_PROGRESS2 = re.compile(rb"^\s*([\d,]+)\s+\d+%(?:.*xfr#(\d+))?")
_LITERAL = re.compile(r"^Literal data: ([\d,]+)", re.MULTILINE)
_XFERRED = re.compile(r"^Number of regular files transferred: ([\d,]+)", re.MULTILINE)


class OpenSSHMaster:
    """The OpenSSH client command for bulk data from one host: the host's own ssh settings,
    one shared connection (ControlMaster) for every call, closed at the end."""

    def __init__(self, ssh_argv: Sequence[str], destination: str) -> None:
        # A short private directory: unix socket paths are limited to ~100 bytes.
        self._control_dir = tempfile.mkdtemp(prefix="wtc-")
        self._ssh = list(ssh_argv)
        self.argv = [*ssh_argv, "-o", "ControlMaster=auto", "-o",
                     f"ControlPath={self._control_dir}/%C", "-o", "ControlPersist=60",
                     # Bulk data: AES-GCM (hardware-accelerated almost everywhere) is ~30%
                     # faster than the default ChaCha20; `^` only puts it first in OpenSSH's
                     # default list, so a server without it still negotiates.
                     "-o", f"Ciphers=^{FAST_CIPHER}"]
        self.destination = destination
        self._early: threading.Thread | None = None

    def connect_early(self) -> None:
        """Open the shared connection in the background (handshake and login take a few
        hundred ms): the next call waits for it instead of racing it to become the master."""
        def connect() -> None:
            # -f: back to us once logged in; the master stays (ControlPersist). No pipes:
            # the master would hold them open.
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                subprocess.run([*self.argv, "-f", "-N", self.destination],
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, timeout=60, check=False)

        self._early = threading.Thread(target=connect, name="collect-ssh-connect", daemon=True)
        self._early.start()

    def ready(self) -> None:
        if self._early is not None:
            self._early.join()
            self._early = None

    def close(self) -> None:
        self.ready()
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run([*self._ssh, "-o", f"ControlPath={self._control_dir}/%C",
                            "-O", "exit", self.destination], capture_output=True, timeout=10,
                           check=False)
        shutil.rmtree(self._control_dir, ignore_errors=True)


class RsyncTransport(Transport):
    """rsync over the host's own OpenSSH settings (`ssh -e`): delta transfer, partial files
    kept in a partial dir so an interrupted collect resumes; symlinks are never copied. All
    rsync calls for one host share one OpenSSH connection (ControlMaster), closed at the end."""

    name = "rsync"

    def __init__(self, ssh_argv: Sequence[str], destination: str) -> None:
        self._master = OpenSSHMaster(ssh_argv, destination)
        self.ssh_command = " ".join(_rsync_quote(a) for a in self._master.argv)
        self.destination = destination

    def argv(self, root: str, staging: Path) -> list[str]:
        return ["rsync", "--times", "--protect-args", "--from0", "--files-from=-",
                "--partial-dir=.rsync-partial", "--no-motd", "--info=progress2", "--stats",
                "-e", self.ssh_command, f"{self.destination}:{root.rstrip('/')}/",
                f"{staging}/"]

    def fetch(self, root: str, rels: Sequence[str], staging: Path, sizes: Mapping[str, int],
              observer: CollectObserver, cache: CacheRef | None = None) -> TransferResult:
        staging.mkdir(parents=True, exist_ok=True)
        # stderr to a file, not a pipe: the backgrounded ControlMaster inherits it and would
        # hold a pipe open long after rsync ended.
        with tempfile.TemporaryFile() as err_file:
            proc = subprocess.Popen(self.argv(root, staging), stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=err_file)
            assert proc.stdin and proc.stdout
            try:
                proc.stdin.write(b"".join(r.encode() + b"\0" for r in rels))
                proc.stdin.close()
                out = self._follow(proc.stdout, observer)
                code = proc.wait()
            except BaseException:
                # TERM, not KILL: rsync moves what it has into the partial dir for next time.
                proc.terminate()
                proc.wait()
                raise
            err_file.seek(0)
            err = err_file.read().decode(errors="replace")
        if code not in (0, 23, 24):
            raise WtRunError(f"rsync from {self.destination}:{root} exited {code}: "
                             f"{' | '.join(err.strip().splitlines()[-3:])}",
                             "check the host's disk and permissions, then collect again")
        literal = _LITERAL.search(out)
        count = _XFERRED.search(out)
        return TransferResult(int(count.group(1).replace(",", "")) if count else 0,
                              int(literal.group(1).replace(",", "")) if literal else 0)

    def close(self) -> None:
        self._master.close()

    @staticmethod
    def _follow(stream: IO[bytes], observer: CollectObserver) -> str:
        """Turn --info=progress2 lines into progress events; return the rest (the stats)."""
        seen_bytes = 0
        seen_files = 0
        tail: list[bytes] = []
        buf = b""
        while True:
            chunk = stream.read1(65536) if hasattr(stream, "read1") else stream.read(65536)
            if not chunk:
                break
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


F_SETPIPE_SZ = 1031  # Linux fcntl


class SSHStreamTransport(Transport):
    """The host's python (the sender in `collect_lister.py`) streams the requested files over
    one OpenSSH connection (the host's ssh settings, AES-GCM), hashing each in the same read
    that sends it; the sha256, size and mtime it saw come back after each file. A staged copy
    is appended to from where it stopped, so an interrupted collect resumes; the copy gets
    the mtime the host reported, so one that changed meanwhile fails verification."""

    name = "stream"

    def __init__(self, ssh_argv: Sequence[str], destination: str, python: str) -> None:
        self._master = OpenSSHMaster(ssh_argv, destination)
        self.destination = destination
        # The user's login shell parses the command (as with rsync): quoted for POSIX shells.
        self._remote = shlex.join([python, "-c", lister_source(), "--send"])

    def connect_early(self) -> None:
        self._master.connect_early()

    def fetch(self, root: str, rels: Sequence[str], staging: Path, sizes: Mapping[str, int],
              observer: CollectObserver, cache: CacheRef | None = None) -> TransferResult:
        staging.mkdir(parents=True, exist_ok=True)
        offsets = {rel: _staged_size(staging / rel, sizes[rel]) for rel in rels}
        result = TransferResult()
        with self._session(root, rels, offsets, True, cache) as stream:
            for rel in rels:
                header = _read_json(stream, self.destination)
                if "error" in header:
                    result.reports[rel] = HostReport(error=str(header["error"]))
                    continue
                offset, length = int(header["offset"]), int(header["length"])
                _receive(stream, staging / rel, offset, length, observer, self.destination)
                trailer = _read_json(stream, self.destination)
                mtime_ns = int(header["mtime_ns"])
                os.utime(staging / rel, ns=(mtime_ns, mtime_ns))
                observer.written(staging / rel, offset + length)  # complete: mtime is set
                result.reports[rel] = HostReport(str(trailer["sha256"]), int(header["size"]),
                                                 mtime_ns, bool(trailer["changed"]))
                result.bytes += length
                if length or offset == 0:
                    result.files += 1
                observer.file_done()
        return result

    def digests(self, root: str, rels: Sequence[str], cache: CacheRef | None = None
                ) -> dict[str, HostReport]:
        reports = {}
        with self._session(root, rels, dict.fromkeys(rels, 0), False, cache) as stream:
            for rel in rels:
                header = _read_json(stream, self.destination)
                if "error" in header:
                    reports[rel] = HostReport(error=str(header["error"]))
                    continue
                trailer = _read_json(stream, self.destination)
                reports[rel] = HostReport(str(trailer["sha256"]), int(header["size"]),
                                          int(header["mtime_ns"]), bool(trailer["changed"]))
        return reports

    @contextlib.contextmanager
    def _session(self, root: str, rels: Sequence[str], offsets: Mapping[str, int], data: bool,
                 cache: CacheRef | None) -> Iterator[IO[bytes]]:
        """Run the sender with these requests; yield its output; fail on a bad exit."""
        requests = {"cache": cache.path if cache else "", "files": [
            {"path": f"{root.rstrip('/')}/{rel}", "offset": offsets[rel], "data": data,
             "key": cache.key(rel) if cache else ""} for rel in rels]}
        self._master.ready()
        # stderr to a file, not a pipe: the backgrounded ControlMaster inherits it.
        with tempfile.TemporaryFile() as err_file:
            proc = subprocess.Popen([*self._master.argv, self.destination, self._remote],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=err_file, bufsize=CHUNK)
            assert proc.stdin and proc.stdout
            with contextlib.suppress(OSError):
                fcntl.fcntl(proc.stdout.fileno(), F_SETPIPE_SZ, CHUNK)
            try:
                # The sender reads every request before it writes: no pipe deadlock.
                proc.stdin.write(json.dumps(requests).encode())
                proc.stdin.close()
                yield proc.stdout
                code = proc.wait()
            except WtRunError as exc:
                proc.kill()
                proc.wait()
                raise WtRunError(exc.message + _stderr_tail(err_file), exc.fix) from None
            except BaseException:
                # An interrupt: what is staged stays there, the next collect resumes from it.
                proc.kill()
                proc.wait()
                raise
            tail = _stderr_tail(err_file)
        if code != 0:
            raise WtRunError(f"sending from {self.destination}:{root} exited {code}{tail}",
                             "check the host's ssh access and disk, then collect again")

    def close(self) -> None:
        self._master.close()


def _stderr_tail(err_file: IO[bytes]) -> str:
    err_file.seek(0)
    lines = err_file.read().decode(errors="replace").strip().splitlines()
    return f": {' | '.join(lines[-3:])}" if lines else ""


def _staged_size(target: Path, size: int) -> int:
    """How much of a file is already staged (to resume from); a stale longer copy goes."""
    try:
        st = os.lstat(target)
    except FileNotFoundError:
        return 0
    if not os.path.isfile(target) or os.path.islink(target) or st.st_size > size:
        target.unlink()
        return 0
    return st.st_size


def _read_json(stream: IO[bytes], where: str) -> dict[str, Any]:
    line = stream.readline()
    try:
        data = json.loads(line)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise WtRunError(f"sending from {where}: the stream ended or was garbled",
                         "check the host's python and disk, then collect again")
    return data


def _receive(stream: IO[bytes], target: Path, offset: int, length: int,
             observer: CollectObserver, where: str) -> None:
    """Write `length` bytes from the stream into the staged copy at `offset`."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o666)
    view = memoryview(bytearray(RECV_CHUNK))
    try:
        os.ftruncate(fd, offset)
        os.lseek(fd, offset, os.SEEK_SET)
        observer.written(target, offset)
        done = offset
        while done < offset + length:
            n = stream.readinto(view[:min(offset + length - done, RECV_CHUNK)])  # type: ignore[attr-defined]
            if not n:
                raise WtRunError(f"sending from {where}: the stream ended inside {target.name}",
                                 "check the host, then collect again (it resumes)")
            _write_all(fd, view[:n])
            done += n
            observer.written(target, done)
            observer.advance(n)
    finally:
        os.close(fd)


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        data = data[os.write(fd, data):]


def can_stream(host: Host) -> bool:
    """The stream needs the host's OpenSSH settings (`ssh_argv()`) and ssh on this machine;
    the host's python is there already (the listing ran with it)."""
    return (not isinstance(host, LocalHost) and callable(getattr(host, "ssh_argv", None))
            and shutil.which("ssh") is not None)


def choose_transport(host: Host, has_remote_rsync: bool, wanted: str,
                     python: str = "python3") -> Transport:
    """copy for this machine; the stream over OpenSSH for auto when the host can say how
    OpenSSH reaches it (`ssh_argv()`, destination last); rsync when both ends have it; SFTP
    otherwise."""
    if isinstance(host, LocalHost):
        return local_transport()
    if wanted in ("auto", "stream") and can_stream(host):
        argv = host.ssh_argv()  # type: ignore[attr-defined]
        return SSHStreamTransport(argv[:-1], argv[-1], python)
    if wanted == "stream":
        raise WtRunError(f"host {host.name}: cannot stream from it (needs OpenSSH's ssh here)",
                         f"install the OpenSSH client, or set {TRANSPORT_ENV}=sftp")
    ssh_argv = getattr(host, "ssh_argv", None)
    can_rsync = has_remote_rsync and shutil.which("rsync") is not None and callable(ssh_argv)
    if wanted == "rsync" and not can_rsync:
        raise WtRunError(f"host {host.name}: rsync is not available at both ends",
                         f"install rsync on both machines, or set {TRANSPORT_ENV}=sftp")
    if can_rsync and wanted in ("auto", "rsync"):
        argv = ssh_argv()  # type: ignore[misc]
        return RsyncTransport(argv[:-1], argv[-1])
    sftp = getattr(host, "sftp", None)
    if callable(sftp):
        return sftp_transport(sftp())
    raise WtRunError(f"host {host.name}: no way to copy files from it (no rsync, no SFTP)",
                     "install rsync on both machines or enable sshd's sftp subsystem")


# ---------------------------------------------------------------- one worker

@dataclass
class WorkerPlan:
    rec: WorkerRecord
    dest: Path
    listing: WorkerListing
    state: str
    running: bool
    index: LocalIndex
    fetch: list[RemoteFile] = field(default_factory=list)
    present: list[RemoteFile] = field(default_factory=list)
    refused: list[Skipped] = field(default_factory=list)
    # Unknown sha256 on the host, a same-size copy here: the host's sha256 decides.
    undecided: list[RemoteFile] = field(default_factory=list)
    # The host's sha256 by local_rel: from the listing, then from what the sender reported.
    host_sha256: dict[str, str] = field(default_factory=dict)

    @property
    def staging(self) -> Path:
        return self.dest / BOOKKEEPING / "incoming"


def plan_worker(rec: WorkerRecord, dest: Path, listing: WorkerListing, state: str,
                running: bool) -> WorkerPlan:
    """Decide, for every listed file, whether its verified copy is already here."""
    dest.mkdir(parents=True, exist_ok=True)
    index = LocalIndex(dest / BOOKKEEPING / "index.json")
    plan = WorkerPlan(rec, dest, listing, state, running, index)
    for f in listing.files:
        problem = safe_rel(f.rel)
        target = dest / f.local_rel
        if problem is None and not inside(dest, target.parent / "x"):
            problem = "its local directory resolves outside the results directory"
        if problem:
            plan.refused.append(Skipped(f.local_rel, f"refused: {problem}"))
            continue
        if not f.sha256:
            # A copy of another size (or none) differs whatever the sha256: fetch at once.
            (plan.undecided if _plain_file_of_size(target, f.size) else plan.fetch).append(f)
            continue
        plan.host_sha256[f.local_rel] = f.sha256
        if index.sha256(f.local_rel, target, f.size) == f.sha256:
            plan.present.append(f)
        else:
            plan.fetch.append(f)
    return plan


def _plain_file_of_size(path: Path, size: int) -> bool:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    return os.path.isfile(path) and not os.path.islink(path) and st.st_size == size


def decide_undecided(plan: WorkerPlan, transport: Transport) -> list[Skipped]:
    """Ask the host for the sha256 of files whose same-size local copy may be current; queue
    those that differ. Returns files skipped because the host could not hash them whole."""
    skipped: list[Skipped] = []
    for root, files in _by_root(plan.undecided):
        reports = transport.digests(_source_root(plan, root), [f.rel for f in files],
                                    _cache_ref(plan, root))
        for f in files:
            report = reports.get(f.rel, HostReport(error="the host did not report it"))
            if report.error:
                skipped.append(Skipped(f.local_rel, f"skipped on the host: {report.error}"))
            elif report.changed or (report.size, report.mtime_ns) != (f.size, f.mtime_ns):
                skipped.append(Skipped(f.local_rel, CHANGED))
            else:
                plan.host_sha256[f.local_rel] = report.sha256
                target = plan.dest / f.local_rel
                if plan.index.sha256(f.local_rel, target, f.size) == report.sha256:
                    plan.present.append(f)
                else:
                    plan.fetch.append(f)
    plan.undecided = []
    return skipped


def _source_root(plan: WorkerPlan, root: str) -> str:
    return plan.rec.worker_dir if root == "worker" else plan.rec.worktree


def _cache_ref(plan: WorkerPlan, root: str) -> CacheRef:
    # The same file and keys as the listing's cache (`listing_spec`, `collect_lister.py`).
    return CacheRef(f"{plan.rec.worker_dir}/.collect-sums.json", root)


@dataclass
class _Growing:
    """A staged copy hashed as it is written: bytes [0, pos) are in `sha`."""

    file: RemoteFile
    sha: Any = field(default_factory=hashlib.sha256)
    pos: int = 0
    done: bool = False


class Prehasher:
    """Hashes staged copies, read back from disk, while the transfer goes on, so that
    verification does not re-read everything after the last byte arrived. A copy whose writer
    reports its progress (`written`, from the stream transport) is hashed as it grows, up to
    what the writer has confirmed, so even a single large file is hashed alongside its
    transfer; other copies once they are complete (listed size and mtime). Results are keyed
    by what stat says, so a copy that changes afterwards is hashed again at verification."""

    def __init__(self, files: Sequence[tuple[Path, RemoteFile]]) -> None:
        self._todo = dict(files)
        self._growing: dict[Path, _Growing] = {}
        self._written: queue.SimpleQueue[tuple[Path, int]] = queue.SimpleQueue()
        self.digests: dict[tuple[str, int, int, int, int], str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="collect-prehash", daemon=True)

    def __enter__(self) -> Prehasher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @staticmethod
    def ident(path: Path, st: os.stat_result) -> tuple[str, int, int, int, int]:
        # ctime too: a copy rewritten in place with its size and mtime restored is new data.
        return (str(path), st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)

    def written(self, path: Path, upto: int) -> None:
        """The writer has written bytes [0, upto) of `path` (called from its thread)."""
        self._written.put((path, upto))

    def _run(self) -> None:
        while True:
            try:
                self._follow(*self._written.get(timeout=0.05))
                continue
            except queue.Empty:
                pass
            if self._stop.is_set():
                return  # everything written has been hashed (the queue is empty)
            self._poll()

    def _poll(self) -> None:
        for path, f in list(self._todo.items()):
            try:
                st = path.stat()
            except OSError:
                continue
            if st.st_size == f.size and _same_mtime(st.st_mtime_ns, f.mtime_ns):
                with contextlib.suppress(OSError):
                    self.digests[self.ident(path, st)] = sha256_file(path)
                self._todo.pop(path, None)
            if self._stop.is_set() or not self._written.empty():
                return

    def _follow(self, path: Path, upto: int) -> None:
        grow = self._growing.get(path)
        if grow is None:
            f = self._todo.pop(path, None)
            if f is None:
                return
            grow = self._growing[path] = _Growing(f)
        if grow.done:
            return
        if upto < grow.pos:  # the copy was truncated: start over
            grow.sha, grow.pos = hashlib.sha256(), 0
        try:
            with open(path, "rb", buffering=0) as fh:
                fh.seek(grow.pos)
                view = memoryview(bytearray(CHUNK))
                while grow.pos < upto:
                    n = fh.readinto(view[:min(CHUNK, upto - grow.pos)])
                    if not n:
                        break
                    grow.sha.update(view[:n])
                    grow.pos += n
                st = os.fstat(fh.fileno())
        except OSError:
            grow.done = True  # verification hashes it whole
            return
        # Complete once the writer set the listed mtime; a later call (the writer reports
        # the end again after that) catches the case where the bytes were hashed first.
        if (grow.pos == grow.file.size == st.st_size
                and _same_mtime(st.st_mtime_ns, grow.file.mtime_ns)):
            self.digests[self.ident(path, st)] = grow.sha.hexdigest()
            grow.done = True

    def digest(self, path: Path, st: os.stat_result) -> str:
        return self.digests.get(self.ident(path, st)) or sha256_file(path)


class _HashingObserver(CollectObserver):
    """Passes progress on, and what a transport wrote to the Prehasher."""

    def __init__(self, inner: CollectObserver, hashes: Prehasher) -> None:
        self.inner = inner
        self.hashes = hashes

    def listed(self, name: str, host: Host, listing: WorkerListing) -> None:
        self.inner.listed(name, host, listing)

    def planned(self, files: int, nbytes: int) -> None:
        self.inner.planned(files, nbytes)

    def advance(self, nbytes: int) -> None:
        self.inner.advance(nbytes)

    def file_done(self) -> None:
        self.inner.file_done()

    def written(self, path: Path, upto: int) -> None:
        self.hashes.written(path, upto)


CHANGED = "changed during the collect (still being written?); collect again later"


def transfer_worker(plan: WorkerPlan, transport: Transport, observer: CollectObserver
                    ) -> tuple[TransferResult, list[str], list[Skipped]]:
    """Copy what is missing into staging, verify, move into place. Returns what moved, the
    errors and the files skipped because they changed during the copy."""
    total = TransferResult()
    errors: list[str] = []
    changed: list[Skipped] = decide_undecided(plan, transport) if plan.undecided else []
    pending = list(plan.fetch)
    for attempt in (1, 2):
        if not pending:
            break
        observer.planned(len(pending), sum(f.size for f in pending))
        reports: dict[tuple[str, str], HostReport] = {}
        with Prehasher([(plan.staging / f.root / f.rel, f) for f in pending]) as hashes:
            hashing = _HashingObserver(observer, hashes)
            for root, files in _by_root(pending):
                moved = transport.fetch(_source_root(plan, root), [f.rel for f in files],
                                        plan.staging / root, {f.rel: f.size for f in files},
                                        hashing, _cache_ref(plan, root))
                total.files += moved.files
                total.bytes += moved.bytes
                reports.update(((root, rel), r) for rel, r in moved.reports.items())
        retry = []
        for f in pending:
            kind, why = _verify_and_place(plan, f, hashes, reports.get((f.root, f.rel)))
            if kind == "skip":
                changed.append(Skipped(f.local_rel, why))
            elif kind == "retry" and attempt == 1:
                retry.append(f)  # a stale partial or a bad copy: once more from scratch
            elif kind == "retry":
                errors.append(f"{f.local_rel}: {why}")
        pending = retry
    plan.index.save()
    return total, errors, changed


def _by_root(files: Iterable[RemoteFile]) -> Iterator[tuple[str, list[RemoteFile]]]:
    groups: dict[str, list[RemoteFile]] = {}
    for f in files:
        groups.setdefault(f.root, []).append(f)
    yield from groups.items()


def _verify_and_place(plan: WorkerPlan, f: RemoteFile, hashes: Prehasher,
                      report: HostReport | None) -> tuple[str, str]:
    """("ok", ""), ("skip", why) for a file that changed or vanished on the host, or
    ("retry", why) for a copy that is missing or wrong."""
    host_sha256 = f.sha256
    if report is not None:
        # The sender hashed exactly what it sent, as it was then: that is the reference.
        if report.error:
            return "skip", f"skipped on the host: {report.error}"
        if report.changed or (report.size, report.mtime_ns) != (f.size, f.mtime_ns):
            return "skip", CHANGED
        host_sha256 = report.sha256
    staged = plan.staging / f.root / f.rel
    if not inside(plan.staging, staged) or os.path.islink(staged):
        return "retry", "refused: staged copy is not a plain file inside the staging directory"
    try:
        st = staged.stat()
    except FileNotFoundError:
        return "retry", "was not transferred"
    if st.st_size != f.size or not _same_mtime(st.st_mtime_ns, f.mtime_ns):
        return "skip", CHANGED
    if not host_sha256:
        return "retry", "the host reported no sha256 for it"
    digest = hashes.digest(staged, st)
    if digest != host_sha256:
        staged.unlink()
        return "retry", (f"checksum mismatch: host sha256 {host_sha256[:16]}…, copy "
                         f"{digest[:16]}… (copy discarded)")
    target = plan.dest / f.local_rel
    target.parent.mkdir(parents=True, exist_ok=True)
    if not inside(plan.dest, target.parent / "x"):
        return "retry", "refused: target directory resolves outside the results directory"
    if target.is_symlink() or target.is_dir():
        return "retry", "refused: a symlink or directory is in the way of the copy"
    os.replace(staged, target)
    plan.index.record(f.local_rel, target, digest)
    plan.host_sha256[f.local_rel] = digest
    return "ok", ""


def _same_mtime(a_ns: int, b_ns: int) -> bool:
    # SFTP reports whole seconds; everything else keeps nanoseconds.
    return a_ns == b_ns or (a_ns % 1_000_000_000 == 0 and a_ns // 10**9 == b_ns // 10**9)


def write_worker_json(run_id: str, plan: WorkerPlan, result: WorkerCollect,
                      collected_at: float | None) -> None:
    rec = replace(plan.rec, collected_at=collected_at or plan.rec.collected_at)
    data = asdict(rec)
    data["log"] = rec.log
    data["out"] = rec.out
    data["observed_state"] = plan.state
    data["run"] = run_id
    data["collect"] = {k: v for k, v in result.to_json().items() if k not in ("dest",)}
    atomic_write_text(plan.dest / "worker.json", json.dumps(data, indent=1, sort_keys=True)
                      + "\n", mode=0o644)


# ---------------------------------------------------------------- the run

def collect(config: Config, *, run: str | None = None, dest: Path | None = None,
            names: Sequence[str] = (), transport: str | None = None,
            observer: CollectObserver | None = None) -> CollectReport:
    """Collect every worker (or `names`) of a run from all its hosts, hosts in parallel."""
    from .api import observe_host, parallel_map

    observer = observer or CollectObserver()
    wanted = (transport or os.environ.get(TRANSPORT_ENV) or "auto").lower()
    if wanted not in TRANSPORTS:
        raise WtRunError(f"unknown collect transport '{wanted}'",
                         f"set {TRANSPORT_ENV} to one of {', '.join(TRANSPORTS)}")
    store = RunStore(config.state_dir)
    run_id = store.resolve(run)
    manifest = store.load(run_id)
    records = manifest.select(names)
    root = (dest or config.repo / "results").expanduser().resolve() / run_id
    by_host = group_by_host(records)

    def one_host(host_name: str) -> list[WorkerCollect]:
        recs = by_host[host_name]
        try:
            return _collect_host(config, store, run_id, host_name, recs, root, wanted,
                                 observer, observe_host)
        except (HostUnreachable, WtRunError) as exc:
            return [WorkerCollect(r.name, host_name, r.state or "unknown", root / r.name,
                                  errors=(str(exc),)) for r in recs]

    results = [w for chunk in parallel_map(one_host, list(by_host)) for w in chunk]
    order = {r.name: i for i, r in enumerate(records)}
    return CollectReport(run_id, root, tuple(sorted(results, key=lambda w: order[w.name])))


def _collect_host(config: Config, store: RunStore, run_id: str, host_name: str,
                  recs: Sequence[WorkerRecord], root: Path, wanted: str,
                  observer: CollectObserver, observe_host: Callable[..., Any]
                  ) -> list[WorkerCollect]:
    hc = config.host(host_name)
    with open_host(config, host_name) as host:
        states = _states(config, host, hc.type, recs, observe_host)
        running = {r.name: not WorkerState(states[r.name]).terminal for r in recs}
        # Streaming hashes while sending, so its listing only stats (see the module doc).
        streaming = wanted in ("auto", "stream") and can_stream(host)
        transport: Transport | None = None
        if streaming and any(not (root / r.name / BOOKKEEPING / "index.json").exists()
                             for r in recs):
            # A first collect will fetch: open the bulk connection while the host lists.
            transport = choose_transport(host, False, wanted, python_for(config, host))
            transport.connect_early()
        out: list[WorkerCollect] = []
        try:
            listing = list_host(config, host, recs, running, hash_files=not streaming)
            for rec in recs:
                wl = listing.workers[rec.name]
                observer.listed(rec.name, host, wl)
                plan = plan_worker(rec, root / rec.name, wl, states[rec.name],
                                   running[rec.name])
                if (plan.fetch or plan.undecided) and transport is None:
                    transport = _transport_for(host, listing.has_rsync, wanted,
                                               python_for(config, host))
                out.append(_finish_worker(store, run_id, plan, transport, observer))
        finally:
            if transport is not None:
                transport.close()
        return out


def _transport_for(host: Host, has_rsync: bool, wanted: str, python: str) -> Transport:
    if wanted == "copy" and not isinstance(host, LocalHost):
        raise WtRunError(f"host {host.name} is not this machine: cannot copy directly",
                         f"use {TRANSPORT_ENV}=auto, stream, rsync or sftp")
    return choose_transport(host, has_rsync, wanted, python)


def _states(config: Config, host: Host, host_type: str, recs: Sequence[WorkerRecord],
            observe_host: Callable[..., Any]) -> dict[str, str]:
    """Each worker's state now: the cached terminal state, else one status round trip."""
    states = {r.name: r.state for r in recs if r.state is not None}
    live = [r for r in recs if r.state is None]
    if live:
        if host_type == "slurm":
            _, observations = observe_host(config, host.name, live)
        else:
            _, observations = query_workers(host, [r.worker_dir for r in live])
        for r, obs in zip(live, observations):
            states[r.name] = _state_value(obs)
    return {n: str(s) for n, s in states.items()}


def _state_value(obs: Observation) -> str:
    return obs.state.value


def _finish_worker(store: RunStore, run_id: str, plan: WorkerPlan, transport: Transport | None,
                   observer: CollectObserver) -> WorkerCollect:
    moved, errors, changed = TransferResult(), [], []
    used = transport if plan.fetch or plan.undecided else None
    if used is not None:
        try:
            moved, errors, changed = transfer_worker(plan, used, observer)
        except WtRunError as exc:
            errors = [str(exc)]
    else:
        plan.index.save()
    skipped = (*plan.listing.skipped, *plan.refused, *changed)
    verified = [f for f in plan.listing.files if f.local_rel in plan.host_sha256 and
                plan.index.entries.get(f.local_rel, [None] * 5)[4]
                == plan.host_sha256[f.local_rel]]
    done = (not errors and not plan.running and not changed and len(verified)
            == len(plan.listing.files) - len(plan.refused))
    collected_at = time.time() if done else None
    result = WorkerCollect(
        plan.rec.name, plan.rec.host, plan.state, plan.dest,
        used.name if used is not None else "none",
        len(verified), sum(f.size for f in verified), moved.files, moved.bytes,
        tuple(skipped), tuple(errors), done)
    write_worker_json(run_id, plan, result, collected_at)
    if done:
        current = store.load(run_id).workers.get(plan.rec.name, plan.rec)
        if (current.attempt, current.launched_at) == (plan.rec.attempt, plan.rec.launched_at):
            # Not when a relaunch meanwhile recorded a new attempt: these files are the old one's.
            store.update(run_id, replace(current, collected_at=collected_at),
                         expected={current.name: current})
        shutil.rmtree(plan.staging, ignore_errors=True)
    return result


# ---------------------------------------------------------------- CLI glue

def collect_command(config: Config, *, run: str | None, dest: Path | None) -> int:
    """`wt-run collect`: collect with a progress bar, print a summary per worker; exit 1 when
    any worker had an error."""
    from .display_collect import RichCollectProgress, print_collect

    with RichCollectProgress() as progress:
        report = collect(config, run=run, dest=dest, observer=progress)
    print_collect(report)
    return 0 if report.ok else 1
