"""Benchmark the host queue: 32 jobs of 0.2 s on 4 slots, on the local host and on one SSH
host (a real OpenSSH sshd on loopback, started here), against `xargs -P 4` running the very
same commands on this machine in the same run.

Prints, per host:
  makespan   from the launch command's start to the last job's end, and its ratio to xargs
             (goal <= 1.3x);
  hand-over  the median time from a slot freeing (a job's end) to the next queued job's
             start (goal <= 0.2 s; Guild and DVC poll every 10 s).
Job times are stamped by the jobs themselves, so both sides pay the same python start-up.

    python scripts/bench_queue.py [--jobs 32] [--slots 4] [--secs 0.2]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.servers.sshd import SSHServer  # noqa: E402
from tests.ssh.helpers import make_repo, ssh_host, write_ssh_config  # noqa: E402

JOB = ("import json, sys, time; s = time.time(); time.sleep(float(sys.argv[1])); "
       "json.dump({'start': s, 'end': time.time()}, open(sys.argv[2], 'w'))")


def job_command(secs: float, out: str) -> str:
    return f"{shlex.quote(sys.executable)} -c {shlex.quote(JOB)} {secs} {out}"


def read_spans(paths: list[Path]) -> list[tuple[float, float]]:
    spans = []
    for p in paths:
        doc = json.loads(p.read_text())
        spans.append((doc["start"], doc["end"]))
    return spans


def hand_over(spans: list[tuple[float, float]], slots: int) -> float:
    """Median delay from a slot freeing to the next job starting (jobs after the first
    `slots`, each matched with the k-th earliest end)."""
    starts = sorted(s for s, _ in spans)[slots:]
    ends = sorted(e for _, e in spans)
    return statistics.median(max(0.0, s - e) for s, e in zip(starts, ends))


def bench_xargs(tmp: Path, jobs: int, slots: int, secs: float) -> tuple[float, float]:
    outs = [tmp / f"x{i}.json" for i in range(jobs)]
    lines = "\n".join(job_command(secs, str(o)) for o in outs) + "\n"
    start = time.time()
    subprocess.run(["xargs", "-d", "\n", "-P", str(slots), "-I{}", "sh", "-c", "{}"],
                   input=lines, text=True, check=True)
    spans = read_spans(outs)
    return max(e for _, e in spans) - start, hand_over(spans, slots)


def bench_wt_run(tmp: Path, host: dict, env: dict[str, str], jobs: int, slots: int,
                 secs: float, label: str) -> tuple[float, float]:
    repo = make_repo(tmp / f"repo-{label}", ["q"], requirements=False)
    cfg = {"repo": str(repo), "hosts": {"local": {"type": "local"}, "h": {**host, "slots": slots}},
           "default_host": "h", "branches": {"q": {"branch": "q", "vars": {"secs": str(secs)}}},
           "commands": {"train": f"{shlex.quote(sys.executable)} -c "
                                 + shlex.quote(JOB).replace("{", "{{").replace("}", "}}")
                                 + " {secs} {out}/t.json"}}
    config = tmp / f"wt-run-{label}.yaml"
    config.write_text(json.dumps(cfg))
    start = time.time()
    subprocess.run([sys.executable, "-m", "worktree_runner", "--config", str(config), "launch",
                    "--branches", "q", "--seeds", str(jobs), "--run", "bench"], env=env,
                   check=True, stdout=subprocess.DEVNULL)
    status = [sys.executable, "-m", "worktree_runner", "--config", str(config), "status",
              "--json", "--run", "bench"]
    while True:
        doc = json.loads(subprocess.run(status, env=env, capture_output=True, text=True,
                                        check=True).stdout)
        if all(w["state"] == "succeeded" for w in doc["workers"]):
            break
        bad = [w for w in doc["workers"] if w["state"] in ("failed", "killed", "lost")]
        if bad:
            raise SystemExit(f"{label}: {bad[0]['name']} {bad[0]['state']}")
        time.sleep(2.0)  # polling costs CPU the jobs share; job times are self-stamped
    spans = read_spans([Path(w["out"], "t.json") for w in doc["workers"]])
    return max(e for _, e in spans) - start, hand_over(spans, slots)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=32)
    ap.add_argument("--slots", type=int, default=4)
    ap.add_argument("--secs", type=float, default=0.2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="wt-run-bench-queue-") as name:
        tmp = Path(name)
        base_make, base_hand = bench_xargs(tmp, args.jobs, args.slots, args.secs)
        print(f"xargs -P {args.slots}: makespan {base_make:.2f} s, hand-over median "
              f"{base_hand * 1000:.0f} ms ({args.jobs} jobs of {args.secs} s)")
        env = dict(os.environ)
        rows = [("local", {"type": "local"}, env)]
        server = SSHServer(tmp / "sshd").start()
        try:
            ssh_config = write_ssh_config(tmp / "ssh_config", {"h1": server})
            rows.append(("ssh", ssh_host("h1", tmp / "remote-root"),
                         {**env, "WT_RUN_SSH_CONFIG": str(ssh_config)}))
            for label, host, host_env in rows:
                make, hand = bench_wt_run(tmp, host, host_env, args.jobs, args.slots,
                                          args.secs, label)
                print(f"wt-run queue ({label}): makespan {make:.2f} s = "
                      f"{make / base_make:.2f}x xargs (goal <= 1.3x); hand-over median "
                      f"{hand * 1000:.0f} ms (goal <= 200 ms)")
        finally:
            server.stop()


if __name__ == "__main__":
    main()
