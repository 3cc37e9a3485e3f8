"""Helpers for the Slurm host tests: a real git repository with a small Python worker, a
wt-run config with a `type: slurm, via: local` host, and the CLI run in-process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from click.testing import CliRunner

# The worker every test runs. Modes:
#   ok          print a line and exit 0
#   fail        exit 3
#   sleep       mark itself started, then sleep (to be stopped)
#   ckpt        on USR1 write out/checkpoint and exit 3; once restarted by a requeue with a
#               checkpoint present, say "resumed" and exit 0
#   killwrapper SIGKILL its own wrapper, so no exit file is ever written
#   args        write its argv and some environment to out/args.json
WORKER = r'''
import json, os, signal, sys, time
from pathlib import Path

mode = sys.argv[1]
out = Path(os.environ["WT_RUN_OUT"])
restarts = os.environ.get("WT_RUN_RESTART_COUNT")
if mode == "ok":
    print("hello from", os.environ["WT_RUN_NAME"], flush=True)
elif mode == "fail":
    print("failing on purpose", flush=True)
    sys.exit(3)
elif mode == "sleep":
    (out / "started").write_text("1")
    time.sleep(600)
elif mode == "ckpt":
    if (out / "checkpoint").exists() and restarts not in (None, "0"):
        print("resumed from", (out / "checkpoint").read_text(), "restart", restarts, flush=True)
        sys.exit(0)
    def on_usr1(signum, frame):
        # Atomically: the test reads it as soon as the name appears.
        (out / "checkpoint.tmp").write_text("step-7")
        os.replace(out / "checkpoint.tmp", out / "checkpoint")
        print("checkpoint saved on USR1", flush=True)
        sys.exit(3)
    signal.signal(signal.SIGUSR1, on_usr1)
    (out / "started").write_text("1")
    for _ in range(6000):
        time.sleep(0.1)
elif mode == "killwrapper":
    pid = int((out.parent / "pid").read_text().split()[0])
    os.kill(pid, signal.SIGKILL)
    time.sleep(2)  # outlive the wrapper briefly, then end: no orphan is left behind
elif mode == "gen":
    # A sharded generator: a task writes its shard; the final run (no task index) checks
    # every shard is there and writes the summary.
    data = Path(sys.argv[2])
    data.mkdir(parents=True, exist_ok=True)
    index, count = os.environ.get("WT_RUN_TASK_INDEX"), os.environ.get("WT_RUN_TASK_COUNT")
    if index is not None:
        (data / f"shard-{index}-of-{count}").write_text(os.environ.get("SLURM_ARRAY_JOB_ID", ""))
        print("task", index, "of", count, flush=True)
    else:
        shards = sorted(p.name for p in data.glob("shard-*"))
        (data / "COMPLETE").write_text(" ".join(shards))
        print("final run saw", len(shards), "shards", flush=True)
elif mode == "args":
    (out / "args.json").write_text(json.dumps({"argv": sys.argv[1:],
                                               "env": os.environ.get("HOSTILE", "")}))
'''


def git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                          env=env, check=True).stdout.strip()


def make_project(tmp: Path, branches: dict[str, dict[str, Any]], *, root: Path,
                 host: dict[str, Any] | None = None, command: str | None = None) -> Path:
    """A repository with worker.py and one git branch per entry, plus wt-run.yaml whose
    `hpc` host submits to the test cluster. Returns the config path."""
    repo = tmp / "repo"
    repo.mkdir(parents=True)
    git(repo, "init", "-q", "-b", "main")
    (repo / "worker.py").write_text(WORKER)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "worker")
    for spec in branches.values():
        git(repo, "branch", spec.get("branch", "x"))
    config = {
        "default_host": "hpc",
        "hosts": {"hpc": {"type": "slurm", "via": "local", "root": str(root),
                          **(host or {})}},
        "branches": branches,
        "commands": {"train": command or f"{sys.executable} worker.py {{mode}}",
                     "generate": f"{sys.executable} worker.py gen {{data}}"},
    }
    path = repo / "wt-run.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


class WtRun:
    """The real CLI, in-process, against one config."""

    def __init__(self, config: Path) -> None:
        self.config = config

    def __call__(self, *args: str, ok: bool = True) -> str:
        from worktree_runner.cli import cli

        result = CliRunner().invoke(cli, ["--config", str(self.config), *args],
                                    catch_exceptions=False)
        if ok and result.exit_code != 0:
            raise AssertionError(f"wt-run {' '.join(args)} exited {result.exit_code}:\n"
                                 f"{result.output}")
        return result.output

    def workers(self) -> dict[str, dict[str, Any]]:
        return {w["name"]: w for w in json.loads(self("status", "--json"))["workers"]}

    def wait(self, done: Callable[[dict[str, dict[str, Any]]], bool],
             timeout: float = 90.0) -> dict[str, dict[str, Any]]:
        """Poll `status --json` until `done(workers)`; generous bound, no timing asserts."""
        deadline = time.monotonic() + timeout
        workers = self.workers()
        while not done(workers):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out; last status: {json.dumps(workers, indent=1)}")
            time.sleep(0.3)
            workers = self.workers()
        return workers

    def wait_states(self, expected: dict[str, str], timeout: float = 90.0
                    ) -> dict[str, dict[str, Any]]:
        return self.wait(lambda ws: all(ws[n]["state"] == s for n, s in expected.items()),
                         timeout)


def wait_file(path: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} did not appear")
        time.sleep(0.1)
