"""Reading one worker's collected results (`results/<run>/<name>/`) into a `BranchResult`:
final and best metrics, learning curves, info columns, its sweep identity (vars, seed, group)
and the environment it recorded at start.

Metric sources, all optional and read leniently (a malformed line or file is skipped):
- `out/metrics.jsonl`: one JSON object per line (per epoch); numeric values become learning
  curves, nested objects are flattened (`{"val": {"acc": 1}}` -> `val/acc`).
- `out/metrics.json`: the final summary (numbers; `confusion_matrix` with optional
  `class_names`/`labels`; info keys such as params, flops, train_time_s, throughput, device).
- `out/progress.json`: the epochs/steps the worker completed.
- TensorBoard event files anywhere under the worker's results, read with TensorBoard's own
  `EventAccumulator`; scalars become curves (tag names as logged).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .runs import WorkerRecord

# Keys of a metrics line that index it rather than measure anything.
STEP_KEYS = ("epoch", "step", "global_step", "iteration", "iter")
IGNORED_KEYS = frozenset({*STEP_KEYS, "epochs", "steps", "time", "timestamp", "wall_time",
                          "eta_s", "fraction"})
# Info keys: shown in their own columns, not as metrics. First matching name wins.
INFO_KEYS: dict[str, tuple[str, ...]] = {
    "train_time_s": ("train_time_s", "training_time_s", "train_time", "total_time_s",
                     "elapsed_s", "duration_s"),
    "throughput": ("throughput_clips_s", "throughput", "samples_per_s", "samples_per_sec",
                   "throughput_samples_s", "examples_per_s", "it_per_s"),
    "params": ("params", "num_params", "n_params", "parameters", "param_count"),
    "flops": ("flops_per_clip", "flops", "flops_per_sample", "gflops", "macs"),
    "peak_memory_bytes": ("peak_memory_bytes", "peak_mem_bytes", "max_memory_bytes"),
}
INFO_LIKE = re.compile(r"(^|_)(params?|flops|macs|throughput|memory|mem|time_s|device|lr|"
                       r"learning_rate|seed)($|_)")
HEADLINE = ("accuracy", "macro_f1", "next_pos_rmse", "val_accuracy", "next_pos_mse")
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".safetensors", ".bin", ".h5", ".pkl", ".npz")
TB_PREFIX = "events.out.tfevents"
REFERENCE_PREFIX = "baseline-"
PROGRESS_KEYS = ("epoch", "epochs", "step", "steps")

_LOWER = re.compile(r"loss|mse|mae|rmse|error|err$|perplexity|ppl|nll|cer|wer|fid|latency|"
                    r"time|memory|bytes|distance|regret")
_HIGHER = re.compile(r"acc|f1|precision|recall|auc|map|iou|bleu|rouge|score|throughput|"
                     r"reward|return|r2|dice|top\d|hit|psnr|ssim")


def direction(metric: str) -> str | None:
    """"min" when lower is better, "max" when higher is, None when the name does not say."""
    name = metric.lower().rsplit("/", 1)[-1]
    if _LOWER.search(name):
        return "min"
    if _HIGHER.search(name):
        return "max"
    return None


@dataclass(frozen=True)
class Curve:
    steps: tuple[float, ...]
    values: tuple[float, ...]

    @property
    def last(self) -> float:
        return self.values[-1]

    def best(self, how: str | None) -> float | None:
        if how == "min":
            return min(self.values)
        if how == "max":
            return max(self.values)
        return None


@dataclass(frozen=True)
class BranchResult:
    """Everything compare knows about one worker of the run."""

    name: str
    branch: str
    commit: str
    host: str
    state: str
    collected: bool
    note: str = ""
    final: Mapping[str, float] = field(default_factory=dict)
    curves: Mapping[str, Curve] = field(default_factory=dict)
    info: Mapping[str, Any] = field(default_factory=dict)
    confusion: tuple[tuple[float, ...], ...] | None = None
    class_names: tuple[str, ...] = ()
    checkpoint_bytes: int | None = None
    vars: Mapping[str, Any] = field(default_factory=dict)
    command: str = ""
    seed: int | None = None
    group: str | None = None  # as recorded at launch; None for runs from before sweeps
    env: Mapping[str, Any] = field(default_factory=dict)
    progress: Mapping[str, float] = field(default_factory=dict)  # epoch/epochs/step/steps
    entry: str | None = None  # the `branches:` entry a sweep worker comes from

    @property
    def reference(self) -> bool:
        """A reference result, shown but never ranked best: its `branches:` entry is named
        `baseline-*` (not a worker name a sweep derived from an entry named `baseline`)."""
        return (self.entry or self.name).startswith(REFERENCE_PREFIX)

    @property
    def finished(self) -> bool:
        return self.collected and self.state == "succeeded"

    def value(self, metric: str) -> float | None:
        """The final value: the summary's if it has one, else the curve's last point."""
        if metric in self.final:
            return self.final[metric]
        curve = self.curves.get(metric)
        return curve.last if curve else None

    def best(self, metric: str) -> float | None:
        curve = self.curves.get(metric)
        how = direction(metric)
        candidates = [v for v in (curve.best(how) if curve else None, self.final.get(metric))
                      if v is not None]
        if not candidates or how is None:
            return None
        return min(candidates) if how == "min" else max(candidates)



# ---------------------------------------------------------------- reading metrics

def flatten(obj: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, name + "/"))
        else:
            out[name] = value
    return out


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def read_jsonl(path: Path) -> dict[str, Curve]:
    """Learning curves from a metrics.jsonl (per-line step from epoch/step, else line no.)."""
    series: dict[str, tuple[list[float], list[float]]] = {}
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return {}
    for i, line in enumerate(lines):
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a torn last line of a running worker, or a comment
        if not isinstance(row, dict):
            continue
        flat = flatten(row)
        step = next((_number(flat[k]) for k in STEP_KEYS if _number(flat.get(k)) is not None),
                    float(i))
        for key, raw in flat.items():
            value = _number(raw)
            if value is None or key in IGNORED_KEYS:
                continue
            steps, values = series.setdefault(key, ([], []))
            steps.append(step if step is not None else float(i))
            values.append(value)
    return {k: Curve(tuple(s), tuple(v)) for k, (s, v) in series.items()}


def latest_attempt(root: Path, path: Path) -> bool:
    """False for what an earlier attempt left (collected under attempts/<n>/)."""
    return path.relative_to(root).parts[0] != "attempts"


def read_tensorboard(root: Path) -> tuple[dict[str, Curve], float | None]:
    """Scalar curves from every TensorBoard event directory under root, and the wall-time
    span they cover. Tags from a sub-run directory get its path as a prefix when there are
    several directories."""
    dirs = sorted({p.parent for p in root.rglob(f"{TB_PREFIX}*")
                   if p.is_file() and latest_attempt(root, p)})
    if not dirs:
        return {}, None
    from tensorboard.backend.event_processing.event_accumulator import (
        SCALARS,
        EventAccumulator,
    )

    curves: dict[str, Curve] = {}
    times: list[float] = []
    for d in dirs:
        acc = EventAccumulator(str(d), size_guidance={SCALARS: 0})
        try:
            acc.Reload()
        except Exception:  # a corrupt or half-written event file: skip, compare the rest
            continue
        prefix = "" if len(dirs) == 1 else _tb_prefix(root, d)
        for tag in acc.Tags().get("scalars", []):
            events = acc.Scalars(tag)
            if not events:
                continue
            curves[prefix + tag] = Curve(tuple(float(e.step) for e in events),
                                         tuple(float(e.value) for e in events))
            times += [events[0].wall_time, events[-1].wall_time]
    span = max(times) - min(times) if len(times) > 1 else None
    return curves, span


def _tb_prefix(root: Path, d: Path) -> str:
    rel = d.relative_to(root).as_posix()
    for strip in ("out/", "worktree/"):
        rel = rel[len(strip):] if rel.startswith(strip) else rel
    return "" if rel in ("", ".", "out", "worktree") else rel + "/"


def read_summary(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def checkpoint_size(root: Path) -> int | None:
    """Size of the largest checkpoint file (one model's size, not all kept copies)."""
    sizes = [p.stat().st_size for p in root.rglob("*")
             if p.is_file() and not p.is_symlink() and ".collect" not in p.parts
             and latest_attempt(root, p)
             and (p.suffix in CHECKPOINT_SUFFIXES or any(
                 part.startswith("checkpoint") for part in p.relative_to(root).parts[:-1]))]
    return max(sizes) if sizes else None


def _info_from(summary: Mapping[str, Any]) -> dict[str, Any]:
    flat = flatten(summary)
    info: dict[str, Any] = {}
    for column, names in INFO_KEYS.items():
        for n in names:
            if _number(flat.get(n)) is not None:
                info[column] = _number(flat[n])
                break
    if isinstance(flat.get("device"), str):
        info["device"] = flat["device"]
    return info


def _is_metric(key: str) -> bool:
    if key in IGNORED_KEYS:
        return False
    if any(key in names for names in INFO_KEYS.values()):
        return False
    return not INFO_LIKE.search(key.lower().rsplit("/", 1)[-1])


def read_branch(rec: WorkerRecord, worker_dir: Path, state: str,
                vars_: Mapping[str, Any] | None = None) -> BranchResult:
    """One row from a collected worker directory (`results/<run>/<name>/`). `vars_` (the
    config's) stands in for a record from before sweeps, which has no `vars` of its own."""
    meta = read_summary(worker_dir / "worker.json")
    identity = _identity(rec, meta, vars_)
    if not meta:
        return BranchResult(rec.name, rec.branch, rec.commit, rec.host, state, False,
                            note="not collected yet — run `wt-run collect`",
                            command=rec.command, **identity)
    collect_info = meta.get("collect") if isinstance(meta.get("collect"), dict) else {}
    curves = read_jsonl(worker_dir / "out" / "metrics.jsonl")
    tb_curves, tb_span = read_tensorboard(worker_dir)
    for key, curve in tb_curves.items():
        curves.setdefault(key, curve)
    summary = read_summary(worker_dir / "out" / "metrics.json")
    final = {k: v for k, raw in flatten(summary).items()
             if (v := _number(raw)) is not None and _is_metric(k)}
    info = _info_from(summary)
    for column in ("throughput", "train_time_s"):
        if column not in info:
            for key, curve in curves.items():
                if key in INFO_KEYS[column]:
                    info[column] = curve.last
    if "train_time_s" not in info:
        # TensorBoard's wall times are finer than the worker's start/end (whole seconds).
        started, ended = rec.started_at, rec.ended_at
        if tb_span:
            info["train_time_s"] = tb_span
        elif started and ended:
            info["train_time_s"] = ended - started
    curves = {k: c for k, c in curves.items() if _is_metric(k)}
    confusion, names = _confusion(summary)
    progress = read_summary(worker_dir / "out" / "progress.json")
    notes = []
    if collect_info.get("errors"):
        notes.append("collect had errors")
    if not rec.collected_at and not meta.get("collected_at"):
        notes.append("partly collected")
    if not curves and not final and state == "succeeded":
        notes.append("no metrics found: compare reads out/metrics.jsonl, out/metrics.json "
                     "($WT_RUN_OUT) and TensorBoard event files")
    return BranchResult(
        rec.name, rec.branch, rec.commit, rec.host, state, True, "; ".join(notes),
        final=final, curves=curves, info=info, confusion=confusion, class_names=names,
        checkpoint_bytes=checkpoint_size(worker_dir), command=rec.command,
        progress={k: v for k in PROGRESS_KEYS if (v := _number(progress.get(k))) is not None},
        **identity)


def _identity(rec: WorkerRecord, meta: Mapping[str, Any],
              vars_: Mapping[str, Any] | None) -> dict[str, Any]:
    """vars, seed, group and env: the record's, else the collected worker.json's, else (vars
    only) the config's. A `seed` var stands in for a missing seed."""
    def pick(key: str, kind: type) -> Any:
        mine = getattr(rec, key, None)
        if isinstance(mine, kind) and (mine or kind is not dict):
            return mine
        theirs = meta.get(key)
        return theirs if isinstance(theirs, kind) else None

    vars_out = dict(pick("vars", dict) or vars_ or {})
    seed = pick("seed", int)
    if seed is None or isinstance(seed, bool):
        raw = str(vars_out.get("seed", ""))
        seed = int(raw) if raw.lstrip("-").isdigit() else None
    group = pick("group", str)
    return {"vars": vars_out, "seed": seed, "group": group or None,
            "env": dict(pick("env", dict) or {}), "entry": pick("entry", str) or None}


def _confusion(summary: Mapping[str, Any]) -> tuple[tuple[tuple[float, ...], ...] | None,
                                                      tuple[str, ...]]:
    raw = summary.get("confusion_matrix")
    if not isinstance(raw, list) or not raw or not all(isinstance(r, list) for r in raw):
        return None, ()
    try:
        matrix = tuple(tuple(float(x) for x in row) for row in raw)
    except (TypeError, ValueError):
        return None, ()
    names = summary.get("class_names") or summary.get("labels") or summary.get("classes")
    labels = tuple(str(n) for n in names) if isinstance(names, list) else ()
    return matrix, labels if len(labels) == len(matrix) else ()


def metric_columns(branches: Iterable[BranchResult]) -> tuple[str, ...]:
    """The headline metrics first (when present), then the others: summary metrics before
    curve-only ones, in natural order (class2 before class10); nested ones (`val/…`) after
    top-level ones."""
    branches = list(branches)
    finals = {k for b in branches for k in b.final}
    curve_only = {k for b in branches for k in b.curves} - finals
    ordered = [m for m in HEADLINE if m in finals or m in curve_only]
    ordered += sorted(finals - set(ordered), key=_natural)
    ordered += sorted(curve_only - set(ordered), key=_natural)
    return tuple(ordered)


def _natural(name: str) -> tuple[int, list[tuple[int, Any]]]:
    parts = re.split(r"(\d+)", name)
    return (name.count("/"), [(1, int(p)) if p.isdigit() else (0, p) for p in parts])

