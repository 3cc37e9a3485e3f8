#!/usr/bin/env python3
"""Benchmark `wt-run collect` over SSH against plain `rsync -a` and `scp -r` of the same files
over the same loopback sshd, in the same run; then time an unchanged second collect.

    python scripts/bench_collect.py                 # 1 GiB in 8 checkpoint files
    python scripts/bench_collect.py --size-mib 128  # quick

Fair: every contender reaches the host with the very same OpenSSH options, taken from wt-run
(`collect_openssh.ssh_options`): port, user, key, known_hosts, host-key policy and cipher.
Each contender runs `--repeat` times, interleaved, and the median is reported.

Goals: first collect >= 0.9x the faster baseline's throughput (collect also checks every file
against a sha256 computed on the host); the unchanged collect as fast as before (~0.3 s) with
no file data sent. Needs sshd, ssh, rsync and scp (OpenSSH); starts sshd with
tests/servers/sshd.py.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.servers.sshd import SSHServer  # noqa: E402
from worktree_runner import ssh as wt_ssh  # noqa: E402
from worktree_runner.collect_openssh import scp_options  # noqa: E402


def git(repo: Path, *args: str) -> None:
    env = {**os.environ, "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@example.com",
           "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@example.com"}
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, env=env)


WRITE_CKPTS = ("import os, sys\n"
               "out, n, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])\n"
               "os.makedirs(os.path.join(out, 'checkpoints'), exist_ok=True)\n"
               "for i in range(n):\n"
               "    with open(os.path.join(out, 'checkpoints', 'ckpt-%d.pt' % i), 'wb') as f:\n"
               "        for _ in range(size >> 20):\n"
               "            f.write(os.urandom(1 << 20))\n")


def make_run(base: Path, server: SSHServer, files: int, size_mib: int) -> tuple[Path, str]:
    """A repo whose one branch writes `files` checkpoints on the ssh host, launched there."""
    from worktree_runner import api, launching
    from worktree_runner.config import load_config

    repo = base / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "write_ckpts.py").write_text(WRITE_CKPTS)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "bench")
    git(repo, "branch", "bench")
    per_file = (size_mib << 20) // files
    (repo / "wt-run.yaml").write_text(
        "repo: .\nshared: []\n"
        f"hosts:\n  ssh:\n    type: ssh\n    address: bench\n    root: {base / 'remote'}\n"
        "branches:\n  bench: {branch: bench}\n"
        f"commands:\n  train: {sys.executable} write_ckpts.py {{out}} {files} {per_file}\n")
    config = load_config(repo / "wt-run.yaml")
    report = launching.launch(config, ["bench"], hosts=["ssh"])
    assert report.ok, report.outcomes
    final = api.wait(config, report.run, interval=0.5)
    assert final.all_succeeded, [w.to_json() for w in final.workers]
    wt_ssh.close_all()
    return repo / "wt-run.yaml", report.run


def settle(*copies: Path) -> None:
    """Start each timed copy alike: earlier copies deleted and nothing left to write back.
    Otherwise the copy timed last pays for writing back the gigabytes of those before it."""
    for path in copies:
        shutil.rmtree(path, ignore_errors=True)
    os.sync()


def timed(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True)
    return time.perf_counter() - start


def wt_run_ssh_options(config: object) -> list[str]:
    """The OpenSSH options (no `ssh`, no destination) wt-run's collect uses for bulk data."""
    from worktree_runner.backends import open_host
    from worktree_runner.collect_openssh import ssh_options

    with open_host(config, "ssh") as host:  # type: ignore[arg-type]
        return ssh_options(host)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="total size (MiB)")
    parser.add_argument("--files", type=int, default=8, help="number of checkpoint files")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per contender")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="wt-bench-collect-"))
    server = SSHServer(base / "sshd").start()
    try:
        ssh_config = base / "ssh_config"
        ssh_config.write_text(server.ssh_config_entry("bench"))
        os.environ["WT_RUN_SSH_CONFIG"] = str(ssh_config)
        cfg, run = make_run(base, server, args.files, args.size_mib)
        from worktree_runner.collect import collect
        from worktree_runner.config import load_config
        from worktree_runner.runs import RunStore

        config = load_config(cfg)
        out = RunStore(config.state_dir).load(run).workers["bench"].out
        total = sum(p.stat().st_size for p in Path(out).rglob("*") if p.is_file())
        options = wt_run_ssh_options(config)
        remote = f"bench:{out}"
        copies = (base / "rsync", base / "scp", base / "results")

        def baseline_rsync() -> float:
            settle(*copies)
            return timed(["rsync", "-a", "-e", shlex.join(["ssh", *options]), remote + "/",
                          f"{base / 'rsync'}/"])

        def baseline_scp() -> float:
            settle(*copies)
            return timed(["scp", "-q", "-r", *scp_options(options), remote, str(base / "scp")])

        def wt_collect() -> tuple[float, int, int]:
            wt_ssh.close_all()
            start = time.perf_counter()
            report = collect(config, run=run, dest=base / "results")
            elapsed = time.perf_counter() - start
            assert report.ok, report.to_json()
            w = report.workers[0]
            return elapsed, w.transferred_files, w.transferred_bytes

        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
        rsync_s, scp_s, collect_s, again_s = [], [], [], []
        for _ in range(args.repeat):
            rsync_s.append(baseline_rsync())
            scp_s.append(baseline_scp())
            settle(*copies)
            t, files1, bytes1 = wt_collect()
            collect_s.append(t)
            conns = server.connection_count()
            t, files2, bytes2 = wt_collect()
            again_s.append(t)
            conns_again = server.wait_connection_count(conns + 1) - conns
        mib = total / (1 << 20)
        print(f"payload: {mib:.0f} MiB in {args.files} files over loopback sshd "
              f"(127.0.0.1:{server.port}); load average before: {load}")
        print(f"ssh options, all contenders: {shlex.join(options)}")
        print(f"{args.repeat} runs each, interleaved; median (best)")
        for label, runs in (("rsync -a", rsync_s), ("scp -r", scp_s),
                            ("wt-run collect", collect_s)):
            med, best = statistics.median(runs), min(runs)
            print(f"{label:15s}: {med:6.2f} s ({best:5.2f} s)  {mib / med:7.1f} MiB/s "
                  f"({mib / best:6.1f})")
        print(f"  wt-run collect: {files1} files, {bytes1 / (1 << 20):.0f} MiB sent, each "
              "verified by sha256")
        for label, pick in (("median", statistics.median), ("best", min)):
            faster = min(pick(rsync_s), pick(scp_s))
            print(f"collect / faster baseline throughput ({label}): "
                  f"{faster / pick(collect_s):.2f}x (goal >= 0.9x); "
                  f"/ rsync -a: {pick(rsync_s) / pick(collect_s):.2f}x")
        print(f"unchanged collect: {statistics.median(again_s):.3f} s median "
              f"({min(again_s):.3f} s best), {files2} files and {bytes2} bytes of file data "
              f"sent, {conns_again} SSH connection(s) (goal ~0.3 s, 0 bytes)")
    finally:
        wt_ssh.close_all()
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
