"""Terminal rendering for `compare` (rich is imported only here): the group table (`mean ±
ci95` per metric, best group in bold green with ✓/≈ for a significant or not significant
lead), the winner of each metric in words and the confounder warnings; or, per worker, the
compact worker table. Sized to the terminal."""

from __future__ import annotations

from typing import TextIO

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .compare import Comparison
from .compare_tables import (
    INFO_COLUMNS,
    TERMINAL_METRICS,
    ReportTable,
    build_group_table,
    build_table,
    winner_lines,
)

_LEFT = ("name", "group", "state", "commit", "host", "note")


def _console(out: TextIO | None) -> Console:
    console = Console(file=out) if out is not None else Console()
    if not console.is_terminal:
        # Logs, pipes and CI: no terminal to fit, so show the time/throughput/size columns.
        console = Console(file=out, width=200) if out is not None else Console(width=200)
    return console


def _drop_info(table: ReportTable) -> ReportTable:
    info = {k for k, _, _ in INFO_COLUMNS}
    keep = [i for i, c in enumerate(table.columns) if c.key not in info]
    return ReportTable(tuple(table.columns[i] for i in keep),
                       tuple(tuple(r[i] for i in keep) for r in table.rows))


def _print_table(console: Console, title: str, table: ReportTable) -> None:
    t = Table(title=escape(title), title_justify="left")
    for c in table.columns:
        t.add_column(escape(c.header), justify="left" if c.key in _LEFT else "right",
                     no_wrap=c.key in ("name", "group", "state", "commit"))
    for row in table.rows:
        t.add_row(*[f"[bold green]{escape(c.text)}[/]" if c.best else escape(c.text)
                    for c in row])
    console.print(t)


def render_rich(cmp: Comparison, out: TextIO | None = None, *,
                per_worker: bool = False) -> None:
    """Groups when the run has seeds (several workers per branch + vars) unless `per_worker`;
    else one row per worker."""
    console = _console(out)
    wide = console.width >= 140
    budget = console.width - 45 - (55 if wide else 0)
    n_metrics = max(2, min(TERMINAL_METRICS, budget // (20 if cmp.grouped else 14)))
    shown = cmp.metrics[:n_metrics]
    against = f" (Δ against {cmp.baseline})" if cmp.baseline else ""
    if cmp.grouped and not per_worker:
        table = build_group_table(cmp, metrics=shown)
        _print_table(console, f"compare {cmp.run}: {len(cmp.groups)} groups{against}",
                     table if wide else _drop_info(table))
        for line in winner_lines(cmp, shown):
            console.print(f"  best {escape(line)}")
        legend = ("mean ± 95% interval (Student t) over each group's seeds; best group in "
                  "bold green, ✓ its lead is larger than both intervals, ≈ it is not; "
                  "--per-worker for one row per worker")
    else:
        table = build_table(cmp, compact=True, max_metrics=n_metrics)
        _print_table(console, f"compare {cmp.run}{against}",
                     table if wide else _drop_info(table))
        legend = "best per column in bold green (↑ higher / ↓ lower is better)"
    for c in cmp.confounders:
        where = f"{c.scope}: " if c.scope else ""
        console.print(f"[yellow]warning:[/] {escape(where + c.message)}")
    hidden = len(cmp.metrics) - len(shown)
    more = f"{hidden} more metric(s)" if hidden > 0 else ""
    if not wide:
        more += (" and " if more else "") + "time/throughput/size columns"
    more = f"; {more} in a wider terminal or --format csv/json/html" if more else ""
    console.print(f"[dim]{escape(legend)}{more}; `--format html` adds plots and code "
                  "differences[/]")
