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

import os
import re
import shlex
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from .backend import RemoteBackend, Started, worker_env, worker_meta
from .config import Config, HostConfig
from .errors import ConfigError, HostUnreachable
from .hosts import Host
from .observe import (
    FIND_PYTHON,
    StatusOutputError,
    derive_state,
    parse_status,
    read_probe_output,
    status_script,
)
from .runs import HostLayout, WorkerRecord
from .states import NEVER_STARTED, HostHealth, Observation, WorkerState
from .workers import LaunchSpec, command_script, install_wrapper_script

q = shlex.quote

# Groups of at least this many workers with the same sbatch settings go in as one job array
# unless the host says `array: false` (`array: true` makes every group of 2+ an array).
AUTO_ARRAY_MIN = 8
DEFAULT_SIGNAL = "B:USR1@90"
# Keys of the host's `slurm` mapping (config.py keeps every slurm-only key there).
SBATCH_KEYS = ("partition", "gres", "gpus", "cpus", "mem", "time", "account", "qos")
HOST_ONLY_KEYS = ("sbatch_args", "signal", "requeue", "array", "generate_tasks")

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

_TIME = re.compile(r"(\d+-)?\d+(:\d+){0,2}|\d+-\d+|UNLIMITED|INFINITE")
_SIGNAL = re.compile(r"(?:(B|R|RB|BR):)?([A-Z0-9]+)(?:@(\d+))?")


@dataclass(frozen=True)
class SlurmObservation(Observation):
    """An observation plus Slurm's own word for the job (`status --json` scheduler_state)."""

    scheduler_state: str | None = None


@dataclass(frozen=True)
class SlurmSettings:
    """Validated sbatch settings for one worker (host settings with the branch's overrides)."""

    options: tuple[str, ...]  # sbatch options that may differ per worker (grouping key)
    signal: str | None
    requeue: bool | None
    array: bool | None
    generate_tasks: int


# ---------------------------------------------------------------- settings

def _where(hc: HostConfig, key: str, branch: str | None) -> str:
    return f"branches.{branch}.slurm.{key}" if branch else f"hosts.{hc.name}.{key}"


def _word(value: Any, where: str, example: str) -> str:
    """A single-line sbatch value; newlines or NUL would let a value escape its argument's
    meaning in the generated script's comments and in sbatch's own parsing."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ConfigError(f"{where} must be a string, got {type(value).__name__}",
                          f"write e.g. {example}")
    text = str(value)
    if not text or any(c in text for c in "\n\r\0"):
        raise ConfigError(f"{where} must be one non-empty line", f"write e.g. {example}")
    return text


def _positive_int(value: Any, where: str, example: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{where} must be a positive integer", f"write e.g. {example}")
    return value


def _sbatch_option(key: str, value: Any, where: str) -> str:
    if key == "cpus":
        return f"--cpus-per-task={_positive_int(value, where, 'cpus: 8')}"
    if key == "gpus":
        if isinstance(value, int) and not isinstance(value, bool):
            return f"--gpus={_positive_int(value, where, 'gpus: 1')}"
        return f"--gpus={_word(value, where, 'gpus: a100:1')}"
    if key == "time":
        text = _word(value, where, 'time: "04:00:00"')
        if not _TIME.fullmatch(text):
            raise ConfigError(f"{where}: '{text}' is not a Slurm time",
                              'write minutes or [D-]HH:MM:SS, e.g. time: "04:00:00"')
        return f"--time={text}"
    if key == "mem":
        return f"--mem={_word(value, where, 'mem: 32G')}"
    flag = {"partition": "partition", "gres": "gres", "account": "account", "qos": "qos"}[key]
    return f"--{flag}={_word(value, where, f'{key}: name')}"


def _sbatch_args(value: Any, where: str) -> list[str]:
    if isinstance(value, str):
        try:
            items: list[Any] = shlex.split(value)
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}", "write it as a YAML list of arguments") from None
    elif isinstance(value, list):
        items = value
    else:
        raise ConfigError(f"{where} must be a list of sbatch arguments",
                          'write e.g. sbatch_args: ["--constraint=a100", "--exclusive"]')
    args = [_word(item, f"{where}[{i}]", '"--exclusive"') for i, item in enumerate(items)]
    if args and not args[0].startswith("-"):
        raise ConfigError(f"{where}[0]: '{args[0]}' is not an option",
                          "each item is an sbatch option such as --exclusive or --nice=10")
    return args


def _signal(value: Any, where: str) -> str | None:
    if value is None or value is False:
        return None
    if value is True:
        return DEFAULT_SIGNAL
    if isinstance(value, int) and not isinstance(value, bool):
        return f"B:USR1@{_positive_int(value, where, 'signal: 90')}"
    text = _word(value, where, 'signal: "USR1@90"').upper()
    match = _SIGNAL.fullmatch(text)
    if not match:
        raise ConfigError(f"{where}: '{value}' is not a Slurm signal spec",
                          'write seconds (signal: 90), "USR1@90", or false to disable')
    # Only the batch shell (wt-run's job script) may get it: it passes USR1 on to the
    # command alone; Slurm signalling every process would also hit helper processes.
    return f"B:{match.group(2)}@{match.group(3) or 90}"


def _flag(value: Any, where: str) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    raise ConfigError(f"{where} must be true or false", f"write {where.rsplit('.', 1)[-1]}: true")


def slurm_settings(config: Config, hc: HostConfig, branch: str | None = None) -> SlurmSettings:
    """The host's settings with the branch's `slurm:` overrides, validated."""
    host = dict(hc.slurm)
    unknown = sorted(set(host) - set(SBATCH_KEYS) - set(HOST_ONLY_KEYS))
    if unknown:
        raise ConfigError(f"{config.path}: unknown key 'hosts.{hc.name}.{unknown[0]}'",
                          f"use one of: {', '.join(SBATCH_KEYS + HOST_ONLY_KEYS)}")
    override = dict(config.branches[branch].slurm) if branch in config.branches else {}
    options: list[str] = []
    for key in SBATCH_KEYS:
        if override.get(key) is not None:
            options.append(_sbatch_option(key, override[key], _where(hc, key, branch)))
        elif host.get(key) is not None:
            options.append(_sbatch_option(key, host[key], _where(hc, key, None)))
    for source, name in ((host, None), (override, branch)):
        if source.get("sbatch_args") is not None:
            options += _sbatch_args(source["sbatch_args"], _where(hc, "sbatch_args", name))
    array = host.get("array")
    if isinstance(array, int) and not isinstance(array, bool):
        raise ConfigError(f"hosts.{hc.name}.array must be true or false",
                          f"write array: true (groups of {AUTO_ARRAY_MIN}+ go in as arrays "
                          "anyway)")
    tasks = host.get("generate_tasks", 1)
    return SlurmSettings(
        options=tuple(options),
        signal=_signal(host.get("signal", True), _where(hc, "signal", None)),
        requeue=_flag(host.get("requeue"), _where(hc, "requeue", None)),
        array=_flag(array, _where(hc, "array", None)),
        generate_tasks=_positive_int(tasks, _where(hc, "generate_tasks", None),
                                     "generate_tasks: 8"),
    )


def _pattern_safe(path: str) -> str:
    """A path for sbatch --output: `%` starts a replacement symbol there."""
    if "\\" in path:
        raise ConfigError(f"path {path!r} contains a backslash, which sbatch --output cannot "
                          "take literally", "choose a root: without backslashes")
    return path.replace("%", "%%")


# ---------------------------------------------------------------- batch scripts

_JOB_BODY = r"""# Earlier runs of a requeued job leave pid/exit files: keep them aside, start clean.
wt_shelve() {
  n=1
  while [ -e "$d/requeues/$n" ]; do n=$((n+1)); done
  mkdir -p "$d/requeues/$n"
  for f in pid exit; do if [ -e "$d/$f" ]; then mv -f "$d/$f" "$d/requeues/$n/"; fi; done
}
if [ "${SLURM_RESTART_COUNT:-0}" -gt 0 ]; then wt_shelve; fi
WT_RUN_RESTART_COUNT=${SLURM_RESTART_COUNT:-0}
export WT_RUN_RESTART_COUNT
usr1=0
"$PY" -S "$W" "$d" &
w=$!
# USR1 (checkpoint now) goes to the wrapper, which hands it to the user's command only.
trap 'usr1=1; kill -USR1 "$w" 2>/dev/null' USR1
trap 'kill -TERM "$w" 2>/dev/null' TERM
while :; do
  wait "$w"
  rc=$?
  kill -0 "$w" 2>/dev/null || break
done
if [ "$requeue" = 1 ] && [ "$usr1" = 1 ] && [ "$rc" != 0 ] && [ ! -e "$d/stop" ]; then
  # Checkpointed on the warning signal: back to the queue, to resume from the checkpoint.
  wt_shelve
  echo "wt-run: requeueing job $SLURM_JOB_ID after USR1 (exit $rc)"
  scontrol requeue "$SLURM_JOB_ID" && exit 0
fi
exit "$rc"
"""


def _job_header(title: str, argv: Sequence[str]) -> str:
    return ("#!/bin/sh\n"
            f"# wt-run batch job: {title}\n"
            "# generated by wt-run; submitted as:\n"
            f"#   {shlex.join(argv)}\n")


def job_script(rec: WorkerRecord, settings: SlurmSettings, argv: Sequence[str], root: str
               ) -> str:
    """The batch script of one worker's job."""
    return (_job_header(f"worker {rec.name} (branch {rec.branch})", argv)
            + f"d={q(rec.worker_dir)}\nW={q(root + '/wrapper.py')}\n" + FIND_PYTHON
            + f"requeue={1 if settings.requeue else 0}\n" + _JOB_BODY)


def array_job_script(recs: Sequence[WorkerRecord], settings: SlurmSettings,
                     argv: Sequence[str], root: str) -> str:
    """The batch script of a job array: task i runs worker i."""
    cases = "".join(f"  {i}) d={q(r.worker_dir)} ;;\n" for i, r in enumerate(recs))
    return (_job_header(f"array of {len(recs)} workers: {' '.join(r.name for r in recs)}",
                        argv)
            + 'case "${SLURM_ARRAY_TASK_ID:-}" in\n' + cases
            + '  *) echo "wt-run: no worker for array task ${SLURM_ARRAY_TASK_ID:-}" >&2;'
            + " exit 97 ;;\nesac\n"
            + f"W={q(root + '/wrapper.py')}\n" + FIND_PYTHON
            + f"requeue={1 if settings.requeue else 0}\n" + _JOB_BODY)


def sbatch_argv(rec: WorkerRecord, settings: SlurmSettings, *, output: str, name: str,
                run_dir: str, array: int | None = None) -> list[str]:
    argv = ["sbatch", "--parsable", f"--job-name={name}", f"--output={_pattern_safe(output)}",
            "--open-mode=append", f"--chdir={rec.worker_dir if array is None else run_dir}"]
    if array is not None:
        argv.append(f"--array=0-{array - 1}")
    if settings.signal:
        argv.append(f"--signal={settings.signal}")
    if settings.requeue is not None:
        argv.append("--requeue" if settings.requeue else "--no-requeue")
    return argv + list(settings.options)


@dataclass(frozen=True)
class Submission:
    """One sbatch call: its workers (one, or an array's tasks in order) and its script."""

    records: tuple[WorkerRecord, ...]
    argv: tuple[str, ...]  # without the script path, which the submit script appends
    script: str
    script_path: str
    links: tuple[tuple[str, str], ...] = ()  # (link, target): array output paths
    # Sharded generation: the array of shard tasks runs pseudo-workers (task dirs) for
    # `owner`; the owner's own job then waits for it (`--dependency=afterany:<array>`).
    owner: WorkerRecord | None = None
    task_env: tuple[Mapping[str, str], ...] = ()
    after_previous: bool = False


def plan_submissions(config: Config, hc: HostConfig, records: Sequence[WorkerRecord],
                     tag: str, layout: HostLayout, run: str) -> list[Submission]:
    """Group workers by identical settings; big groups (or all, with array: true) become
    job arrays. `tag` keeps array file names of different launches apart."""
    root, run_dir = layout.root, layout.run_dir(run)
    if len(records) == 1 and records[0].kind == "generate":
        settings = slurm_settings(config, hc, None)
        if settings.generate_tasks > 1:
            return _plan_sharded_generate(records[0], settings, root, run_dir)
    groups: dict[SlurmSettings, list[WorkerRecord]] = {}
    for rec in records:
        groups.setdefault(slurm_settings(config, hc, rec.branch_entry), []).append(rec)
    subs: list[Submission] = []
    for g, (settings, recs) in enumerate(groups.items()):
        as_array = len(recs) >= (2 if settings.array else AUTO_ARRAY_MIN)
        if settings.array is False or not as_array:
            for rec in recs:
                argv = sbatch_argv(rec, settings, output=rec.log, name=f"wt-run:{rec.name}",
                                   run_dir=run_dir)
                path = f"{rec.worker_dir}/job.sh"
                subs.append(Submission((rec,), tuple(argv),
                                       job_script(rec, settings, [*argv, path], root), path))
            continue
        base = f"{run_dir}/slurm/{tag}-{g}"
        # Slurm names the output file by task index: a link per index to the worker's dir
        # makes each task write the worker's own log.
        links = tuple((f"{base}-{i}", r.worker_dir) for i, r in enumerate(recs))
        output = f"{_pattern_safe(base)}-%a/log"
        argv = sbatch_argv(recs[0], settings, output="", name=f"wt-run:{recs[0].name}+"
                           f"{len(recs) - 1}", run_dir=run_dir, array=len(recs))
        argv = [a if not a.startswith("--output=") else f"--output={output}" for a in argv]
        path = f"{base}.sh"
        subs.append(Submission(tuple(recs), tuple(argv),
                               array_job_script(recs, settings, [*argv, path], root), path,
                               links))
    return subs


def _plan_sharded_generate(rec: WorkerRecord, settings: SlurmSettings, root: str,
                           run_dir: str) -> list[Submission]:
    """`generate` split over an array of N tasks, each with WT_RUN_TASK_INDEX/COUNT set and its
    own wrapper files in `<worker dir>/tasks/<i>`, then the plain command once more after all
    of them (afterany): it finds every shard done and writes the dataset's summary, or renders
    what a failed task left, so the result equals one process's whatever happened."""
    n = settings.generate_tasks
    tasks = tuple(replace(rec, name=f"{rec.name}.{i}", worker_dir=f"{rec.worker_dir}/tasks/{i}")
                  for i in range(n))
    envs = tuple({"WT_RUN_TASK_INDEX": str(i), "WT_RUN_TASK_COUNT": str(n)} for i in range(n))
    argv = sbatch_argv(rec, settings, output=f"{rec.worker_dir}/tasks/%a/log",
                       name=f"wt-run:{rec.name}-tasks", run_dir=run_dir, array=n)
    # Task dirs are named by index, so the output pattern needs no links; `%a` must survive.
    argv = [a if not a.startswith("--output=") else
            f"--output={_pattern_safe(rec.worker_dir)}/tasks/%a/log" for a in argv]
    path = f"{rec.worker_dir}/tasks.sh"
    array = Submission(tasks, tuple(argv),
                       array_job_script(tasks, settings, [*argv, path], root), path, owner=rec,
                       task_env=envs)
    final_argv = sbatch_argv(rec, settings, output=rec.log, name=f"wt-run:{rec.name}",
                             run_dir=run_dir)
    final_path = f"{rec.worker_dir}/job.sh"
    shown = [*final_argv, "--dependency=afterany:<tasks job>", final_path]
    final = Submission((rec,), tuple(final_argv), job_script(rec, settings, shown, root),
                       final_path, after_previous=True)
    return [array, final]


_SUBMIT_FN = r"""
wt_prep() {
  d=$1
  [ -d "$d/out" ] || { echo "error $2 cannot create $d"; return 1; }
  if [ -e "$d/pid" ] || [ -e "$d/exit" ] || [ -e "$d/job" ] || [ -e "$d/log" ]; then
    n=1
    while [ -e "$d/attempts/$n" ]; do n=$((n+1)); done
    mkdir -p "$d/attempts/$n"
    for f in pid exit stop job log cmd.sh job.sh requeues tasks tasks.sh; do
      if [ -e "$d/$f" ]; then mv -f "$d/$f" "$d/attempts/$n/"; fi
    done
  fi
  printf '%s' "$3" > "$d/cmd.sh"
}
NL='
'
E=$(mktemp) || exit 91
trap 'rm -f "$E"' EXIT
wt_sub() {
  i=$1
  shift
  if out=$("$@" 2>"$E" </dev/null) && [ -n "$out" ]; then
    out=${out##*"$NL"}
    JOB=${out%%;*}
    echo "submitted $i $JOB"
  else
    echo "error $i sbatch:" $(cat "$E")
  fi
}
"""


def submit_script(root: str, subs: Sequence[Submission], specs: Mapping[str, LaunchSpec]
                  ) -> str:
    """One script: install the wrapper, prepare every worker dir, submit every job."""
    # One mkdir for every worker dir: a process per worker would cost more than sbatch.
    dirs = " ".join(q(f"{r.worker_dir}/out") for sub in subs for r in sub.records)
    parts = ["umask 077", install_wrapper_script(root), f"mkdir -p {dirs}", _SUBMIT_FN]
    for i, sub in enumerate(subs):
        prep = " && ".join(f"wt_prep {q(r.worker_dir)} {i} {q(command_script(specs[r.name]))}"
                           for r in sub.records)
        steps = [prep]
        steps += [f"mkdir -p {q(os.path.dirname(link))} && ln -sfn {q(target)} {q(link)}"
                  for link, target in sub.links]
        steps.append(f"printf '%s' {q(sub.script)} > {q(sub.script_path)}")
        if sub.after_previous:
            steps.append(f'[ -n "$JOB" ] && wt_sub {i} {shlex.join(sub.argv)} '
                         f'"--dependency=afterany:$JOB" {q(sub.script_path)}')
        else:
            steps.append(f"JOB= && wt_sub {i} {shlex.join(sub.argv)} {q(sub.script_path)}")
        if sub.owner is not None:
            # stop/cancel find the shard tasks' array through this file
            steps.append(f'printf "%s\\n" "$JOB" > {q(sub.owner.worker_dir + "/tasks/job")}')
        parts.append(" &&\n".join(steps))
    return "\n".join(parts) + "\n"


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
                                       worker_meta(config, owner, run, False), layout.root)
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
