"""Slurm hosts: workers submitted with sbatch, watched with squeue plus the wrapper's files,
stopped with scancel. Queueing, placement and GPUs are Slurm's job, not ours.

Everything goes through the login node (`via:`, an SSH host or `local`) as one script per
command, so `launch`, `status` and `stop` are one round trip each whatever the worker count.
Worktrees, worker directories and logs live under `root:` on the cluster's shared
filesystem, laid out as for SSH hosts; the compute node runs the same wrapper
(`workers.WRAPPER`) with the same files, so exit codes, logs and the worker contract are
identical to the other hosts.

A batch job runs `python3 wrapper.py WORKER_DIR` as a child and stays its parent, because Slurm
signals only the batch shell (`--signal=B:USR1@N`): on USR1 it passes the signal to the
user's command, and with `requeue: true` it requeues the job once the command has exited
non-zero after that signal, so a training that checkpoints on USR1 and resumes continues
past the time limit.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from .backend import RemoteBackend, Started, worker_env, worker_meta
from .config import Config, HostConfig
from .errors import HostUnreachable
from .hosts import Host
from .observe import (
    StatusOutputError,
    derive_state,
    parse_status,
    read_probe_output,
    status_script,
)
from .runs import HostLayout, WorkerRecord
from .slurm_jobs import plan_submissions, submit_script
from .states import NEVER_STARTED, HostHealth, Observation, WorkerState
from .workers import LaunchSpec

q = shlex.quote

# Slurm job states (squeue %T) -> ours, for jobs Slurm still knows. Active states win over
# an exit file (a requeued job may have one from its previous run); for the others the
# wrapper's exit file decides and the state below is the fallback when it left none.
_PENDING_STATES = frozenset({"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED",
                             "RESV_DEL_HOLD", "CONFIGURING", "POWER_UP_NODE"})
_RUNNING_STATES = frozenset({"RUNNING", "SUSPENDED", "STOPPED", "SIGNALING", "RESIZING",
                             "STAGE_OUT", "COMPLETING"})
_ENDED_STATES: Mapping[str, tuple[WorkerState, str | None]] = {
    "COMPLETED": (WorkerState.SUCCEEDED, None),
    "FAILED": (WorkerState.FAILED, "Slurm: the job failed and the wrapper left no exit file"),
    "SPECIAL_EXIT": (WorkerState.FAILED, "Slurm: special exit"),
    "TIMEOUT": (WorkerState.KILLED, "Slurm: time limit reached"),
    "DEADLINE": (WorkerState.KILLED, "Slurm: deadline reached"),
    "OUT_OF_MEMORY": (WorkerState.KILLED, "Slurm: out of memory"),
    "PREEMPTED": (WorkerState.KILLED, "Slurm: preempted"),
    "CANCELLED": (WorkerState.KILLED, "Slurm: cancelled outside wt-run (scancel)"),
    "NODE_FAIL": (WorkerState.LOST, "Slurm: node failure"),
    "BOOT_FAIL": (WorkerState.LOST, "Slurm: node boot failure"),
    "REVOKED": (WorkerState.LOST, "Slurm: revoked (federation)"),
}
# Why an exit file alone cannot say what Slurm did: kept next to our state as a reason.
_REASONS = {"TIMEOUT": "time limit reached", "OUT_OF_MEMORY": "out of memory",
            "PREEMPTED": "preempted", "NODE_FAIL": "node failure", "DEADLINE": "deadline"}


@dataclass(frozen=True)
class SlurmObservation(Observation):
    """An observation plus Slurm's own word for the job (`status --json` scheduler_state)."""

    scheduler_state: str | None = None


def submit_slurm(config: Config, hc: HostConfig, host: Host, run: str,
                 records: Sequence[WorkerRecord]) -> tuple[list[WorkerRecord], list[str]]:
    """Submit every record in one round trip to the login node. Returns the submitted records
    (job_id set) and one error line per worker that could not be submitted."""
    if not records:
        return [], []
    tag = f"{int(time.time() * 1000):x}"
    layout = HostLayout.remote(host.root, config.data)
    subs = plan_submissions(config, hc, records, tag, layout, run)
    specs: dict[str, LaunchSpec] = {}
    for sub in subs:
        envs = sub.task_env or ({},) * len(sub.records)
        for r, extra in zip(sub.records, envs):
            owner = sub.owner or r
            specs[r.name] = LaunchSpec(r.name, r.worker_dir, r.worktree, r.command,
                                       {**worker_env(config, owner, run, layout.data), **extra},
                                       worker_meta(config, owner, run, False, layout.data))
    result = host.run_script(submit_script(layout.root, subs, specs),
                             timeout=hc.command_timeout).check()
    now = time.time()
    submitted: list[WorkerRecord] = []
    errors: list[str] = []
    seen: set[int] = set()
    for line in result.stdout.splitlines():
        kind, _, rest = line.partition(" ")
        index, _, value = rest.partition(" ")
        if kind not in ("submitted", "error") or not index.isdigit():
            continue
        sub = subs[int(index)]
        seen.add(int(index))
        if kind == "error":
            errors += [f"{r.name}: {value.strip()}"
                       for r in ((sub.owner,) if sub.owner else sub.records)]
            continue
        if sub.owner is not None:
            continue  # shard tasks: their owner's job (submitted next) is the record
        job = value.strip()
        for i, rec in enumerate(sub.records):
            job_id = f"{job}_{i}" if sub.links else job
            submitted.append(replace(rec, launched_at=now, job_id=job_id, state=None,
                                     exit_code=None, signal=None, pid=None, started_at=None,
                                     ended_at=None, scheduler_state=None, reason=None))
    for i, sub in enumerate(subs):
        if i not in seen and not (sub.after_previous and errors):
            errors += [f"{r.name}: not submitted ({result.stderr.strip()[-200:]})"
                       for r in sub.records]
    return submitted, errors


# ---------------------------------------------------------------- status

def _squeue_script(job_ids: Sequence[str]) -> str:
    # Several ids: squeue filters and skips ids it no longer knows. A single id it does not
    # know makes it fail with "Invalid job id": that means "forgotten", not "unreachable".
    ids = ",".join(job_ids)
    return (f"if out=$(squeue -h -r --states=all -j {q(ids)} -o '%i|%T|%r' 2>&1); then\n"
            "  printf '%s\\n' \"$out\" | sed 's/^/job /'\n"
            "else\n"
            "  case $out in *'Invalid job id'*) ;; *) echo \"slurmerr\" $out ;; esac\n"
            "fi\n")


def observe_script(root: str, records: Sequence[WorkerRecord]) -> str:
    """squeue for all the run's jobs, then the workers' files, in one script."""
    ids = [r.job_id for r in records if r.job_id]
    head = _squeue_script(ids) if ids else ""
    return head + status_script(root, [r.worker_dir for r in records])


def _split_output(output: str) -> tuple[dict[str, tuple[str, str | None]], str | None, str]:
    """Slurm's lines (job id -> state, reason), its error if unreachable, and the rest."""
    jobs: dict[str, tuple[str, str | None]] = {}
    error = None
    rest: list[str] = []
    for line in output.splitlines():
        if line.startswith("job "):
            fields = line[4:].split("|", 2)
            if len(fields) == 3:
                reason = fields[2].strip()
                jobs[fields[0]] = (fields[1], None if reason in ("", "None") else reason)
        elif line.startswith("slurmerr"):
            error = line[9:].strip() or "squeue failed"
        else:
            rest.append(line)
    return jobs, error, "\n".join(rest) + "\n"


def combine(files: Mapping[str, Any], job: tuple[str, str | None] | None,
            slurm_error: str | None, job_id: str | None, now: float | None,
            file_obs: Observation) -> SlurmObservation:
    """A worker's state from Slurm's view of its job and the wrapper's files.

    `file_obs` is the wrapper-file state machine's verdict; only its exit-file part is used,
    since pid liveness on the login node says nothing about a compute node."""
    base = dict(pid=file_obs.pid, started_at=file_obs.started_at, progress=file_obs.progress,
                host_time=now)
    word = job[0] if job else None
    if word in _PENDING_STATES:
        return SlurmObservation(WorkerState.PENDING, reason=job[1] if job else None,
                                scheduler_state=word, **base)  # type: ignore[arg-type]
    has_exit = "exit" in files
    if word in _RUNNING_STATES and not (has_exit and word == "COMPLETING"):
        reason = None if word == "RUNNING" else f"Slurm: {word.lower()}"
        return SlurmObservation(WorkerState.RUNNING, reason=reason, scheduler_state=word,
                                **base)  # type: ignore[arg-type]
    if has_exit:
        obs = derive_state(files, "", now)
        reason = _REASONS.get(word or "")
        return SlurmObservation(obs.state, obs.pid, obs.exit_code, obs.signal, obs.started_at,
                                obs.ended_at, obs.progress, now, reason or obs.reason,
                                scheduler_state=word)
    stopped = "stop" in files
    if word is not None:
        state, reason = _ENDED_STATES.get(word, (WorkerState.LOST, f"Slurm: {word}"))
        if stopped and state != WorkerState.SUCCEEDED:
            state, reason = WorkerState.STOPPED, None
        code = 0 if state == WorkerState.SUCCEEDED else None
        return SlurmObservation(state, exit_code=code, reason=reason, scheduler_state=word,
                                **base)  # type: ignore[arg-type]
    if "nodir" in files and not job_id:
        # Worker dirs are made before sbatch: this one was never submitted.
        return SlurmObservation(WorkerState.LOST, reason=NEVER_STARTED, **base)  # type: ignore[arg-type]
    if slurm_error is not None or not job_id:
        why = slurm_error or "no Slurm job id recorded"
        return SlurmObservation(WorkerState.UNKNOWN, reason=f"Slurm: {why}", **base)  # type: ignore[arg-type]
    if stopped:
        return SlurmObservation(WorkerState.STOPPED, **base)  # type: ignore[arg-type]
    return SlurmObservation(WorkerState.LOST, reason=f"Slurm no longer knows job {job_id} and "
                            "the wrapper left no exit file (killed before it could write one)",
                            **base)  # type: ignore[arg-type]


def observe_slurm(hc: HostConfig, host: Host, records: Sequence[WorkerRecord],
                  timeout: float | None = None) -> tuple[HostHealth, list[Observation]]:
    """One round trip: squeue for every job plus every worker's files."""
    if not records:
        return HostHealth(hc.name, True), []
    result = host.run_script(observe_script(host.root, records),
                             timeout=timeout or hc.command_timeout)
    if not result.ok:
        raise HostUnreachable(hc.name, f"status script exited {result.exit_code}: "
                              f"{result.stderr.strip()[-200:]}", "check the login node")
    jobs, error, rest = _split_output(result.stdout)
    try:
        health, file_obs = parse_status(rest, hc.name, len(records))
    except StatusOutputError as exc:
        raise HostUnreachable(hc.name, str(exc), "check that python3 runs on the login node"
                              ) from None
    if error:
        health = replace(health, reason=f"Slurm: {error}")
    blocks = read_probe_output(rest, len(records))[1]
    out: list[Observation] = []
    for rec, files, fobs in zip(records, blocks, file_obs):
        job = jobs.get(rec.job_id) if rec.job_id else None
        out.append(combine(files, job, error, rec.job_id, fobs.host_time, fobs))
    return health, out


# ---------------------------------------------------------------- stop and logs

_CANCEL_FN = r"""
wt_mark() {
  if [ -f "$1/exit" ]; then echo "done $2"; return 0; fi
  : > "$1/stop"
  J="$J${J:+,}$3"
  if [ -f "$1/tasks/job" ]; then read -r a < "$1/tasks/job" && J="$J${a:+,}$a"; fi
}
"""


_CANCEL_WAIT = r"""
[ -n "$J" ] || exit 0
squeue -h -r --states=all -j "$J" -o 'was %i %T' 2>/dev/null
scancel "$J" || exit 5
i=0
while [ "$i" -lt TICKS ]; do
  left=$(squeue -h -r -t RUNNING,COMPLETING,SIGNALING,STAGE_OUT -j "$J" -o %i 2>/dev/null)
  [ -z "$left" ] && break
  sleep 0.2
  i=$((i+1))
done
"""


def cancel_script(records: Sequence[WorkerRecord], grace: float) -> str:
    """Stop markers first (a job that starts now sees one and ends at once), then scancel,
    then wait up to the grace period for the jobs to leave the running states."""
    parts = ["J=", _CANCEL_FN]
    for i, rec in enumerate(records):
        parts.append(f"wt_mark {q(rec.worker_dir)} {i} {q(rec.job_id or '')}")
    parts.append(_CANCEL_WAIT.replace("TICKS", str(max(1, int(grace * 5)))))
    return "\n".join(parts) + "\n"


def cancel_slurm(config: Config, hc: HostConfig, host: Host, records: Sequence[WorkerRecord]
                 ) -> list[str]:
    """Stop workers: marker, scancel (TERM, then KILL after Slurm's KillWait). Per worker:
    done (had ended), marked (was pending), signalled (was running)."""
    if not records:
        return []
    result = host.run_script(cancel_script(records, config.stop_grace),
                             timeout=config.stop_grace + hc.command_timeout)
    if result.exit_code == 5:
        why = " | ".join(result.stderr.strip().splitlines()[-2:]) or "scancel failed"
        return [f"unknown: {why}"] * len(records)
    result.check()
    was = {}
    outcome = ["done"] * len(records)
    for line in result.stdout.splitlines():
        kind, _, rest = line.partition(" ")
        if kind == "was":
            job, _, word = rest.partition(" ")
            was[job] = word.strip()
        elif kind == "done" and rest.isdigit():
            outcome[int(rest)] = "done:file"
    for i, rec in enumerate(records):
        if outcome[i] == "done:file":
            outcome[i] = "done"
        elif was.get(rec.job_id or "") in _PENDING_STATES:
            outcome[i] = "marked"
        elif was.get(rec.job_id or "") in _RUNNING_STATES:
            outcome[i] = "signalled"
    return outcome


# ---------------------------------------------------------------- the backend

class SlurmBackend(RemoteBackend):
    """A Slurm cluster reached through its login node (`via:` an SSH host, or this machine),
    with `root` on the filesystem it shares with the compute nodes. Slurm keeps its own queue;
    the compute nodes run the same wrapper as every other host."""

    def __init__(self, config: Config, hc: HostConfig, login: Callable[[], Host]) -> None:
        super().__init__(config, hc)
        self._login = login

    def connect(self) -> Host:
        return self._login()

    def start(self, run: str, records: Sequence[WorkerRecord]) -> Started:
        submitted, errors = submit_slurm(self.config, self.hc, self.connect(), run, records)
        return Started(submitted, errors)

    def observe(self, records: Sequence[WorkerRecord], timeout: float | None = None
                ) -> tuple[HostHealth, list[Observation]]:
        return observe_slurm(self.hc, self.connect(), records, timeout)

    def stop(self, records: Sequence[WorkerRecord]) -> list[str]:
        return cancel_slurm(self.config, self.hc, self.connect(), records)
