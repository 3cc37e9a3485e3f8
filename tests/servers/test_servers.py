"""The test servers themselves: real sshd logins and a real Slurm cluster running jobs."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from . import fixtures
from ._proc import wait_until
from .slurm import SlurmCluster
from .sshd import SSHServer

# Fixtures are found by name in the module namespace (assignments, unlike imports, do not make
# ruff report the test arguments as F811 redefinitions).
sshd_server = fixtures.sshd_server
sshd_server_nonroot = fixtures.sshd_server_nonroot
sshd_servers = fixtures.sshd_servers
slurm_cluster = fixtures.slurm_cluster

SSH_TIMEOUT = 30


def ssh(
    server: SSHServer, command: str, user: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*server.ssh_argv(user), command],
        capture_output=True,
        text=True,
        timeout=SSH_TIMEOUT,
        stdin=subprocess.DEVNULL,
    )


# ------------------------------------------------------------------------------------- sshd
@pytest.mark.ssh
def test_key_login_runs_command(sshd_server: SSHServer) -> None:
    res = ssh(sshd_server, "echo hello-from-sshd")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "hello-from-sshd"
    assert sshd_server.wait_connection_count(1) == 1


@pytest.mark.ssh
def test_connection_count_counts_logins(sshd_server: SSHServer) -> None:
    for _ in range(3):
        assert ssh(sshd_server, "true").returncode == 0
    assert sshd_server.wait_connection_count(3) == 3


@pytest.mark.ssh
def test_ssh_config_entry(sshd_server: SSHServer, tmp_path: Path) -> None:
    config = tmp_path / "ssh_config"
    config.write_text(sshd_server.ssh_config_entry("testhost"))
    res = subprocess.run(
        ["ssh", "-F", str(config), "testhost", "echo via-alias"],
        capture_output=True,
        text=True,
        timeout=SSH_TIMEOUT,
        stdin=subprocess.DEVNULL,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "via-alias"


@pytest.mark.ssh
def test_known_hosts_is_enforced(
    sshd_server: SSHServer, sshd_servers: Callable[..., list[SSHServer]]
) -> None:
    # A different server's host key under this server's known_hosts entry must be refused.
    (other,) = sshd_servers(1)
    argv = [*other.ssh_argv()[:-1]]
    argv[argv.index(f"UserKnownHostsFile={other.known_hosts}")] = (
        f"UserKnownHostsFile={sshd_server.known_hosts}"
    )
    res = subprocess.run(
        [*argv, f"{other.user}@{other.host}", "true"],
        capture_output=True,
        text=True,
        timeout=SSH_TIMEOUT,
        stdin=subprocess.DEVNULL,
    )
    assert res.returncode == 255
    assert "Host key verification failed" in res.stderr


@pytest.mark.ssh
def test_kill_drops_sessions_and_refuses_connections(sshd_server: SSHServer) -> None:
    in_flight = subprocess.Popen(
        [*sshd_server.ssh_argv(), "echo started; sleep 60"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert in_flight.stdout is not None
        assert in_flight.stdout.readline().strip() == "started"
        sshd_server.kill()
        # The session dies with the "host"; the client notices well before sleep 60 ends.
        assert in_flight.wait(timeout=SSH_TIMEOUT) != 0
    finally:
        in_flight.kill()
        in_flight.wait()
    assert not sshd_server.running
    res = ssh(sshd_server, "true")
    assert res.returncode == 255
    assert "Connection refused" in res.stderr


@pytest.mark.ssh
def test_restart_keeps_port_and_host_key(sshd_server: SSHServer) -> None:
    port, host_key = sshd_server.port, sshd_server.host_key_pub
    sshd_server.kill()
    sshd_server.restart()
    assert (sshd_server.port, sshd_server.host_key_pub) == (port, host_key)
    res = ssh(sshd_server, "echo back")  # StrictHostKeyChecking=yes with the old known_hosts
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "back"
    sshd_server.restart()  # restart of a running server works too
    assert ssh(sshd_server, "true").returncode == 0


@pytest.mark.ssh
def test_stop_then_start(sshd_server: SSHServer) -> None:
    sshd_server.stop()
    assert ssh(sshd_server, "true").returncode == 255
    sshd_server.start()
    assert ssh(sshd_server, "true").returncode == 0


@pytest.mark.ssh
def test_nonroot_login(sshd_server_nonroot: SSHServer) -> None:
    res = ssh(sshd_server_nonroot, "id -un; echo $HOME")
    assert res.returncode == 0, res.stderr
    user, home = res.stdout.split()
    assert user == sshd_server_nonroot.user != "root"
    assert Path(home).is_dir()


@pytest.mark.ssh
def test_several_servers_are_independent(sshd_servers: Callable[..., list[SSHServer]]) -> None:
    a, b = sshd_servers(2)
    assert a.port != b.port and a.host_key_pub != b.host_key_pub
    b.kill()
    assert ssh(a, "true").returncode == 0
    assert ssh(b, "true").returncode == 255


# ------------------------------------------------------------------------------------ slurm
@pytest.fixture
def cluster(slurm_cluster: SlurmCluster) -> Iterator[SlurmCluster]:
    """The session cluster, with every job cancelled after the test."""
    yield slurm_cluster
    slurm_cluster.cancel_all()


@pytest.mark.slurm
def test_sbatch_runs_to_completion(cluster: SlurmCluster, tmp_path: Path) -> None:
    job = cluster.sbatch("--wrap", "echo hi", cwd=tmp_path)
    info = cluster.wait_job_state(job, {"COMPLETED", "FAILED", "CANCELLED"})
    assert info["JobState"] == "COMPLETED", info
    assert info["ExitCode"] == "0:0"
    # Default output file is slurm-<id>.out in the submit directory (cwd of sbatch).
    assert (tmp_path / f"slurm-{job}.out").read_text() == "hi\n"
    assert "JobState=COMPLETED" in cluster.run("scontrol", "show", "job", job).stdout


@pytest.mark.slurm
def test_failed_job_reports_exit_code(cluster: SlurmCluster, tmp_path: Path) -> None:
    job = cluster.sbatch("--wrap", "exit 3", cwd=tmp_path)
    info = cluster.wait_job_state(job, {"COMPLETED", "FAILED"})
    assert (info["JobState"], info["ExitCode"]) == ("FAILED", "3:0")


@pytest.mark.slurm
def test_two_one_cpu_jobs_run_concurrently(cluster: SlurmCluster, tmp_path: Path) -> None:
    if cluster.node_cpus < 2:
        pytest.skip("node has fewer than 2 CPUs")
    jobs = [cluster.sbatch("-c", "1", "--wrap", "sleep 120", cwd=tmp_path) for _ in range(2)]
    for job in jobs:
        cluster.wait_job_state(job, {"RUNNING"})
    assert [cluster.job_state(job) for job in jobs] == ["RUNNING", "RUNNING"]


@pytest.mark.slurm
def test_begin_time_job_stays_pending(cluster: SlurmCluster, tmp_path: Path) -> None:
    job = cluster.sbatch("--begin=now+1hour", "--wrap", "true", cwd=tmp_path)
    info = cluster.wait_job_state(job, {"PENDING"})
    assert info["Reason"] == "BeginTime"


@pytest.mark.slurm
def test_too_many_cpus_stays_pending(cluster: SlurmCluster, tmp_path: Path) -> None:
    # Slurm 22.05 accepts the job and keeps it PENDING with Reason=PartitionConfig; other
    # versions/configs reject it at submit time, which is equally fine for wt-run's purposes.
    res = cluster.run(
        "sbatch",
        "--parsable",
        f"--cpus-per-task={cluster.node_cpus + 1}",
        "--wrap",
        "true",
        cwd=tmp_path,
        check=False,
    )
    if res.returncode != 0:
        assert "Requested node configuration is not available" in res.stderr
        return
    job = res.stdout.strip().split(";")[0]
    info = cluster.wait_job_state(job, {"PENDING"})
    assert info["Reason"] not in ("None", "")


@pytest.mark.slurm
def test_finished_jobs_are_purged_after_min_job_age(cluster: SlurmCluster, tmp_path: Path) -> None:
    job = cluster.sbatch("--wrap", "true", cwd=tmp_path)
    cluster.wait_job_state(job, {"COMPLETED"})
    # MinJobAge=5 s; the purge runs periodically, so allow generous slack.
    assert wait_until(lambda: cluster.job_info(job) is None, timeout=90, interval=0.5)
    assert cluster.job_state(job) is None
