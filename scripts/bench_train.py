"""Benchmark training throughput and data-wait per extractor through the real trainer.

    python scripts/bench_train.py [--data DIR] [--config configs/train_small.yaml]
        [--extractors i3d slowfast transformer magvit] [--steps 30] [--set key=value ...]

Each extractor trains ``--steps`` steps (one epoch capped by ``max_steps_per_epoch``) with
the same loader the trainer uses; the table shows training clips/s, the fraction of
step time spent blocked waiting for the next batch (goal: < 5%), the mixed precision used
(``--set amp=off`` to compare) and peak memory (CUDA: max allocated; CPU: process max
RSS). Without ``--data`` a ``configs/data_small.yaml`` dataset is generated into a
temporary directory first.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from experiments.trajectory_video import generate, train  # noqa: E402
from experiments.trajectory_video.config import DataConfig, build, load_yaml  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data")
    parser.add_argument("--config", default=str(REPO / "configs" / "train_small.yaml"))
    parser.add_argument("--extractors", nargs="+",
                        default=["i3d", "slowfast", "transformer", "magvit"])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--set", action="append", default=[])
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="bench-train-"))
    try:
        data = args.data
        if data is None:
            data = str(scratch / "data")
            cfg = build(DataConfig, load_yaml(REPO / "configs" / "data_small.yaml"), "data")
            generate.generate(cfg, data, workers="auto", quiet=True)
        print(f"# data {data}, config {args.config}, {args.steps} steps per extractor")
        print(f"{'extractor':>12} {'params':>9} {'MFLOPs/clip':>12} {'clips/s':>9} "
              f"{'data wait':>10} {'amp':>5} {'peak MiB':>9} {'device':>8}")
        for name in args.extractors:
            out = scratch / name
            argv = ["--extractor", name, "--data", data, "--out", str(out), "--config",
                    args.config, "--epochs", "1", "--set", f"max_steps_per_epoch={args.steps}"]
            for item in args.set:
                argv += ["--set", item]
            with contextlib.redirect_stdout(io.StringIO()):
                code = train.main(argv)
            if code != 0:
                print(f"{name}: training failed with exit code {code}")
                return code
            m = json.loads((out / "metrics.json").read_text())
            print(f"{name:>12} {m['param_count']:>9,} {m['flops_per_clip'] / 1e6:>12,.1f} "
                  f"{m['train_throughput_clips_per_s']:>9.1f} "
                  f"{100 * m['data_wait_fraction']:>9.2f}% {m['amp']:>5} "
                  f"{m['peak_memory_bytes'] / 2**20:>9,.0f} {m['device']:>8}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
