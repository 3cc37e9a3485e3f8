"""Launch, status, logs and stop on real sshd hosts, driven through the CLI and the library."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.servers.fixtures import sshd_servers  # noqa: F401
from tests.ssh.helpers import (
    commit_on,
    git,
    make_repo,
    run_cli,
    ssh_host,
    states,
    status_json,
    wait_states,
    write_config,
    write_ssh_config,
)
from worktree_runner import ssh as wt_ssh

pytestmark = pytest.mark.ssh


def _two_hosts(tmp_path, sshd_servers, monkeypatch, branches, **cfg):  # noqa: F811
    a, b = sshd_servers(2)
    ssh_config = write_ssh_config(tmp_path / "ssh_config", {"h1": a, "h2": b})
    monkeypatch.setenv("WT_RUN_SSH_CONFIG", str(ssh_config))
    repo = make_repo(tmp_path / "repo", branches)
    roots = {"h1": tmp_path / "root1", "h2": tmp_path / "root2"}
    config = write_config(tmp_path / "wt-run.yaml", repo,
                          {h: ssh_host(h, r) for h, r in roots.items()}, branches, **cfg)
    return (a, b), repo, roots, config


def test_launch_spreads_over_two_hosts_one_connection_per_host(
        tmp_path, sshd_servers, monkeypatch):  # noqa: F811
    (a, b), repo, roots, config = _two_hosts(tmp_path, sshd_servers, monkeypatch,
                                             ["v1", "v2", "v3", "v4"])
    env = {**os.environ, "WT_RUN_SSH_CONFIG": str(tmp_path / "ssh_config")}
    launched = subprocess.run(
        [sys.executable, "-m", "worktree_runner", "--config", str(config), "launch",
         "--branches", "v1", "v2", "v3", "v4", "--host", "h1", "--host", "h2"],
        capture_output=True, text=True, env=env, check=False)
    assert launched.returncode == 0, launched.stdout + launched.stderr
    # One SSH connection per host for the whole launch (sync, worktrees, start).
    assert a.wait_connection_count(1) == 1 and b.wait_connection_count(1) == 1
    doc = wait_states(config, dict.fromkeys(["v1", "v2", "v3", "v4"], "succeeded"))
    hosts = {w["name"]: w["host"] for w in doc["workers"]}
    assert hosts == {"v1": "h1", "v2": "h2", "v3": "h1", "v4": "h2"}
    for w in doc["workers"]:
        root = roots[w["host"]]
        # Each worker ran its own branch's commit, in a worktree under the host's root,
        # built from the bundle (a separate checkout from the local repository).
        assert w["commit"] == git(repo, "rev-parse", w["name"])
        assert w["worktree"] == f"{root}/worktrees/{w['name']}"
        assert Path(w["out"], "variant").read_text() == f"{w['name']}\n"
        assert git(Path(w["worktree"]), "rev-parse", "HEAD") == w["commit"]
        assert Path(w["worktree"], "data").resolve() == (root / "repo" / "data").resolve()
    # Files under root are private to the user.
    for root in roots.values():
        assert (root.stat().st_mode & 0o777) == 0o700
        cmd = next(root.glob("runs/*/workers/*/cmd.sh"))
        assert (cmd.stat().st_mode & 0o777) == 0o600
    # status: again one connection per host.
    before = a.connection_count(), b.connection_count()
    status = subprocess.run(
        [sys.executable, "-m", "worktree_runner", "--config", str(config), "status", "--json"],
        capture_output=True, text=True, env=env, check=True)
    assert '"succeeded"' in status.stdout
    assert a.wait_connection_count(before[0] + 1) == before[0] + 1
    assert b.wait_connection_count(before[1] + 1) == before[1] + 1
    # logs of a remote worker.
    logs = run_cli(config, "logs", "v2")
    assert logs.exit_code == 0 and "finished v2" in logs.output


def test_second_launch_sends_only_new_commits(tmp_path, sshd_servers, monkeypatch):  # noqa: F811
    (_a, _), repo, _roots, config = _two_hosts(tmp_path, sshd_servers, monkeypatch, ["v1", "v2"])
    sent: list[bytes] = []
    real_put = wt_ssh.SSHHost.put

    def spy(self, local, remote):
        sent.append(Path(local).read_bytes())
        return real_put(self, local, remote)

    monkeypatch.setattr(wt_ssh.SSHHost, "put", spy)
    assert run_cli(config, "launch", "--branches", "v1", "v2", "--host", "h1").exit_code == 0
    assert len(sent) == 1
    # Nothing new: no bundle at all.
    assert run_cli(config, "launch", "--branches", "v1", "--host", "h1").exit_code == 0
    assert len(sent) == 1
    new = commit_on(repo, "v1", "variant.txt", "v1 again\n")
    result = run_cli(config, "launch", "--branches", "v1", "--host", "h1")
    assert result.exit_code == 0, result.output
    assert len(sent) == 2
    bundle = tmp_path / "second.bundle"
    bundle.write_bytes(sent[1])
    verify = subprocess.run(["git", "-C", str(repo), "bundle", "verify", str(bundle)],
                            capture_output=True, text=True, check=True)
    # Incremental: it needs commits the host already has, and is smaller than the first.
    assert "requires" in (verify.stdout + verify.stderr)
    assert len(sent[1]) < len(sent[0])
    doc = wait_states(config, {"v1": "succeeded"})
    rec = next(w for w in doc["workers"] if w["name"] == "v1")
    assert rec["commit"] == new
    assert Path(rec["out"], "variant").read_text() == "v1 again\n"


def test_worker_survives_client_exit_and_sshd_death(tmp_path, sshd_servers, monkeypatch):  # noqa: F811
    (a, _), _repo, _roots, config = _two_hosts(tmp_path, sshd_servers, monkeypatch, ["v1"],
                                             secs=3)
    assert run_cli(config, "launch", "--branches", "v1", "--host", "h1").exit_code == 0
    assert states(status_json(config)) == {"v1": "running"}
    # The client drops its connection and the whole sshd (with its sessions) dies.
    wt_ssh.close_all()
    a.kill()
    doc = status_json(config)
    assert states(doc) == {"v1": "unknown"}
    assert "refused" in doc["workers"][0]["reason"]
    a.start()
    wait_states(config, {"v1": "succeeded"})
    assert run_cli(config, "logs", "v1").output.count("finished v1") == 1


def test_stop_and_follow_logs_remote(tmp_path, sshd_servers, monkeypatch):  # noqa: F811
    (_a, _), _repo, _roots, config = _two_hosts(tmp_path, sshd_servers, monkeypatch, ["v1", "v2"],
                                             secs=60)
    assert run_cli(config, "launch", "--branches", "v1", "v2", "--host", "h1").exit_code == 0
    wait_states(config, {"v1": "running", "v2": "running"})
    # logs -f streams over SSH until the worker ends; stopping v1 ends it.
    env = {**os.environ, "WT_RUN_SSH_CONFIG": str(tmp_path / "ssh_config")}
    follow = subprocess.Popen(
        [sys.executable, "-m", "worktree_runner", "--config", str(config), "logs", "v1", "-f"],
        stdout=subprocess.PIPE, text=True, env=env)
    assert follow.stdout is not None
    assert "working on v1" in follow.stdout.readline()
    stopped = run_cli(config, "stop", "v1")
    assert stopped.exit_code == 0, stopped.output
    doc = wait_states(config, {"v1": "stopped", "v2": "running"})
    assert doc["workers"][0]["exit_code"] is None
    follow.terminate()
    follow.wait(timeout=20)
    assert run_cli(config, "stop", "--all").exit_code == 0
    wait_states(config, {"v2": "stopped"})


def test_remote_refusals_dirty_and_checked_out(tmp_path, sshd_servers, monkeypatch):  # noqa: F811
    (_a, _), _repo, roots, config = _two_hosts(tmp_path, sshd_servers, monkeypatch, ["v1", "v2"])
    assert run_cli(config, "launch", "--branches", "v1", "v2", "--host", "h1").exit_code == 0
    wait_states(config, {"v1": "succeeded", "v2": "succeeded"})
    wt = roots["h1"] / "worktrees" / "v1"
    (wt / "variant.txt").write_text("edited on the host\n")
    refused = run_cli(config, "launch", "--branches", "v1", "--host", "h1")
    assert refused.exit_code == 1
    assert "uncommitted changes" in refused.output and "--force" in refused.output
    forced = run_cli(config, "launch", "--branches", "v1", "--host", "h1", "--force")
    assert forced.exit_code == 0, forced.output
    wait_states(config, {"v1": "succeeded"})
    # A branch checked out in another worktree on the host is refused, naming where.
    git(wt, "checkout", "-q", "--", "variant.txt")
    host_repo = roots["h1"] / "repo"
    git(host_repo, "worktree", "remove", "--force", str(roots["h1"] / "worktrees" / "v2"))
    git(host_repo, "worktree", "add", "-q", str(tmp_path / "other"), "v2")
    held = run_cli(config, "launch", "--branches", "v2", "--host", "h1")
    assert held.exit_code == 1
    assert "already checked out" in held.output and str(tmp_path / "other") in held.output
    assert not (roots["h1"] / "worktrees" / "v2").exists()


def test_generate_on_remote_runs_in_repo_at_head(tmp_path, sshd_servers, monkeypatch):  # noqa: F811
    (_a, _), repo, roots, config = _two_hosts(tmp_path, sshd_servers, monkeypatch, ["v1"])
    result = run_cli(config, "generate", "--host", "h1", "--wait")
    assert result.exit_code == 0, result.output
    assert (roots["h1"] / "repo" / "data" / "marker").read_text() == "generated\n"
    doc = status_json(config)
    assert doc["workers"][0]["commit"] == git(repo, "rev-parse", "HEAD")
    assert git(roots["h1"] / "repo", "rev-parse", "HEAD") == git(repo, "rev-parse", "HEAD")
