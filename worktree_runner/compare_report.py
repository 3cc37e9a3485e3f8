"""A `Comparison` as files or text: Markdown, CSV, JSON, and the HTML report with its plots.
Groups are the rows when the run has seeds (several workers per branch + vars), workers
otherwise or with `per_worker`; JSON always has both. The terminal table is in
`display_compare.py`."""

from __future__ import annotations

import csv
import io
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from .compare import Comparison, direction
from .compare_code import differing_vars
from .compare_groups import group_json
from .compare_tables import ReportTable, build_group_table, build_table, winner_lines

FORMATS = ("table", "md", "csv", "json", "html")
_MD_SPECIAL = "\\`*_[]<>|#!$&"


def md_escape(text: str) -> str:
    """Text safe in a Markdown table cell: punctuation with a meaning is backslash-escaped
    (so `<script>`, `[x](y)` and `|` stay literal), newlines become spaces."""
    out = "".join("\\" + ch if ch in _MD_SPECIAL else ch for ch in text)
    return out.replace("\r", " ").replace("\n", " ")


def _md_table(table: ReportTable) -> list[str]:
    lines = ["| " + " | ".join(md_escape(c.header) for c in table.columns) + " |",
             "|" + "|".join("---" for _ in table.columns) + "|"]
    for row in table.rows:
        lines.append("| " + " | ".join(f"**{md_escape(c.text)}**" if c.best and c.text
                                       else md_escape(c.text) for c in row) + " |")
    return lines


def render_markdown(cmp: Comparison, *, per_worker: bool = False,
                    images: Sequence[str] = ()) -> str:
    lines = [f"# Run {md_escape(cmp.run)}", ""]
    if cmp.baseline:
        lines += [f"Deltas (Δ) against **{md_escape(cmp.baseline)}**.", ""]
    if cmp.grouped and not per_worker:
        lines += ["Mean ± 95% interval (Student t) over each group's seeds; the best group in "
                  "bold, ✓ when its lead over the runner-up is larger than both intervals, "
                  "≈ when it is not.", ""]
        lines += [f"- best {md_escape(line)}" for line in winner_lines(cmp)]
        lines += [""] if cmp.winners else []
        table = build_group_table(cmp)
    else:
        lines += ["Best value per column in bold.", ""]
        table = build_table(cmp, compact=True)
    for c in cmp.confounders:
        lines.append(f"- **warning** {md_escape((c.scope + ': ') if c.scope else '')}"
                     f"{md_escape(c.message)}")
    if cmp.confounders:
        lines.append("")
    lines += _md_table(table)
    items = list(cmp.groups) if cmp.grouped and not per_worker else list(cmp.branches)
    diff_vars = differing_vars(items)
    keys = sorted({k for v in diff_vars.values() for k in v})
    if keys:
        lines += ["", "## Configuration that differs", "",
                  "| name | " + " | ".join(md_escape(k) for k in keys) + " |",
                  "|---|" + "|".join("---" for _ in keys) + "|"]
        lines += ["| " + " | ".join(md_escape(v) for v in [name, *(vals.get(k, "—")
                                                                   for k in keys)]) + " |"
                  for name, vals in diff_vars.items()]
    for img in images:
        lines += ["", f"![{md_escape(Path(img).stem)}]({img})"]
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

    group_of = {b.name: g.name for g in cmp.groups for b in g.members}
    branches = []
    for b in cmp.branches:
        branches.append({
            "name": b.name, "branch": b.branch, "commit": b.commit, "host": b.host,
            "state": b.state, "collected": b.collected, "note": b.note,
            "group": group_of.get(b.name), "seed": b.seed, "reference": b.reference,
            "final": {m: num(b.value(m)) for m in cmp.metrics},
            "best": {m: num(b.best(m)) for m in cmp.metrics},
            "delta": {m: num(cmp.delta(b.name, m)) for m in cmp.metrics} if cmp.baseline
            else None,
            "info": dict(b.info), "checkpoint_bytes": b.checkpoint_bytes,
            "best_in": [m for m in cmp.metrics if b.name in cmp.best_name(m)],
            "curves": {k: {"steps": list(c.steps), "values": [num(v) for v in c.values]}
                       for k, c in b.curves.items()},
            "confusion_matrix": [list(r) for r in b.confusion] if b.confusion else None,
            "class_names": list(b.class_names), "vars": dict(b.vars), "env": dict(b.env),
            "progress": dict(b.progress),
        })
    return {"run": cmp.run, "baseline": cmp.baseline, "metrics": list(cmp.metrics),
            "directions": {m: direction(m) for m in cmp.metrics}, "branches": branches,
            "groups": [group_json(g, cmp.metrics) for g in cmp.groups],
            "winners": {m: w.to_json() for m, w in cmp.winners.items()},
            "confounders": [c.to_json() for c in cmp.confounders]}


def write_report(cmp: Comparison, fmt: str, out: Path | None, *, per_worker: bool = False,
                 stdout: TextIO | None = None) -> list[Path]:
    """Render in `fmt`; returns the files written. md/csv/json go to `stdout` unless `out` is
    given; html always goes to a directory (default results/<run>/report); `table` (drawn on
    the terminal by the caller) writes its plots into `out` when given."""
    written: list[Path] = []

    def write(name: str, data: str | bytes) -> None:
        assert out is not None
        out.mkdir(parents=True, exist_ok=True)
        path = out / name
        if isinstance(data, bytes):
            path.write_bytes(data)
        else:
            path.write_text(data, encoding="utf-8")
        written.append(path)

    def emit(text: str, name: str) -> None:
        if out is None:
            (stdout or sys.stdout).write(text)
        else:
            write(name, text)

    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}")
    pngs: dict[str, bytes] = {}
    if (fmt in ("table", "md") and out is not None) or fmt == "html":
        from .compare_plots import make_plots

        pngs = make_plots(cmp)
    if fmt == "table" and out is not None:
        for name, data in pngs.items():
            write(name, data)
    elif fmt == "md":
        if out is not None:
            for name, data in pngs.items():
                write(name, data)
        emit(render_markdown(cmp, per_worker=per_worker,
                             images=list(pngs) if out is not None else ()), "compare.md")
    elif fmt == "csv":
        table = (build_group_table(cmp, compact=False) if cmp.grouped and not per_worker
                 else build_table(cmp))
        emit(render_csv(table), "compare.csv")
    elif fmt == "json":
        emit(json.dumps(to_json(cmp), indent=1) + "\n", "compare.json")
    elif fmt == "html":
        from .compare_html import render_html

        out = out or cmp.results_dir / "report"
        write("compare.html", render_html(cmp, pngs))
    return written
