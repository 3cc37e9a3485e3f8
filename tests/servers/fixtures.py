"""pytest fixtures for the real test servers.

Make them available to a test module or conftest with::

    from tests.servers.fixtures import sshd_server, sshd_servers, slurm_cluster  # noqa: F401

(or ``pytest_plugins = ["tests.servers.fixtures"]`` in the rootdir conftest).

Availability rule (:func:`require_binaries`): a missing binary skips the test, except when
``CI=true``, where it fails: integration tests never silently skip in CI.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from . import _proc
from .slurm import CLIENTS, DAEMONS, SlurmCluster
from .sshd import SSHD, SSHServer

SSH_BINARIES = (SSHD, "ssh", "ssh-keygen")
SLURM_BINARIES = (*DAEMONS, *CLIENTS)
# Throwaway non-root login for tests that must not run remote commands as root.
NONROOT_USER = "wtrun-test"


def in_ci() -> bool:
    return os.environ.get("CI") == "true"


def require_binaries(*names: str) -> None:
    """Skip the calling test if a binary is missing; fail instead when ``CI=true``."""
    missing = [name for name in names if _proc.which(name) is None]
    if not missing:
        return
    msg = f"integration test needs missing binaries: {', '.join(missing)}"
    if in_ci():
        pytest.fail(msg + " (CI=true: integration tests must not be skipped)", pytrace=False)
    pytest.skip(msg)


def require_root() -> None:
    """Creating the non-root test user needs root; same skip/fail rule as binaries."""
    if os.geteuid() == 0:
        return
    msg = "creating a throwaway non-root user needs root"
    if in_ci():
        pytest.fail(msg + " (CI=true)", pytrace=False)
    pytest.skip(msg)


@pytest.fixture
def sshd_server(tmp_path: Path) -> Iterator[SSHServer]:
    """A started sshd on a free 127.0.0.1 port; login user = current user (root in CI)."""
    require_binaries(*SSH_BINARIES)
    server = SSHServer(tmp_path / "sshd")
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture
def sshd_server_nonroot(tmp_path: Path) -> Iterator[SSHServer]:
    """Like ``sshd_server`` but ``user`` is a throwaway non-root user (created if needed)."""
    require_binaries(*SSH_BINARIES, "useradd", "usermod")
    require_root()
    server = SSHServer(tmp_path / "sshd-nonroot", user=NONROOT_USER)
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture
def sshd_servers(tmp_path: Path) -> Iterator[Callable[..., list[SSHServer]]]:
    """Factory: ``sshd_servers(n, user=None, extra_config=())`` starts ``n`` more servers
    (stopped at teardown); ``extra_config`` lines are appended to each sshd_config.

    Each server has its own directory, port, host key and client key.
    """
    require_binaries(*SSH_BINARIES)
    servers: list[SSHServer] = []

    def make(n: int = 1, user: str | None = None,
             extra_config: Sequence[str] = ()) -> list[SSHServer]:
        batch: list[SSHServer] = []
        for _ in range(n):
            server = SSHServer(tmp_path / f"sshd{len(servers)}", user=user,
                               extra_config=extra_config)
            servers.append(server)
            batch.append(server.start())
        return batch

    try:
        yield make
    finally:
        for server in servers:
            server.stop()


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    """One Slurm cluster for the whole session (starts in about a second).

    Shared state: tests must not assume job ids or an empty queue; cancel your own jobs (or
    call ``cluster.cancel_all()``) so later tests find free CPUs.
    """
    require_binaries(*SLURM_BINARIES)
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    try:
        yield cluster.start()
    finally:
        cluster.stop()
