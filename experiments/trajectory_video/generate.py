"""Dataset generation: deterministic samples, sharded parallel writes, resume, statistics.

Sample ``i`` depends only on the root seed and ``i`` (``SeedSequence(seed, spawn_key=(i,))``)
and a shard is rendered as one batch whatever process renders it, so the dataset is
bit-for-bit the same for any worker count. Work is split by shard; complete shards are
skipped on a rerun, so an interrupted run resumes where it stopped.

    python -m experiments.trajectory_video.generate --out DIR [--config FILE] [--samples N]
        [--frames T] [--size H] [--cameras V] [--seed S] [--shard-size K] [--workers auto|N]
"""

from __future__ import annotations

import argparse
import fcntl
import multiprocessing
import os
import shutil
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from experiments.trajectory_video import cameras, render, trajectories
from experiments.trajectory_video.config import (
    CONFIG_DIR,
    ConfigError,
    DataConfig,
    build,
    load_yaml,
)
from experiments.trajectory_video.dataset import (
    DatasetError,
    read_settings,
    remove_stale_tmp,
    settings_dict,
    shard_is_complete,
    shard_name,
    write_json_atomic,
    write_shard,
)
from experiments.trajectory_video.progress import Progress

# Render this many samples at a time inside a shard: bounds the float/index temporaries.
RENDER_CHUNK = 64
# --workers auto runs sequentially below this much estimated work (process start-up and
# imports cost a few hundred ms per worker).
AUTO_PARALLEL_MIN_SECONDS = 2.0
ASSUMED_BYTES_PER_SECOND = 1.0e9  # conservative single-core render+write rate


def sample_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=(index,))))


def sample_draws(cfg: DataConfig, index: int) -> dict[str, np.ndarray | int]:
    """The random draws of sample ``index``: trajectory, camera jitter, colour."""
    rng = sample_rng(cfg.seed, index)
    label = trajectories.label_for_index(index)
    return {
        "positions": trajectories.sample_trajectory(rng, label, cfg.frames),
        "labels": label,
        "jitter": cameras.sample_camera_jitter(rng, cfg.cameras),
        "colours": rng.uniform(0.4, 1.0, size=cfg.channels).astype(np.float32),
    }


def shard_params(cfg: DataConfig, start: int, stop: int) -> dict[str, np.ndarray]:
    """Everything about samples ``start..stop`` except pixels; camera geometry is computed
    for all of them at once (elementwise, so identical to one at a time)."""
    draws = [sample_draws(cfg, i) for i in range(start, stop)]
    arrays = {name: np.stack([np.asarray(d[name]) for d in draws]) for name in draws[0]}
    rig = cameras.rig_from_jitter(arrays.pop("jitter"), cfg.size)
    arrays["labels"] = arrays["labels"].astype(np.int64)
    arrays["intrinsics"], arrays["extrinsics"] = rig.intrinsics, rig.extrinsics
    return arrays


_BUFFERS: dict[tuple[int, ...], np.ndarray] = {}


def _zeroed_buffer(shape: tuple[int, ...]) -> np.ndarray:
    """A per-process reusable video buffer: fresh memory would page-fault on every shard."""
    buffer = _BUFFERS.get(shape)
    if buffer is None:
        _BUFFERS.clear()
        buffer = _BUFFERS[shape] = np.zeros(shape, dtype=np.uint8)
    return buffer


def render_shard(cfg: DataConfig, index: int) -> dict[str, np.ndarray]:
    """All arrays of shard ``index``. The video is a per-process buffer reused by the next
    call: copy it to keep it."""
    start = index * cfg.shard_size
    stop = min(cfg.samples, start + cfg.shard_size)
    arrays = shard_params(cfg, start, stop)
    n = stop - start
    shape = (n, cfg.cameras, cfg.frames, cfg.channels, cfg.size, cfg.size)
    video = _zeroed_buffer(shape)
    video.fill(0)  # cheap on already-mapped pages, and makes a stale buffer harmless
    for a in range(0, n, RENDER_CHUNK):
        b = min(n, a + RENDER_CHUNK)
        render.render_batch(
            arrays["positions"][a:b, : cfg.frames],
            arrays["intrinsics"][a:b],
            arrays["extrinsics"][a:b],
            arrays["colours"][a:b],
            cfg.size,
            out=video[a:b],
        )
    arrays["video"] = video
    return arrays


def generate_shard(cfg: DataConfig, root: str, index: int) -> int:
    """Render and publish shard ``index`` under ``root``; returns its sample count."""
    arrays = render_shard(cfg, index)
    write_shard(Path(root), index, index * cfg.shard_size, arrays)
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


@contextmanager
def _exclusive(root: Path) -> Iterator[None]:
    with open(root / ".lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DatasetError(f"another generate is writing {root}; wait for it") from None
        yield


def prepare_dir(root: Path, cfg: DataConfig) -> bool:
    """Create or validate ``root``; True when it already holds this complete dataset."""
    existing = read_settings(root) if root.is_dir() else None
    if existing is not None and existing != cfg:
        changed = ", ".join(
            f"{k}: {v} -> {getattr(cfg, k)}"
            for k, v in asdict(existing).items()
            if v != getattr(cfg, k)
        )
        raise DatasetError(
            f"{root} holds a dataset generated with other settings ({changed}); "
            "use another --out or delete it"
        )
    if existing is None and root.is_dir() and any(
        p.name != ".lock" for p in root.iterdir()
    ):
        raise DatasetError(f"{root} is not empty and is not a dataset; use another --out")
    root.mkdir(parents=True, exist_ok=True)
    if existing is None:
        write_json_atomic(root / "dataset.json", settings_dict(cfg))
    return existing is not None and (root / "COMPLETE").is_file()


def generate(
    cfg: DataConfig, root: str | Path, workers: str | int = "auto", quiet: bool = False
) -> dict[str, object]:
    """Generate (or finish) the dataset in ``root``; returns a summary."""
    root = Path(root)
    began = time.perf_counter()
    if prepare_dir(root, cfg):
        return {"status": "already complete", "generated": 0, "workers": 0, "seconds": 0.0}
    with _exclusive(root):
        remove_stale_tmp(root)
        pending = [k for k in range(cfg.shards) if not shard_is_complete(root, k)]
        for k in pending:  # a torn published shard (e.g. truncated by a full disk)
            shutil.rmtree(root / "shards" / shard_name(k), ignore_errors=True)
        sizes = {k: min(cfg.shard_size, cfg.samples - k * cfg.shard_size) for k in pending}
        done = cfg.samples - sum(sizes.values())
        progress = Progress(cfg.samples, "generate", initial=done, enabled=not quiet)
        count = resolve_workers(workers, cfg, len(pending))
        if count == 0:
            for k in pending:
                progress.update(generate_shard(cfg, str(root), k))
        else:
            with ProcessPoolExecutor(count, mp_context=_pool_context()) as pool:
                futures = [pool.submit(generate_shard, cfg, str(root), k) for k in pending]
                for future in as_completed(futures):
                    progress.update(future.result())
        stats = compute_stats(root, cfg)
        write_json_atomic(root / "stats.json", stats)
        seconds = time.perf_counter() - began
        summary = {"status": "complete", "generated": sum(sizes.values()), "workers": count,
                   "seconds": seconds, **stats}
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
    return parser.parse_args(argv)


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
        summary = generate(cfg, out, args.workers, quiet=args.quiet)
    except (ConfigError, DatasetError) as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    if summary["status"] == "already complete":
        print(f"{out}: already complete ({cfg.samples} samples), nothing to do")
    else:
        print(
            f"{out}: wrote {summary['generated']} samples in {summary['seconds']:.1f}s "
            f"with {summary['workers'] or 'no'} worker processes; class counts "
            f"{summary['class_counts']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
