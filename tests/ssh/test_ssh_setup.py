"""`wt-run setup --host H` on a real sshd host: idempotent bootstrap, dry run, and the launch
refusal that names it."""

from __future__ import annotations

import sys

import pytest

from tests.servers.fixtures import sshd_servers  # noqa: F401
from tests.ssh.helpers import (
    git,
    make_repo,
    run_cli,
    ssh_host,
    wait_states,
    write_config,
    write_ssh_config,
)

pytestmark = pytest.mark.ssh


def test_setup_is_idempotent_and_enables_launch(tmp_path, sshd_servers, monkeypatch):  # noqa: F811
    (a,) = sshd_servers(1)
    monkeypatch.setenv("WT_RUN_SSH_CONFIG",
                       str(write_ssh_config(tmp_path / "ssh_config", {"h1": a})))
    repo = make_repo(tmp_path / "repo", ["v1"])
    root = tmp_path / "root"
    host = ssh_host("h1", root, python=sys.executable,
                    setup=["echo ran >> ../setup-count", "test -x .venv/bin/python"])
    config = write_config(tmp_path / "wt-run.yaml", repo, {"h1": host}, ["v1"],
                          shared=["data", ".venv", "cache"])

    # Without setup, the missing virtualenv is refused, naming the fix.
    early = run_cli(config, "launch", "--branches", "v1", "--host", "h1")
    assert early.exit_code == 1
    assert "'.venv' does not exist" in early.output and "wt-run setup --host h1" in early.output
    assert not (root / "worktrees" / "v1").exists()

    dry = run_cli(config, "setup", "--host", "h1", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "Would create virtualenv" in dry.output and "Would run the setup" in dry.output
    assert f"Would create root {root}" in dry.output
    assert not (root / "repo" / ".venv").exists() and not (root / "setup-count").exists()

    first = run_cli(config, "setup", "--host", "h1")
    assert first.exit_code == 0, first.output
    assert "virtualenv" in first.output and "created" in first.output
    assert "host h1: ready" in first.output
    assert (root.stat().st_mode & 0o777) == 0o700
    assert git(root / "repo", "rev-parse", "HEAD") == git(repo, "rev-parse", "HEAD")
    cfg = (root / "repo" / ".venv" / "pyvenv.cfg").read_text()
    assert "include-system-site-packages = true" in cfg
    assert (root / "repo" / "cache").is_dir() and (root / "repo" / "data").is_dir()
    assert (root / "setup-count").read_text() == "ran\n"

    second = run_cli(config, "setup", "--host", "h1")
    assert second.exit_code == 0, second.output
    assert "host h1: up to date" in second.output
    assert "created" not in second.output and "ran" not in second.output.replace("up to", "")
    assert (root / "setup-count").read_text() == "ran\n"

    # A new commit on this machine: setup moves the host's checkout to it, nothing else.
    (repo / "requirements.txt").write_text("# still nothing\n")
    git(repo, "commit", "-qam", "touch requirements")
    third = run_cli(config, "setup", "--host", "h1")
    assert third.exit_code == 0, third.output
    assert "checked out" in third.output and "requirements: installed" in third.output
    assert "virtualenv: up to date" in third.output
    assert git(root / "repo", "rev-parse", "HEAD") == git(repo, "rev-parse", "HEAD")

    launched = run_cli(config, "launch", "--branches", "v1", "--host", "h1")
    assert launched.exit_code == 0, launched.output
    wait_states(config, {"v1": "succeeded"})
    venv_link = root / "worktrees" / "v1" / ".venv"
    assert venv_link.is_symlink() and venv_link.resolve() == (root / "repo" / ".venv").resolve()
