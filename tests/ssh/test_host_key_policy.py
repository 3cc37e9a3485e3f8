"""One host-key policy on every channel, over a real sshd: scripts and SFTP (Paramiko) and bulk
data (the OpenSSH client, for collect's sftp) accept and refuse the same host keys, and neither
writes known_hosts, for both values of `strict_host_key`."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.collect.helpers import latest_run, make_training_repo, wt
from tests.servers.fixtures import sshd_server  # noqa: F401
from tests.servers.sshd import SSHServer
from worktree_runner import ssh as wt_ssh
from worktree_runner.backends import open_host
from worktree_runner.collect import collect
from worktree_runner.collect_openssh import ssh_options
from worktree_runner.config import load_config
from worktree_runner.ssh import HostKeyRejected

pytestmark = pytest.mark.ssh


def _setup(tmp_path: Path, server: SSHServer, monkeypatch: pytest.MonkeyPatch,
           strict: bool) -> tuple[Path, Path]:
    """A worker launched on the host; the ssh config names `known` as the known_hosts file and
    leaves the policy to wt-run. Returns (wt-run config, known_hosts file)."""
    known = tmp_path / "known_hosts"
    known.write_text(server.known_hosts.read_text())
    entry = server.ssh_config_entry("gpu").replace(str(server.known_hosts), str(known))
    entry = "\n".join(x for x in entry.splitlines() if "StrictHostKeyChecking" not in x)
    (tmp_path / "ssh_config").write_text(entry + "\n")
    monkeypatch.setenv("WT_RUN_SSH_CONFIG", str(tmp_path / "ssh_config"))
    cfg = make_training_repo(tmp_path / "repo", {"a": {}}, hosts={
        "local": {"type": "local"},
        "gpu": {"type": "ssh", "address": "gpu", "root": str(tmp_path / "remote"),
                "strict_host_key": strict, "connect_timeout": 5, "command_timeout": 60}})
    wt(cfg, "launch", "--branches", "a", "--host", "gpu", "--wait")
    wt_ssh.close_all()
    return cfg, known


def _openssh_true(cfg: Path) -> subprocess.CompletedProcess[str]:
    """`ssh HOST true` with exactly the options collect gives OpenSSH."""
    with open_host(load_config(cfg), "gpu") as host:
        argv = ["ssh", *ssh_options(host), host.ssh_argv()[-1], "true"]  # type: ignore[attr-defined]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)


def _paramiko_true(cfg: Path) -> None:
    wt_ssh.close_all()
    with open_host(load_config(cfg), "gpu") as host:
        host.run_script("true\n").check()


def _other_key(tmp_path: Path, port: int) -> str:
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)],
                   check=True)
    kind, b64 = other.with_suffix(".pub").read_text().split()[:2]
    return f"[127.0.0.1]:{port} {kind} {b64}\n"


def test_relaxed_accepts_any_key_on_every_channel_and_writes_none(
        tmp_path: Path, sshd_server: SSHServer,  # noqa: F811
        monkeypatch: pytest.MonkeyPatch) -> None:
    cfg, known = _setup(tmp_path, sshd_server, monkeypatch, strict=False)
    for recorded in ("", _other_key(tmp_path, sshd_server.port)):  # unknown, then "changed"
        known.write_text(recorded)
        _paramiko_true(cfg)
        done = _openssh_true(cfg)
        assert done.returncode == 0, done.stderr
        wt_ssh.close_all()
        report = collect(load_config(cfg), run=latest_run(cfg), transport="openssh")
        w = report.workers[0]
        assert w.ok and w.transport in ("openssh", "none"), w.errors
        # Nothing was written: the next connection is as unverified as this one.
        assert known.read_text() == recorded


def test_strict_refuses_an_unknown_key_on_every_channel_and_writes_none(
        tmp_path: Path, sshd_server: SSHServer,  # noqa: F811
        monkeypatch: pytest.MonkeyPatch) -> None:
    cfg, known = _setup(tmp_path, sshd_server, monkeypatch, strict=True)
    for recorded in ("", _other_key(tmp_path, sshd_server.port)):  # unknown, then changed
        known.write_text(recorded)
        with pytest.raises(HostKeyRejected):
            _paramiko_true(cfg)
        refused = _openssh_true(cfg)
        assert refused.returncode == 255
        assert "Host key verification failed" in refused.stderr
        wt_ssh.close_all()
        report = collect(load_config(cfg), run=latest_run(cfg), transport="openssh")
        assert not report.ok and "known_hosts" in report.workers[0].errors[0]
        assert known.read_text() == recorded

    # With the host's key recorded, both channels connect and the collect goes through.
    known.write_text(sshd_server.known_hosts.read_text())
    _paramiko_true(cfg)
    assert _openssh_true(cfg).returncode == 0
    wt_ssh.close_all()
    report = collect(load_config(cfg), run=latest_run(cfg), transport="openssh")
    assert report.ok and report.workers[0].marked and report.workers[0].transport == "openssh"
    assert known.read_text() == sshd_server.known_hosts.read_text()
