#!/usr/bin/env python3
"""Benchmark `wt-run launch` and `wt-run status` on the local host against a shell loop of
plain `git worktree add` + detached process starts, measured in the same run.

Prints both series for N = 1, 4, 16, 64 branches, the fixed cost of launch at N = 1
(goal < 0.5 s), the marginal cost per extra branch between N = 16 and N = 64 as a ratio to
the shell loop's (goal <= 1.5), and `wt-run status` wall time for 64 workers (goal < 0.5 s).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import yaml

ENV = {**os.environ, "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@example.com",
       "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@example.com"}


def make_repo(path: Path, n: int) -> Path:
    path.mkdir(parents=True)
    subprocess.run(["git", "init", "-q", "-b", "main", str(path)], check=True, env=ENV)
    (path / "README").write_text("bench\n")
    subprocess.run(["git", "-C", str(path), "add", "-A"], check=True, env=ENV)
    subprocess.run(["git", "-C", str(path), "commit", "-qm", "init"], check=True, env=ENV)
    config = {"branches": {f"b{i}": {"branch": f"bench/b{i}", "vars": {"lr": "0"}}
                           for i in range(max(n, 2))},
              "commands": {"train": "true {lr} {name}"}}
    (path / "wt-run.yaml").write_text(yaml.safe_dump(config))
    return path


def time_wt_run(repo: Path, n: int) -> float:
    names = [f"b{i}" for i in range(n)]
    start = time.perf_counter()
    subprocess.run(["wt-run", "--config", str(repo / "wt-run.yaml"), "launch", "--branches",
                    *names], check=True, stdout=subprocess.DEVNULL, env=ENV)
    return time.perf_counter() - start


SHELL_LOOP = r"""
set -e
cd "$1"
i=0
while [ "$i" -lt "$2" ]; do
  git worktree add -q -b "loop/b$i" "wt/b$i" HEAD
  mkdir -p "runs/b$i"
  ( cd "wt/b$i" && setsid nohup sh -c 'echo $$ > ../../runs/b'"$i"'/pid; true' \
      </dev/null >"../../runs/b$i/log" 2>&1 & )
  i=$((i+1))
done
"""


def time_sweep(repo: Path, values: int, seeds: int) -> float:
    """2 branches × `values` values × `seeds` seeds: a sweep shares each branch's worktree."""
    vals = ",".join(f"{v}e-3" for v in range(1, values + 1))
    start = time.perf_counter()
    subprocess.run(["wt-run", "--config", str(repo / "wt-run.yaml"), "launch", "--branches",
                    "b0", "b1", "--set", f"lr={vals}", "--seeds", str(seeds)], check=True,
                   stdout=subprocess.DEVNULL, env=ENV)
    return time.perf_counter() - start


def time_shell_loop(repo: Path, n: int) -> float:
    start = time.perf_counter()
    subprocess.run(["sh", "-c", SHELL_LOOP, "loop", str(repo), str(n)], check=True, env=ENV)
    return time.perf_counter() - start


def time_status(repo: Path) -> float:
    start = time.perf_counter()
    subprocess.run(["wt-run", "--config", str(repo / "wt-run.yaml"), "status", "--json"],
                   check=True, stdout=subprocess.DEVNULL, env=ENV)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--repeats", type=int, default=3, help="median of this many runs")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="wt-bench-"))
    ours: dict[int, float] = {}
    loop: dict[int, float] = {}
    status_64 = []
    sweep: dict[int, float] = {}
    try:
        for count, (values, seeds) in {16: (2, 4), 64: (4, 8)}.items():
            sweep[count] = statistics.median(
                time_sweep(make_repo(tmp / f"s{count}-{r}", 2), values, seeds)
                for r in range(args.repeats))
        for n in args.sizes:
            a, b = [], []
            for r in range(args.repeats):
                repo = make_repo(tmp / f"w{n}-{r}", n)
                a.append(time_wt_run(repo, n))
                if n == max(args.sizes):
                    time.sleep(0.5)
                    time_status(repo)  # warm: workers have ended and states get cached
                    status_64.append(time_status(repo))
                b.append(time_shell_loop(make_repo(tmp / f"l{n}-{r}", n), n))
            ours[n], loop[n] = statistics.median(a), statistics.median(b)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{'N':>4} {'wt-run launch s':>16} {'shell loop s':>13} {'ratio':>6}")
    for n in args.sizes:
        print(f"{n:>4} {ours[n]:>16.3f} {loop[n]:>13.3f} {ours[n] / loop[n]:>6.2f}")
    lo, hi = sorted(args.sizes)[-2], max(args.sizes)
    slope_ours = (ours[hi] - ours[lo]) / (hi - lo)
    slope_loop = (loop[hi] - loop[lo]) / (hi - lo)
    print(f"fixed cost of wt-run launch at N=1: {ours[min(args.sizes)]:.3f} s (goal < 0.5 s)")
    print(f"marginal cost per branch N={lo}..{hi}: wt-run {slope_ours * 1000:.1f} ms, "
          f"shell loop {slope_loop * 1000:.1f} ms, ratio {slope_ours / slope_loop:.2f} "
          f"(goal <= 1.5)")
    slope_sweep = (sweep[64] - sweep[16]) / 48
    print(f"sweep 2 branches x 4 values x 8 seeds = 64 workers: {sweep[64]:.3f} s; per worker "
          f"16..64: {slope_sweep * 1000:.1f} ms, shell loop {slope_loop * 1000:.1f} ms, ratio "
          f"{slope_sweep / slope_loop:.2f} (goal <= 1.5)")
    print(f"wt-run status for {hi} workers: {statistics.median(status_64):.3f} s "
          f"(goal < 0.5 s)")


if __name__ == "__main__":
    main()
