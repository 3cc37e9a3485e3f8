"""Rendering a `Comparison`: one table model (cells with raw values and a best flag) drawn as a
rich terminal table, Markdown, CSV, JSON, or a self-contained HTML page with the plots
(matplotlib, Agg backend, PNG) embedded as base64. matplotlib and rich load only when needed."""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from .compare import BranchResult, Comparison, differing_vars, direction

MAX_PLOTTED_METRICS = 12
TERMINAL_METRICS = 6  # more would not fit a terminal; csv/json/html have them all
INFO_COLUMNS = (  # key, header, direction of "best" (None: not ranked)
    ("train_time_s", "train time", "min"),
    ("throughput", "throughput", "max"),
    ("params", "params", None),
    ("flops", "FLOPs", None),
    ("checkpoint_bytes", "checkpoint", None),
)


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


def build_table(cmp: Comparison, *, compact: bool = False,
                max_metrics: int | None = None) -> ReportTable:
    """The comparison as rows of cells. Full (CSV): separate final/best/delta columns.
    Compact (terminal, md, html): one cell per metric, `final (best b) Δd`, optional columns
    left out when empty, and at most `max_metrics` metric columns."""
    metrics = cmp.metrics[:max_metrics] if max_metrics else cmp.metrics
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


# ---------------------------------------------------------------- text formats

def render_rich(cmp: Comparison, out: TextIO | None = None) -> None:
    """The compact table, sized to the terminal: as many metric columns as fit (headline
    metrics first); the info columns only on wide terminals."""
    from rich.console import Console
    from rich.table import Table

    console = Console(file=out) if out is not None else Console()
    if not console.is_terminal:
        # Logs, pipes and CI: no terminal to fit, so show the time/throughput/size columns.
        console = Console(file=out, width=200) if out is not None else Console(width=200)
    wide = console.width >= 140
    budget = console.width - 45 - (55 if wide else 0)
    table = build_table(cmp, compact=True,
                        max_metrics=max(2, min(TERMINAL_METRICS, budget // 14)))
    if not wide:
        info = {k for k, _, _ in INFO_COLUMNS}
        keep = [i for i, c in enumerate(table.columns) if c.key not in info]
        table = ReportTable(tuple(table.columns[i] for i in keep),
                            tuple(tuple(r[i] for i in keep) for r in table.rows))
    title = f"compare {cmp.run}" + (f" (Δ against {cmp.baseline})" if cmp.baseline else "")
    t = Table(title=title, title_justify="left")
    for c in table.columns:
        left = c.key in ("name", "state", "commit", "host", "note")
        t.add_column(c.header, justify="left" if left else "right",
                     no_wrap=c.key in ("name", "state", "commit"))
    for row in table.rows:
        t.add_row(*[f"[bold green]{c.text}[/]" if c.best else c.text for c in row])
    console.print(t)
    hidden = len(cmp.metrics) - sum(c.key in cmp.metrics for c in table.columns)
    more = f"{hidden} more metric(s)" if hidden > 0 else ""
    if not wide:
        more += (" and " if more else "") + "time/throughput/size columns"
    more = f"{more} in a wider terminal or --format csv/json/html; " if more else ""
    console.print(f"[dim]best per column in bold green (↑ higher / ↓ lower is better); {more}"
                  "`--format html` adds plots and code differences[/]")


def render_markdown(cmp: Comparison, table: ReportTable, images: Sequence[str] = ()) -> str:
    def esc(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    lines = [f"# Run {cmp.run}", ""]
    if cmp.baseline:
        lines += [f"Deltas (Δ) against **{cmp.baseline}**. Best value per column in bold.", ""]
    else:
        lines += ["Best value per column in bold.", ""]
    lines.append("| " + " | ".join(esc(c.header) for c in table.columns) + " |")
    lines.append("|" + "|".join("---" for _ in table.columns) + "|")
    for row in table.rows:
        lines.append("| " + " | ".join(f"**{esc(c.text)}**" if c.best and c.text
                                       else esc(c.text) for c in row) + " |")
    for img in images:
        lines += ["", f"![{Path(img).stem}]({img})"]
    return "\n".join(lines) + "\n"


def render_csv(table: ReportTable) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow([c.key for c in table.columns])
    for row in table.rows:
        writer.writerow(["" if c.value is None else c.value for c in row])
    return buf.getvalue()


def to_json(cmp: Comparison) -> dict[str, Any]:
    def num(v: float | None) -> float | None:
        return None if v is None or (isinstance(v, float) and math.isnan(v)) else v

    branches = []
    for b in cmp.branches:
        branches.append({
            "name": b.name, "branch": b.branch, "commit": b.commit, "host": b.host,
            "state": b.state, "collected": b.collected, "note": b.note,
            "final": {m: num(b.value(m)) for m in cmp.metrics},
            "best": {m: num(b.best(m)) for m in cmp.metrics},
            "delta": {m: num(cmp.delta(b.name, m)) for m in cmp.metrics} if cmp.baseline
            else None,
            "info": dict(b.info), "checkpoint_bytes": b.checkpoint_bytes,
            "best_in": [m for m in cmp.metrics if b.name in cmp.best_name(m)],
            "curves": {k: {"steps": list(c.steps), "values": [num(v) for v in c.values]}
                       for k, c in b.curves.items()},
            "confusion_matrix": [list(r) for r in b.confusion] if b.confusion else None,
            "class_names": list(b.class_names), "vars": dict(b.vars),
        })
    return {"run": cmp.run, "baseline": cmp.baseline, "metrics": list(cmp.metrics),
            "directions": {m: direction(m) for m in cmp.metrics}, "branches": branches}


# ---------------------------------------------------------------- plots

def _slug(text: str, taken: dict[str, bytes] | None = None, prefix: str = "",
          suffix: str = ".png") -> str:
    """A file name for a metric or branch; `/` becomes `-` (TensorBoard's `train/loss` and a
    JSONL `train_loss` must not collide), and a number is added if it still does."""
    base = prefix + (re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.") or "x")
    name, n = base + suffix, 2
    while taken is not None and name in taken:
        name, n = f"{base}-{n}{suffix}", n + 1
    return name


def make_plots(cmp: Comparison) -> dict[str, bytes]:
    """filename -> PNG bytes: learning curves (one figure per metric, every branch on it), a
    bar chart of final metrics, and each branch's confusion matrix."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pngs: dict[str, bytes] = {}

    def save(fig: Any, name: str) -> None:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
        plt.close(fig)
        pngs[name] = buf.getvalue()

    curve_metrics = [m for m in cmp.metrics if any(m in b.curves for b in cmp.branches)]
    # Quality curves first (accuracy/F1, then losses), bookkeeping ones (throughput…) last.
    curve_metrics.sort(key=lambda m: (0 if ("acc" in m or "f1" in m) else
                                      1 if ("loss" in m or "mse" in m) else 2))
    for m in curve_metrics[:MAX_PLOTTED_METRICS]:
        fig, ax = plt.subplots(figsize=(6, 3.6))
        for b in cmp.branches:
            c = b.curves.get(m)
            if c:
                ax.plot(c.steps, c.values, marker="o" if len(c.values) < 30 else None,
                        markersize=3, label=f"{b.name} ({b.state})")
        ax.set_title(m)
        ax.set_xlabel("step / epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        save(fig, _slug(m, pngs, "curve_"))
    finals = [m for m in cmp.metrics
              if sum(b.value(m) is not None for b in cmp.branches) >= 1][:MAX_PLOTTED_METRICS]
    if finals:
        cols = min(3, len(finals))
        rows = math.ceil(len(finals) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
        names = [b.name for b in cmp.branches]
        for ax, m in zip(axes.flat, finals):
            values = [b.value(m) for b in cmp.branches]
            best = cmp.best_name(m)
            colors = ["tab:green" if n in best else "tab:blue" for n in names]
            ax.bar(names, [v if v is not None else 0 for v in values], color=colors)
            ax.set_title(m + {"min": " (lower is better)", "max": " (higher is better)"}.get(
                direction(m) or "", ""), fontsize=9)
            ax.tick_params(axis="x", labelrotation=30, labelsize=8)
        for ax in list(axes.flat)[len(finals):]:
            ax.axis("off")
        fig.tight_layout()
        save(fig, "final_metrics.png")
    for b in cmp.branches:
        if b.confusion:
            n = len(b.confusion)
            fig, ax = plt.subplots(figsize=(1.2 + 0.6 * n, 1 + 0.6 * n))
            ax.imshow(b.confusion, cmap="Blues")
            labels = list(b.class_names) or [str(i) for i in range(n)]
            ax.set_xticks(range(n), labels, rotation=45, ha="right", fontsize=8)
            ax.set_yticks(range(n), labels, fontsize=8)
            top = max(max(r) for r in b.confusion) or 1
            for i, row in enumerate(b.confusion):
                for j, v in enumerate(row):
                    ax.text(j, i, fmt_number(v), ha="center", va="center", fontsize=7,
                            color="white" if v > top / 2 else "black")
            ax.set_xlabel("predicted")
            ax.set_ylabel("true")
            ax.set_title(f"{b.name}: confusion matrix", fontsize=9)
            save(fig, _slug(b.name, pngs, "confusion_"))
    return pngs


# ---------------------------------------------------------------- HTML

_CSS = """body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:14px}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f3f3f3}td.l{text-align:left}td.best{font-weight:bold;background:#dff5df}
pre{background:#f7f7f7;padding:8px;overflow:auto}img{max-width:100%;margin:8px 0}
.state-failed,.state-killed,.state-lost{color:#b00}.state-running{color:#06c}"""
_LEFT = ("name", "state", "commit", "host", "note")


def render_html(cmp: Comparison, table: ReportTable, pngs: dict[str, bytes]) -> str:
    e = html.escape
    parts = ["<!DOCTYPE html>", "<html><head><meta charset='utf-8'>",
             f"<title>wt-run compare {e(cmp.run)}</title><style>{_CSS}</style></head><body>",
             f"<h1>Run {e(cmp.run)}</h1>",
             "<p>Best value per column highlighted"
             + (f"; Δ against <b>{e(cmp.baseline)}</b>" if cmp.baseline else "") + ".</p>",
             "<table id='comparison'><thead><tr>"
             + "".join(f"<th>{e(c.header)}</th>" for c in table.columns)
             + "</tr></thead><tbody>"]
    for row in table.rows:
        tds = []
        for col, cell in zip(table.columns, row):
            cls = [c for c in ("l" if col.key in _LEFT else "", "best" if cell.best else "",
                               f"state-{cell.text}" if col.key == "state" else "") if c]
            tds.append(f"<td class='{' '.join(cls)}'>{e(cell.text)}</td>")
        parts.append("<tr>" + "".join(tds) + "</tr>")
    parts.append("</tbody></table>")
    if pngs:
        parts.append("<h2>Plots</h2>")
        for name, data in pngs.items():
            b64 = base64.b64encode(data).decode()
            parts.append(f"<figure><img alt='{e(name)}' src='data:image/png;base64,{b64}'>"
                         f"<figcaption>{e(name)}</figcaption></figure>")
    diff_vars = differing_vars(cmp.branches)
    keys = sorted({k for v in diff_vars.values() for k in v})
    parts.append("<h2>Configuration that differs</h2>")
    if keys:
        parts.append("<table id='vars'><thead><tr><th>branch</th>"
                     + "".join(f"<th>{e(k)}</th>" for k in keys) + "</tr></thead><tbody>")
        for name, values in diff_vars.items():
            parts.append(f"<tr><td class='l'>{e(name)}</td>"
                         + "".join(f"<td class='l'>{e(str(values.get(k, '—')))}</td>"
                                   for k in keys) + "</tr>")
        parts.append("</tbody></table>")
    else:
        parts.append("<p>All branches share the same vars and command.</p>")
    if cmp.diffs:
        parts.append(f"<h2>Code differences (git diff --stat against {e(cmp.base_ref)})</h2>")
        for name, stat in cmp.diffs.items():
            parts.append(f"<h3>{e(name)}</h3><pre>{e(stat)}</pre>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


# ---------------------------------------------------------------- entry point

def write_report(cmp: Comparison, fmt: str, out: Path | None,
                 stdout: TextIO | None = None) -> list[Path]:
    """Render in `fmt`; returns the files written. table/md/csv/json go to stdout unless
    `out` is given; html (and every plot) always goes to a directory."""
    stdout = stdout or sys.stdout
    table = build_table(cmp, compact=True)
    written: list[Path] = []

    def write(name: str, data: str | bytes) -> Path:
        assert out is not None
        out.mkdir(parents=True, exist_ok=True)
        path = out / name
        if isinstance(data, bytes):
            path.write_bytes(data)
        else:
            path.write_text(data, encoding="utf-8")
        written.append(path)
        return path

    def _emit(text: str, name: str) -> None:
        if out is None:
            stdout.write(text)
        else:
            write(name, text)

    if fmt == "table":
        render_rich(cmp, stdout if stdout is not sys.stdout else None)
        if out is not None:
            for name, data in make_plots(cmp).items():
                write(name, data)
    elif fmt == "md":
        if out is None:
            stdout.write(render_markdown(cmp, table))
        else:
            pngs = make_plots(cmp)
            for name, data in pngs.items():
                write(name, data)
            write("compare.md", render_markdown(cmp, table, list(pngs)))
    elif fmt == "csv":
        _emit(render_csv(build_table(cmp)), "compare.csv")
    elif fmt == "json":
        _emit(json.dumps(to_json(cmp), indent=1) + "\n", "compare.json")
    elif fmt == "html":
        out = out or cmp.results_dir / "report"
        write("compare.html", render_html(cmp, table, make_plots(cmp)))
    else:
        raise AssertionError(fmt)
    for path in written:
        if fmt != "table" or out is not None:
            print(f"wrote {path}", file=sys.stderr)
    return written
