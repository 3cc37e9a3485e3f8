"""Benchmark wt-run over SSH against loopback sshd servers (real OpenSSH, started here).

Measures, in one run:
  1. `wt-run launch` of 16 workers on one host: wall time and SSH connections opened;
  2. `wt-run status` of 64 workers on 4 hosts: wall time and connections per host;
  3. the baseline: one plain `ssh host true` round trip (OpenSSH client, same server).
Connections are counted from the servers' logs ("Accepted publickey"). Goals: one connection
per host per command; status of 64 workers on 4 hosts within 3x one plain round trip.

    python scripts/bench_ssh.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.servers.sshd import SSHServer  # noqa: E402
from tests.ssh.helpers import make_repo, ssh_host, write_config, write_ssh_config  # noqa: E402

HOSTS = 4
PER_HOST = 16


def timed(fn: Callable[[], object], repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def wt_run(config: Path, env: dict[str, str], *args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "worktree_runner", "--config", str(config),
                           *args], capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"wt-run {' '.join(args)} failed:\n{proc.stdout}{proc.stderr}")
    return proc.stdout


def connections(servers: Sequence[SSHServer]) -> list[int]:
    time.sleep(0.3)  # sshd logs asynchronously
    return [s.connection_count() for s in servers]


def delta(before: list[int], after: list[int]) -> list[int]:
    return [b - a for a, b in zip(before, after)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="timed repetitions (median)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="wt-run-bench-ssh-") as tmp_name:
        tmp = Path(tmp_name)
        servers = [SSHServer(tmp / f"sshd{i}").start() for i in range(HOSTS)]
        try:
            run_bench(tmp, servers, args.repeat)
        finally:
            for s in servers:
                s.stop()


def run_bench(tmp: Path, servers: list[SSHServer], repeat: int) -> None:
    aliases = {f"h{i + 1}": s for i, s in enumerate(servers)}
    ssh_config = write_ssh_config(tmp / "ssh_config", aliases)
    env = {**os.environ, "WT_RUN_SSH_CONFIG": str(ssh_config)}
    names = [f"v{i:02d}" for i in range(HOSTS * PER_HOST)]
    repo = make_repo(tmp / "repo", names)
    config = write_config(tmp / "wt-run.yaml", repo,
                          {h: ssh_host(h, tmp / f"root-{h}") for h in aliases}, names, secs=300)

    # 1. launch 16 workers on one host.
    before = connections(servers)
    start = time.perf_counter()
    wt_run(config, env, "launch", "--run", "one-host", "--branches", *names[:PER_HOST],
           "--host", "h1")
    launch_s = time.perf_counter() - start
    launch_conns = delta(before, connections(servers))
    wt_run(config, env, "stop", "--all", "--run", "one-host")

    # 2. launch 64 over 4 hosts, then time status.
    host_args = [a for h in aliases for a in ("--host", h)]
    before = connections(servers)
    start = time.perf_counter()
    wt_run(config, env, "launch", "--run", "four-hosts", "--force", "--branches", *names,
           *host_args)
    launch64_s = time.perf_counter() - start
    launch64_conns = delta(before, connections(servers))
    wt_run(config, env, "status", "--json", "--run", "four-hosts")  # warm caches
    before = connections(servers)
    status_s = timed(lambda: wt_run(config, env, "status", "--json", "--run", "four-hosts"),
                     repeat)
    status_conns = delta(before, connections(servers))
    # In-process (no interpreter start-up): what `status --watch` pays per refresh.
    sys.path.insert(0, str(ROOT))
    os.environ["WT_RUN_SSH_CONFIG"] = str(ssh_config)
    from worktree_runner import api, ssh
    from worktree_runner.config import load_config

    cfg = load_config(config)

    def fresh_status() -> None:
        ssh.close_all()
        report = api.status(cfg, "four-hosts")
        assert len(report.workers) == HOSTS * PER_HOST
        assert all(w.state.value == "running" for w in report.workers), "not all running"

    api_cold_s = timed(fresh_status, repeat)
    api_warm_s = timed(lambda: api.status(cfg, "four-hosts"), repeat)
    ssh.close_all()
    plain = servers[0].ssh_argv()
    plain_s = timed(lambda: subprocess.run([*plain, "true"], check=True), repeat)
    python_s = timed(lambda: subprocess.run([sys.executable, "-c", "pass"], check=True), repeat)
    wt_run(config, env, "stop", "--all", "--run", "four-hosts")

    med = statistics.median
    base = med(plain_s)
    print(f"baseline: plain `ssh host true` round trip      {base * 1000:7.1f} ms (median of "
          f"{repeat})")
    print(f"          bare `python -c pass` start-up         {med(python_s) * 1000:7.1f} ms")
    print(f"launch 16 workers on 1 host (wt-run CLI)         {launch_s * 1000:7.1f} ms  "
          f"= {launch_s / base:5.2f}x  connections per host: {launch_conns}")
    print(f"launch 64 workers on 4 hosts (wt-run CLI)        {launch64_s * 1000:7.1f} ms  "
          f"= {launch64_s / base:5.2f}x  connections per host: {launch64_conns}")
    print(f"status 64 workers / 4 hosts (wt-run CLI)         {med(status_s) * 1000:7.1f} ms  "
          f"= {med(status_s) / base:5.2f}x  connections per host over {repeat} runs: "
          f"{status_conns}")
    print(f"status 64 / 4 hosts, in-process, new connections {med(api_cold_s) * 1000:7.1f} ms  "
          f"= {med(api_cold_s) / base:5.2f}x")
    print(f"status 64 / 4 hosts, in-process, open connections{med(api_warm_s) * 1000:7.1f} ms  "
          f"= {med(api_warm_s) / base:5.2f}x")
    ok_conn = (all(c == 1 for c in launch_conns[:1]) and all(c == 1 for c in launch64_conns)
               and all(c == repeat for c in status_conns))
    print(f"goal one connection per host per command: {'met' if ok_conn else 'NOT met'}")
    print(f"goal status within 3x a round trip (CLI): "
          f"{'met' if med(status_s) <= 3 * base else 'NOT met'}; "
          f"in-process with new connections: "
          f"{'met' if med(api_cold_s) <= 3 * base else 'NOT met'}")


if __name__ == "__main__":
    main()
