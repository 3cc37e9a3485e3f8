#!/usr/bin/env python3
"""Benchmark `wt-run collect` over SSH against plain `rsync -a` and `scp -r` of the same files
over the same loopback sshd, in the same run; then time an unchanged second collect.

    python scripts/bench_collect.py                 # 1 GiB in 8 checkpoint files
    python scripts/bench_collect.py --size-mib 128  # quick

Fair: every contender reaches the host with the very same OpenSSH options, taken from wt-run
(`collect_openssh.ssh_options`): port, user, key, known_hosts, host-key policy and cipher.
Each contender runs `--repeat` times, interleaved, and the median is reported.

Verification is an option a baseline must share too. `collect` checks every copy against a
sha256 computed on the host. `rsync -a` checks every file it moves against a whole-file
checksum taken as the file is sent (rsync's man page, `--checksum`). `scp -r` checks nothing
beyond SSH's own MAC, so it is timed twice: bare, and followed by the check a careful script
does (the sha256 of every file on the host and here, at once, with `openssl dgst`). Collect is
timed with the host's checksum cache warm (what a repeated collect sees) and cold (the cache
deleted first: the host hashes everything, as the scp check does).

Goals: first collect >= 0.9x the faster verified baseline's throughput; the unchanged collect
as fast as before (~0.3 s) with no file data sent. The ratio against bare `scp -r` is printed
too. Needs sshd, ssh, rsync, scp and openssl; starts sshd with tests/servers/sshd.py.
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
from collections.abc import Callable
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


def busy_cpu_s() -> float:
    """CPU seconds this machine (both ends of the loopback) has spent busy since boot."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


class Contender:
    """Wall and machine-wide busy CPU seconds of each timed run of one contender."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def time(self, work: Callable[[], object]) -> None:
        cpu, start = busy_cpu_s(), time.perf_counter()
        work()
        self.wall.append(time.perf_counter() - start)
        self.cpu.append(busy_cpu_s() - cpu)


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
        cfg, run_id = make_run(base, server, args.files, args.size_mib)
        from worktree_runner.collect import collect
        from worktree_runner.config import load_config
        from worktree_runner.runs import RunStore

        config = load_config(cfg)
        out = RunStore(config.state_dir).load(run_id).workers["bench"].out
        total = sum(p.stat().st_size for p in Path(out).rglob("*") if p.is_file())
        options = wt_run_ssh_options(config)
        remote = f"bench:{out}"
        copies = (base / "rsync", base / "scp", base / "results")

        host_sums = Path(RunStore(config.state_dir).load(run_id).workers["bench"].worker_dir,
                         ".collect-sums.json")

        def run(argv: list[str], cwd: Path | None = None) -> None:
            subprocess.run(argv, check=True, capture_output=True, cwd=cwd)

        def rsync() -> None:
            run(["rsync", "-a", "-e", shlex.join(["ssh", *options]), remote + "/",
                 f"{base / 'rsync'}/"])

        def scp() -> None:
            run(["scp", "-q", "-r", *scp_options(options), remote, str(base / "scp")])

        def scp_checked() -> None:
            scp()
            # Both ends hash at once, with OpenSSL's sha256 (coreutils' sha256sum is several
            # times slower here): the most a script could do to check a copy.
            sums = "find . -type f -print0 | sort -z | xargs -0 openssl dgst -sha256 -r"
            there = subprocess.Popen(["ssh", *options, "bench", f"cd {shlex.quote(out)} && {sums}"],
                                     stdout=subprocess.PIPE)
            here = subprocess.run(["sh", "-c", sums], cwd=base / "scp", check=True,
                                  capture_output=True).stdout
            assert there.communicate()[0] == here and there.returncode == 0, "copies differ"

        def wt_collect() -> tuple[int, int]:
            wt_ssh.close_all()
            report = collect(config, run=run_id, dest=base / "results")
            assert report.ok, report.to_json()
            w = report.workers[0]
            return w.transferred_files, w.transferred_bytes

        def cold_collect() -> None:
            host_sums.unlink(missing_ok=True)
            wt_collect()

        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
        rsync_c, scp_c = Contender("rsync -a"), Contender("scp -r (no check)")
        checked_c = Contender("scp -r + sha256")
        warm_c, cold_c = Contender("collect, warm"), Contender("collect, cold")
        again_c = Contender("unchanged")
        sent: list[tuple[int, int]] = []
        for _ in range(args.repeat):
            for contender, work in ((rsync_c, rsync), (scp_c, scp), (checked_c, scp_checked),
                                    (cold_c, cold_collect), (warm_c, wt_collect)):
                settle(*copies)
                contender.time(work)
            conns = server.connection_count()
            again_c.time(lambda: sent.append(wt_collect()))
            conns_again = server.wait_connection_count(conns + 1) - conns
        mib = total / (1 << 20)
        print(f"payload: {mib:.0f} MiB in {args.files} files over loopback sshd "
              f"(127.0.0.1:{server.port}); load average before: {load}")
        print(f"ssh options, all contenders: {shlex.join(options)}")
        print(f"{args.repeat} runs each, interleaved; median (best); CPU: both ends, busy s")
        for c in (rsync_c, scp_c, checked_c, cold_c, warm_c):
            med, best = statistics.median(c.wall), min(c.wall)
            print(f"{c.label:18s}: {med:6.2f} s ({best:5.2f} s)  {mib / med:7.1f} MiB/s "
                  f"({mib / best:6.1f})  CPU {statistics.median(c.cpu):5.2f} s")
        print("  collect verifies every file by sha256 against the host's; rsync -a by its "
              "whole-file checksum; scp -r + sha256 by openssl on both ends")
        for label, pick in (("median", statistics.median), ("best", min)):
            verified = min(pick(rsync_c.wall), pick(checked_c.wall))
            bare = min(pick(rsync_c.wall), pick(scp_c.wall))
            print(f"collect / faster verified baseline ({label}): "
                  f"warm {verified / pick(warm_c.wall):.2f}x, "
                  f"cold {verified / pick(cold_c.wall):.2f}x (goal >= 0.9x); "
                  f"/ faster unchecked baseline: warm {bare / pick(warm_c.wall):.2f}x")
        files2, bytes2 = sent[-1]
        print(f"unchanged collect: {statistics.median(again_c.wall):.3f} s median "
              f"({min(again_c.wall):.3f} s best), {files2} files and {bytes2} bytes of file data "
              f"sent, {conns_again} SSH connection(s) (goal ~0.3 s, 0 bytes)")
    finally:
        wt_ssh.close_all()
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
