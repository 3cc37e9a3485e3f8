"""Terminal rendering for `collect`: a live progress bar (bytes and files) and the summary
table per worker (rich is imported only here)."""

from __future__ import annotations

import threading
from collections import Counter
from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from .collect_model import CollectObserver, CollectReport, Skipped, WorkerCollect
from .display import _bytes


class RichCollectProgress(CollectObserver):
    """One bar for the whole collect: bytes moved and files done out of those planned."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.progress = Progress(
            TextColumn("[bold]collect"), BarColumn(), DownloadColumn(),
            TransferSpeedColumn(), TextColumn("{task.fields[files]}"), TimeRemainingColumn(),
            console=self.console, transient=True)
        self.task: TaskID | None = None
        self.files_total = 0
        self.files_done = 0
        self.lock = threading.Lock()

    def __enter__(self) -> RichCollectProgress:
        self.progress.start()
        self.task = self.progress.add_task("collect", total=0, files="0/0 files")
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.progress.stop()

    def _files(self) -> str:
        return f"{self.files_done}/{self.files_total} files"

    def planned(self, files: int, nbytes: int) -> None:
        with self.lock:
            self.files_total += files
            assert self.task is not None
            total = (self.progress.tasks[0].total or 0) + nbytes
            self.progress.update(self.task, total=total, files=self._files())

    def advance(self, nbytes: int) -> None:
        assert self.task is not None
        self.progress.update(self.task, advance=nbytes)

    def file_done(self) -> None:
        with self.lock:
            self.files_done += 1
            assert self.task is not None
            self.progress.update(self.task, files=self._files())


def _reasons(skipped: tuple[Skipped, ...]) -> str:
    counts = Counter(s.reason for s in skipped)
    return "; ".join(f"{n}× {why}" if n > 1 else why for why, n in counts.most_common())


def _status(w: WorkerCollect) -> str:
    if w.errors:
        return "[bold red]error[/]"
    if w.marked:
        return "[green]collected[/]"
    return "[yellow]partial[/]"


def print_collect(report: CollectReport, console: Console | None = None) -> None:
    console = console or Console()
    table = Table(title=f"collect {report.run} → {report.dest}", title_justify="left")
    several_hosts = len({w.host for w in report.workers}) > 1
    columns = ["worker", *(["host"] if several_hosts else []), "state", "files", "copied",
               "skipped", "result"]
    for col in columns:
        # Sweep names differ at their ends (…-s0, …-s1): a long one folds, never ends in "…".
        table.add_column(col, justify="right" if col in ("files", "copied", "skipped")
                         else "left", no_wrap=col in ("result", "state"),
                         overflow="fold" if col == "worker" else "ellipsis")
    for w in report.workers:
        copied = (f"{w.transferred_files} ({_bytes(w.transferred_bytes)})"
                  if w.transferred_files or w.transferred_bytes else "—")
        row = [w.name, *([w.host] if several_hosts else []), w.state,
               f"{w.files} ({_bytes(w.bytes)})", copied, str(len(w.skipped)), _status(w)]
        table.add_row(*row)
    console.print(table)
    for w in report.workers:
        if w.skipped:
            console.print(f"[dim]{w.name}: skipped {_reasons(w.skipped)}[/]")
            for s in w.skipped[:5]:
                console.print(f"[dim]  {s.path}: {s.reason}[/]")
            if len(w.skipped) > 5:
                console.print(f"[dim]  … {len(w.skipped) - 5} more in {w.dest}/worker.json[/]")
        for err in w.errors:
            console.print(f"[bold red]{w.name}: {err}[/]")
    if not report.ok:
        console.print("[red]Some workers were not collected — fix the errors above and run "
                      "`wt-run collect` again (finished files are kept).[/]")
