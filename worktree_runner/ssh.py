"""SSH hosts: `SSHHost` runs wt-run's shell scripts on a remote machine over one Fabric
(Paramiko) connection, moves files over SFTP, and keeps one connection per host per process.

- The address may be `user@host[:port]` or an ssh config alias (`WT_RUN_SSH_CONFIG` names the
  file). Host keys are checked against known_hosts, ProxyJump hops included (ssh_support.py).
- Connect, banner and auth use `connect_timeout`; every command has a deadline. Only the
  connection is retried (capped backoff, jitter), never a script that may have started.
- The remote command line is a constant; the script (and any secret) travels on stdin.
  Fabric's `env=` is never used (it does not quote).
"""

from __future__ import annotations

import atexit
import codecs
import logging
import os
import random
import select
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from .errors import ConfigError, HostUnreachable
from .hosts import CommandResult, Host
from .ssh_support import (
    SSH_CONFIG_ENV,
    CommandInterrupted,
    Endpoint,
    HostKeyRejected,
    SSHAuthFailed,
    UnknownHostKey,
    describe,
    fingerprint,
    known_hosts_files,
    quiet,
    quiet_close,
    reject_unknown_policy,
    retryable,
    sftp_makedirs,
    split_known_name,
    ssh_config_path,
)

if TYPE_CHECKING:
    from fabric import Connection
    from paramiko import Channel, SFTPClient

    from .config import HostConfig

log = logging.getLogger("wt_run.ssh")

# The script is read whole before it runs, so nothing it starts can swallow the rest of it
# from stdin, and it runs only if its end marker arrived: a connection cut mid-upload must
# not run a truncated script (a cut `rm -rf -- /a/b/c` could read `rm -rf -- /a`). The
# command line itself never changes and so never carries user data.
SCRIPT_END = "#wt-run:end-of-script"
REMOTE_COMMAND = (
    "sh -c 's=$(cat); case $s in *" + SCRIPT_END + ") eval \"$s\" ;; "
    "*) echo \"wt-run: script arrived incomplete; not run\" >&2; exit 97 ;; esac'"
)
CONNECT_ATTEMPTS = 3
BACKOFF_BASE_S = 0.25
BACKOFF_CAP_S = 4.0
KEEPALIVE_S = 15


class SSHHost(Host):
    """A remote machine reached over SSH. `root` is resolved on the host (`~` expanded) the
    first time it is needed, then kept. `name` is the config entry the host stands for (a
    Slurm host reached through this login node); connection settings stay `hc.name`'s."""

    def __init__(self, hc: HostConfig, *, pooled: bool = False, name: str | None = None
                 ) -> None:
        self.name = name or hc.name
        self.hc = hc
        self._pooled = pooled
        self._ssh_config = ssh_config_path()
        self._conn: Connection | None = None
        self._endpoint: Endpoint | None = None
        self._sftp: SFTPClient | None = None
        self._root: str | None = None
        self._lock = threading.RLock()
        self._warned = False

    # ------------------------------------------------------------------ root

    @property
    def root(self) -> str:  # type: ignore[override]
        if self._root is None:
            raw = self.hc.root
            if raw.startswith("~") and raw != "~" and not raw.startswith("~/"):
                raise ConfigError(f"hosts.{self.name}.root: '{raw}' uses ~user",
                                  "write an absolute path or one starting with ~/")
            if raw.startswith("/"):
                self._root = raw.rstrip("/") or "/"
            else:
                # Relative roots are relative to the login directory, as with scp.
                rest = (raw[1:] if raw.startswith("~") else raw).strip("/")
                home = self._home()
                self._root = f"{home.rstrip('/')}/{rest}" if rest else home
        return self._root

    def _home(self) -> str:
        result = self.run_script('printf "%s\\n" "$HOME"\n').check()
        home = result.stdout.strip()
        if not home.startswith("/"):
            raise HostUnreachable(self.name, f"cannot tell the home directory (got {home!r})",
                                  f"set an absolute root: for hosts.{self.name}")
        return home

    # ------------------------------------------------------------------ connecting

    def _build_connection(self) -> Connection:
        from fabric import Config, Connection

        config = Config(runtime_ssh_path=self._ssh_config) if self._ssh_config else Config()
        kwargs: dict[str, Any] = {}
        if self.hc.key:
            key = os.path.expanduser(self.hc.key)
            if not os.path.isfile(key):
                raise SSHAuthFailed(self.name, f"key file {key} does not exist",
                                    f"fix key: under hosts.{self.hc.name}")
            kwargs["key_filename"] = [key]
        conn = Connection(self.hc.address, config=config, connect_kwargs=kwargs)
        self._harden(conn)
        return conn

    def _harden(self, conn: Connection) -> None:
        """Host-key policy, known_hosts and timeouts for a connection and its jump hosts."""
        from fabric import Connection
        from paramiko import AutoAddPolicy

        timeout = float(self.hc.connect_timeout) or None
        ckw = conn.connect_kwargs
        # Fabric turns connect_timeout into an int (0.5 s would mean "none"): pass ours to
        # paramiko directly, and the same bound for the banner, auth and channel opens.
        conn.connect_timeout = None
        ckw["timeout"] = timeout
        ckw["banner_timeout"] = timeout
        ckw["auth_timeout"] = timeout
        ckw["channel_timeout"] = timeout
        if ckw.get("key_filename") and (self.hc.key or conn.ssh_config.get(
                "identitiesonly", "no").lower() == "yes"):
            # With an explicit key, try only that key: a clear error beats the agent's guesses.
            ckw.setdefault("allow_agent", False)
            ckw.setdefault("look_for_keys", False)
        known = known_hosts_files(conn.ssh_config)
        client = conn.client
        if self.hc.strict_host_key:
            for path in known:
                if os.path.isfile(path):
                    client.get_host_keys().load(path)
            client.set_missing_host_key_policy(reject_unknown_policy())
        else:
            client.set_missing_host_key_policy(AutoAddPolicy())
        if isinstance(conn.gateway, Connection):
            self._harden(conn.gateway)

    def _endpoint_of(self, conn: Connection) -> Endpoint:
        keys = tuple(conn.connect_kwargs.get("key_filename") or ())
        return Endpoint(conn.host, int(conn.port), conn.user, keys,
                         tuple(known_hosts_files(conn.ssh_config)))

    def _connect(self) -> Connection:
        """The live connection, (re)connecting with retries when there is none."""
        with self._lock:
            conn = self._conn
            if conn is not None and conn.transport is not None and conn.transport.is_active():
                return conn
            self._drop()
            conn = self._connect_with_retries()
            self._conn = conn
            return conn

    def _connect_with_retries(self) -> Connection:
        start = time.monotonic()
        attempt = 0
        while True:
            conn = self._build_connection()
            self._endpoint = ep = self._endpoint_of(conn)
            try:
                conn.open()
            except Exception as exc:  # classified below
                quiet_close(conn)
                failure = self._classify(exc, ep)
                attempt += 1
                if (not retryable(failure) or attempt >= CONNECT_ATTEMPTS
                        or time.monotonic() - start >= max(self.hc.connect_timeout, 1.0)):
                    raise failure from None
                delay = random.uniform(0, min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** attempt))
                log.debug("host %s: %s; retrying in %.2f s", self.name, failure.reason, delay)
                time.sleep(delay)
                continue
            if not self.hc.strict_host_key and not self._warned:
                self._warned = True
                log.warning("host %s: host key of %s not verified (strict_host_key: false)",
                            self.name, ep.known_hosts_name)
            assert conn.transport is not None
            conn.transport.set_keepalive(KEEPALIVE_S)
            return conn

    def _classify(self, exc: BaseException, ep: Endpoint) -> HostUnreachable:
        from paramiko import AuthenticationException, BadHostKeyException

        if isinstance(exc, HostUnreachable):
            return exc
        if isinstance(exc, UnknownHostKey):
            target = ep.known_hosts[0] if ep.known_hosts else "~/.ssh/known_hosts"
            host, port = split_known_name(exc.hostname, ep)
            return HostKeyRejected(
                self.name,
                f"host key of {exc.hostname} is not in known_hosts "
                f"({exc.key.get_name()} {fingerprint(exc.key)})",
                f"if that fingerprint is the host's, trust it: "
                f"ssh-keyscan -p {port} {host} >> {target} "
                f"(or set strict_host_key: false for hosts.{self.hc.name})")
        if isinstance(exc, BadHostKeyException):
            target = ep.known_hosts[0] if ep.known_hosts else "~/.ssh/known_hosts"
            host, port = split_known_name(exc.hostname, ep)
            return HostKeyRejected(
                self.name,
                f"host key of {exc.hostname} CHANGED: known_hosts has "
                f"{fingerprint(exc.expected_key)}, the server offers {exc.key.get_name()} "
                f"{fingerprint(exc.key)} (a reinstalled host, or someone in between)",
                f"only if the host was really reinstalled: ssh-keygen -R '{exc.hostname}' "
                f"-f {target} && ssh-keyscan -p {port} {host} >> {target}")
        if isinstance(exc, AuthenticationException):
            keys = ", ".join(ep.keys) or "the ssh agent / default keys"
            return SSHAuthFailed(
                self.name, f"authentication failed for user {ep.user} at {ep.host}:{ep.port} "
                f"with {keys}",
                f"check key: under hosts.{self.hc.name} (or IdentityFile in the ssh config) "
                "and "
                f"that its public key is in ~{ep.user}/.ssh/authorized_keys on the host")
        return HostUnreachable(self.name, f"cannot connect to {ep.label}: {describe(exc)}",
                               "check that the host is up and sshd runs, then retry")

    def _drop(self) -> None:
        conn, sftp = self._conn, self._sftp
        self._conn = self._sftp = None
        if sftp is not None:
            quiet(sftp.close)
        if conn is not None:
            quiet_close(conn)

    def _open_channel(self) -> Channel:
        """A session channel. A cached transport that died since its last use fails here,
        before anything was sent, so reconnecting once is safe."""
        for attempt in (1, 2):
            conn = self._connect()
            try:
                assert conn.transport is not None
                return conn.transport.open_session(timeout=self.hc.connect_timeout or None)
            except Exception as exc:  # transport errors of many kinds
                with self._lock:
                    if self._conn is conn:
                        self._drop()
                if attempt == 2:
                    raise HostUnreachable(self.name, f"cannot open a session: {describe(exc)}",
                                          "check that the host is up, then retry") from None
        raise AssertionError("unreachable")

    # ------------------------------------------------------------------ running scripts

    def run_script(self, script: str, *, timeout: float | None = None) -> CommandResult:
        limit = self.hc.command_timeout if timeout is None else timeout
        out: list[str] = []
        err: list[str] = []
        code = self._exec(script, limit, out.append, err.append)
        return CommandResult(self.name, script, code, "".join(out), "".join(err))

    def stream_script(self, script: str, out: TextIO) -> int:
        def emit(text: str) -> None:
            out.write(text)
            out.flush()

        try:
            return self._exec(script, None, emit, lambda text: None)
        except KeyboardInterrupt:
            return 130

    def _exec(self, script: str, timeout: float | None, on_out: Callable[[str], None],
              on_err: Callable[[str], None]) -> int:
        chan = self._open_channel()
        deadline = time.monotonic() + timeout if timeout else None
        decode_out = codecs.getincrementaldecoder("utf-8")("replace")
        decode_err = codecs.getincrementaldecoder("utf-8")("replace")
        try:
            chan.settimeout(timeout or None)
            chan.exec_command(REMOTE_COMMAND)
            chan.sendall(f"{script}\n{SCRIPT_END}\n".encode())
            chan.shutdown_write()
        except Exception as exc:
            quiet(chan.close)
            # Before the end marker the host runs nothing, so this failure is safe to retry.
            raise HostUnreachable(self.name, f"connection lost: {describe(exc)}",
                                  "check the host, then retry") from None
        try:
            while True:
                got = False
                while chan.recv_ready():
                    on_out(decode_out.decode(chan.recv(65536)))
                    got = True
                while chan.recv_stderr_ready():
                    on_err(decode_err.decode(chan.recv_stderr(65536)))
                    got = True
                if got:
                    continue
                if chan.closed or (chan.eof_received and chan.exit_status_ready()):
                    if not chan.recv_ready() and not chan.recv_stderr_ready():
                        break
                    continue
                wait = 1.0
                if deadline is not None:
                    wait = deadline - time.monotonic()
                    if wait <= 0:
                        raise CommandInterrupted(
                            self.name, f"command did not finish within {timeout:g} s",
                            "check the host's load; raise command_timeout for "
                            f"hosts.{self.hc.name}")
                if chan.eof_received:  # only the exit status is to come: select would spin
                    chan.status_event.wait(min(wait, 1.0))
                else:
                    select.select([chan], [], [], min(wait, 1.0))
            on_out(decode_out.decode(b"", final=True))
            on_err(decode_err.decode(b"", final=True))
            # -1: the session ended without an exit status (the connection died, or sshd
            # killed the session); the command may or may not have run to its end.
            code = chan.recv_exit_status() if chan.exit_status_ready() else -1
            if code < 0:
                raise CommandInterrupted(self.name, "connection lost while a command ran",
                                      "check the host; `wt-run status` shows what happened")
            return code
        except TimeoutError:
            raise CommandInterrupted(self.name, f"command did not finish within {timeout:g} s",
                                     f"raise command_timeout for hosts.{self.hc.name}") from None
        except (OSError, EOFError) as exc:
            raise CommandInterrupted(self.name, f"connection lost: {describe(exc)}",
                                     "check the host, then retry") from None
        except Exception as exc:
            from paramiko import SSHException

            if isinstance(exc, SSHException):
                raise CommandInterrupted(self.name, f"connection lost: {describe(exc)}",
                                         "check the host, then retry") from None
            raise
        finally:
            quiet(chan.close)

    # ------------------------------------------------------------------ files

    def _sftp_client(self) -> SFTPClient:
        with self._lock:
            conn = self._connect()
            if self._sftp is None:
                try:
                    self._sftp = conn.client.open_sftp()
                except Exception as exc:
                    raise HostUnreachable(self.name, f"cannot start SFTP: {describe(exc)}",
                                          "make sure the host's sshd offers the sftp "
                                          "subsystem") from None
            return self._sftp

    def put(self, local: Path, remote: str) -> None:
        """Upload a file, creating missing parent directories; files and new directories are
        private to the user (0600/0700)."""
        sftp = self._sftp_client()
        try:
            sftp_makedirs(sftp, remote.rsplit("/", 1)[0])
            with sftp.open(remote, "wb") as fh:
                sftp.chmod(remote, 0o600)  # before any byte is written
                fh.set_pipelined(True)
                with open(local, "rb") as src:
                    while chunk := src.read(1 << 20):
                        fh.write(chunk)
        except OSError as exc:
            raise HostUnreachable(self.name, f"upload to {remote} failed: {describe(exc)}",
                                  "check the host's disk and permissions under root:") from None

    def get(self, remote: str, local: Path) -> None:
        sftp = self._sftp_client()
        local.parent.mkdir(parents=True, exist_ok=True)
        try:
            sftp.get(remote, str(local))
        except OSError as exc:
            raise HostUnreachable(self.name, f"download of {remote} failed: {describe(exc)}",
                                  "check that the file exists on the host") from None

    def sftp(self) -> SFTPClient:
        """The host's SFTP session (shared, kept open with the connection)."""
        return self._sftp_client()

    def ssh_argv(self) -> list[str]:
        """The OpenSSH client command that reaches this host as Fabric does (same ssh config,
        port, user, key, known_hosts, strictness, timeout), ending with the destination: for
        sftp and other OpenSSH tools (all but the last item are the options)."""
        conn = self._build_connection()  # resolves the ssh config; does not connect
        argv = ["ssh"]
        if self._ssh_config:
            argv += ["-F", self._ssh_config]
        argv += ["-p", str(conn.port), "-l", conn.user]
        if self.hc.key:
            argv += ["-i", os.path.expanduser(self.hc.key), "-o", "IdentitiesOnly=yes"]
        # The same host-key policy as the Paramiko connection (`_harden`): strict checks the
        # same known_hosts files and refuses an unknown key; relaxed reads none and accepts
        # any key. Neither ever writes known_hosts.
        if self.hc.strict_host_key:
            known = [f for f in known_hosts_files(conn.ssh_config) if os.path.isfile(f)]
            argv += ["-o", "UserKnownHostsFile=" + (" ".join(known) or "/dev/null"),
                     "-o", "StrictHostKeyChecking=yes"]
        else:
            argv += ["-o", "UserKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=no"]
        argv += ["-o", "GlobalKnownHostsFile=/dev/null", "-o", "UpdateHostKeys=no"]
        timeout = max(1, round(float(self.hc.connect_timeout or 10)))
        argv += ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={timeout}"]
        # The alias as written (not the resolved HostName), so OpenSSH applies the same
        # ssh config entry itself, ProxyJump included.
        return [*argv, conn.original_host]

    def close(self) -> None:
        if self._pooled:
            return  # the per-process pool closes it at exit
        self.really_close()

    def really_close(self) -> None:
        with self._lock:
            self._drop()


# ---------------------------------------------------------------------- helpers


_POOL: dict[tuple[Any, ...], SSHHost] = {}
_POOL_LOCK = threading.Lock()


def shared_ssh_host(hc: HostConfig, name: str | None = None) -> SSHHost:
    """The process-wide SSHHost for a host entry: every step of one command (status probe,
    code sync, launch) shares its single connection. `close()` on it is a no-op. `name`: see
    `SSHHost`."""
    key = (name or hc.name, hc.name, hc.address, hc.key, hc.root, hc.strict_host_key,
           hc.connect_timeout, hc.command_timeout, os.environ.get(SSH_CONFIG_ENV, ""))
    with _POOL_LOCK:
        host = _POOL.get(key)
        if host is None:
            host = _POOL[key] = SSHHost(hc, pooled=True, name=name)
        return host


@atexit.register
def close_all() -> None:
    """Close every pooled connection (at exit; tests call it to start from zero)."""
    with _POOL_LOCK:
        hosts = list(_POOL.values())
        _POOL.clear()
    for host in hosts:
        host.really_close()
