"""A Slurm host whose login node is an SSH host (`type: slurm, via: login`), end to end: a real
sshd on 127.0.0.1 is the login node of the real single-node Slurm cluster, and its sessions
see the cluster's slurm.conf the way a real login node's /etc does (sshd `SetEnv`). This
process has no SLURM_CONF at all, so every Slurm command must have gone over SSH."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.servers.slurm import SlurmCluster
from tests.servers.sshd import SSHServer
from tests.slurm.helpers import WORKER, git
from tests.ssh.helpers import run_cli, ssh_host, states, status_json, wait_for, write_ssh_config
from worktree_runner import ssh as wt_ssh

pytestmark = [pytest.mark.ssh, pytest.mark.slurm]

# Never `rm`: the login node's shell is this machine's, so a quoting bug must stay harmless.
HOSTILE = "it's $(touch pwned) `touch pwned` ; touch pwned #\n\"%j%%\\ $HOME"


@pytest.fixture
def login(slurm_cluster: SlurmCluster, sshd_servers, monkeypatch: pytest.MonkeyPatch,
          tmp_path: Path) -> Iterator[SSHServer]:
    """The sshd acting as the cluster's login node; Slurm unreachable from this process."""
    for key in list(os.environ):
        if key.startswith(("SLURM_", "SBATCH_", "SQUEUE_")):
            monkeypatch.delenv(key)
    (server,) = sshd_servers(1, extra_config=[f'SetEnv "SLURM_CONF={slurm_cluster.conf_path}"'])
    monkeypatch.setenv("WT_RUN_SSH_CONFIG",
                       str(write_ssh_config(tmp_path / "ssh_config", {"login": server})))
    wt_ssh.close_all()
    yield server
    wt_ssh.close_all()
    slurm_cluster.cancel_all()


def _project(tmp_path: Path, root: Path) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "worker.py").write_text(WORKER)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "worker")
    for b in ("exp/a", "exp/b", "exp/held"):
        git(repo, "branch", b)
    doc = {
        "default_host": "hpc",
        "hosts": {"login": ssh_host("login", tmp_path / "login-root"),
                  "hpc": {"type": "slurm", "via": "login", "root": str(root)}},
        "branches": {
            "a": {"branch": "exp/a", "vars": {"mode": "ok", "extra": ""}},
            "b": {"branch": "exp/b", "vars": {"mode": "args", "extra": HOSTILE},
                  "env": {"HOSTILE": HOSTILE}},
            "held": {"branch": "exp/held", "vars": {"mode": "ok", "extra": ""},
                     "slurm": {"sbatch_args": ["--hold"]}},
        },
        "commands": {"train": f"{sys.executable} worker.py {{mode}} {{extra}}"},
        "stop_grace": 2,
    }
    path = repo / "wt-run.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _one_connection(server: SSHServer, config: Path, *args: str) -> str:
    """Run a wt-run command (as its own process would: no pooled connection) and check that
    it used exactly one SSH connection to the login node."""
    before = server.connection_count()
    result = run_cli(config, *args)
    assert result.exit_code == 0, result.output
    assert server.wait_connection_count(before + 1) == before + 1, args
    return result.output


def test_slurm_via_ssh_login_node(login: SSHServer, slurm_cluster: SlurmCluster,
                                  tmp_path: Path) -> None:
    root = tmp_path / "shared 'fs'"  # the cluster's shared filesystem; quoting on the way
    config = _project(tmp_path, root)

    out = _one_connection(login, config, "setup", "--host", "hpc")
    assert "host hpc: ready" in out
    assert (root / "repo" / ".git").is_dir() and (root / "repo" / ".venv").is_dir()

    _one_connection(login, config, "launch", "--branches", "a", "b", "held")
    doc = _one_connection(login, config, "status", "--json")
    assert {w["name"]: w["host"] for w in json.loads(doc)["workers"]} == dict.fromkeys(
        ("a", "b", "held"), "hpc")

    def settled() -> dict | None:
        d = status_json(config)
        s = states(d)
        return d if (s["a"], s["b"], s["held"]) == ("succeeded", "succeeded", "pending") else None

    workers = {w["name"]: w for w in wait_for(settled, timeout=60)["workers"]}
    jobs = {n: w["job_id"] for n, w in workers.items()}
    assert all(jobs.values()) and len(set(jobs.values())) == 3
    assert workers["held"]["reason"] == "JobHeldUser"
    assert workers["a"]["worktree"] == f"{root}/worktrees/a"
    assert workers["a"]["log"].startswith(f"{root}/runs/")

    assert "hello from a" in _one_connection(login, config, "logs", "a")

    # The hostile value reached the command literally, as argument and as environment.
    got = json.loads((Path(workers["b"]["out"]) / "args.json").read_text())
    assert got == {"argv": ["args", HOSTILE], "env": HOSTILE}
    assert not list(tmp_path.rglob("pwned")) and not (Path.home() / "pwned").exists()

    assert "held" in _one_connection(login, config, "stop", "held")
    assert states(status_json(config))["held"] == "stopped"
    assert slurm_cluster.job_state(jobs["held"]) in (None, "CANCELLED")

    collected = run_cli(config, "collect")
    assert collected.exit_code == 0, collected.output
    run_dir = next((config.parent / "results").iterdir())
    assert json.loads((run_dir / "b" / "out" / "args.json").read_text())["env"] == HOSTILE
    assert "hello from a" in (run_dir / "a" / "log").read_text()
