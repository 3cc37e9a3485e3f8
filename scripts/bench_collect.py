#!/usr/bin/env python3
"""Benchmark `wt-run collect` over SSH against plain `rsync -a` and `scp -r` of the same files
over the same loopback sshd, in the same run; then time an unchanged second collect.

    python scripts/bench_collect.py                 # 1 GiB in 8 checkpoint files
    python scripts/bench_collect.py --size-mib 128  # quick

Goals: first collect >= 0.8x the faster baseline's throughput (collect also hashes every file
on both ends and verifies it); the unchanged collect under 1 s with no file data sent.
Needs sshd, ssh, rsync and scp (OpenSSH); starts sshd with tests/servers/sshd.py.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.servers.sshd import SSHServer  # noqa: E402
from worktree_runner import ssh as wt_ssh  # noqa: E402


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="total size (MiB)")
    parser.add_argument("--files", type=int, default=8, help="number of checkpoint files")
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
        ssh_cmd = f"ssh -F {ssh_config}"
        remote = f"bench:{out}"

        copies = (base / "rsync", base / "scp", base / "results")

        def baseline_rsync() -> float:
            settle(*copies)
            return timed(["rsync", "-a", "-e", ssh_cmd, remote + "/", f"{base / 'rsync'}/"])

        def baseline_scp() -> float:
            settle(*copies)
            return timed(["scp", "-q", "-r", "-F", str(ssh_config), remote, str(base / "scp")])

        def wt_collect(dest: Path) -> tuple[float, int, int]:
            wt_ssh.close_all()
            start = time.perf_counter()
            report = collect(config, run=run, dest=dest)
            elapsed = time.perf_counter() - start
            assert report.ok, report.to_json()
            w = report.workers[0]
            return elapsed, w.transferred_files, w.transferred_bytes

        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
        t_rsync = baseline_rsync()
        t_scp = baseline_scp()
        settle(*copies)
        t_collect, files1, bytes1 = wt_collect(base / "results")
        conns = server.connection_count()
        t_again, files2, bytes2 = wt_collect(base / "results")
        conns_again = server.wait_connection_count(conns + 1) - conns
        mib = total / (1 << 20)
        faster = min(t_rsync, t_scp)
        print(f"payload: {mib:.0f} MiB in {args.files} files over loopback sshd "
              f"(127.0.0.1:{server.port}); load average before: {load}")
        print(f"rsync -a       : {t_rsync:6.2f} s  {mib / t_rsync:7.1f} MiB/s")
        print(f"scp -r         : {t_scp:6.2f} s  {mib / t_scp:7.1f} MiB/s")
        print(f"wt-run collect : {t_collect:6.2f} s  {mib / t_collect:7.1f} MiB/s  "
              f"({files1} files, {bytes1 / (1 << 20):.0f} MiB sent; sha256 on both ends)")
        print(f"collect / faster baseline throughput: {faster / t_collect:.2f}x (goal >= 0.8x)")
        print(f"unchanged collect: {t_again:.3f} s, {files2} files and {bytes2} bytes of file "
              f"data sent, {conns_again} SSH connection(s) (goal < 1 s, 0 bytes)")
    finally:
        wt_ssh.close_all()
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
