"""The comparison as tables of cells (raw value, text, best flag), shared by every renderer:
per worker (final/best/delta of each metric, info columns) and per group (mean ± 95% interval
of each metric, the best group marked with whether its lead is significant). Also the number
formats they use."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .compare import BranchResult, Comparison, direction
from .compare_groups import Group

TERMINAL_METRICS = 6  # more would not fit a terminal; csv/json/html have them all
INFO_COLUMNS = (  # key, header, direction of "best" (None: not ranked)
    ("train_time_s", "train time", "min"),
    ("throughput", "throughput", "max"),
    ("params", "params", None),
    ("flops", "FLOPs", None),
    ("checkpoint_bytes", "checkpoint", None),
)
SIGNIFICANT, NOT_SIGNIFICANT = "✓", "≈"


@dataclass(frozen=True)
class Cell:
    text: str
    value: Any = None
    best: bool = False


@dataclass(frozen=True)
class Column:
    key: str  # machine name (CSV header)
    header: str  # human header


@dataclass(frozen=True)
class ReportTable:
    columns: tuple[Column, ...]
    rows: tuple[tuple[Cell, ...], ...]


# ---------------------------------------------------------------- formatting

def fmt_number(value: float | None) -> str:
    if value is None:
        return "—"
    if math.isnan(value):
        return "nan"
    if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
        return f"{value:.3g}"
    if float(value).is_integer():
        return f"{int(value)}"
    return f"{value:.4g}"


def fmt_si(value: float | None) -> str:
    if value is None:
        return "—"
    for div, unit in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= div:
            return f"{value / div:.3g}{unit}"
    return fmt_number(value)


def fmt_bytes(value: float | None) -> str:
    if value is None:
        return "—"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    s = round(seconds)
    if s < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def fmt_delta(value: float | None) -> str:
    return "—" if value is None else ("+" if value >= 0 else "") + fmt_number(value)


# ---------------------------------------------------------------- the table model

def _has_distinct_best(cmp: Comparison, metric: str) -> bool:
    return any(b.best(metric) is not None and b.best(metric) != b.value(metric)
               for b in cmp.branches)


def build_table(cmp: Comparison, *, compact: bool = False, max_metrics: int | None = None,
                metrics: Sequence[str] | None = None) -> ReportTable:
    """The comparison as rows of cells. Full (CSV): separate final/best/delta columns.
    Compact (terminal, md, html): one cell per metric, `final (best b) Δd`, optional columns
    left out when empty, and at most `max_metrics` metric columns."""
    metrics = tuple(metrics if metrics is not None else cmp.metrics)
    metrics = metrics[:max_metrics] if max_metrics else metrics
    columns = [Column("name", "branch"), Column("state", "state"), Column("commit", "commit")]
    if not compact or len({b.host for b in cmp.branches}) > 1:
        columns.append(Column("host", "host"))
    for m in metrics:
        columns.append(Column(m, m + _arrow(m) if compact else m))
        if not compact and _has_distinct_best(cmp, m):
            columns.append(Column(f"{m}_best", f"{m} (best)"))
        if not compact and cmp.baseline:
            columns.append(Column(f"{m}_delta", f"Δ {m}"))
    for key, header, _ in INFO_COLUMNS:
        if not compact or any(_info(b, key) is not None for b in cmp.branches):
            columns.append(Column(key, header))
    if not compact or any(b.note for b in cmp.branches):
        columns.append(Column("note", "note"))
    best_final = {m: cmp.best_name(m) for m in metrics}
    best_curve = {m: cmp.best_name(m, best_of_curve=True) for m in metrics}
    best_info = {k: _best_info(cmp.branches, k, how) for k, _, how in INFO_COLUMNS}
    rows = []
    for b in cmp.branches:
        cells: dict[str, Cell] = {
            "name": Cell(b.name + (" (baseline)" if compact and b.name == cmp.baseline
                                   else ""), b.name),
            "state": Cell(b.state, b.state),
            "commit": Cell(b.commit[:8], b.commit),
            "host": Cell(b.host, b.host),
            "note": Cell(b.note, b.note),
        }
        for m in metrics:
            v, best, d = b.value(m), b.best(m), cmp.delta(b.name, m)
            text = fmt_number(v)
            if compact and best is not None and best != v:
                text += f" (best {fmt_number(best)})"
            if compact and d is not None and b.name != cmp.baseline:
                text += f" Δ{fmt_delta(d)}"
            cells[m] = Cell(text, v, b.name in best_final[m])
            cells[f"{m}_best"] = Cell(fmt_number(best), best, b.name in best_curve[m])
            cells[f"{m}_delta"] = Cell(fmt_delta(d), d)
        for key, _, _ in INFO_COLUMNS:
            v = _info(b, key)
            cells[key] = Cell(_fmt_info(key, v), v, b.name in best_info[key])
        rows.append(tuple(cells[c.key] for c in columns))
    return ReportTable(tuple(columns), tuple(rows))


def _arrow(metric: str) -> str:
    return {"min": " ↓", "max": " ↑"}.get(direction(metric) or "", "")


def _info(b: BranchResult, key: str) -> Any:
    return b.checkpoint_bytes if key == "checkpoint_bytes" else b.info.get(key)


def _fmt_info(key: str, value: Any) -> str:
    if key == "train_time_s":
        return fmt_duration(value)
    if key == "checkpoint_bytes":
        return fmt_bytes(value)
    if key in ("params", "flops"):
        return fmt_si(value)
    return fmt_number(value) if value is not None else "—"


def _best_info(branches: Sequence[BranchResult], key: str, how: str | None) -> set[str]:
    values = {b.name: _info(b, key) for b in branches}
    present = {n: v for n, v in values.items() if isinstance(v, (int, float))}
    if how is None or len(present) < 2:
        return set()
    target = min(present.values()) if how == "min" else max(present.values())
    return {n for n, v in present.items() if v == target}



# ---------------------------------------------------------------- groups

def fmt_stat(mean: float | None, ci95: float | None) -> str:
    """`mean ± ci95` (just the mean below two values)."""
    if mean is None:
        return "—"
    return fmt_number(mean) + (f" ± {fmt_number(ci95)}" if ci95 is not None else "")


def winner_mark(cmp: Comparison, metric: str) -> str:
    """✓ when the best group's lead is larger than both 95% intervals, ≈ when it is not,
    empty when it cannot be told (a group with fewer than two seeds, or no runner-up)."""
    w = cmp.winners.get(metric)
    if w is None or w.lead is None or w.lead.significant is None:
        return ""
    return SIGNIFICANT if w.lead.significant else NOT_SIGNIFICANT


def _group_info(g: Group, key: str) -> float | None:
    values = [v for b in g.members if b.finished and isinstance(v := _info(b, key), (int, float))]
    return sum(values) / len(values) if values else None


def group_note(cmp: Comparison, g: Group) -> str:
    parts = [g.shortfall()] if g.shortfall() else []
    keys = sorted({c.key for c in cmp.confounders_of(g.name)})
    if keys:
        parts.append("differs among seeds: " + ", ".join(keys))
    if g.reference:
        parts.append("reference")
    return "; ".join(parts)


def build_group_table(cmp: Comparison, *, compact: bool = True,
                      metrics: Sequence[str] | None = None) -> ReportTable:
    """One row per group. Compact (terminal, md, html): `mean ± ci95` per metric, the best
    group's cell flagged and marked ✓/≈ (significant or not); full (CSV): mean, std, ci95
    (and delta) columns per metric, plus branch, vars and counts."""
    metrics = tuple(metrics if metrics is not None else cmp.metrics)
    columns = [Column("group", "group"), Column("n", "n")]
    if not compact:
        columns += [Column("branch", "branch"), Column("vars", "vars"),
                    Column("failed", "failed"), Column("missing", "missing")]
    for m in metrics:
        if compact:
            columns.append(Column(m, m + _arrow(m)))
        else:
            columns += [Column(f"{m}_{s}", f"{m} {s}") for s in ("mean", "std", "ci95")]
            if cmp.baseline:
                columns.append(Column(f"{m}_delta", f"Δ {m}"))
    for key, header, _ in INFO_COLUMNS:
        if not compact or any(_group_info(g, key) is not None for g in cmp.groups):
            columns.append(Column(key, header))
    notes = {g.name: group_note(cmp, g) for g in cmp.groups}
    if not compact or any(notes.values()):
        columns.append(Column("note", "note"))
    rows = []
    for g in cmp.groups:
        total = len(g.members)
        cells: dict[str, Cell] = {
            "group": Cell(g.name + (" (baseline)" if compact and g.name == cmp.baseline
                                    else ""), g.name),
            "n": Cell(str(g.n) if g.n == total else f"{g.n}/{total}", g.n),
            "branch": Cell(g.branch, g.branch),
            "vars": Cell(json.dumps(dict(g.vars), sort_keys=True, default=str),
                         json.dumps(dict(g.vars), sort_keys=True, default=str)),
            "failed": Cell(str(g.failed), g.failed),
            "missing": Cell(str(g.missing), g.missing),
            "note": Cell(notes[g.name], notes[g.name]),
        }
        for m in metrics:
            stat = g.metrics.get(m)
            mean, std, ci = (stat.mean, stat.std, stat.ci95) if stat else (None, None, None)
            w = cmp.winners.get(m)
            best = w is not None and w.best == g.name and w.runner_up is not None
            d = cmp.group_delta(g.name, m)
            text = fmt_stat(mean, ci)
            if stat is not None and stat.diverged:  # NaN: the run diverged, not "no value"
                text = ("NaN (diverged)" if mean is None else
                        f"{text} ({stat.diverged} NaN)")
            if best and winner_mark(cmp, m):
                text += " " + winner_mark(cmp, m)
            if d is not None and g.name != cmp.baseline:
                text += f" Δ{fmt_delta(d)}"
            cells[m] = Cell(text, mean, best)
            cells[f"{m}_mean"] = Cell(fmt_number(mean), mean, best)
            cells[f"{m}_std"] = Cell(fmt_number(std), std)
            cells[f"{m}_ci95"] = Cell(fmt_number(ci), ci)
            cells[f"{m}_delta"] = Cell(fmt_delta(d), d)
        for key, _, _ in INFO_COLUMNS:
            v = _group_info(g, key)
            cells[key] = Cell(_fmt_info(key, v), v)
        rows.append(tuple(cells[c.key] for c in columns))
    return ReportTable(tuple(columns), tuple(rows))


def winner_lines(cmp: Comparison, metrics: Sequence[str] | None = None) -> list[str]:
    """One plain sentence per directed metric: the best group, its mean ± ci95 and n, the
    lead over the runner-up and whether it is larger than both 95% intervals."""
    lines = []
    for m in metrics if metrics is not None else cmp.metrics:
        w = cmp.winners.get(m)
        if w is None:
            continue
        better = "lower" if w.how == "min" else "higher"
        text = (f"{m} ({better} is better): {w.best} {fmt_stat(w.best_stat.mean, w.best_stat.ci95)}"
                f" (n={w.best_stat.n})")
        if w.runner_up is not None and w.runner_stat is not None:
            text += (f", runner-up {w.runner_up} "
                     f"{fmt_stat(w.runner_stat.mean, w.runner_stat.ci95)}"
                     f" (n={w.runner_stat.n})")
            if w.lead is not None:
                text += f", lead {fmt_number(w.lead.lead)}"
        lines.append(f"{text} — {w.verdict}")
    for m in metrics if metrics is not None else cmp.metrics:
        gone = [g.name for g in cmp.groups
                if (stat := g.metrics.get(m)) is not None and stat.diverged]
        if gone:
            lines.append(f"{m}: NaN (diverged, left out of the statistics) in "
                         f"{', '.join(gone)}")
    return lines
