"""Observing workers: the status script (the host-side probe), its JSON answer, and the state
machine that derives a worker's state from its files every time, each worker on its own."""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from .errors import HostUnreachable
from .hosts import Host
from .hostside import source
from .states import NEVER_STARTED, HostHealth, Observation, WorkerState

q = shlex.quote
PROBE = source("probe")
# The first python3 (or python) on the host's PATH; scripts fail with exit 92 without one.
NO_PYTHON_EXIT = 92
FIND_PYTHON = ('PY=$(command -v python3 || command -v python) || '
               f'{{ echo "wt-run: no python3 on this host" >&2; exit {NO_PYTHON_EXIT}; }}\n')


def find_python(root: str) -> str:
    """Set PY to the host's python3 as FIND_PYTHON does, but remember the interpreter it
    resolves to in `<root>/python.path`: a version manager's shim (pyenv) costs a fraction of
    a second on every start, which status, launch, collect and every Slurm job would pay. A
    remembered interpreter that is gone is looked up again."""
    cache = q(root + "/python.path")
    return (f"PY=; [ -r {cache} ] && read -r PY < {cache}\n"
            'if [ -z "$PY" ] || [ ! -x "$PY" ]; then\n'
            f"  {FIND_PYTHON}"
            "  R=$(\"$PY\" -S -c 'import sys; print(sys.executable)' 2>/dev/null)\n"
            '  if [ -n "$R" ] && [ -x "$R" ]; then\n'
            '    PY=$R\n'
            f"    [ -d {q(root)} ] && {{ printf '%s\\n' \"$PY\" > {cache}.$$ && "
            f"mv -f {cache}.$$ {cache}; }} 2>/dev/null\n"
            "  fi\n"
            "fi\n")


def status_script(root: str, worker_dirs: Sequence[str]) -> str:
    """One script that reports every given worker directory plus host health, as one JSON
    line made by the probe (hostside/probe.py)."""
    dirs = " ".join(q(d) for d in worker_dirs)
    return f"{find_python(root)}\"$PY\" -S -c {q(PROBE)} {q(root)} {dirs}\n"


class StatusOutputError(ValueError):
    """The host's answer to a status script is not the probe's document."""


def read_probe_output(output: str, count: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The probe's health document and one file dict per worker (see `derive_state`)."""
    for line in reversed(output.split("\n")):
        if line.startswith("wtjson "):
            try:
                doc = json.loads(line[7:])
                workers = doc["workers"]
            except (ValueError, KeyError, TypeError) as exc:
                raise StatusOutputError(f"unreadable status document: {exc}") from None
            if not isinstance(workers, list) or len(workers) != count:
                raise StatusOutputError("status document has the wrong number of workers")
            return doc, [_files_from_probe(w) for w in workers]
    raise StatusOutputError("the host's status probe printed no document")


def _files_from_probe(entry: Any) -> dict[str, Any]:
    """The probe's view of one worker directory as the token lists `derive_state` reads."""
    if not isinstance(entry, dict):
        return {"problems": {"status": "malformed probe entry"}}
    if entry.get("nodir"):
        return {"nodir": []}
    files: dict[str, Any] = {"problems": dict(entry.get("problems") or {})}
    if isinstance(entry.get("spawn"), str):
        flag = {True: "1", False: "0"}.get(entry.get("spawn_alive"), "?")
        files["spawn"] = [*entry["spawn"].split()[:1], flag]
    if isinstance(entry.get("pid"), str):
        files["pid"] = entry["pid"].split()
        if isinstance(entry.get("now"), str):
            files["now"] = [entry["now"]]
        if isinstance(entry.get("home"), bool):
            files["home"] = [str(entry["home"])]
    if isinstance(entry.get("exit"), str):
        files["exit"] = entry["exit"].split()
    if entry.get("stop"):
        files["stop"] = []
    if isinstance(entry.get("progress"), str):
        files["progress"] = entry["progress"]
    for name in ("env", "queued", "attempt", "gpus"):
        if isinstance(entry.get(name), str):
            files[name] = entry[name]
    return files


def _health(host: str, doc: Mapping[str, Any]) -> HostHealth:
    load = doc.get("load")
    gpus = tuple({"index": str(g.get("index")), "name": g.get("name"),
                  "utilization": _num(g.get("utilization")),
                  "memory_used_mib": _num(g.get("memory_used")),
                  "memory_total_mib": _num(g.get("memory_total"))}
                 for g in doc.get("gpus") or [] if isinstance(g, dict))
    disk = doc.get("disk_free_bytes")
    return HostHealth(host, True, None,
                      tuple(float(x) for x in load[:3]) if isinstance(load, list) else None,
                      int(disk) if isinstance(disk, (int, float)) else None, gpus)


def parse_status(output: str, host: str, count: int) -> tuple[HostHealth, list[Observation]]:
    """Parse a status script's output into host health and one observation per worker.
    Each worker is read on its own: one whose files make no sense reads `unknown`."""
    doc, blocks = read_probe_output(output, count)
    boot = str(doc.get("boot") or "")
    now = _num(doc.get("time"))
    queue = doc.get("queue") if isinstance(doc.get("queue"), dict) else {}
    waiting = [str(s) for s in queue.get("waiting") or []]
    return _health(host, doc), [_queued(derive_state(b, boot, now), b, waiting,
                                        bool(queue.get("drainer")), host) for b in blocks]


def _queued(obs: Observation, files: Mapping[str, Any], waiting: Sequence[str], drained: bool,
            host: str) -> Observation:
    """Add what the host's queue says: attempt, GPUs given, and for a waiting worker its
    place in the line (and whether anything drains it)."""
    attempt = _leading_int(files.get("attempt"))
    given = str(files.get("gpus") or "").split()
    gpus = tuple(given[0].split(",")) if given else ()
    obs = replace(obs, attempt=attempt, gpus=gpus)
    seq = str(files.get("queued") or "").strip()
    if obs.state != WorkerState.PENDING or not seq or seq not in waiting:
        return obs
    ahead = waiting.index(seq)
    reason = f"queued on {host}, {ahead} ahead"
    if not drained:
        reason += (" — nothing drains this queue (the host rebooted, or its drainer was "
                   f"killed): run `wt-run resume --host {host}`")
    return replace(obs, queue_position=ahead, reason=reason)


def _leading_int(text: Any) -> int | None:
    try:
        return int(str(text).split()[0])
    except (ValueError, IndexError):
        return None


def _num(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


_BOOT_ID = re.compile(r"[0-9A-Za-z-]{1,64}\Z")


class _BadFile(ValueError):
    def __init__(self, file: str, detail: str) -> None:
        super().__init__(f"{file}: {detail}")
        self.file, self.detail = file, detail


def _int_field(tokens: Sequence[str], file: str, index: int, what: str) -> int:
    try:
        return int(tokens[index])
    except (IndexError, ValueError):
        raise _BadFile(file, f"no {what}") from None


def _float_field(tokens: Sequence[str], file: str, index: int) -> float | None:
    if len(tokens) <= index:
        return None
    try:
        return float(tokens[index])
    except ValueError:
        raise _BadFile(file, "no time stamp") from None


_UNREADABLE = "its {file} file {detail}: the state cannot be told (the file was changed by " \
    "something other than wt-run; `wt-run logs NAME` may say more)"


def derive_state(files: Mapping[str, Any], boot: str, now: float | None) -> Observation:
    """The state machine: a worker's state from what its files say right now. A file that
    makes no sense gives `unknown` with a reason naming it, never a guessed terminal state."""
    try:
        obs = _derive_state(files, boot, now)
        env = _parse_progress(files.get("env"))
        return replace(obs, env=env) if env else obs
    except _BadFile as bad:
        return Observation(WorkerState.UNKNOWN, host_time=now,
                           progress=_parse_progress(files.get("progress")),
                           reason=_UNREADABLE.format(file=bad.file, detail=bad.detail))


def _derive_state(files: Mapping[str, Any], boot: str, now: float | None) -> Observation:
    problems = files.get("problems") or {}
    for name in ("exit", "pid", "spawn"):
        if name in problems:
            raise _BadFile(name, f"is {problems[name]}")
    progress = _parse_progress(files.get("progress"))
    stopped = "stop" in files
    pid_fields = files.get("pid")
    pid = started = None
    if pid_fields is not None:
        pid = _int_field(pid_fields, "pid", 0, "process id")
        _int_field(pid_fields, "pid", 1, "start time")
        started = _float_field(pid_fields, "pid", 3)
        if len(pid_fields) > 2 and not _BOOT_ID.match(pid_fields[2]):
            raise _BadFile("pid", "holds no boot id")
    # The wrapper works in its worker directory until it writes the exit record (`home`): a
    # process that matches the pid file in all of that is the wrapper, still deciding, even if
    # an exit file is there (written by the worker, which could reach it).
    same_boot = pid_fields is not None and len(pid_fields) > 2 and pid_fields[2] == boot
    home = files.get("home", [None])[0]
    alive = same_boot and files.get("now", [None])[0] == pid_fields[1] and home != "False"
    if "exit" in files and not (alive and home == "True"):
        return _ended(files["exit"], stopped, pid, started, progress, now)
    if pid_fields is not None:
        if alive:
            return Observation(WorkerState.RUNNING, pid, None, None, started, None, progress, now)
        state = WorkerState.STOPPED if stopped else WorkerState.LOST
        reason = None if stopped else (
            "host rebooted since the worker started" if not same_boot else
            "wrapper process is gone without an exit record (killed, or its pid reused); "
            "`wt-run stop` ends whatever of its command still runs")
        return Observation(state, pid, None, None, started, None, progress, now, reason)
    if "nodir" in files:
        return Observation(WorkerState.LOST, host_time=now, reason=NEVER_STARTED)
    spawn = files.get("spawn")
    if spawn is not None:
        if len(spawn) != 2 or spawn[1] == "?":
            raise _BadFile("spawn", "holds no process id")
        if spawn[1] == "0":
            if stopped:
                return Observation(WorkerState.STOPPED, host_time=now)
            return Observation(WorkerState.LOST, host_time=now,
                               reason="wrapper exited before recording itself")
    return Observation(WorkerState.PENDING, host_time=now, progress=progress)


def _ended(tokens: Sequence[str], stopped: bool, pid: int | None, started: float | None,
           progress: Mapping[str, Any] | None, now: float | None) -> Observation:
    """The state an exit record gives: "<value> <epoch> <how>" (how: exit | signal | never);
    records of older versions have no `how`, and there a status over 128 meant a signal."""
    value = _int_field(tokens, "exit", 0, "exit status")
    ended = _float_field(tokens, "exit", 1)
    how = tokens[2] if len(tokens) > 2 else ("signal" if 128 < value < 193 else "exit")
    code: int | None = None
    sig: int | None = None
    if how == "signal":
        sig = value - 128 if len(tokens) < 3 else value
        if not 0 < sig < 65:
            raise _BadFile("exit", "holds no signal number")
    elif how == "exit":
        if not 0 <= value < 256:
            raise _BadFile("exit", "holds no exit status")
        code = value
    elif how != "never":
        raise _BadFile("exit", "has an unknown kind of ending")
    if stopped:
        state = WorkerState.STOPPED
    elif how == "never":
        raise _BadFile("exit", "says the worker never started, yet no stop was asked")
    elif sig is not None:
        state = WorkerState.KILLED
    elif code == 0:
        state = WorkerState.SUCCEEDED
    else:
        state = WorkerState.FAILED
    return Observation(state, pid, code, sig, started, ended, progress, now)


def _parse_progress(text: str | None) -> dict[str, Any] | None:
    if not text:
        return None
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def progress_fraction(progress: Mapping[str, Any] | None) -> float | None:
    """Fraction done from the worker contract's progress.json; `step/steps` wins when given
    (global step count), else `epoch/epochs` (completed epochs)."""
    if not progress:
        return None
    try:
        steps = float(progress.get("steps") or 0)
        if steps > 0 and progress.get("step") is not None:
            return max(0.0, min(1.0, float(progress["step"]) / steps))
        epochs = float(progress.get("epochs") or 0)
        if epochs > 0 and progress.get("epoch") is not None:
            return max(0.0, min(1.0, float(progress["epoch"]) / epochs))
    except (TypeError, ValueError):
        return None
    return None


def eta_seconds(obs: Observation) -> float | None:
    frac = progress_fraction(obs.progress)
    if obs.state != WorkerState.RUNNING or not frac or obs.started_at is None or not obs.host_time:
        return None
    elapsed = max(0.0, obs.host_time - obs.started_at)
    return elapsed * (1.0 - frac) / frac


def query_workers(host: Host, worker_dirs: Sequence[str], timeout: float | None = None
                  ) -> tuple[HostHealth, list[Observation]]:
    """One round trip: host health and every worker's state."""
    result = host.run_script(status_script(host.root, worker_dirs), timeout=timeout).check()
    try:
        return parse_status(result.stdout, host.name, len(worker_dirs))
    except StatusOutputError as exc:
        raise HostUnreachable(host.name, str(exc), "check that python3 runs on the host") from None
