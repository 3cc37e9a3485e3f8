"""How `collect` moves files into a local staging directory, resuming what an interrupted collect
left there: the transfer interface, and the copy that reads each file through a file object (a
plain file on this machine, or SFTP on wt-run's own connection). The OpenSSH sftp transport is
in `collect_openssh.py`. Nothing here verifies: `collect.py` checks every staged copy against
the sha256 the host computed."""

from __future__ import annotations

import contextlib
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .collect_model import CollectObserver
from .hosts import Host

CHUNK = 1 << 20
TRANSPORTS = ("auto", "openssh", "sftp", "copy")
# Lets a user (or a test) force one.
TRANSPORT_ENV = "WT_RUN_COLLECT_TRANSPORT"


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


def clear_way(target: Path, size: int) -> int:
    """Make room for a staged copy of a file of `size` bytes: its directory exists; a symlink,
    or a copy longer than the file (it changed on the host), is removed; a shorter copy is
    kept to resume from. Returns the bytes kept."""
    target.parent.mkdir(parents=True, exist_ok=True)
    have = target.stat().st_size if target.is_file() and not target.is_symlink() else 0
    if have > size or target.is_symlink():
        target.unlink()
        have = 0
    return have


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
            have = clear_way(target, sizes[rel])
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


def sftp_session(host: Host) -> CopyTransport | None:
    """SFTP on wt-run's own connection to `host`, if it offers SFTP."""
    session = host.sftp()
    return sftp_transport(session) if session is not None else None
