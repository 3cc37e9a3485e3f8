"""Benchmark dataset generation against memory-write baselines measured in the same run.

    python scripts/bench_generate.py [--workers 0 1 2] [--sizes 32 64] [--samples N]
        [--shard-size K] [--dir DIR]

For each frame size it generates a dataset (4 cameras x 32 frames x 3 channels) with each
worker count (0 = sequential in-process; N = N worker processes, start-up included) and
prints samples/s, MB/s of video, speedup over sequential and parallel efficiency
(samples/s over N x sequential samples/s).

Baselines, both sequential in this process and both writing the dataset's total video
bytes (samples x cameras x frames x channels x size x size) once:

* ``fill`` (the memory-write limit): ``np.empty(total_bytes, uint8).fill(v)`` -- one fresh
  allocation of the whole dataset's size, so every page is new to the process and its
  page faults are paid, and nothing is cache-resident or reused. numpy asks for
  transparent huge pages on large allocations, as it would for the generator's own arrays.
  Median of 3 runs after one unmeasured warm-up fill of the same size (so a VM's first
  touch of guest memory is not charged to it).
* ``fill+write`` (the limit for the whole pipeline): per shard, the video is filled chunk
  by chunk in one reused buffer of generation's chunk size and written with the shard's
  other arrays to shard files exactly as generation writes them (tmp dir, ``.npy`` files,
  meta.json, rename) -- generation minus rendering.
  ``fill+write×N`` does the same with the shards spread over N fresh processes: how well
  this machine's memory and kernel let even a render-free pipeline scale.

Each row is the median of ``--repeat`` runs; the load average is printed because the
parallel numbers mean little on a busy machine.

Files go to /dev/shm by default so a slow or shared disk does not dominate; there the
kernel allocates 4 KiB page-cache pages for every byte written, which is why
``fill+write`` is far below ``fill``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments.trajectory_video.config import DataConfig
from experiments.trajectory_video.dataset import StreamedArray, write_shard
from experiments.trajectory_video.generate import generate, render_chunk, sample_params


def fresh_fill_rate(cfg: DataConfig) -> float:
    """Samples/s of filling one fresh allocation as large as the dataset's video."""
    total = cfg.samples * cfg.bytes_per_sample

    def once(value: int) -> float:
        began = time.perf_counter()
        video = np.empty(total, dtype=np.uint8)
        video.fill(value)
        seconds = time.perf_counter() - began
        del video
        return seconds

    once(0)  # warm-up, not measured
    return cfg.samples / statistics.median(once(v) for v in (1, 2, 3))


def _filled_chunks(shape: tuple[int, ...], rows: int, value: int) -> Iterator[np.ndarray]:
    """``shape[0]`` rows of ``value`` in chunks of ``rows``, one reused buffer: the least
    work that hands a writer those bytes (generation's chunks are the same size)."""
    buffer = np.empty((min(rows, shape[0]), *shape[1:]), dtype=np.uint8)
    for a in range(0, shape[0], rows):
        view = buffer[: min(rows, shape[0] - a)]
        view.fill(value)
        yield view


def _fill_write_shard(cfg: DataConfig, root: Path, shard: int,
                      small: dict[str, np.ndarray]) -> None:
    n = min(cfg.shard_size, cfg.samples - shard * cfg.shard_size)
    shape = (n, cfg.cameras, cfg.frames, cfg.channels, cfg.size, cfg.size)
    video = StreamedArray(shape, np.dtype(np.uint8),
                          _filled_chunks(shape, render_chunk(cfg), shard % 251))
    write_shard(root, shard, shard * cfg.shard_size,
                {**{k: v[:n] for k, v in small.items()}, "video": video})


def fill_write_rate(cfg: DataConfig, root: Path, processes: int = 0) -> float:
    """Samples/s of filling each shard's video chunk by chunk and writing the shard files,
    in this process (0) or spread over a fresh pool of ``processes`` (start-up included)."""
    small = sample_params(cfg, 0, cfg.shard_size)  # non-video arrays, reused for every shard
    root.mkdir(parents=True)
    began = time.perf_counter()
    if processes == 0:
        for shard in range(cfg.shards):
            _fill_write_shard(cfg, root, shard, small)
    else:
        with ProcessPoolExecutor(processes, mp_context=get_context("fork")) as pool:
            for future in [pool.submit(_fill_write_shard, cfg, root, k, small)
                           for k in range(cfg.shards)]:
                future.result()
    rate = cfg.samples / (time.perf_counter() - began)
    shutil.rmtree(root)
    return rate


def generate_rate(cfg: DataConfig, root: Path, workers: int) -> float:
    began = time.perf_counter()
    generate(cfg, root, workers=workers, quiet=True)
    rate = cfg.samples / (time.perf_counter() - began)
    shutil.rmtree(root)
    return rate


def median_of(repeat: int, measure: Callable[..., float], *args: object) -> float:
    return statistics.median(measure(*args) for _ in range(repeat))


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--samples", type=int, default=0,
                        help="samples per run (default: ~1.2 GB of video per run)")
    parser.add_argument("--shard-size", type=int, default=DataConfig().shard_size,
                        help="samples per shard (default: the data configs' default, "
                        f"{DataConfig().shard_size})")
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs per row; the median is printed (default: 3)")
    parser.add_argument("--dir", default="/dev/shm" if Path("/dev/shm").is_dir() else None,
                        help="scratch directory (default: /dev/shm, so the numbers measure "
                        "rendering and memory, not this machine's disk)")
    args = parser.parse_args()

    cores = len(os.sched_getaffinity(0))
    print(f"# {cores} CPU cores available; load average {load()}; "
          "4 cameras x 32 frames x 3 channels per sample")
    print("# fill = np.empty(dataset video bytes).fill(): fresh memory, page faults paid, "
          "median of 3 (the memory-write limit)")
    print("# fill+write = generation minus rendering: each shard's video filled chunk by "
          "chunk and written as shard files (the pipeline limit)")
    print("# fill+write×N = the same, shards spread over N fresh processes (the parallel "
          "pipeline limit); efficiency = samples/s / (N x sequential)")
    print(f"# scratch: {args.dir or tempfile.gettempdir()}; median of {args.repeat} runs per "
          "row (fill: of 3)")
    header = (f"{'size':>5} {'mode':>13} {'samples/s':>10} {'MB/s':>8} {'speedup':>8} "
              f"{'efficiency':>10} {'% of fill':>9} {'% fill+write':>12}")
    print(header)
    scratch = Path(tempfile.mkdtemp(prefix="bench-gen-", dir=args.dir))
    try:
        for size in args.sizes:
            per_sample = 4 * 32 * 3 * size * size
            budget = (1200 << 20) // per_sample // args.shard_size * args.shard_size
            samples = args.samples or max(args.shard_size * 2, budget)
            cfg = DataConfig(samples=samples, frames=32, size=size, cameras=4, channels=3,
                             seed=0, shard_size=args.shard_size)
            mem = fresh_fill_rate(cfg)
            disk = median_of(args.repeat, fill_write_rate, cfg, scratch / "fill")
            rows = [("fill", mem, None), ("fill+write", disk, None)]
            for n in sorted({w for w in args.workers if w > 1}):
                rate = median_of(args.repeat, fill_write_rate, cfg, scratch / "fill", n)
                rows.append((f"fill+write×{n}", rate, (disk, n)))
            sequential = None
            for workers in args.workers:
                rate = median_of(args.repeat, generate_rate, cfg, scratch / f"gen-{size}",
                                 workers)
                sequential = rate if workers == 0 else sequential
                rows.append((f"workers={workers}", rate,
                             (sequential, max(1, workers)) if sequential else None))
            for mode, rate, versus in rows:
                speedup = efficiency = ""
                if versus:
                    reference, count = versus
                    speedup = f"{rate / reference:.2f}x"
                    efficiency = f"{100 * rate / (reference * count):.0f}%"
                print(f"{size:>5} {mode:>13} {rate:>10,.0f} {rate * per_sample / 1e6:>8,.0f} "
                      f"{speedup:>8} {efficiency:>10} {100 * rate / mem:>8.0f}% "
                      f"{100 * rate / disk:>11.0f}%")
            print(f"# size {size}: {samples} samples per run, shard size {args.shard_size}; "
                  f"load average {load()}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
