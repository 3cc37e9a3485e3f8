"""Benchmark: submitting N trivial workers to a local single-node Slurm with `wt-run launch`,
against a shell loop of `sbatch --wrap` with the same commands, in the same run.

    python scripts/bench_slurm.py [--workers 32] [--repeat 3]

Prints, per mode (`array: false`: one sbatch per worker; auto: one job array), the time from
start to all submitted and from submission to all finished (`wt-run status` says succeeded
for wt-run; squeue empty for the loop), and the ratios against the loop. The goal is a
submission time within 1.5x of the loop's. Needs slurm-wlm and munge installed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.servers.slurm import SlurmCluster  # noqa: E402
from tests.slurm.helpers import make_project  # noqa: E402

COMMAND = "true"


def wt_run(config: Path, *args: str) -> str:
    out = subprocess.run(["wt-run", "--config", str(config), *args], capture_output=True,
                         text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"wt-run {' '.join(args)} failed:\n{out.stdout}{out.stderr}")
    return out.stdout


def shell_loop(workdir: Path, n: int) -> tuple[float, float]:
    """A user's loop: one `sbatch --wrap` per worker, each with its own output file."""
    workdir.mkdir(parents=True)
    script = (f'cd {workdir} && for i in $(seq 0 {n - 1}); do '
              f'sbatch --parsable --output="$PWD/w$i.log" --wrap {COMMAND!r} || exit 1; '
              'done')
    t0 = time.perf_counter()
    ids = subprocess.run(["sh", "-c", script], capture_output=True, text=True,
                         check=True).stdout.split()
    submitted = time.perf_counter() - t0
    t1 = time.perf_counter()
    while True:
        left = subprocess.run(["squeue", "-h", "-j", ",".join(ids), "-o", "%i"],
                              capture_output=True, text=True, check=False).stdout.strip()
        if not left:
            break
        time.sleep(0.2)
    return submitted, time.perf_counter() - t1


def wt_launch(tmp: Path, n: int, array: bool | None) -> tuple[float, float, float]:
    """(launch incl. worktrees, the submit round trip alone, submit -> all succeeded)."""
    branches = {f"w{i}": {"branch": f"bench/w{i}", "vars": {"mode": "ok"}} for i in range(n)}
    host = {} if array is None else {"array": array}
    config = make_project(tmp, branches, root=tmp / "shared", host=host, command=COMMAND)
    from worktree_runner import launching
    from worktree_runner import slurm as slurm_mod
    from worktree_runner.config import load_config

    # Worktrees first (as `wt-run launch` does), then time the launch end to end and the
    # submission round trip inside it, which is what the shell loop is compared with.
    cfg = load_config(config)
    timings: list[float] = []
    real_submit = slurm_mod.submit_slurm

    def timed_submit(*args, **kwargs):  # type: ignore[no-untyped-def]
        t = time.perf_counter()
        try:
            return real_submit(*args, **kwargs)
        finally:
            timings.append(time.perf_counter() - t)

    slurm_mod.submit_slurm = timed_submit
    try:
        t0 = time.perf_counter()
        report = launching.launch(cfg, list(branches), hosts=["hpc"])
        launched = time.perf_counter() - t0
    finally:
        slurm_mod.submit_slurm = real_submit
    if not report.ok:
        raise SystemExit(f"launch failed: {report.outcomes}")
    t1 = time.perf_counter()
    while True:
        states = [w["state"] for w in json.loads(wt_run(config, "status", "--json"))["workers"]]
        if all(s == "succeeded" for s in states):
            break
        if any(s in ("failed", "killed", "lost", "stopped") for s in states):
            raise SystemExit(f"a worker did not succeed: {states}")
        time.sleep(0.2)
    return launched, timings[0], time.perf_counter() - t1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-slurm-") as tmpdir:
        tmp = Path(tmpdir)
        with SlurmCluster(tmp / "slurm") as cluster:
            os.environ.update(cluster.env_vars)
            rows: dict[str, list[tuple[float, ...]]] = {"loop": [], "wt-run array:false": [],
                                                        "wt-run auto (array)": []}
            for r in range(args.repeat):
                rows["loop"].append(shell_loop(tmp / f"loop{r}", args.workers))
                rows["wt-run array:false"].append(
                    wt_launch(tmp / f"single{r}", args.workers, False))
                rows["wt-run auto (array)"].append(
                    wt_launch(tmp / f"array{r}", args.workers, None))
            print(f"{args.workers} trivial workers, median of {args.repeat}, "
                  f"node with {cluster.node_cpus} CPUs")
            loop_submit = statistics.median(x[0] for x in rows["loop"])
            loop_done = statistics.median(x[1] for x in rows["loop"])
            print(f"  sbatch --wrap loop: submitted {loop_submit:6.2f} s, "
                  f"all done {loop_done:6.2f} s later")
            for name in ("wt-run array:false", "wt-run auto (array)"):
                launch = statistics.median(x[0] for x in rows[name])
                submit = statistics.median(x[1] for x in rows[name])
                done = statistics.median(x[2] for x in rows[name])
                print(f"  {name:20s}: launch (worktrees+submit) {launch:6.2f} s, submit "
                      f"round trip {submit:6.2f} s = {submit / loop_submit:4.2f}x loop, "
                      f"all succeeded {done:6.2f} s later = {done / loop_done:4.2f}x loop")


if __name__ == "__main__":
    main()
