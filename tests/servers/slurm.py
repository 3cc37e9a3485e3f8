"""A real single-node Slurm cluster (munged + slurmctld + slurmd) for integration tests.

All state, spool, logs, pid files, the munge key and socket live under one directory; the
daemons run in the foreground as children of the test process and listen on free ports.
Client commands (sbatch, squeue, scontrol, scancel, sinfo) find the cluster through
``SLURM_CONF`` in :attr:`SlurmCluster.env`; the munge socket path is in slurm.conf
(``AuthInfo=socket=...``), so clients need no other setting.

Usage::

    with SlurmCluster(tmp_path / "slurm") as cluster:
        job = cluster.sbatch("--wrap", "echo hi", cwd=tmp_path)
        cluster.wait_job_state(job, {"COMPLETED"})

Written against Slurm 22.05 (Debian 12) and munge 0.5.15.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import socket
import subprocess
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType

from . import _proc

START_TIMEOUT = 60.0
COMMAND_TIMEOUT = 30.0
# Variables a surrounding Slurm job (or a user's shell) may set that would change how the
# client commands behave (e.g. SLURM_JOB_ID makes sbatch think it runs inside an allocation).
_CLIENT_ENV_PREFIXES = ("SLURM_", "SBATCH_", "SQUEUE_", "SINFO_", "SCONTROL_", "SRUN_", "SALLOC_")
# sun_path in sockaddr_un is 108 bytes: a longer munge socket path cannot be bound.
_MAX_SOCKET_PATH = 100
_LIVE: list[SlurmCluster] = []


TERMINAL_STATES = frozenset(
    {
        "COMPLETED",
        "FAILED",
        "CANCELLED",
        "TIMEOUT",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "BOOT_FAIL",
        "DEADLINE",
        "PREEMPTED",
    }
)
DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "scontrol", "scancel", "sinfo", "munge", "mungekey")


class SlurmError(RuntimeError):
    pass


def _bin(name: str) -> str:
    path = _proc.which(name)
    if path is None:
        raise SlurmError(f"{name} is not installed (packages slurm-wlm, munge)")
    return path


def short_hostname() -> str:
    return socket.gethostname().split(".")[0]


def _node_hardware(hostname: str) -> dict[str, str]:
    """This host's node line as ``slurmd -C`` prints it, e.g. CPUs=2 ... RealMemory=24105."""
    out = subprocess.run(
        [_bin("slurmd"), "-C"], check=True, capture_output=True, text=True, timeout=COMMAND_TIMEOUT
    ).stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("NodeName="))
    fields = dict(item.split("=", 1) for item in line.split())
    fields["NodeName"] = hostname
    return fields


class SlurmCluster:
    """One-node Slurm cluster; node = this host with its real CPUs, partition ``debug``."""

    def __init__(
        self, directory: Path | str, partition: str = "debug", min_job_age: int = 5
    ) -> None:
        self.dir = Path(directory).resolve()
        self.partition = partition
        self.min_job_age = min_job_age
        self.hostname = short_hostname()
        self.conf_path = self.dir / "etc" / "slurm.conf"
        self.log_dir = self.dir / "log"
        self.run_dir = self.dir / "run"
        self.munge_key = self.dir / "munge" / "munge.key"
        self.munge_socket = self._munge_socket_path()
        self.munge_log = self.log_dir / "munged.log"
        self.slurmctld_log = self.log_dir / "slurmctld.log"
        self.slurmd_log = self.log_dir / "slurmd.log"
        self.ctld_port = _proc.free_port()
        self.slurmd_port = _proc.free_port()
        self.node_cpus = 0
        self.node_line: dict[str, str] = {}
        self._procs: dict[str, subprocess.Popen[bytes]] = {}

    def _munge_socket_path(self) -> Path:
        path = self.dir / "munge" / "munge.socket"
        if len(str(path)) <= _MAX_SOCKET_PATH:
            return path
        return Path(tempfile.mkdtemp(prefix="wt-munge-")) / "munge.socket"

    # ------------------------------------------------------------------------------ env/CLI
    @property
    def env_vars(self) -> dict[str, str]:
        """Just the variables that select this cluster."""
        return {"SLURM_CONF": str(self.conf_path)}

    @property
    def env(self) -> dict[str, str]:
        """A full environment for subprocesses: os.environ minus Slurm variables + SLURM_CONF."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(_CLIENT_ENV_PREFIXES)}
        env.update(self.env_vars)
        return env

    def run(
        self,
        *argv: str,
        check: bool = True,
        cwd: Path | str | None = None,
        timeout: float = COMMAND_TIMEOUT,
    ) -> subprocess.CompletedProcess[str]:
        """Run a Slurm client command against this cluster; raises with stderr on failure."""
        res = subprocess.run(
            list(argv),
            env=self.env,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        if check and res.returncode != 0:
            raise SlurmError(f"{' '.join(argv)} exited {res.returncode}:\n{res.stderr}{res.stdout}")
        return res

    def sbatch(self, *args: str, cwd: Path | str | None = None) -> str:
        """Submit with ``sbatch --parsable ARGS`` and return the job id."""
        out = self.run("sbatch", "--parsable", *args, cwd=cwd).stdout.strip()
        return out.split(";")[0]

    def job_info(self, job_id: str) -> dict[str, str] | None:
        """``scontrol show job -o`` as a dict, or None once Slurm has purged the job."""
        res = self.run("scontrol", "show", "job", "-o", job_id, check=False)
        if res.returncode != 0:
            if "Invalid job id" in res.stderr:
                return None
            raise SlurmError(f"scontrol show job {job_id} failed:\n{res.stderr}")
        # One line of Key=Value tokens.  Free-text values (Comment, a Command or path with
        # spaces) would be cut at the space; JobState/Reason/ExitCode are single words.
        return dict(tok.split("=", 1) for tok in res.stdout.split() if "=" in tok)

    def job_state(self, job_id: str) -> str | None:
        info = self.job_info(job_id)
        return None if info is None else info.get("JobState")

    def wait_job_state(
        self, job_id: str, states: Iterable[str], timeout: float = 60.0
    ) -> dict[str, str]:
        """Poll until the job's JobState is one of ``states``; return its scontrol record."""
        wanted = set(states)
        last: dict[str, object] = {"info": None, "error": None}

        def reached() -> bool:
            try:
                info = self.job_info(job_id)
            except (SlurmError, subprocess.TimeoutExpired) as exc:
                # A loaded machine can make one scontrol call time out: keep polling.
                last["error"] = exc
                return False
            last["info"] = info
            state = None if info is None else info.get("JobState")
            if state in TERMINAL_STATES and state not in wanted:
                raise SlurmError(f"job {job_id} ended {state}, wanted {sorted(wanted)}: {info}")
            return state in wanted

        if _proc.wait_until(reached, timeout, interval=0.25):
            return last["info"]  # type: ignore[return-value]
        raise SlurmError(
            f"job {job_id} not in {sorted(wanted)} after {timeout}s: {last['info']}"
            f" (last error: {last['error']})\n{self.log_tails()}"
        )

    # ---------------------------------------------------------------------------- config
    def _prepare(self) -> None:
        for sub in ("etc", "log", "run", "state", "spool", "munge", "tmp"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        self.munge_socket.parent.mkdir(parents=True, exist_ok=True)
        if not self.munge_key.exists():
            subprocess.run(
                [_bin("mungekey"), "--create", "--keyfile", str(self.munge_key)],
                check=True,
                capture_output=True,
                timeout=COMMAND_TIMEOUT,
            )
        self.munge_key.chmod(0o600)
        self.node_line = _node_hardware(self.hostname)
        self.node_cpus = int(self.node_line["CPUs"])
        self.conf_path.write_text(self._conf_text())
        # With proctrack/linuxproc + task/none, Slurm 22.05's slurmd does not load any cgroup
        # plugin, so no cgroup.conf is needed (22.05 has no CgroupPlugin=disabled anyway).

    def _conf_text(self) -> str:
        node = " ".join(
            f"{k}={v}" for k, v in self.node_line.items() if k not in ("NodeName", "UpTime")
        )
        d = self.dir
        lines = [
            "ClusterName=wtrun",
            # Explicit address: the short hostname need not resolve to a reachable address.
            f"SlurmctldHost={self.hostname}(127.0.0.1)",
            f"SlurmctldPort={self.ctld_port}",
            f"SlurmdPort={self.slurmd_port}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            # 22.05: the munge socket is the "socket=" item of AuthInfo (also used by cred/munge).
            # cred_expire also sets how long a requeued job waits before it may start again
            # (default 120 s); starting it earlier by hand gets it killed ("credential
            # revoked"), so tests use a short lifetime and let Slurm restart it.
            f"AuthInfo=socket={self.munge_socket},cred_expire=10",
            f"StateSaveLocation={d / 'state'}",
            f"SlurmdSpoolDir={d / 'spool'}",
            f"TmpFS={d / 'tmp'}",
            f"SlurmctldPidFile={self.run_dir / 'slurmctld.pid'}",
            f"SlurmdPidFile={self.run_dir / 'slurmd.pid'}",
            f"SlurmctldLogFile={self.slurmctld_log}",
            f"SlurmdLogFile={self.slurmd_log}",
            "SlurmctldDebug=info",
            "SlurmdDebug=info",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/none",
            "SelectType=select/cons_tres",
            # Cores (not whole nodes) are the unit: two 1-cpu jobs share the node.
            "SelectTypeParameters=CR_Core",
            "SchedulerType=sched/backfill",
            # Main loop every 2 s, backfill every 1 s: pending jobs start soon after resources
            # free up (jobs are also scheduled immediately at submit time when they fit).
            "SchedulerParameters=sched_interval=2,bf_interval=1,sched_min_interval=0",
            f"MinJobAge={self.min_job_age}",
            "KillWait=2",
            "ReturnToService=2",
            "MpiDefault=none",
            "SwitchType=switch/none",
            "InactiveLimit=0",
            "MessageTimeout=10",
            "SlurmdTimeout=300",
            "SlurmctldTimeout=30",
            f"NodeName={self.hostname} NodeAddr=127.0.0.1 {node} State=UNKNOWN",
            f"PartitionName={self.partition} Nodes={self.hostname} Default=YES "
            "MaxTime=INFINITE State=UP",
            "",
        ]
        return "\n".join(lines)

    # ---------------------------------------------------------------------------- lifecycle
    def _spawn(self, name: str, argv: list[str], log: Path) -> None:
        with log.open("ab") as out:
            self._procs[name] = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=self.env,
            )

    def _check_alive(self, name: str) -> None:
        proc = self._procs.get(name)
        if proc is None or proc.poll() is not None:
            code = None if proc is None else proc.returncode
            raise SlurmError(f"{name} exited early (code {code})\n{self.log_tails()}")

    def _start_munged(self) -> None:
        # --force: munged refuses to run as root, and warns about the socket dir permissions.
        argv = [
            _bin("munged"),
            "--foreground",
            "--force",
            f"--key-file={self.munge_key}",
            f"--socket={self.munge_socket}",
            f"--pid-file={self.run_dir / 'munged.pid'}",
            f"--log-file={self.munge_log}",
            f"--seed-file={self.dir / 'munge' / 'munged.seed'}",
        ]
        self._spawn("munged", argv, self.munge_log)

        def munge_works() -> bool:
            self._check_alive("munged")
            res = subprocess.run(
                [_bin("munge"), "-n", "-S", str(self.munge_socket)],
                capture_output=True,
                timeout=COMMAND_TIMEOUT,
            )
            return res.returncode == 0

        if not _proc.wait_until(lambda: self.munge_socket.exists() and munge_works(), 20.0):
            raise SlurmError(f"munged did not come up\n{self.log_tails()}")

    def _start_slurmctld(self) -> None:
        argv = [_bin("slurmctld"), "-D", "-f", str(self.conf_path)]
        self._spawn("slurmctld", argv, self.log_dir / "slurmctld.stdout")

        def ping() -> bool:
            self._check_alive("slurmctld")
            return self.run("scontrol", "ping", check=False).returncode == 0

        if not _proc.wait_until(ping, START_TIMEOUT, interval=0.25):
            raise SlurmError(f"slurmctld did not answer ping\n{self.log_tails()}")

    def _start_slurmd(self) -> None:
        argv = [_bin("slurmd"), "-D", "-f", str(self.conf_path), "-N", self.hostname]
        self._spawn("slurmd", argv, self.log_dir / "slurmd.stdout")

    def start(self) -> SlurmCluster:
        if self._procs:
            return self
        missing = [b for b in (*DAEMONS, *CLIENTS) if _proc.which(b) is None]
        if missing:
            raise SlurmError(f"missing binaries: {missing} (packages slurm-wlm, munge)")
        self._prepare()
        _LIVE.append(self)
        try:
            self._start_munged()
            self._start_slurmctld()
            self._start_slurmd()
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def node_state(self) -> str:
        res = self.run("sinfo", "-h", "-N", "-n", self.hostname, "-o", "%T", check=False)
        return res.stdout.strip() if res.returncode == 0 else ""

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Wait until the node is idle (or mixed/allocated, if jobs already run)."""

        def ready() -> bool:
            for name in self._procs:
                self._check_alive(name)
            return self.node_state().rstrip("*") in ("idle", "mixed", "allocated")

        if not _proc.wait_until(ready, timeout, interval=0.25):
            raise SlurmError(
                f"node {self.hostname} not ready (state {self.node_state()!r}) after "
                f"{timeout}s\n{self.log_tails()}"
            )

    def cancel_all(self, timeout: float = 20.0) -> None:
        """scancel every job in the partition and wait until none is running."""
        if "slurmctld" not in self._procs or self._procs["slurmctld"].poll() is not None:
            return
        self.run("scancel", "--partition", self.partition, check=False)

        def idle() -> bool:
            res = self.run("squeue", "-h", "-t", "RUNNING,COMPLETING", "-o", "%i", check=False)
            return res.returncode != 0 or not res.stdout.strip()

        _proc.wait_until(idle, timeout, interval=0.25)

    def stop(self) -> None:
        """Cancel jobs, stop slurmd, slurmctld and munged; keep every file for inspection."""
        with contextlib.suppress(Exception):
            self.cancel_all()
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self._procs.pop(name, None)
            if proc is not None:
                _proc.stop_process(proc, grace=10.0)
        self._procs.clear()
        if self in _LIVE:
            _LIVE.remove(self)

    def __enter__(self) -> SlurmCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ---------------------------------------------------------------------------- inspection
    def log_tails(self, lines: int = 30) -> str:
        """Tails of the daemons' logs, for error messages.

        The *.stdout files hold what a daemon printed before it opened its log file (config
        errors end up only there); later they repeat the log, so only a short tail is shown.
        """
        paths: Mapping[str, tuple[Path, int]] = {
            "munged": (self.munge_log, lines),
            "slurmctld": (self.slurmctld_log, lines),
            "slurmctld stdout": (self.log_dir / "slurmctld.stdout", 8),
            "slurmd": (self.slurmd_log, lines),
            "slurmd stdout": (self.log_dir / "slurmd.stdout", 8),
        }
        return "\n".join(
            f"--- {name} ({path}) ---\n{_proc.log_tail(path, n)}"
            for name, (path, n) in paths.items()
            if path.exists()
        )

    def __repr__(self) -> str:
        return (
            f"SlurmCluster({self.hostname}, ctld:{self.ctld_port}, slurmd:{self.slurmd_port}, "
            f"cpus={self.node_cpus}, dir={self.dir})"
        )


def have_slurm() -> bool:
    return all(_proc.which(b) for b in (*DAEMONS, *CLIENTS))


@atexit.register
def _stop_all() -> None:
    for cluster in list(_LIVE):
        with contextlib.suppress(Exception):
            cluster.stop()
