"""Files on the collecting side: which host-supplied paths may be written, the index of what is
already collected and verified, and hashing of staged copies while the transfer goes on."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import stat
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .collect_model import RemoteFile
from .runs import atomic_write_text

CHUNK = 1 << 20
BOOKKEEPING = ".collect"


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


def secure_staging(staging: Path) -> None:
    """Make a staging directory (`<dest>/.collect/incoming/<root>`) safe to write into before
    any transfer does: every directory from the worker's results directory down is a real
    one, and nothing inside is a symlink or a special file. The staging area is wt-run's own
    and never holds a link; one there was planted (a local worker can write into results/),
    and a transfer writing through it would land outside the destination."""
    top = staging.parents[2]
    if top.is_symlink():
        raise OSError(errno.ELOOP, "a symlink where a results directory goes; remove it",
                      str(top))
    top.mkdir(parents=True, exist_ok=True)
    here = top
    for part in staging.relative_to(top).parts:
        here = here / part
        try:
            st = os.lstat(here)
        except FileNotFoundError:
            here.mkdir()
            continue
        if not stat.S_ISDIR(st.st_mode):  # a link, a file or a FIFO where a directory goes
            os.unlink(here)
            here.mkdir()
    for folder, dirs, files in os.walk(staging):
        for name in dirs + files:
            path = os.path.join(folder, name)
            mode = os.lstat(path).st_mode
            if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
                os.unlink(path)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def same_mtime(a_ns: int, b_ns: int) -> bool:
    # SFTP reports whole seconds; everything else keeps nanoseconds.
    return a_ns == b_ns or (a_ns % 1_000_000_000 == 0 and a_ns // 10**9 == b_ns // 10**9)


def plain_file_of_size(path: Path, size: int) -> bool:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    return os.path.isfile(path) and not os.path.islink(path) and st.st_size == size


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
        if not plain_file_of_size(path, size):
            return None
        st = os.lstat(path)
        hit = self.entries.get(rel)
        if hit and hit[:4] == self.ident(st):
            return str(hit[4])
        digest = sha256_file(path)
        self.record(rel, path, digest)
        return digest

    def verified(self, rel: str) -> str | None:
        hit = self.entries.get(rel)
        return str(hit[4]) if hit else None

    def record(self, rel: str, path: Path, digest: str) -> None:
        self.entries[rel] = [*self.ident(os.lstat(path)), digest]
        self.dirty = True

    def save(self) -> None:
        if self.dirty:
            atomic_write_text(self.path, json.dumps(self.entries, sort_keys=True))
            self.dirty = False


class StagedHasher:
    """Hashes staged copies, read back from disk, as soon as each is complete (its listed
    size and mtime: sftp and the copies set the mtime last), while the next files are still
    arriving, so verification does not re-read everything after the last byte. Results are
    keyed by what stat says (ctime and inode too), so a copy that changes afterwards is hashed
    again when it is verified."""

    POLL_S = 0.05

    def __init__(self, files: Sequence[tuple[Path, RemoteFile]]) -> None:
        self._todo = dict(files)
        self._digests: dict[tuple[str, int, int, int, int], str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="collect-hash", daemon=True)

    def __enter__(self) -> StagedHasher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @staticmethod
    def _ident(path: Path, st: os.stat_result) -> tuple[str, int, int, int, int]:
        return (str(path), st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)

    def _run(self) -> None:
        while self._todo and not self._stop.is_set():
            hashed = False
            for path, f in list(self._todo.items()):
                if self._stop.is_set():
                    return
                try:
                    st = path.lstat()
                except OSError:
                    continue
                if st.st_size == f.size and same_mtime(st.st_mtime_ns, f.mtime_ns):
                    with contextlib.suppress(OSError):
                        self._digests[self._ident(path, st)] = sha256_file(path)
                    del self._todo[path]
                    hashed = True
            if not hashed:
                self._stop.wait(self.POLL_S)

    def digest(self, path: Path, st: os.stat_result) -> str:
        """The sha256 of the staged copy as it is now."""
        return self._digests.get(self._ident(path, st)) or sha256_file(path)
