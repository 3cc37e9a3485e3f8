"""SSH failure modes: hosts that die or time out, host keys, authentication, hostile values,
GPU slots, a non-root remote user, and jump hosts."""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import subprocess
import threading
from pathlib import Path

import pytest

from tests.servers.fixtures import (  # noqa: F401
    NONROOT_USER,
    sshd_server_nonroot,
    sshd_servers,
)
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
from worktree_runner import api
from worktree_runner import ssh as wt_ssh
from worktree_runner.config import load_config

pytestmark = pytest.mark.ssh


def _setup(tmp_path, monkeypatch, servers, branches, *, ssh_extra="", host_extra=None, **cfg):
    aliases = {f"h{i + 1}": s for i, s in enumerate(servers)}
    ssh_config = write_ssh_config(tmp_path / "ssh_config", aliases, ssh_extra)
    monkeypatch.setenv("WT_RUN_SSH_CONFIG", str(ssh_config))
    repo = make_repo(tmp_path / "repo", branches)
    roots = {h: tmp_path / f"root-{h}" for h in aliases}
    hosts = {h: ssh_host(h, roots[h], **(host_extra or {}).get(h, {})) for h in aliases}
    config = write_config(tmp_path / "wt-run.yaml", repo, hosts, branches, **cfg)
    return repo, roots, config


def _open_fifo_writer(path: Path) -> int | None:
    """Open a FIFO for writing without blocking: succeeds only once a reader has it open."""
    try:
        return os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.ENXIO:
            return None
        raise


def test_sshd_killed_during_status_then_back(tmp_path, sshd_servers, monkeypatch):  # noqa: F811
    (a,) = sshd_servers(1)
    _repo, _roots, config = _setup(tmp_path, monkeypatch, [a], ["v1"], secs=120)
    assert run_cli(config, "launch", "--branches", "v1", "--host", "h1").exit_code == 0
    wait_states(config, {"v1": "running"})
    # Hold the next remote command on a FIFO before it reads its script, so that sshd can be
    # killed while the status round trip is in flight.
    fifo = tmp_path / "hold"
    os.mkfifo(fifo)
    plain = wt_ssh.REMOTE_COMMAND
    monkeypatch.setattr(wt_ssh, "REMOTE_COMMAND", f"cat {fifo} >/dev/null; {plain}")
    box: dict[str, object] = {}
    cfg = load_config(config)
    wt_ssh.close_all()
    thread = threading.Thread(target=lambda: box.setdefault("report", api.status(cfg)))
    thread.start()
    writer = wait_for(lambda: _open_fifo_writer(fifo), timeout=30)
    a.kill()
    thread.join(timeout=60)
    os.close(writer)
    monkeypatch.setattr(wt_ssh, "REMOTE_COMMAND", plain)
    report = box["report"]
    assert [w.state.value for w in report.workers] == ["unknown"]
    assert "connection lost" in (report.workers[0].obs.reason or "")
    assert report.hosts[0].reachable is False
    a.start()
    # Same process, stale pooled connection: reconnects and shows the true state again.
    assert [w.state.value for w in api.status(cfg).workers] == ["running"]
    assert run_cli(config, "stop", "--all").exit_code == 0
    wait_states(config, {"v1": "stopped"})


def test_one_of_three_hosts_down(tmp_path, sshd_servers, monkeypatch):  # noqa: F811
    servers = sshd_servers(3)
    _repo, _roots, config = _setup(tmp_path, monkeypatch, servers, ["v1", "v2", "v3"], secs=60)
    launched = run_cli(config, "launch", "--branches", "v1", "v2", "v3",
                       "--host", "h1", "--host", "h2", "--host", "h3")
    assert launched.exit_code == 0, launched.output
    wait_states(config, dict.fromkeys(["v1", "v2", "v3"], "running"))
    servers[1].stop()
    doc = status_json(config)
    assert states(doc) == {"v1": "running", "v2": "unknown", "v3": "running"}
    v2 = next(w for w in doc["workers"] if w["name"] == "v2")
    assert "connection refused" in v2["reason"]
    health = {h["name"]: h for h in doc["hosts"]}
    assert health["h2"]["reachable"] is False and health["h1"]["reachable"] is True
    assert health["h1"]["disk_free_bytes"] > 0 and health["h1"]["load"] is not None
    table = run_cli(config, "status")
    assert table.exit_code == 0 and "unreachable" in table.output
    # Nothing was stopped on the unreachable host: stop says so, and exits 1.
    stopped = run_cli(config, "stop", "v2")
    assert stopped.exit_code == 1 and "unknown" in stopped.output, stopped.output
    # A host that accepts TCP but never speaks SSH times out instead of hanging status.
    silent = socket.socket()
    silent.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    silent.bind(("127.0.0.1", servers[1].port))
    silent.listen()
    try:
        doc = status_json(config)
        assert states(doc)["v2"] == "unknown"
        assert states(doc)["v1"] == "running"
    finally:
        silent.close()
    servers[1].start()
    wait_states(config, dict.fromkeys(["v1", "v2", "v3"], "running"))
    assert run_cli(config, "stop", "--all").exit_code == 0
    wait_states(config, dict.fromkeys(["v1", "v2", "v3"], "stopped"))


def _fingerprint(pub: Path) -> str:
    out = subprocess.run(["ssh-keygen", "-lf", str(pub)], capture_output=True, text=True,
                         check=True).stdout
    return out.split()[1]


def test_unknown_and_changed_host_keys(tmp_path, sshd_servers, monkeypatch):  # noqa: F811
    (a,) = sshd_servers(1)
    known = tmp_path / "known_hosts"
    known.write_text("")
    entry = a.ssh_config_entry("h1").replace(str(a.known_hosts), str(known))
    ssh_config = tmp_path / "ssh_config"
    ssh_config.write_text(entry)
    monkeypatch.setenv("WT_RUN_SSH_CONFIG", str(ssh_config))
    repo = make_repo(tmp_path / "repo", ["v1"])
    config = write_config(tmp_path / "wt-run.yaml", repo,
                          {"h1": ssh_host("h1", tmp_path / "root")}, ["v1"])
    real = _fingerprint(a.host_key.with_suffix(".pub"))
    unknown = run_cli(config, "launch", "--branches", "v1", "--host", "h1")
    assert unknown.exit_code == 1
    assert "not in known_hosts" in unknown.output and real in unknown.output
    assert f"ssh-keyscan -p {a.port} 127.0.0.1 >> {known}" in unknown.output
    assert not (tmp_path / "root").exists()
    # A different key recorded for the host: refused as changed, showing both fingerprints.
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)],
                   check=True)
    kind, b64 = other.with_suffix(".pub").read_text().split()[:2]
    known.write_text(f"[127.0.0.1]:{a.port} {kind} {b64}\n")
    changed = run_cli(config, "launch", "--branches", "v1", "--host", "h1")
    assert changed.exit_code == 1
    assert "CHANGED" in changed.output and real in changed.output
    assert _fingerprint(other.with_suffix(".pub")) in changed.output
    assert not (tmp_path / "root").exists()
    # strict_host_key: false relaxes the check (with a warning).
    config = write_config(tmp_path / "wt-run.yaml", repo,
                          {"h1": ssh_host("h1", tmp_path / "root", strict_host_key=False)},
                          ["v1"])
    relaxed = run_cli(config, "launch", "--branches", "v1", "--host", "h1")
    assert relaxed.exit_code == 0, relaxed.output
    wait_states(config, {"v1": "succeeded"})


def test_auth_failure_is_clear_and_not_retried(tmp_path, sshd_servers, monkeypatch):  # noqa: F811
    (a,) = sshd_servers(1)
    wrong = tmp_path / "wrong_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(wrong)],
                   check=True)
    _repo, _roots, config = _setup(tmp_path, monkeypatch, [a], ["v1"],
                                 host_extra={"h1": {"key": str(wrong)}})
    # The ssh config's IdentityFile is the right key: drop it so only the wrong one is tried.
    cfg_text = (tmp_path / "ssh_config").read_text()
    (tmp_path / "ssh_config").write_text(
        "\n".join(x for x in cfg_text.splitlines() if "IdentityFile" not in x) + "\n")
    result = run_cli(config, "launch", "--branches", "v1", "--host", "h1")
    assert result.exit_code == 1
    assert "authentication failed for user" in result.output and str(wrong) in result.output
    assert "authorized_keys" in result.output
    # Exactly one attempt reached sshd (a retry could not fix a wrong key).
    wait_for(lambda: a.log_text().count("Connection from "), timeout=10)
    assert a.log_text().count("Connection from ") == 1
    assert "Failed publickey for" in a.log_text()


def test_hostile_env_value_and_root_path(tmp_path, sshd_servers, monkeypatch):  # noqa: F811
    (a,) = sshd_servers(1)
    marker = tmp_path / "PWNED"
    evil = (f"$(touch {marker}) `touch {marker}` '; touch {marker}; ' \"; touch {marker}\" "
            f"\\n $HOME")
    weird_root = tmp_path / "ro ot's $(touch PWNED2) dir"
    repo = make_repo(tmp_path / "repo", ["v1"])
    ssh_config = write_ssh_config(tmp_path / "ssh_config", {"h1": a})
    monkeypatch.setenv("WT_RUN_SSH_CONFIG", str(ssh_config))
    secret = "s3cr3t-token-value-42"
    config = write_config(tmp_path / "wt-run.yaml", repo, {"h1": ssh_host("h1", weird_root)},
                          ["v1"], env={"EVIL": evil, "API_TOKEN": secret}, secs=3)
    result = run_cli(config, "launch", "--branches", "v1", "--host", "h1")
    assert result.exit_code == 0, result.output
    # While it runs, no process on the machine carries the secret on its command line.
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError):
                assert secret.encode() not in (proc / "cmdline").read_bytes()
    doc = wait_states(config, {"v1": "succeeded"})
    out = Path(doc["workers"][0]["out"])
    assert (out / "evil").read_text() == evil
    assert not marker.exists() and not list(tmp_path.rglob("PWNED2"))
    assert secret not in a.log_text()
    assert (weird_root / "worktrees" / "v1" / "variant.txt").read_text() == "v1\n"
    # A hostile branch name never reaches a host: the config refuses it.
    bad = write_config(tmp_path / "bad.yaml", repo, {"h1": ssh_host("h1", weird_root)},
                       [f"x;touch {marker}"])
    refused = run_cli(bad, "launch", "--branches", f"x;touch {marker}", "--host", "h1")
    assert refused.exit_code == 1 and "not allowed" in refused.output
    assert not marker.exists()


def test_gpu_slots_over_ssh(tmp_path, sshd_servers, monkeypatch):  # noqa: F811
    """More workers than GPUs: each running worker holds one GPU, the rest wait in the host's
    queue and take a GPU as soon as one is freed."""
    (a,) = sshd_servers(1)
    _repo, _roots, config = _setup(tmp_path, monkeypatch, [a], ["v1", "v2", "v3"], secs=60,
                                 host_extra={"h1": {"gpus": [0, 1]}})
    assert run_cli(config, "launch", "--branches", "v1", "v2", "v3", "--host",
                   "h1").exit_code == 0
    doc = wait_states(config, {"v1": "running", "v2": "running", "v3": "pending"})
    v3 = next(w for w in doc["workers"] if w["name"] == "v3")
    assert v3["reason"] == "queued on h1, 0 ahead" and v3["queue_position"] == 0
    gpus = {w["name"]: Path(w["out"], "gpu").read_text() for w in doc["workers"]
            if w["name"] != "v3"}
    assert sorted(gpus.values()) == ["0", "1"]
    held = next(n for n, g in gpus.items() if g == "1")
    assert run_cli(config, "stop", held).exit_code == 0
    wait_states(config, {held: "stopped"})
    doc = wait_for(lambda: (d := status_json(config)) and
                   Path(next(w for w in d["workers"] if w["name"] == "v3")["out"], "gpu").exists()
                   and d)
    v3 = next(w for w in doc["workers"] if w["name"] == "v3")
    assert Path(v3["out"], "gpu").read_text() == "1" and v3["gpus"] == ["1"]
    assert run_cli(config, "stop", "--all").exit_code == 0


def test_nonroot_remote_user(tmp_path, sshd_server_nonroot, monkeypatch):  # noqa: F811
    srv = sshd_server_nonroot
    ssh_config = write_ssh_config(tmp_path / "ssh_config", {"h1": srv})
    monkeypatch.setenv("WT_RUN_SSH_CONFIG", str(ssh_config))
    repo = make_repo(tmp_path / "repo", ["v1"])
    home = Path(os.path.expanduser(f"~{NONROOT_USER}"))
    name = f"wt-run-test-{os.getpid()}-{tmp_path.name}"
    config = write_config(tmp_path / "wt-run.yaml", repo, {"h1": ssh_host("h1", f"~/{name}")},
                          ["v1"])
    try:
        result = run_cli(config, "launch", "--branches", "v1", "--host", "h1")
        assert result.exit_code == 0, result.output
        doc = wait_states(config, {"v1": "succeeded"})
        w = doc["workers"][0]
        root = home / name
        assert w["worktree"] == f"{root}/worktrees/v1"
        assert Path(w["out"], "variant").read_text() == "v1\n"
        st = root.stat()
        assert st.st_uid == os.stat(home).st_uid != 0
        assert (st.st_mode & 0o777) == 0o700
        assert (Path(w["out"]).parent.joinpath("cmd.sh").stat().st_mode & 0o777) == 0o600
        logs = run_cli(config, "logs", "v1")
        assert "finished v1" in logs.output
    finally:
        subprocess.run(["rm", "-rf", "--", str(home / name)], check=False)


def test_proxyjump_alias(tmp_path, sshd_servers, monkeypatch):  # noqa: F811
    jump, target = sshd_servers(2)
    extra = (f"Host behind\n    HostName 127.0.0.1\n    Port {target.port}\n"
             f"    User {target.user}\n    IdentityFile {target.client_key}\n"
             f"    IdentitiesOnly yes\n    ProxyJump h1\n"
             f"    UserKnownHostsFile {target.known_hosts}\n")
    repo, _roots, config = _setup(tmp_path, monkeypatch, [jump], ["v1"], ssh_extra=extra)
    config = write_config(tmp_path / "wt-run.yaml", repo,
                          {"behind": ssh_host("behind", tmp_path / "root-behind")}, ["v1"])
    result = run_cli(config, "launch", "--branches", "v1", "--host", "behind")
    assert result.exit_code == 0, result.output
    # The jump host carried the connection: one login on each (none on the jump host if
    # ProxyJump were ignored).
    assert jump.wait_connection_count(1) == 1 and target.wait_connection_count(1) == 1
    wait_states(config, {"v1": "succeeded"})


def test_launch_cut_after_sending_is_not_resent(tmp_path, sshd_servers, monkeypatch):  # noqa: F811
    (a,) = sshd_servers(1)
    _repo, _roots, config = _setup(tmp_path, monkeypatch, [a], ["v1"], secs=2)
    # The connection dies right after the launch script ran (held on a FIFO, then sshd is
    # killed): the workers started once, the command reports it, and nothing is re-sent.
    fifo = tmp_path / "hold"
    os.mkfifo(fifo)
    plain = wt_ssh.REMOTE_COMMAND
    real_run = wt_ssh.SSHHost.run_script

    def run_script(self, script, *, timeout=None):
        if "wt_prepare()" in script:
            monkeypatch.setattr(wt_ssh, "REMOTE_COMMAND", f"{plain}; cat {fifo} >/dev/null")
        try:
            return real_run(self, script, timeout=timeout)
        finally:
            monkeypatch.setattr(wt_ssh, "REMOTE_COMMAND", plain)

    monkeypatch.setattr(wt_ssh.SSHHost, "run_script", run_script)
    box: dict[str, object] = {}
    thread = threading.Thread(target=lambda: box.setdefault(
        "result", run_cli(config, "launch", "--branches", "v1", "--host", "h1")))
    thread.start()
    writer = wait_for(lambda: _open_fifo_writer(fifo), timeout=60)
    a.kill()
    thread.join(timeout=60)
    os.close(writer)
    result = box["result"]
    assert result.exit_code == 1
    assert "may have started" in result.output and "nothing was retried" in result.output
    a.start()
    doc = wait_states(config, {"v1": "succeeded"})
    worker_dir = Path(doc["workers"][0]["out"]).parent
    assert not (worker_dir / "attempts").exists()
    assert (worker_dir / "log").read_text().count("finished v1") == 1


def test_truncated_script_is_not_run(tmp_path, sshd_servers, monkeypatch):  # noqa: F811
    (a,) = sshd_servers(1)
    monkeypatch.setenv("WT_RUN_SSH_CONFIG",
                       str(write_ssh_config(tmp_path / "ssh_config", {"h1": a})))
    from worktree_runner.config import HostConfig

    host = wt_ssh.SSHHost(HostConfig(name="h1", type="ssh", address="h1", root=str(tmp_path)))
    try:
        marker = tmp_path / "ran"
        assert host.run_script(f"touch {marker}").exit_code == 0 and marker.exists()
        marker.unlink()
        # What a cut connection delivers: the script without its end marker.
        chan = host._open_channel()
        chan.exec_command(wt_ssh.REMOTE_COMMAND)
        chan.sendall(f"touch {marker}\n".encode())
        chan.shutdown_write()
        assert chan.recv_exit_status() == 97
        assert not marker.exists()
    finally:
        host.really_close()
