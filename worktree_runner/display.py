"""Terminal rendering of status, launch and stop results (rich is imported only here)."""

from __future__ import annotations

import time
from collections.abc import Sequence

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from .observe import eta_seconds, progress_fraction
from .reports import LaunchReport, StatusReport, StopOutcome, WorkerView
from .states import WorkerState

STATE_STYLE = {
    WorkerState.PENDING: "yellow", WorkerState.RUNNING: "cyan",
    WorkerState.SUCCEEDED: "green", WorkerState.FAILED: "bold red",
    WorkerState.KILLED: "red", WorkerState.STOPPED: "magenta",
    WorkerState.LOST: "bold red", WorkerState.UNKNOWN: "dim",
}


def make_console() -> Console:
    """A console; when output is not a terminal (logs, CI, pipes) tables are not squeezed
    to 80 columns."""
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)
    return console


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def _bytes(n: int | None) -> str:
    if n is None:
        return "?"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _worker_row(w: WorkerView) -> list[object]:
    r, o = w.record, w.obs
    end = o.ended_at or (o.host_time if o.state == WorkerState.RUNNING else None)
    runtime = end - o.started_at if (end and o.started_at) else None
    frac = progress_fraction(o.progress)
    prog = "-"
    if o.progress and frac is not None:
        ep = o.progress.get("epoch")
        eps = o.progress.get("epochs")
        prog = f"{frac * 100:.0f}%" + (f" (epoch {ep}/{eps})" if eps else "")
    state = Text(o.state.value, style=STATE_STYLE[o.state])
    detail = (f" exit {o.exit_code}" if o.state == WorkerState.FAILED else
              f" sig {o.signal}" if o.signal else "")
    attempt = max(o.attempt or 0, r.attempt)
    if r.retry_max and attempt > 1:
        detail += f" attempt {attempt} of {r.retry_max + 1}"
    if detail:
        state.append(detail, style="dim")
    if o.reason and o.state in (WorkerState.UNKNOWN, WorkerState.LOST, WorkerState.PENDING):
        state.append(f" ({o.reason})", style="dim")
    return [r.name, r.branch or "-", r.commit[:8] or "-", r.host, state,
            str(o.pid or r.pid or "-"), duration(runtime), prog, duration(eta_seconds(o))]


def _group_row(name: str, members: Sequence[WorkerView]) -> list[object]:
    """One folded row for the seeds of a group: counts by state, the furthest ETA."""
    counts: dict[WorkerState, int] = {}
    for w in members:
        counts[w.state] = counts.get(w.state, 0) + 1
    state = Text()
    for i, (st, n) in enumerate(sorted(counts.items(), key=lambda kv: kv[0].value)):
        state.append((", " if i else "") + f"{n} {st.value}", style=STATE_STYLE[st])
    fractions = [progress_fraction(w.obs.progress) for w in members]
    done = [f for f in fractions if f is not None]
    prog = f"{sum(done) / len(members) * 100:.0f}%" if done else "-"
    etas = [e for e in (eta_seconds(w.obs) for w in members) if e is not None]
    first = members[0].record
    hosts = sorted({w.record.host for w in members})
    return [f"{name} ×{len(members)}", first.branch or "-", first.commit[:8] or "-",
            ",".join(hosts), state, "-", "-", prog, duration(max(etas) if etas else None)]


def status_renderable(report: StatusReport, unfold: bool = False) -> Group:
    hosts = []
    for h in report.hosts:
        if not h.reachable:
            hosts.append(Text(f"host {h.name}: unreachable — {h.reason}", style="bold yellow"))
            continue
        parts = [f"host {h.name}: up"]
        if h.load:
            parts.append(f"load {h.load[0]:.2f}")
        if h.disk_free_bytes is not None:
            parts.append(f"disk free {_bytes(h.disk_free_bytes)}")
        for g in h.gpus:
            parts.append(f"gpu{g['index']} {g['utilization']:.0f}% "
                         f"{g['memory_used_mib']:.0f}/{g['memory_total_mib']:.0f} MiB")
        hosts.append(Text(", ".join(parts), style="dim"))
    table = Table(title=f"run {report.run}", title_justify="left")
    for col in ("name", "branch", "commit", "host", "state", "pid", "runtime", "progress",
                "ETA"):
        table.add_column(col, no_wrap=True, min_width=6 if col == "branch" else None,
                         overflow="fold" if col == "branch" else "ellipsis")
    groups: dict[str, list[WorkerView]] = {}
    for w in report.workers:
        groups.setdefault(w.record.group or w.record.name, []).append(w)
    for name, members in groups.items():
        if unfold or len(members) == 1:
            for w in members:
                table.add_row(*_worker_row(w))
        else:
            table.add_row(*_group_row(name, members))
    if not unfold and any(len(m) > 1 for m in groups.values()):
        table.caption = "seeds folded into one row per group: --all shows every worker"
    counts: dict[str, int] = {}
    for w in report.workers:
        counts[w.state.value] = counts.get(w.state.value, 0) + 1
    summary = Text(", ".join(f"{n} {s}" for s, n in sorted(counts.items())) +
                   time.strftime("   (%H:%M:%S)"), style="dim")
    return Group(*hosts, table, summary)


def print_status(report: StatusReport, console: Console | None = None,
                 unfold: bool = False) -> None:
    (console or make_console()).print(status_renderable(report, unfold))


def print_launch(report: LaunchReport, console: Console | None = None) -> None:
    console = console or make_console()
    verb = "Would launch" if report.dry_run else "Launched"
    errors = {o.host: o.error for o in report.outcomes if o.error}
    started = {n for o in report.outcomes for n in o.started}
    for rec in report.planned:
        if report.dry_run:
            console.print(f"Would launch {rec.name} ({rec.branch}) on {rec.host}: "
                          f"worktree {rec.worktree}\n    command: {rec.command}",
                          highlight=False, soft_wrap=True)
        elif rec.name in started:
            gpu = f", CUDA_VISIBLE_DEVICES={','.join(rec.gpus)}" if rec.gpus else ""
            console.print(f"{verb} {rec.name} ({rec.branch} @ {rec.commit[:8]}) on "
                          f"{rec.host}{gpu}", highlight=False)
    for host, err in errors.items():
        console.print(f"[bold red]Error:[/] host {host}: {err}", highlight=False)
    for note in report.notes:
        console.print(f"[yellow]Note:[/] {note}", highlight=False, soft_wrap=True)
    if report.dry_run:
        console.print(f"{len(report.planned)} worker(s); nothing was started", style="dim",
                      highlight=False)
    else:
        console.print(f"run {report.run}: `wt-run status` to watch, "
                      f"`wt-run logs NAME -f` to follow a log", style="dim", highlight=False)


def print_stop(outcomes: Sequence[StopOutcome], console: Console | None = None) -> None:
    console = console or make_console()
    words = {"signalled": "stopping (TERM, then KILL after the grace period)",
             "done": "had already ended", "marked": "stopped before it started",
             "mismatch": "NOT signalled: its pid now belongs to another process (reads lost)"}
    for o in outcomes:
        console.print(f"{o.name} on {o.host}: {words.get(o.result, o.result)}", highlight=False)
