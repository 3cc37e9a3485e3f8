"""Plots of a `Comparison` as PNG bytes (matplotlib, Agg backend, loaded only here): learning
curves per group (the mean over its seeds with the 95% band), the final metrics per group as
bars with 95% error bars, and each group's confusion matrix (summed over its seeds)."""

from __future__ import annotations

import io
import math
import re
from typing import Any

from .compare import Comparison, direction
from .compare_groups import Group
from .compare_stats import band
from .compare_tables import fmt_number

MAX_PLOTTED_METRICS = 12
MAX_CONFUSION = 12
MAX_BARS = 6  # metrics in the bar chart of final values


def slug(text: str, taken: dict[str, bytes] | None = None, prefix: str = "",
         suffix: str = ".png") -> str:
    """A file name for a metric or group; `/` becomes `-` (TensorBoard's `train/loss` and a
    JSONL `train_loss` must not collide), and a number is added if it still does."""
    base = prefix + (re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.") or "x")
    if len(base) > 120:  # a metric name is the worker's to choose: keep names file-sized
        import hashlib

        base = base[:100] + "-" + hashlib.sha256(base.encode()).hexdigest()[:12]
    name, n = base + suffix, 2
    while taken is not None and name in taken:
        name, n = f"{base}-{n}{suffix}", n + 1
    return name


def _curve_members(g: Group, metric: str) -> list[Any]:
    """The members whose curves a group's line averages: the finished ones when any finished
    (a failed seed's partial curve would bend the mean), else all."""
    finished = [b for b in g.members if b.finished and metric in b.curves]
    return finished or [b for b in g.members if metric in b.curves]


def curve_metrics(cmp: Comparison) -> list[str]:
    """Metrics with a learning curve: quality ones first (accuracy/F1, then losses),
    bookkeeping ones (throughput…) last."""
    found = [m for m in cmp.metrics if any(m in b.curves for b in cmp.branches)]
    found.sort(key=lambda m: (0 if ("acc" in m or "f1" in m) else
                              1 if ("loss" in m or "mse" in m) else 2))
    return found[:MAX_PLOTTED_METRICS]


def _confusion(g: Group) -> tuple[list[list[float]], tuple[str, ...], int] | None:
    """The group's confusion matrices summed over its finished seeds (same shape only)."""
    mats = [b for b in g.members if b.confusion and (b.finished or len(g.members) == 1)]
    if not mats:
        return None
    shape = len(mats[0].confusion or ())
    same = [b for b in mats if b.confusion and len(b.confusion) == shape]
    total = [[0.0] * len(row) for row in same[0].confusion or ()]
    for b in same:
        for i, row in enumerate(b.confusion or ()):
            for j, v in enumerate(row[:len(total[i])]):
                total[i][j] += v
    return total, same[0].class_names, len(same)


def make_plots(cmp: Comparison) -> dict[str, bytes]:
    """filename -> PNG bytes, in reading order."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pngs: dict[str, bytes] = {}

    def save(fig: Any, name: str) -> None:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
        plt.close(fig)
        pngs[name] = buf.getvalue()

    for m in curve_metrics(cmp):
        fig, ax = plt.subplots(figsize=(6, 3.6))
        for g in cmp.groups:
            members = _curve_members(g, m)
            if not members:
                continue
            bd = band([(b.curves[m].steps, b.curves[m].values) for b in members])
            label = f"{g.name} (n={len(members)})" if len(g.members) > 1 else \
                f"{g.name} ({g.members[0].state})"
            (line,) = ax.plot(bd.steps, bd.mean, label=label, linestyle="--" if g.reference
                              else "-", marker="o" if len(bd.steps) < 30 else None,
                              markersize=3)
            if any(c is not None for c in bd.ci95):
                lo = [mu - (c or 0.0) for mu, c in zip(bd.mean, bd.ci95)]
                hi = [mu + (c or 0.0) for mu, c in zip(bd.mean, bd.ci95)]
                ax.fill_between(bd.steps, lo, hi, alpha=0.2, color=line.get_color(),
                                linewidth=0)
        ax.set_title(m + (" (mean, 95% band)" if cmp.grouped else ""))
        ax.set_xlabel("step / epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        save(fig, slug(m, pngs, "curve_"))
    finals = [m for m in cmp.metrics
              if any(g.metrics.get(m) and g.metrics[m].mean is not None for g in cmp.groups)]
    finals = finals[:MAX_BARS]
    if finals:
        cols = min(3, len(finals))
        rows = math.ceil(len(finals) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
        names = [g.name for g in cmp.groups]
        for ax, m in zip(axes.flat, finals):
            stats = [g.metrics.get(m) for g in cmp.groups]
            w = cmp.winners.get(m)
            colors = ["tab:gray" if g.reference else
                      "tab:green" if w is not None and w.best == g.name else "tab:blue"
                      for g in cmp.groups]
            ax.bar(names, [s.mean if s and s.mean is not None else 0 for s in stats],
                   yerr=[s.ci95 if s and s.ci95 is not None else 0 for s in stats],
                   capsize=3, color=colors)
            ax.set_title(m + {"min": " (lower is better)", "max": " (higher is better)"}.get(
                direction(m) or "", ""), fontsize=9)
            ax.tick_params(axis="x", labelrotation=30, labelsize=8)
        for ax in list(axes.flat)[len(finals):]:
            ax.axis("off")
        fig.tight_layout()
        save(fig, "final_metrics.png")
    for g in cmp.groups[:MAX_CONFUSION]:
        found = _confusion(g)
        if found is None:
            continue
        matrix, class_names, k = found
        n = len(matrix)
        fig, ax = plt.subplots(figsize=(1.2 + 0.6 * n, 1 + 0.6 * n))
        ax.imshow(matrix, cmap="Blues")
        labels = list(class_names) or [str(i) for i in range(n)]
        ax.set_xticks(range(n), labels, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(n), labels, fontsize=8)
        top = max(max(r) for r in matrix) or 1
        for i, row in enumerate(matrix):
            for j, v in enumerate(row):
                ax.text(j, i, fmt_number(v), ha="center", va="center", fontsize=7,
                        color="white" if v > top / 2 else "black")
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{g.name}: confusion matrix" + (f" (sum of {k} seeds)" if k > 1 else ""),
                     fontsize=9)
        save(fig, slug(g.name, pngs, "confusion_"))
    return pngs
