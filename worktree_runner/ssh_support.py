"""SSH support for `ssh.SSHHost`: its error types, host-key checking and the small helpers
around Paramiko (known_hosts files, endpoints, failure descriptions, quiet closing)."""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import ConfigError, HostUnreachable

if TYPE_CHECKING:
    from fabric import Connection
    from paramiko import PKey, SFTPClient

SSH_CONFIG_ENV = "WT_RUN_SSH_CONFIG"
log = logging.getLogger("wt_run.ssh")


class CommandInterrupted(HostUnreachable):
    """The connection failed after a script was sent: it may have run, partly or wholly.
    Callers must not simply send it again (a launch would start workers twice)."""

    maybe_ran = True


class SSHAuthFailed(HostUnreachable):
    """The server refused our credentials. Not retried: retrying cannot fix a wrong key."""


class HostKeyRejected(HostUnreachable):
    """The server's host key is unknown or differs from known_hosts."""


class UnknownHostKey(Exception):
    def __init__(self, hostname: str, key: PKey) -> None:
        super().__init__(hostname)
        self.hostname = hostname
        self.key = key


def fingerprint(key: PKey) -> str:
    """OpenSSH-style `SHA256:...` fingerprint of a public key."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


@dataclass(frozen=True)
class Endpoint:
    """Where a connection goes once the ssh config is applied (for messages and fixes)."""

    host: str
    port: int
    user: str
    keys: tuple[str, ...]
    known_hosts: tuple[str, ...]

    @property
    def label(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"

    @property
    def known_hosts_name(self) -> str:
        return f"[{self.host}]:{self.port}" if self.port != 22 else self.host


def ssh_config_path() -> str | None:
    """The explicit ssh config file from WT_RUN_SSH_CONFIG, if set."""
    path = os.environ.get(SSH_CONFIG_ENV)
    if not path:
        return None
    expanded = os.path.expanduser(path)
    if not os.path.isfile(expanded):
        raise ConfigError(f"{SSH_CONFIG_ENV}={path}: no such file",
                          f"point {SSH_CONFIG_ENV} at an ssh config file, or unset it")
    return expanded


def reject_unknown_policy() -> Any:
    from paramiko import MissingHostKeyPolicy

    class RejectUnknown(MissingHostKeyPolicy):
        """Like paramiko's RejectPolicy, but keeps the key so the error can show it."""

        def missing_host_key(self, client: Any, hostname: str, key: PKey) -> None:
            raise UnknownHostKey(hostname, key)

    return RejectUnknown()


def known_hosts_files(ssh_config: Any) -> list[str]:
    files = str(ssh_config.get("userknownhostsfile", "")).split()
    if not files:
        files = ["~/.ssh/known_hosts", "~/.ssh/known_hosts2"]
    files += str(ssh_config.get("globalknownhostsfile", "/etc/ssh/ssh_known_hosts")).split()
    return [os.path.expanduser(f) for f in files]


def split_known_name(name: str, ep: Endpoint) -> tuple[str, int]:
    if name.startswith("[") and "]:" in name:
        host, _, port = name[1:].partition("]:")
        return host, int(port)
    return name, ep.port if name == ep.host else 22


def retryable(failure: HostUnreachable) -> bool:
    return not isinstance(failure, (SSHAuthFailed, HostKeyRejected))


def describe(exc: BaseException) -> str:
    from paramiko.ssh_exception import NoValidConnectionsError

    if isinstance(exc, NoValidConnectionsError):
        return "connection refused"
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "timed out"
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def quiet(fn: Callable[[], object]) -> None:
    try:
        fn()
    except Exception:  # best effort while tearing down
        log.debug("ignored error while closing", exc_info=True)


def quiet_close(conn: Connection) -> None:
    quiet(conn.close)
    gateway = conn.gateway
    while gateway is not None and not isinstance(gateway, str):
        quiet(gateway.close)
        gateway = getattr(gateway, "gateway", None)


def sftp_makedirs(sftp: SFTPClient, directory: str) -> None:
    missing: list[str] = []
    path = directory
    while path and path != "/":
        try:
            sftp.stat(path)
            break
        except OSError:
            missing.append(path)
            path = path.rsplit("/", 1)[0]
    for p in reversed(missing):
        sftp.mkdir(p, mode=0o700)


# ---------------------------------------------------------------------- per-process pool
