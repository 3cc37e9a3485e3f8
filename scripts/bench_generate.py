"""Benchmark dataset generation against the memory-write limit measured in the same run.

    python scripts/bench_generate.py [--workers 0 1 2] [--sizes 32 64] [--samples N]

For each frame size it generates a dataset (4 cameras x 32 frames x 3 channels) with each
worker count (0 = sequential in-process; N = N worker processes, start-up included) and
prints samples/s, speedup over sequential and parallel efficiency. Baselines, sequential,
same bytes per shard: ``fill`` allocates each shard's uint8 video and fills it (the
memory-write limit a renderer is compared with); ``fill+write`` also writes the shard
files exactly as generation does (the limit for the whole pipeline). Files go to
/dev/shm by default so a slow or shared disk does not dominate.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments.trajectory_video.config import DataConfig
from experiments.trajectory_video.dataset import write_shard
from experiments.trajectory_video.generate import generate, render_shard


def fill_rate(cfg: DataConfig, root: Path | None) -> float:
    """Samples/s of allocating + filling each shard's video (and writing it, if ``root``)."""
    small = render_shard(cfg, 0)  # the non-video arrays, reused for every shard
    began = time.perf_counter()
    for shard in range(cfg.shards):
        n = min(cfg.shard_size, cfg.samples - shard * cfg.shard_size)
        video = np.empty((n, cfg.cameras, cfg.frames, cfg.channels, cfg.size, cfg.size),
                         dtype=np.uint8)
        video.fill(shard % 251)
        if root is not None:
            write_shard(root, shard, shard * cfg.shard_size,
                        {**{k: v[:n] for k, v in small.items()}, "video": video})
    return cfg.samples / (time.perf_counter() - began)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--samples", type=int, default=0,
                        help="samples per run (default: ~1.2 GB of video per run)")
    parser.add_argument("--shard-size", type=int, default=64)
    parser.add_argument("--dir", default="/dev/shm" if Path("/dev/shm").is_dir() else None,
                        help="scratch directory (default: /dev/shm, so the numbers measure "
                        "rendering and memory, not this machine's disk)")
    args = parser.parse_args()

    cores = len(os.sched_getaffinity(0))
    print(f"# {cores} CPU cores available; 4 cameras x 32 frames x 3 channels per sample")
    header = (f"{'size':>5} {'mode':>11} {'samples/s':>10} {'MB/s':>8} {'speedup':>8} "
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
            mem = fill_rate(cfg, None)
            disk = fill_rate(cfg, scratch / "fill")
            shutil.rmtree(scratch / "fill")
            rows = [("fill", mem), ("fill+write", disk)]
            sequential = None
            for workers in args.workers:
                out = scratch / f"gen-{size}-{workers}"
                began = time.perf_counter()
                generate(cfg, out, workers=workers, quiet=True)
                rate = samples / (time.perf_counter() - began)
                shutil.rmtree(out)
                sequential = rate if workers == 0 else sequential
                rows.append((f"workers={workers}", rate))
            for mode, rate in rows:
                speedup = efficiency = ""
                if mode.startswith("workers") and sequential:
                    count = max(1, int(mode.split("=")[1]))
                    speedup = f"{rate / sequential:.2f}x"
                    efficiency = f"{100 * rate / (sequential * count):.0f}%"
                print(f"{size:>5} {mode:>11} {rate:>10,.0f} {rate * per_sample / 1e6:>8,.0f} "
                      f"{speedup:>8} {efficiency:>10} {100 * rate / mem:>8.0f}% "
                      f"{100 * rate / disk:>11.0f}%")
            print(f"# size {size}: {samples} samples per run, shard size {args.shard_size}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
