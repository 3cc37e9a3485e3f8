"""What `collect` deals in: the files a host lists, the outcome per worker and per run, and the
observer that receives progress (the CLI draws its progress bar from it). Data only."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .hosts import Host


@dataclass(frozen=True)
class RemoteFile:
    """A candidate file as listed, and hashed, on the host."""

    root: str  # "worker" (the worker dir) or "worktree"
    rel: str
    size: int
    mtime_ns: int
    sha256: str

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
    transferred_bytes: int = 0  # file data copied this time (a resumed file: the rest only)
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
    """Receives progress as files move. Methods may be called from one thread per host."""

    def listed(self, name: str, host: Host, listing: WorkerListing) -> None:
        """After a worker's files were listed, before anything is copied."""

    def planned(self, files: int, nbytes: int) -> None:
        """More files and bytes to transfer."""

    def advance(self, nbytes: int) -> None:
        """File data arrived."""

    def file_done(self) -> None:
        """One file transferred."""
