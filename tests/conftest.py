"""Fixtures shared by every test area: real git repositories and a CLI runner."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result

pytest_plugins = ["tests.servers.fixtures"]

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}
    out = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                         env=env, check=True)
    return out.stdout.strip()


def make_repo(path: Path, files: dict[str, str] | None = None,
              branches: dict[str, dict[str, str]] | None = None) -> Path:
    """A real git repository with a first commit of `files` on main, and one commit per
    extra branch changing the given files."""
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q", "-b", "main")
    for rel, text in (files or {"README": "hello\n"}).items():
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        (path / rel).write_text(text)
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "initial")
    for branch, changes in (branches or {}).items():
        git(path, "checkout", "-q", "-b", branch, "main")
        for rel, text in changes.items():
            (path / rel).parent.mkdir(parents=True, exist_ok=True)
            (path / rel).write_text(text)
        git(path, "add", "-A")
        git(path, "commit", "-q", "-m", f"change on {branch}")
        git(path, "checkout", "-q", "main")
    return path


def write_config(repo: Path, config: dict[str, Any], name: str = "wt-run.yaml") -> Path:
    path = repo / name
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


class WtRun:
    """Runs the real CLI in-process against one repository's config."""

    def __init__(self, repo: Path, config: Path) -> None:
        self.repo = repo
        self.config = config

    def __call__(self, *args: str, ok: bool = True) -> Result:
        from worktree_runner.cli import cli

        result = CliRunner().invoke(cli, ["--config", str(self.config), *args],
                                    catch_exceptions=False)
        if ok and result.exit_code != 0:
            raise AssertionError(f"wt-run {' '.join(args)} exited {result.exit_code}:\n"
                                 f"{result.output}")
        return result

    def status(self, run: str | None = None) -> dict[str, Any]:
        args = ["status", "--json"] + (["--run", run] if run else [])
        return json.loads(self(*args).output)

    def states(self, run: str | None = None) -> dict[str, str]:
        return {w["name"]: w["state"] for w in self.status(run)["workers"]}

    def wait_for(self, predicate: Callable[[dict[str, str]], bool], run: str | None = None,
                 timeout: float = 60.0) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        states = self.states(run)
        while not predicate(states):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting; last states: {states}")
            time.sleep(0.1)
            states = self.states(run)
        return states

    def wait_states(self, expected: dict[str, str], run: str | None = None,
                    timeout: float = 60.0) -> dict[str, str]:
        return self.wait_for(lambda s: all(s.get(k) == v for k, v in expected.items()),
                             run, timeout)


@pytest.fixture(autouse=True)
def _fresh_ssh_pool():
    """Each test starts and ends without pooled SSH connections (servers come and go)."""
    pool = sys.modules.get("worktree_runner.ssh")
    if pool is not None:
        pool.close_all()
    yield
    pool = sys.modules.get("worktree_runner.ssh")
    if pool is not None:
        pool.close_all()


@pytest.fixture
def repo_factory(tmp_path: Path) -> Callable[..., Path]:
    def factory(name: str = "repo", files: dict[str, str] | None = None,
                branches: dict[str, dict[str, str]] | None = None) -> Path:
        return make_repo(tmp_path / name, files, branches)

    return factory


def basic_config(branches: Sequence[str], command: str, **extra: Any) -> dict[str, Any]:
    return {"branches": {b: {"branch": f"exp/{b}"} for b in branches},
            "commands": {"train": command}, **extra}
