"""`wt-run clean --worktrees --host H` on an SSH host (a real sshd on 127.0.0.1): the
worktrees wt-run made under `<root>/worktrees` go, with the same refusals as on this machine
(uncollected results, uncommitted changes), and a dry run changes nothing."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.collect.helpers import latest_run, make_training_repo, wt
from tests.servers.fixtures import sshd_server  # noqa: F401
from tests.servers.sshd import SSHServer
from worktree_runner import ssh as wt_ssh

pytestmark = pytest.mark.ssh


def _registered(remote: Path) -> list[str]:
    out = subprocess.run(["git", "-C", str(remote / "repo"), "worktree", "list", "--porcelain"],
                         capture_output=True, text=True, check=True).stdout
    return sorted(Path(line[9:]).name for line in out.splitlines()
                  if line.startswith("worktree ") and "/worktrees/" in line)


def test_clean_worktrees_on_an_ssh_host(tmp_path: Path, sshd_server: SSHServer,  # noqa: F811
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    ssh_config = tmp_path / "ssh_config"
    ssh_config.write_text(sshd_server.ssh_config_entry("gpu"))
    monkeypatch.setenv("WT_RUN_SSH_CONFIG", str(ssh_config))
    remote = tmp_path / "remote"
    cfg = make_training_repo(tmp_path / "repo", {"a": {}, "b": {}}, hosts={
        "local": {"type": "local"},
        "gpu": {"type": "ssh", "address": "gpu", "root": str(remote), "connect_timeout": 5,
                "command_timeout": 60}})
    wt(cfg, "launch", "--branches", "a", "b", "--host", "gpu", "--wait")
    wt_ssh.close_all()
    run = latest_run(cfg)
    assert _registered(remote) == ["a", "b"]
    assert (remote / "worktrees" / "a" / "results" / "summary.txt").exists()

    # Results that `collect:` would bring back, not collected yet: refused, naming the run.
    refused = wt(cfg, "clean", "--worktrees", "--host", "gpu", ok=False)
    assert f"holds results of run {run} not collected yet" in refused.output
    assert f"wt-run collect --run {run}" in refused.output
    assert _registered(remote) == ["a", "b"]

    wt(cfg, "collect")
    wt_ssh.close_all()
    # A tracked file changed in one worktree: that one is kept without --force.
    (remote / "worktrees" / "b" / "train.py").write_text("# edited on the host\n")
    dry = wt(cfg, "clean", "--worktrees", "--host", "gpu", "--dry-run")
    assert f"Would remove worktree: gpu:{remote / 'worktrees' / 'a'}" in dry.output
    assert "uncommitted changes" in dry.output
    assert _registered(remote) == ["a", "b"]

    done = wt(cfg, "clean", "--worktrees", "--host", "gpu", "--delete-branches")
    assert f"remove worktree: gpu:{remote / 'worktrees' / 'a'}" in done.output
    assert f"kept (keep worktree): gpu:{remote / 'worktrees' / 'b'}" in done.output
    assert _registered(remote) == ["b"]
    assert not (remote / "worktrees" / "a").exists()
    branches = subprocess.run(["git", "-C", str(remote / "repo"), "branch", "--list",
                               "exp/a"], capture_output=True, text=True, check=True).stdout
    deleted = "delete branch: gpu:exp/a" in done.output
    assert deleted == (branches.strip() == ""), done.output

    wt_ssh.close_all()
    wt(cfg, "clean", "--worktrees", "--host", "gpu", "--force")
    assert _registered(remote) == []
    # Outputs live in the worker directories, not in the worktrees: nothing was lost.
    assert (tmp_path / "repo" / "results" / run / "a" / "out").is_dir()
    assert list((remote / "runs" / run / "workers" / "a" / "out").iterdir())
