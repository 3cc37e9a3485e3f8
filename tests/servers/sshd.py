"""A real OpenSSH server on 127.0.0.1 for integration tests.

Everything (host key, client key, authorized_keys, known_hosts, sshd_config, pid file and log)
lives in one directory.  The server runs as ``/usr/sbin/sshd -D -e -f CONFIG -E LOG`` in the
foreground (child of the test process), so stopping it never depends on a pid file.

Usage::

    with SSHServer(tmp_path / "sshd") as srv:
        subprocess.run([*srv.ssh_argv(), "echo hi"], check=True)
"""

from __future__ import annotations

import atexit
import contextlib
import getpass
import os
import pwd
import re
import shlex
import subprocess
import weakref
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from . import _proc

SSHD = "/usr/sbin/sshd"
HOST = "127.0.0.1"
START_TIMEOUT = 20.0
# Accepted logins as logged at LogLevel VERBOSE/INFO, e.g.
# "Accepted publickey for root from 127.0.0.1 port 40112 ssh2: ED25519 SHA256:...".
_ACCEPTED_RE = re.compile(r"^.*Accepted \S+ for \S+ from ", re.MULTILINE)
_LIVE: weakref.WeakSet[SSHServer] = weakref.WeakSet()


class SSHServerError(RuntimeError):
    pass


def _run(argv: list[str]) -> None:
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _keygen(path: Path, comment: str) -> None:
    if not path.exists():
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)])


def ensure_user(name: str, pubkey: str | None = None) -> pwd.struct_passwd:
    """Create a throwaway non-root user ``name`` with a home dir (idempotent, needs root).

    If ``pubkey`` (an OpenSSH public key line) is given it is appended, once, to the user's
    ``~/.ssh/authorized_keys``.
    """
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        if os.geteuid() != 0:
            raise SSHServerError(f"user {name!r} does not exist and we are not root") from None
        _run(["useradd", "--create-home", "--shell", "/bin/bash", name])
        entry = pwd.getpwnam(name)
    if os.geteuid() == 0:
        # useradd leaves the password field "!" (locked); with UsePAM no, sshd refuses locked
        # accounts even for key logins.  "*" = no password, but not locked.
        _run(["usermod", "-p", "*", name])
    if pubkey is not None:
        _authorize(entry, pubkey.strip())
    return entry


def _authorize(entry: pwd.struct_passwd, pubkey: str) -> None:
    ssh_dir = Path(entry.pw_dir) / ".ssh"
    auth = ssh_dir / "authorized_keys"
    ssh_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    existing = auth.read_text().splitlines() if auth.exists() else []
    if pubkey not in existing:
        with auth.open("a") as fh:
            fh.write(pubkey + "\n")
    if os.geteuid() == 0:
        for path in (ssh_dir, auth):
            os.chown(path, entry.pw_uid, entry.pw_gid)
    auth.chmod(0o600)


class SSHServer:
    """sshd on 127.0.0.1:``port`` (free port by default), keys and config under ``directory``.

    ``user`` is the login user used by :meth:`ssh_argv` / :meth:`ssh_config_entry` (default: the
    current user).  A different user is created with :func:`ensure_user` on :meth:`start`.
    ``extra_config`` lines are appended to sshd_config (e.g. ``SetEnv SLURM_CONF=...``, which
    gives every session the environment a real login node has from its /etc).
    """

    def __init__(self, directory: Path | str, user: str | None = None, port: int | None = None,
                 extra_config: Sequence[str] = ()):
        self.dir = Path(directory).resolve()
        self.host = HOST
        self.port = port or _proc.free_port()
        self.user = user or getpass.getuser()
        self.host_key = self.dir / "ssh_host_ed25519_key"
        self.client_key = self.dir / "client_ed25519"
        self.authorized_keys = self.dir / "authorized_keys"
        self.known_hosts = self.dir / "known_hosts"
        self.config = self.dir / "sshd_config"
        self.pid_file = self.dir / "sshd.pid"
        self.log = self.dir / "sshd.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._started_once = False
        self.extra_config = tuple(extra_config)

    # ----------------------------------------------------------------- keys and config files
    @property
    def host_key_pub(self) -> str:
        """The host public key line, e.g. ``ssh-ed25519 AAAA... comment``."""
        return self.host_key.with_suffix(".pub").read_text().strip()

    @property
    def client_key_pub(self) -> str:
        return self.client_key.with_suffix(".pub").read_text().strip()

    def _prepare(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        # Privilege separation directory, normally created by the init system.
        Path("/run/sshd").mkdir(mode=0o755, parents=True, exist_ok=True)
        _keygen(self.host_key, "wt-run-test-host")
        _keygen(self.client_key, "wt-run-test-client")
        self.authorized_keys.write_text(self.client_key_pub + "\n")
        key_type, key_b64 = self.host_key_pub.split()[:2]
        self.known_hosts.write_text(f"[{self.host}]:{self.port} {key_type} {key_b64}\n")
        self.config.write_text(self._config_text())
        if self.user != getpass.getuser():
            self.authorize_user(self.user)

    def _config_text(self) -> str:
        return "\n".join(
            [
                f"Port {self.port}",
                f"ListenAddress {self.host}",
                f"HostKey {self.host_key}",
                f"PidFile {self.pid_file}",
                # Root reads our file; other users cannot traverse pytest's 0700 tmp dirs, so
                # they fall back to their own ~/.ssh/authorized_keys (see ensure_user).
                f"AuthorizedKeysFile {self.authorized_keys} .ssh/authorized_keys",
                "StrictModes no",
                "UsePAM no",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "PubkeyAuthentication yes",
                "PermitRootLogin prohibit-password",
                "LogLevel VERBOSE",
                "UseDNS no",
                "PrintMotd no",
                "X11Forwarding no",
                # Tests open many connections at once (parallel workers, multiplexing).
                "MaxStartups 200",
                "MaxSessions 200",
                "Subsystem sftp internal-sftp",
                *self.extra_config,
                "",
            ]
        )

    def authorize_user(self, name: str) -> pwd.struct_passwd:
        """Create user ``name`` if needed and let the client key log in as it."""
        return ensure_user(name, self.client_key_pub)

    # ----------------------------------------------------------------------------- lifecycle
    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.running and self._proc else None

    def start(self) -> SSHServer:
        """Start sshd (keys are generated only once) and wait until it listens.

        If the very first start loses the race for its free port, it retries on a new port
        (nobody can have been given this port yet); later starts keep the port.
        """
        if self.running:
            return self
        if not Path(SSHD).exists():
            raise SSHServerError(f"{SSHD} is not installed")
        for attempt in range(3):
            try:
                return self._start_once()
            except SSHServerError:
                if self._started_once or attempt == 2 or "Bind to port" not in self.log_text():
                    raise
                self.port = _proc.free_port()
        raise AssertionError("unreachable")

    def _start_once(self) -> SSHServer:
        self._prepare()
        log_offset = self.log.stat().st_size if self.log.exists() else 0
        argv = [SSHD, "-D", "-e", "-f", str(self.config), "-E", str(self.log)]
        # Own session: a Ctrl-C in the terminal must not reach sshd before our cleanup does.
        self._proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        _LIVE.add(self)
        self._wait_listening(log_offset)
        self._started_once = True
        return self

    def _listening_since(self, offset: int) -> bool:
        if not self.log.exists():
            return False
        with self.log.open("rb") as fh:
            fh.seek(offset)
            text = fh.read().decode(errors="replace")
        return f"Server listening on {self.host} port {self.port}" in text

    def _wait_listening(self, log_offset: int) -> None:
        # The "Server listening" log line is written right after listen(); waiting for it
        # (instead of probing the port) keeps probe connections out of connection_count().
        ready = _proc.wait_until(
            lambda: not self.running or self._listening_since(log_offset), START_TIMEOUT
        )
        if ready and self.running:
            return
        code = self._proc.poll() if self._proc else None
        self.kill()
        raise SSHServerError(
            f"sshd on port {self.port} did not start (exit code {code}); log tail:\n"
            + _proc.log_tail(self.log)
        )

    def stop(self) -> None:
        """Stop sshd and every per-connection child (SIGTERM, then SIGKILL)."""
        _proc.stop_process(self._proc)
        self._proc = None

    def kill(self) -> None:
        """SIGKILL the listener and all its descendants: simulates the host going down.

        In-flight sessions (and the commands they run) die; processes that detached themselves
        (setsid + double fork, reparented to init) are not descendants any more and survive.
        """
        if self._proc is not None:
            victims = _proc.kill_tree(self._proc.pid)
            _proc.reap(self._proc)
            _proc.wait_gone(victims, 10.0)
        self._proc = None

    def restart(self) -> SSHServer:
        """Stop (if running) and start again: same port, same host key, same client key."""
        self.stop()
        return self.start()

    def __enter__(self) -> SSHServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --------------------------------------------------------------------------- client side
    def ssh_options(self) -> list[str]:
        """OpenSSH client options (without ``ssh`` and the destination)."""
        return [
            "-F",
            "/dev/null",  # ignore the invoking user's ~/.ssh/config
            "-p",
            str(self.port),
            "-i",
            str(self.client_key),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            f"UserKnownHostsFile={self.known_hosts}",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=10",
        ]

    def ssh_argv(self, user: str | None = None) -> list[str]:
        """``ssh ... user@127.0.0.1``: append the remote command."""
        return ["ssh", *self.ssh_options(), f"{user or self.user}@{self.host}"]

    def ssh_command(self, user: str | None = None) -> str:
        """:meth:`ssh_argv` as a shell string (e.g. for ``rsync -e`` or ``GIT_SSH_COMMAND``)."""
        return shlex.join(self.ssh_argv(user)[:-1])

    def ssh_config_entry(self, alias: str, user: str | None = None) -> str:
        """A ``Host alias`` block for an ``~/.ssh/config``-style file."""
        return "\n".join(
            [
                f"Host {alias}",
                f"    HostName {self.host}",
                f"    Port {self.port}",
                f"    User {user or self.user}",
                f"    IdentityFile {self.client_key}",
                "    IdentitiesOnly yes",
                f"    UserKnownHostsFile {self.known_hosts}",
                "    StrictHostKeyChecking yes",
                "    BatchMode yes",
                "",
            ]
        )

    # ---------------------------------------------------------------------------- inspection
    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def connection_count(self) -> int:
        """Accepted (authenticated) logins in the log, over all restarts of this server.

        One SSH connection = one count, however many sessions (channels) it multiplexes.
        """
        return len(_ACCEPTED_RE.findall(self.log_text()))

    def wait_connection_count(self, at_least: int, timeout: float = 10.0) -> int:
        """sshd logs "Accepted" asynchronously: poll until the count reaches ``at_least``."""
        _proc.wait_until(lambda: self.connection_count() >= at_least, timeout)
        return self.connection_count()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"SSHServer({self.user}@{self.host}:{self.port}, {state}, dir={self.dir})"


def have_openssh() -> bool:
    return all(_proc.which(b) for b in (SSHD, "ssh", "ssh-keygen"))


@atexit.register
def _stop_all() -> None:
    # Last resort if a fixture finaliser never ran (e.g. pytest was interrupted).
    for server in list(_LIVE):
        with contextlib.suppress(Exception):
            server.kill()
