"""The HTML report: one self-contained file (CSS inline, plots as data: URIs, no script, no
external resource) for a reader deciding which branch wins.

Top to bottom: a summary (the winner of each metric with its mean ± 95% interval, the lead
over the runner-up and whether it is significant; confounder warnings; groups short of
seeds), the results table (headline metrics; the other metric families folded under
<details>, in tables of a few columns so the page fits a 1280-px screen), the per-worker table
(folded when there are groups), the recorded environment, the plots in a grid (learning
curves as mean with a 95% band), the config vars that differ, and the code difference of each
branch against `base` (stat and patch, truncated). Every text is HTML-escaped."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from typing import Any

from .compare import Comparison
from .compare_code import differing_vars
from .compare_tables import ReportTable, build_group_table, build_table, fmt_number, fmt_stat

MAIN_METRICS = 5  # metric columns in the main tables; the rest fold by family
FAMILY_COLUMNS = 5  # metric columns per folded table
_LEFT = frozenset({"name", "group", "state", "commit", "host", "note"})
ENV_KEYS = (("host", "host"), ("gpu", "GPU"), ("driver", "driver"), ("python", "python"),
            ("torch", "torch"), ("numpy", "numpy"), ("packages_hash", "packages"),
            ("dirty", "uncommitted code"), ("data_fingerprint", "data"))

_CSS = """*{box-sizing:border-box}
body{font:14px/1.45 system-ui,sans-serif;margin:0 auto;padding:16px 20px;max-width:1260px;
color:#222}
h1{font-size:22px;margin:4px 0}h2{font-size:18px;margin:22px 0 8px;border-bottom:1px solid #ddd}
.meta{color:#666;margin:0}
table{border-collapse:collapse;margin:8px 0;font-size:13px;max-width:100%}
th,td{border:1px solid #d4d4d4;padding:3px 7px;text-align:right;vertical-align:top;
overflow-wrap:anywhere}
th{background:#f3f3f3;font-weight:600;overflow-wrap:normal}td.l,th.l{text-align:left}
td.best{font-weight:bold;background:#dff5df}td.num{white-space:nowrap}
.state-failed,.state-killed,.state-lost{color:#b00}.state-running{color:#06c}
.sig{color:#070;font-weight:600}.nosig{color:#a60;font-weight:600}.untested{color:#666}
.warn{background:#fff6e0;border-left:4px solid #e0a000;padding:6px 10px;margin:8px 0}
.warn ul{margin:4px 0;padding-left:20px}
.ok{background:#eef8ee;border-left:4px solid #3a3;padding:6px 10px;margin:8px 0}
.scroll{overflow-x:auto;max-width:100%}
details{margin:6px 0}summary{cursor:pointer;font-weight:600}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(380px,1fr));gap:12px}
figure{margin:0;border:1px solid #e4e4e4;padding:6px;background:#fff}
figure.wide{grid-column:1/-1}figure img{max-width:100%;height:auto;display:block}
figcaption{font-size:12px;color:#555}
pre{background:#f7f7f7;padding:8px;overflow:auto;max-height:480px;font-size:12px;
white-space:pre}
.add{color:#060}.del{color:#a00}.hunk{color:#07a}"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _table(table: ReportTable, table_id: str = "", caption: str = "") -> str:
    ident = f" id='{_e(table_id)}'" if table_id else ""
    head = "".join(f"<th class='{'l' if c.key in _LEFT else ''}'>{_e(c.header)}</th>"
                   for c in table.columns)
    rows = []
    for row in table.rows:
        tds = []
        for col, cell in zip(table.columns, row):
            cls = [c for c in ("l" if col.key in _LEFT else "num", "best" if cell.best else "",
                               f"state-{cell.text}" if col.key == "state" else "") if c]
            tds.append(f"<td class='{_e(' '.join(cls))}'>{_e(cell.text)}</td>")
        rows.append("<tr>" + "".join(tds) + "</tr>")
    cap = f"<caption>{_e(caption)}</caption>" if caption else ""
    return (f"<div class='scroll'><table{ident}>{cap}<thead><tr>{head}</tr></thead><tbody>"
            + "".join(rows) + "</tbody></table></div>")


def families(metrics: Sequence[str]) -> dict[str, list[str]]:
    """Metrics by family: the part before the first `/`, else before the first `_`."""
    out: dict[str, list[str]] = {}
    for m in metrics:
        fam = m.split("/", 1)[0] if "/" in m else m.split("_", 1)[0]
        out.setdefault(fam, []).append(m)
    return out


def _winner_rows(cmp: Comparison, metrics: Sequence[str]) -> str:
    rows = []
    for m in metrics:
        w = cmp.winners.get(m)
        if w is None:
            continue
        sig = w.lead.significant if w.lead else None
        cls = "sig" if sig else "nosig" if sig is False else "untested"
        runner = w.runner_stat
        rows.append(
            f"<tr><td class='l'>{_e(m)} {'↓' if w.how == 'min' else '↑'}</td>"
            f"<td class='l'>{_e(w.best)}</td>"
            f"<td>{_e(fmt_stat(w.best_stat.mean, w.best_stat.ci95))} (n={w.best_stat.n})</td>"
            f"<td class='l'>{_e(w.runner_up or '—')}</td>"
            f"<td>{_e(fmt_stat(runner.mean, runner.ci95) if runner else '—')}"
            f"{f' (n={runner.n})' if runner else ''}</td>"
            f"<td>{_e(fmt_number(w.lead.lead) if w.lead else '—')}</td>"
            f"<td class='l {cls}'>{_e(w.verdict)}</td></tr>")
    head = ("<thead><tr><th class='l'>metric</th><th class='l'>winner</th><th>mean ± 95% CI"
            "</th><th class='l'>runner-up</th><th>mean ± 95% CI</th><th>lead</th>"
            "<th class='l'>verdict</th></tr></thead>")
    return f"{head}<tbody>{''.join(rows)}</tbody>"


def _summary(cmp: Comparison) -> list[str]:
    parts = ["<section id='summary'><h2>Summary</h2>"]
    ranked = [m for m in cmp.metrics if m in cmp.winners]
    if ranked:
        main, rest = ranked[:MAIN_METRICS], ranked[MAIN_METRICS:]
        parts.append(f"<div class='scroll'><table id='winners'>{_winner_rows(cmp, main)}"
                     "</table></div>")
        if rest:
            parts.append(f"<details><summary>Winners of {len(rest)} more metrics</summary>"
                         f"<div class='scroll'><table>{_winner_rows(cmp, rest)}</table></div>"
                         "</details>")
    else:
        parts.append("<p>No metric with a known direction to rank groups by.</p>")
    short = [g for g in cmp.groups if g.shortfall()]
    warnings = [(c.scope + ": " if c.scope else "") + c.message for c in cmp.confounders]
    warnings += [f"{g.name}: {g.shortfall()} of {len(g.members)} worker(s) — its statistics "
                 f"use {g.n}" for g in short]
    if warnings:
        parts.append("<div class='warn' id='warnings'><b>Check before trusting the ranking"
                     "</b><ul>" + "".join(f"<li>{_e(w)}</li>" for w in warnings)
                     + "</ul></div>")
    elif any(b.env for b in cmp.branches):
        parts.append("<div class='ok' id='warnings'>No confounder found: GPU, packages, code, "
                     "data and epochs completed agree.</div>")
    else:
        parts.append("<div class='warn' id='warnings'>No environment was recorded for these "
                     "workers: confounders cannot be checked.</div>")
    parts.append("</section>")
    return parts


def _results(cmp: Comparison) -> list[str]:
    grouped = cmp.grouped
    main, rest = cmp.metrics[:MAIN_METRICS], cmp.metrics[MAIN_METRICS:]

    def table(metrics: Sequence[str], ident: str = "") -> str:
        t = (build_group_table(cmp, metrics=metrics) if grouped
             else build_table(cmp, compact=True, metrics=metrics))
        return _table(t, ident)

    parts = ["<section id='results'><h2>" + ("Groups" if grouped else "Workers") + "</h2>",
             "<p>" + ("Mean ± 95% interval (Student t) over each group's seeds; best group "
                      "highlighted, ✓ its lead over the runner-up is larger than both intervals,"
                      " ≈ it is not." if grouped else "Best value per column highlighted.")
             + (f" Δ against <b>{_e(cmp.baseline)}</b>." if cmp.baseline else "") + "</p>",
             table(main, "groups" if grouped else "comparison")]
    for fam, metrics in families(rest).items():
        chunks = [metrics[i:i + FAMILY_COLUMNS] for i in range(0, len(metrics), FAMILY_COLUMNS)]
        label = f"{fam}/…" if metrics[0].startswith(fam + "/") else f"{fam}_…"
        parts.append(f"<details class='family'><summary>{_e(label)} ({len(metrics)} metrics)"
                     "</summary>" + "".join(table(c) for c in chunks) + "</details>")
    if grouped:
        parts.append(f"<details><summary>Per worker ({len(cmp.branches)})</summary>"
                     + _table(build_table(cmp, compact=True, metrics=main), "comparison")
                     + "</details>")
    parts.append("</section>")
    return parts


def _environment(cmp: Comparison) -> list[str]:
    if not any(b.env for b in cmp.branches):
        return []
    rows = []
    for g in cmp.groups:
        cells = []
        for key, _ in ENV_KEYS:
            values = sorted({str(b.env[key]) for b in g.members if b.env.get(key) is not None})
            cells.append(", ".join(v if len(v) <= 24 else v[:21] + "…" for v in values) or "—")
        rows.append(f"<tr><td class='l'>{_e(g.name)}</td>"
                    + "".join(f"<td class='l'>{_e(c)}</td>" for c in cells) + "</tr>")
    head = "".join(f"<th class='l'>{_e(label)}</th>" for _, label in ENV_KEYS)
    return ["<section id='environment'><h2>Environment recorded at start</h2>"
            "<div class='scroll'><table id='env'><thead><tr><th class='l'>group</th>"
            f"{head}</tr></thead><tbody>", *rows, "</tbody></table></div></section>"]


def _plots(pngs: dict[str, bytes]) -> list[str]:
    if not pngs:
        return []
    parts = ["<section id='plots'><h2>Plots</h2><div class='grid'>"]
    for name, data in pngs.items():
        b64 = base64.b64encode(data).decode()
        wide = " class='wide'" if name == "final_metrics.png" else ""
        parts.append(f"<figure{wide}><img alt='{_e(name)}' src='data:image/png;base64,{b64}'>"
                     f"<figcaption>{_e(name)}</figcaption></figure>")
    parts.append("</div></section>")
    return parts


def _colour_patch(patch: str) -> str:
    out = []
    for line in patch.splitlines():
        cls = ("hunk" if line.startswith("@@") else
               "add" if line.startswith("+") and not line.startswith("+++") else
               "del" if line.startswith("-") and not line.startswith("---") else "")
        out.append(f"<span class='{cls}'>{_e(line)}</span>" if cls else _e(line))
    return "\n".join(out)


def _config_and_code(cmp: Comparison) -> list[str]:
    items = list(cmp.groups) if cmp.grouped else list(cmp.branches)
    diff_vars = differing_vars(items)
    keys = sorted({k for v in diff_vars.values() for k in v})
    parts = ["<section id='config'><h2>Configuration that differs</h2>"]
    if keys:
        parts.append("<div class='scroll'><table id='vars'><thead><tr><th class='l'>"
                     + ("group" if cmp.grouped else "branch") + "</th>"
                     + "".join(f"<th class='l'>{_e(k)}</th>" for k in keys)
                     + "</tr></thead><tbody>")
        for name, values in diff_vars.items():
            parts.append(f"<tr><td class='l'>{_e(name)}</td>"
                         + "".join(f"<td class='l'>{_e(values.get(k, '—'))}</td>" for k in keys)
                         + "</tr>")
        parts.append("</tbody></table></div>")
    else:
        parts.append("<p>All share the same vars and command.</p>")
    parts.append("</section>")
    if cmp.diffs:
        parts.append(f"<section id='code'><h2>Code differences against {_e(cmp.base_ref)}"
                     "</h2>")
        for diff in cmp.diffs.values():
            last = diff.stat.strip().splitlines()[-1:] or [""]
            cut = (f"\n… {diff.truncated_lines} more line(s) left out"
                   if diff.truncated_lines else "")
            parts.append(f"<details class='diff'><summary>{_e(diff.title)} — {_e(last[0])}"
                         f"</summary><pre class='stat'>{_e(diff.stat)}</pre>"
                         + (f"<pre class='patch'>{_colour_patch(diff.patch)}{_e(cut)}</pre>"
                            if diff.patch else "") + "</details>")
        parts.append("</section>")
    return parts


def render_html(cmp: Comparison, pngs: dict[str, bytes]) -> str:
    groups = (f"{len(cmp.groups)} groups, " if cmp.grouped else "")
    parts = ["<!DOCTYPE html>", "<html lang='en'><head><meta charset='utf-8'>",
             "<meta name='viewport' content='width=device-width, initial-scale=1'>",
             f"<title>wt-run compare {_e(cmp.run)}</title><style>{_CSS}</style></head><body>",
             f"<header><h1>Run {_e(cmp.run)}</h1><p class='meta'>{_e(groups)}"
             f"{len(cmp.branches)} workers, {len(cmp.metrics)} metrics; code compared against "
             f"{_e(cmp.base_ref or 'base')}</p></header>",
             *_summary(cmp), *_results(cmp), *_plots(pngs), *_environment(cmp),
             *_config_and_code(cmp), "</body></html>"]
    return "\n".join(parts) + "\n"
