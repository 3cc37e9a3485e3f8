"""Helpers for the SSH tests: a small real git repository with one branch per variant, a
wt-run.yaml whose hosts are real sshd servers, and a CLI runner.

The "remote" is this machine: each host's root is a temporary directory, and the remote
repository there is built from bundles, so it is a separate checkout from the local one.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from click.testing import CliRunner, Result

from tests.servers.sshd import SSHServer
from worktree_runner import ssh as wt_ssh
from worktree_runner.cli import cli

# The worker: records which branch's code it runs, its GPU and an env value, then sleeps.
WORK_SH = """\
out=$1
cat variant.txt > "$out/variant"
printf '%s' "${CUDA_VISIBLE_DEVICES-none}" > "$out/gpu"
printf '%s' "${EVIL-}" > "$out/evil"
echo "working on $(cat variant.txt)"
sleep "$2"
echo "finished $(cat variant.txt)"
"""


def git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True, env=env).stdout.strip()


def make_repo(path: Path, branches: Iterable[str], *, requirements: bool = True) -> Path:
    """A repository whose branch B has variant.txt == B (work.sh and the rest are shared)."""
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    (path / "work.sh").write_text(WORK_SH)
    (path / "variant.txt").write_text("main\n")
    if requirements:
        (path / "requirements.txt").write_text("# nothing to install\n")
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "base")
    for b in branches:
        git(path, "checkout", "-q", "-b", b, "main")
        (path / "variant.txt").write_text(f"{b}\n")
        git(path, "commit", "-q", "-am", f"variant {b}")
    git(path, "checkout", "-q", "main")
    return path


def commit_on(repo: Path, branch: str, filename: str, text: str) -> str:
    """Add a commit to a branch without checking it out (the main checkout stays on main)."""
    git(repo, "checkout", "-q", branch)
    (repo / filename).write_text(text)
    git(repo, "add", filename)
    git(repo, "commit", "-q", "-m", f"change {filename}")
    sha = git(repo, "rev-parse", "HEAD")
    git(repo, "checkout", "-q", "main")
    return sha


def write_ssh_config(path: Path, servers: Mapping[str, SSHServer], extra: str = "") -> Path:
    """An ssh config with one alias per server (HostName, Port, User, key, known_hosts)."""
    path.write_text("".join(srv.ssh_config_entry(alias) for alias, srv in servers.items())
                    + extra)
    return path


def write_config(path: Path, repo: Path, hosts: Mapping[str, Mapping[str, Any]],
                 branches: Sequence[str], *, shared: Sequence[str] = ("data",),
                 secs: float = 0, env: Mapping[str, str] | None = None,
                 default_host: str | None = None) -> Path:
    doc: dict[str, Any] = {
        "repo": str(repo),
        "shared": list(shared),
        "hosts": {"local": {"type": "local"}, **{k: dict(v) for k, v in hosts.items()}},
        "branches": {b: {"branch": b, "vars": {"secs": str(secs)}} for b in branches},
        "commands": {"train": "sh work.sh {out} {secs}",
                     "generate": "sh -c 'echo generated > \"$1/marker\"' - {data}"},
        "stop_grace": 2,
    }
    if env:
        doc["env"] = dict(env)
    if default_host:
        doc["default_host"] = default_host
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def ssh_host(alias: str, root: Path | str, **extra: Any) -> dict[str, Any]:
    return {"type": "ssh", "address": alias, "root": str(root), "connect_timeout": 5,
            "command_timeout": 30, **extra}


def run_cli(config: Path, *args: str, fresh: bool = True) -> Result:
    """`wt-run --config CONFIG ARGS` in this process. fresh: drop pooled connections first,
    so that each call behaves like its own process (one connection per host)."""
    if fresh:
        wt_ssh.close_all()
    result = CliRunner().invoke(cli, ["--config", str(config), *args], catch_exceptions=False)
    return result


def status_json(config: Path, *extra: str) -> dict[str, Any]:
    result = run_cli(config, "status", "--json", *extra)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def states(doc: Mapping[str, Any]) -> dict[str, str]:
    return {w["name"]: w["state"] for w in doc["workers"]}


def wait_for(predicate: Callable[[], Any], timeout: float = 60.0, interval: float = 0.3) -> Any:
    """Poll until predicate() is truthy; fail with its last value otherwise."""
    deadline = time.monotonic() + timeout
    value = predicate()
    while not value:
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s (last: {value!r})")
        time.sleep(interval)
        value = predicate()
    return value


def wait_states(config: Path, wanted: Mapping[str, str], timeout: float = 60.0
                ) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        doc = status_json(config)
        got = states(doc)
        return doc if all(got.get(k) == v for k, v in wanted.items()) else None

    return wait_for(check, timeout)
