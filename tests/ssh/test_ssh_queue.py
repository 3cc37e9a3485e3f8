"""The host queue over a real sshd: workers wait on the host, drain with no client, stop."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from tests.servers.fixtures import sshd_servers  # noqa: F401
from tests.ssh.helpers import (
    make_repo,
    run_cli,
    ssh_host,
    states,
    status_json,
    wait_for,
    wait_states,
    write_config,
    write_ssh_config,
)


def test_queue_on_an_ssh_host_drains_without_the_client(
        tmp_path, sshd_servers, monkeypatch):  # noqa: F811
    (srv,) = sshd_servers(1)
    monkeypatch.setenv("WT_RUN_SSH_CONFIG",
                       str(write_ssh_config(tmp_path / "ssh_config", {"h1": srv})))
    repo = make_repo(tmp_path / "repo", ["v1", "v2", "v3"])
    root = tmp_path / "root"
    config = write_config(tmp_path / "wt-run.yaml", repo,
                          {"h1": ssh_host("h1", root, slots=1)}, ["v1", "v2", "v3"],
                          secs=2, default_host="h1")
    doc = yaml.safe_load(config.read_text())
    doc["branches"]["v3"]["vars"]["secs"] = "300"
    config.write_text(yaml.safe_dump(doc))
    assert run_cli(config, "launch", "--branches", "v3", "v1", "v2").exit_code == 0
    first = wait_states(config, {"v3": "running", "v1": "pending", "v2": "pending"})
    reasons = {w["name"]: w["reason"] for w in first["workers"]}
    assert reasons["v1"] == "queued on h1, 0 ahead" and reasons["v2"] == "queued on h1, 1 ahead"
    # Stopping the running one frees the slot; the queue goes on by itself.
    assert run_cli(config, "stop", "v3").exit_code == 0
    done = wait_states(config, {"v3": "stopped", "v1": "succeeded", "v2": "succeeded"})
    assert {w["name"]: w["state"] for w in done["workers"]}["v3"] == "stopped"
    for w in done["workers"][1:]:
        assert Path(w["out"], "variant").read_text() == f"{w['name']}\n"

    def drainer_gone() -> bool:
        out = subprocess.run(["pgrep", "-f", f"{root}/drainer.py"], capture_output=True,
                             text=True, check=False).stdout
        return not out.strip()

    wait_for(drainer_gone, timeout=30)
    # A queued worker stopped over SSH never starts.
    doc["branches"]["v1"]["vars"]["secs"] = "300"
    config.write_text(yaml.safe_dump(doc))
    assert run_cli(config, "launch", "--branches", "v1", "v2", "--run", "second").exit_code == 0
    wait_states(config, {"v1": "running", "v2": "pending"})
    assert run_cli(config, "stop", "--all").exit_code == 0
    final = states(status_json(config))
    assert final == {"v1": "stopped", "v2": "stopped"} or wait_states(
        config, {"v1": "stopped", "v2": "stopped"})
    v2 = {w["name"]: w for w in status_json(config)["workers"]}["v2"]
    assert not Path(v2["out"], "variant").exists()
