"""Dataset generation: deterministic samples, sharded parallel writes, resume, statistics.

Sample ``i`` depends only on the root seed and ``i``: its random numbers are its own
fixed block of a counter-based (Philox) stream keyed by the seed, and every later step is
elementwise per sample, so the dataset is bit-for-bit the same for any worker count, shard
size or task split, and any range of samples can be drawn in one vectorised call. Work is
split by shard; complete shards are skipped on a rerun, so an interrupted run resumes
where it stopped.

Several processes may fill one directory at once (each shard is written under its own
lock). With ``--task-index I --task-count N`` (default: ``$WT_RUN_TASK_INDEX`` and
``$WT_RUN_TASK_COUNT``, set by wt-run for Slurm array tasks) a process renders only the
shards ``k`` with ``k % N == I`` and writes neither ``stats.json`` nor ``COMPLETE``: a plain
run afterwards renders whatever a failed task left and writes them, so the result is
the same as one process's.

    python -m experiments.trajectory_video.generate --out DIR [--config FILE] [--samples N]
        [--frames T] [--size H] [--cameras V] [--seed S] [--shard-size K] [--workers auto|N]
        [--task-index I --task-count N]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import sys
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from experiments.trajectory_video import heap, render, trajectories
from experiments.trajectory_video.config import (
    CONFIG_DIR,
    ConfigError,
    DataConfig,
    build,
    load_yaml,
)
from experiments.trajectory_video.dataset import (
    FORMAT,
    DatasetError,
    StreamedArray,
    read_format,
    read_settings,
    remove_shard_tmp,
    remove_stale_tmp,
    settings_dict,
    shard_is_complete,
    shard_lock,
    shard_name,
    write_json_atomic,
    write_shard,
)
from experiments.trajectory_video.progress import Progress
from experiments.trajectory_video.scene import (  # noqa: F401  (part of this module's API)
    WORDS_PER_SAMPLE,
    sample_params,
    sample_uniforms,
    scene_splats,
)

# Render about this many bytes of video at a time: the chunk stays cache-resident from
# zeroing through drawing to its copy into the file, and bounds the float/index temporaries.
RENDER_CHUNK_BYTES = 2 << 20
MAX_RENDER_CHUNK = 64
# Splat geometry (float and index temporaries, ~100 bytes per drawn pixel) is computed for
# this many samples at a time.
SPLAT_BATCH = 128
# --workers auto runs sequentially below this much estimated work (process start-up and
# imports cost a few hundred ms per worker).
AUTO_PARALLEL_MIN_SECONDS = 2.0
ASSUMED_BYTES_PER_SECOND = 1.0e9  # conservative single-core render+write rate
TASK_INDEX_ENV = "WT_RUN_TASK_INDEX"
TASK_COUNT_ENV = "WT_RUN_TASK_COUNT"
@dataclass(frozen=True)
class TaskSlice:
    """Task ``index`` of ``count`` concurrent processes: it owns shards ``k % count == index``."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ConfigError(
                f"task index {self.index} of {self.count} tasks is out of range; "
                "pass --task-count N >= 1 and --task-index I with 0 <= I < N"
            )

    def owns(self, shard: int) -> bool:
        return shard % self.count == self.index


def render_chunk(cfg: DataConfig) -> int:
    """Samples rendered per call: a chunk of about ``RENDER_CHUNK_BYTES``, small enough to
    stay in cache while it is filled, drawn into and copied to its file."""
    return max(1, min(MAX_RENDER_CHUNK, RENDER_CHUNK_BYTES // cfg.bytes_per_sample))


def video_chunks(cfg: DataConfig, params: Mapping[str, np.ndarray]) -> Iterator[np.ndarray]:
    """The videos of ``params``' samples, a chunk at a time, in one reused buffer: each
    chunk is valid only until the next one is requested. Backgrounds and blob geometry
    are computed for up to ``SPLAT_BATCH`` samples at once; only filling and drawing go
    chunk by chunk."""
    n = len(params["labels"])
    chunk = min(n, render_chunk(cfg))
    group = chunk * max(1, SPLAT_BATCH // chunk)
    buffer = np.empty((chunk, cfg.cameras, cfg.frames, cfg.channels, cfg.size, cfg.size),
                      dtype=np.uint8)
    table = render.noise_table(cfg.seed, cfg.channels * cfg.size * cfg.size,
                               cfg.bytes_per_sample)
    for g in range(0, n, group):
        h = min(n, g + group)
        background, occluders = render.backgrounds(params["background"][g:h], cfg.channels,
                                                   cfg.size)
        layers = scene_splats(cfg, params, g, h, occluders)
        for a in range(0, h - g, chunk):
            m = min(chunk, h - g - a)
            view = buffer[:m]
            render.frame_base(view, table, params["noise"][g + a : g + a + m],
                              background[a : a + m])
            for layer in layers:
                layer.draw(view, a)
            yield view


def shard_range(cfg: DataConfig, index: int) -> tuple[int, int]:
    start = index * cfg.shard_size
    return start, min(cfg.samples, start + cfg.shard_size)


def shard_arrays(cfg: DataConfig, index: int) -> dict[str, np.ndarray | StreamedArray]:
    """Shard ``index`` ready for ``write_shard``: the video is rendered while it is written."""
    start, stop = shard_range(cfg, index)
    arrays: dict[str, np.ndarray | StreamedArray] = dict(sample_params(cfg, start, stop))
    shape = (stop - start, cfg.cameras, cfg.frames, cfg.channels, cfg.size, cfg.size)
    arrays["video"] = StreamedArray(shape, np.dtype(np.uint8), video_chunks(cfg, arrays))
    return arrays


def render_samples(cfg: DataConfig, start: int, stop: int) -> dict[str, np.ndarray]:
    """All arrays of samples ``start..stop`` in memory, video included (any range: a
    sample does not depend on which shard or batch it is rendered in)."""
    arrays = sample_params(cfg, start, stop)
    arrays["video"] = np.concatenate([c.copy() for c in video_chunks(cfg, arrays)])
    return arrays


def render_shard(cfg: DataConfig, index: int) -> dict[str, np.ndarray]:
    """All arrays of shard ``index`` in memory, video included."""
    return render_samples(cfg, *shard_range(cfg, index))


def generate_shard(cfg: DataConfig, root: str, index: int) -> int:
    """Render and publish shard ``index`` under ``root`` unless another process did while
    this one waited for the shard's lock; returns the number of samples rendered here."""
    path = Path(root)
    heap.retain_freed_memory()  # this process renders: reuse its temporaries' memory
    with shard_lock(path, index):
        if shard_is_complete(path, index):
            return 0
        remove_shard_tmp(path, index)
        # A torn published shard (e.g. truncated by a full disk) would block the rename.
        shutil.rmtree(path / "shards" / shard_name(index), ignore_errors=True)
        arrays = shard_arrays(cfg, index)
        write_shard(path, index, index * cfg.shard_size, arrays)
    return len(arrays["labels"])


def compute_stats(root: Path, cfg: DataConfig) -> dict[str, object]:
    """Position mean/std per axis and class counts, summed in shard order (float64)."""
    total = np.zeros(3)
    total_sq = np.zeros(3)
    count = 0
    classes = np.zeros(trajectories.NUM_CLASSES, dtype=np.int64)
    for index in range(cfg.shards):
        directory = root / "shards" / shard_name(index)
        positions = np.load(directory / "positions.npy").astype(np.float64).reshape(-1, 3)
        total += positions.sum(axis=0)
        total_sq += (positions**2).sum(axis=0)
        count += len(positions)
        classes += np.bincount(np.load(directory / "labels.npy"), minlength=len(classes))
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
    return {
        "samples": cfg.samples,
        "position_mean": mean.tolist(),
        "position_std": std.tolist(),
        "class_names": list(trajectories.CLASS_NAMES),
        "class_counts": classes.tolist(),
    }


def resolve_workers(workers: str | int, cfg: DataConfig, pending: int) -> int:
    """0 = sequential in this process; N = a pool of N processes."""
    if pending <= 1:
        return 0
    if workers == "auto":
        seconds = pending * cfg.shard_size * cfg.bytes_per_sample / ASSUMED_BYTES_PER_SECOND
        if seconds < AUTO_PARALLEL_MIN_SECONDS:
            return 0
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        return min(cpus or 1, pending) if (cpus or 1) > 1 else 0
    return min(int(workers), pending)


def _pool_context() -> multiprocessing.context.BaseContext:
    # fork is cheapest, but forking a process that already runs torch threads is unsafe.
    method = "spawn" if "torch" in sys.modules else "fork"
    return multiprocessing.get_context(method)


def _check_same_settings(root: Path, existing: DataConfig, cfg: DataConfig) -> None:
    if existing != cfg:
        changed = ", ".join(
            f"{k}: {v} -> {getattr(cfg, k)}"
            for k, v in asdict(existing).items()
            if v != getattr(cfg, k)
        )
        raise DatasetError(
            f"{root} holds a dataset generated with other settings ({changed}); "
            "use another --out or delete it"
        )


def _is_scratch(name: str) -> bool:
    """Entries that may sit in a directory before its dataset.json: lock files, and the
    tmp files of processes publishing dataset.json right now."""
    return name in (".lock", ".locks") or (name.startswith(".dataset.json.")
                                           and name.endswith(".tmp"))


def _publish_settings(root: Path, cfg: DataConfig) -> None:
    """Write dataset.json unless another process just did: tmp file, then a hard link,
    which (unlike a rename) fails when the name exists, so the first writer wins and
    every later one compares against it."""
    tmp = root / f".dataset.json.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(settings_dict(cfg), indent=2, sort_keys=True) + "\n")
    try:
        os.link(tmp, root / "dataset.json")
    except FileExistsError:
        pass
    except OSError:  # no hard links on this filesystem: publish by rename, check below
        os.replace(tmp, root / "dataset.json")
    finally:
        tmp.unlink(missing_ok=True)
    published = read_settings(root)
    assert published is not None
    _check_same_settings(root, published, cfg)


def prepare_dir(root: Path, cfg: DataConfig) -> bool:
    """Create or validate ``root``; True when it already holds this complete dataset. Safe
    when several processes start on the same directory at the same moment."""
    root.mkdir(parents=True, exist_ok=True)
    existing = read_settings(root)
    if existing is None:
        # dataset.json is published before anything else, so other entries listed here
        # without it existing afterwards mean a directory that is not a dataset.
        foreign = [p.name for p in root.iterdir() if not _is_scratch(p.name)]
        if foreign and not (root / "dataset.json").is_file():
            raise DatasetError(f"{root} is not empty and is not a dataset; use another --out")
        _publish_settings(root, cfg)
        return False
    _check_same_settings(root, existing, cfg)
    complete = (root / "COMPLETE").is_file()
    started_with = read_format(root)
    # A complete dataset of an older format is still a valid dataset (readers accept it),
    # but finishing an incomplete one would mix two generators' samples.
    if not complete and started_with != FORMAT:
        raise DatasetError(
            f"{root} is an incomplete dataset of format {started_with} and this generator "
            f"writes {FORMAT}; delete it (or use another --out) and generate again"
        )
    return complete


def render_pending(cfg: DataConfig, root: Path, pending: Mapping[int, int],
                   workers: str | int, progress: Progress) -> tuple[int, int]:
    """Render the ``pending`` shards (index -> sample count); returns (samples rendered
    here, worker processes used)."""
    count = resolve_workers(workers, cfg, len(pending))
    rendered = 0
    if count == 0:
        for k, size in pending.items():
            rendered += generate_shard(cfg, str(root), k)
            progress.update(size)
    else:
        with ProcessPoolExecutor(count, mp_context=_pool_context()) as pool:
            futures = {pool.submit(generate_shard, cfg, str(root), k): k for k in pending}
            for future in as_completed(futures):
                rendered += future.result()
                progress.update(pending[futures[future]])
    return rendered, count


def generate(
    cfg: DataConfig, root: str | Path, workers: str | int = "auto", quiet: bool = False,
    task: TaskSlice | None = None,
) -> dict[str, object]:
    """Generate (or finish) the dataset in ``root``; returns a summary. With ``task``,
    render only that task's shards and leave stats.json and COMPLETE to a plain run."""
    root = Path(root)
    began = time.perf_counter()
    if prepare_dir(root, cfg):
        return {"status": "already complete", "generated": 0, "workers": 0, "seconds": 0.0}
    owned = [k for k in range(cfg.shards) if task is None or task.owns(k)]
    remove_stale_tmp(root, owned)
    sizes = {k: min(cfg.shard_size, cfg.samples - k * cfg.shard_size) for k in owned}
    pending = {k: n for k, n in sizes.items() if not shard_is_complete(root, k)}
    label = "generate" if task is None else f"generate task {task.index}/{task.count}"
    progress = Progress(sum(sizes.values()), label,
                        initial=sum(sizes.values()) - sum(pending.values()), enabled=not quiet)
    rendered, count = render_pending(cfg, root, pending, workers, progress)
    summary: dict[str, object] = {"generated": rendered, "workers": count}
    if task is not None:
        return {"status": "task done", **summary, "shards": len(owned),
                "seconds": time.perf_counter() - began}
    stats = compute_stats(root, cfg)
    write_json_atomic(root / "stats.json", stats)
    summary = {"status": "complete", **summary, "seconds": time.perf_counter() - began,
               **stats}
    write_json_atomic(root / "COMPLETE", summary)
    return summary


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.trajectory_video.generate", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--out", help="dataset directory (default: $WT_RUN_DATA)")
    parser.add_argument("--config", help="data config YAML (default: configs/data_default.yaml)")
    for flag in ("samples", "frames", "size", "cameras", "seed", "shard-size"):
        parser.add_argument(f"--{flag}", type=int)
    parser.add_argument("--channels", type=int)
    parser.add_argument("--workers", default="auto", help="auto, or N processes (0 = inline)")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    parser.add_argument("--task-index", type=int, metavar="I",
                        help=f"render only shards k with k %% N == I, and leave stats.json and "
                        f"COMPLETE to a later run without it (default: ${TASK_INDEX_ENV})")
    parser.add_argument("--task-count", type=int, metavar="N",
                        help=f"number of task processes (default: ${TASK_COUNT_ENV})")
    return parser.parse_args(argv)


def _env_int(name: str) -> int | None:
    text = os.environ.get(name, "").strip()
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"${name} must be a whole number, got {text!r}; "
                          f"unset it or fix it") from None


def task_from_args(args: argparse.Namespace) -> TaskSlice | None:
    """The task slice from --task-index/--task-count, else from the environment."""
    index = args.task_index if args.task_index is not None else _env_int(TASK_INDEX_ENV)
    count = args.task_count if args.task_count is not None else _env_int(TASK_COUNT_ENV)
    if index is None and count is None:
        return None
    if index is None or count is None:
        raise ConfigError(
            f"task index {index} with task count {count}: pass both --task-index and "
            f"--task-count (or set both ${TASK_INDEX_ENV} and ${TASK_COUNT_ENV}), or neither"
        )
    return TaskSlice(index, count)


def config_from_args(args: argparse.Namespace) -> DataConfig:
    path = Path(args.config) if args.config else CONFIG_DIR / "data_default.yaml"
    raw = load_yaml(path) if args.config or path.is_file() else {}
    cfg = build(DataConfig, raw, where=str(path))
    overrides = {
        name: getattr(args, name)
        for name in ("samples", "frames", "size", "cameras", "channels", "seed", "shard_size")
        if getattr(args, name) is not None
    }
    try:
        return replace(cfg, **overrides)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = args.out or os.environ.get("WT_RUN_DATA")
    if not out:
        print("Error: no output directory: pass --out DIR or set WT_RUN_DATA", file=sys.stderr)
        return 1
    if args.workers != "auto" and not (args.workers.isdigit()):
        print(f"Error: --workers must be auto or a number, got {args.workers!r}", file=sys.stderr)
        return 2
    try:
        cfg = config_from_args(args)
        task = task_from_args(args)
        summary = generate(cfg, out, args.workers, quiet=args.quiet, task=task)
    except (ConfigError, DatasetError) as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    if summary["status"] == "already complete":
        print(f"{out}: already complete ({cfg.samples} samples), nothing to do")
    elif task is not None:
        print(
            f"{out}: task {task.index}/{task.count} wrote {summary['generated']} samples "
            f"(shards owned: {summary['shards']}) in {summary['seconds']:.1f}s; stats.json "
            "and COMPLETE are left to a run without --task-index"
        )
    else:
        print(
            f"{out}: wrote {summary['generated']} samples in {summary['seconds']:.1f}s "
            f"with {summary['workers'] or 'no'} worker processes; class counts "
            f"{summary['class_counts']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
