"""The library behind each CLI command: launch, generate, status, stop, logs, clean.

Work is grouped per host and each host is handled in one round trip, hosts in parallel; one
unreachable host never hides the others."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO, TypeVar

from .config import BranchConfig, Config, HostConfig
from .errors import HostUnreachable, WtRunError
from .hosts import open_host
from .layout import host_layout
from .observe import eta_seconds, progress_fraction, query_workers
from .runs import RunManifest, RunStore, WorkerRecord, group_by_host
from .states import NEVER_STARTED, HostHealth, Observation, WorkerState
from .templates import render_command
from .variants import Variant, expand
from .workers import (
    LaunchSpec,
    QueueSettings,
    log_script,
    resume_script,
    start_workers,
    stop_workers,
)

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class WorkerView:
    """A record joined with what status observed now."""

    record: WorkerRecord
    obs: Observation

    @property
    def state(self) -> WorkerState:
        return self.obs.state

    def to_json(self) -> dict[str, Any]:
        r, o = self.record, self.obs
        progress = dict(o.progress) if o.progress else None
        if progress is not None:
            progress["eta_s"] = eta_seconds(o)
            progress["fraction"] = progress_fraction(o.progress)
        return {
            "name": r.name, "branch": r.branch, "commit": r.commit, "host": r.host,
            "kind": r.kind, "state": o.state.value, "pid": o.pid if o.pid else r.pid,
            "exit_code": o.exit_code, "signal": o.signal,
            "started_at": _iso(o.started_at or r.started_at),
            "ended_at": _iso(o.ended_at or r.ended_at),
            "worktree": r.worktree, "log": r.log, "out": r.out,
            "attempt": max(o.attempt or 0, r.attempt), "max_attempts": r.retry_max + 1,
            "command": r.command, "gpus": list(o.gpus or r.gpus), "job_id": r.job_id,
            "scheduler_state": getattr(o, "scheduler_state", r.scheduler_state),
            "reason": o.reason,
            "progress": progress,
            "vars": dict(r.vars), "seed": r.seed, "group": r.group or r.name,
            "env": dict(r.env) if r.env else (dict(o.env) if o.env else None),
            "queue_position": o.queue_position,
        }


@dataclass(frozen=True)
class StatusReport:
    run: str
    workers: list[WorkerView]
    hosts: list[HostHealth]

    def to_json(self) -> dict[str, Any]:
        return {"run": self.run, "workers": [w.to_json() for w in self.workers],
                "hosts": [h.to_json() for h in self.hosts]}

    @property
    def done(self) -> bool:
        return all(w.state.terminal for w in self.workers)

    @property
    def all_succeeded(self) -> bool:
        return all(w.state == WorkerState.SUCCEEDED for w in self.workers)


@dataclass(frozen=True)
class HostOutcome:
    host: str
    started: list[str] = field(default_factory=list)
    error: str | None = None


@dataclass(frozen=True)
class LaunchReport:
    run: str
    planned: list[WorkerRecord]
    outcomes: list[HostOutcome]
    dry_run: bool = False

    @property
    def ok(self) -> bool:
        return all(o.error is None for o in self.outcomes)


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def parallel_map(fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
    """Run fn over items in threads (one per host); results in order."""
    if len(items) <= 1:
        return [fn(i) for i in items]
    with ThreadPoolExecutor(max_workers=min(16, len(items))) as pool:
        return list(pool.map(fn, items))


# ---------------------------------------------------------------- placement

def assign_hosts(config: Config, branches: Sequence[BranchConfig],
                 hosts: Sequence[str]) -> dict[str, str]:
    """name -> host. With --host options, branches are spread round-robin over them, filling
    hosts by free capacity; otherwise each branch's own host or the default."""
    for h in hosts:
        config.host(h)
    if not hosts:
        return {b.name: b.host or config.default_host for b in branches}
    if len(hosts) == 1:
        return {b.name: hosts[0] for b in branches}
    # Round-robin, skipping hosts this launch has already filled (gpus/slots); when all are
    # full the branch goes to the next host and assign_gpus explains the shortage.
    load = dict.fromkeys(hosts, 0)
    placement: dict[str, str] = {}
    turn = 0
    for b in branches:
        for _ in hosts:
            host = hosts[turn % len(hosts)]
            turn += 1
            capacity = config.host(host).capacity
            if capacity is None or load[host] < capacity:
                break
        load[host] += 1
        placement[b.name] = host
    return placement


def _still_live(config: Config, records: Iterable[WorkerRecord]) -> list[WorkerRecord]:
    """Those of the records whose worker is not in a terminal state now (pending, running or
    unknown); one round trip per host, and none for records already cached terminal."""
    by_host = group_by_host(r for r in records if r.state is None)
    live: list[WorkerRecord] = []
    for host_name, recs in by_host.items():
        _, observations = observe_host(config, host_name, recs)
        live += [r for r, o in zip(recs, observations) if not o.state.terminal]
    return live


def _host_records(store: RunStore, host: str) -> Iterator[tuple[str, WorkerRecord]]:
    """(run, record) for every worker of every run on `host`."""
    for run in store.list_runs():
        for rec in store.load(run).workers.values():
            if rec.host == host:
                yield run, rec


def _busy_gpus(config: Config, store: RunStore, host: str, exclude_run: str,
               exclude: set[str]) -> set[str]:
    """GPUs held by live workers of any run on `host`."""
    held = [rec for run, rec in _host_records(store, host)
            if rec.gpus and not (run == exclude_run and rec.name in exclude)]
    return {gpu for rec in _still_live(config, held) for gpu in rec.gpus}


def assign_gpus(config: Config, store: RunStore, host: str, names: Sequence[str],
                run: str) -> dict[str, tuple[str, ...]]:
    hc = config.host(host)
    capacity = hc.capacity
    if hc.type == "slurm" or capacity is None or queue_settings(hc) is not None:
        # Slurm queues by itself; a host with slots or GPUs queues its workers and picks
        # GPUs when each one starts.
        return {n: () for n in names}
    busy = _busy_gpus(config, store, host, run, set(names)) if hc.gpus else set()
    free = [g for g in hc.gpus if g not in busy] if hc.gpus else []
    if hc.gpus:
        if len(names) > len(free):
            raise WtRunError(
                f"host {host} has {len(free)} free GPU(s) of {len(hc.gpus)} "
                f"({', '.join(hc.gpus)}), {len(names)} worker(s) need one each",
                "stop running workers (`wt-run status` shows them), launch fewer branches, "
                "or spread them with several --host options")
        return {n: (free[i],) for i, n in enumerate(names)}
    if len(names) > capacity:
        raise WtRunError(f"host {host} has {capacity} slot(s), {len(names)} workers asked",
                         "launch fewer branches or raise slots: in the config")
    return {n: () for n in names}


# ---------------------------------------------------------------- per-host backends

def prepare_host_worktrees(config: Config, host: str, branches: Sequence[BranchConfig],
                           force: bool, dry_run: bool) -> list[tuple[BranchConfig, str, str]]:
    """Worktrees for branches on a host -> (branch, worktree path on host, commit)."""
    hc = config.host(host)
    if hc.type == "local":
        from .worktrees import prepare_worktrees

        prepared = prepare_worktrees(config, branches, force=force, dry_run=dry_run)
        return [(b, str(p.path), p.commit) for b, p in zip(branches, prepared)]
    from .sync import prepare_remote_worktrees

    return prepare_remote_worktrees(config, host, branches, force=force, dry_run=dry_run)


def observe_host(config: Config, host_name: str, records: Sequence[WorkerRecord],
                 timeout: float | None = None) -> tuple[HostHealth, list[Observation]]:
    """One round trip to a host: its health and every record's observation. An unreachable
    host yields `unknown` for each of its workers, with the reason."""
    hc = config.host(host_name)
    try:
        if hc.type == "slurm":
            from .slurm import observe_slurm

            return observe_slurm(config, hc, records)
        with open_host(config, host_name) as host:
            return query_workers(host, [r.worker_dir for r in records],
                                 timeout=timeout or hc.command_timeout)
    except HostUnreachable as exc:
        obs = Observation(WorkerState.UNKNOWN, reason=exc.reason)
        return HostHealth(host_name, False, exc.reason), [obs] * len(records)


# ---------------------------------------------------------------- launch

def launch(config: Config, names: Sequence[str], *, hosts: Sequence[str] = (),
           run: str | None = None, force: bool = False, dry_run: bool = False,
           sets: Mapping[str, Sequence[str]] | None = None, seeds: int | None = None
           ) -> LaunchReport:
    """Start one worker per variant (branches × `--set` values × seeds) on its host."""
    if not names:
        raise WtRunError("no branches given", "pass --branches NAME... (names under branches:)")
    dupes = sorted({n for n in names if list(names).count(n) > 1})
    if dupes:
        raise WtRunError(f"branch '{dupes[0]}' given twice", "name each branch once")
    variants = {v.name: v for v in expand(config, names, sets or {}, seeds)}
    # Each variant as a branch entry of its own name and final vars, for placement.
    branches = [replace(v.base, name=v.name, vars=v.vars) for v in variants.values()]
    placement = assign_hosts(config, branches, hosts)
    names = list(variants)
    store = RunStore(config.state_dir)
    # The manifest lock is held only to read and write the manifest: status, stop, logs and
    # collect go on while this launch syncs code and prepares worktrees on its hosts.
    with store.launching(), store.planning():
        with store.locked():
            manifest = store.open_for_launch(run, str(config.path))
        run_id = manifest.run
        _refuse_live(config, store, manifest, names, force, dry_run)
        by_host: dict[str, list[BranchConfig]] = {}
        for b in branches:
            by_host.setdefault(placement[b.name], []).append(b)
        host_names = list(by_host)

        def plan(host_name: str) -> list[WorkerRecord] | WtRunError:
            try:
                return _plan_host(config, store, manifest, host_name,
                                  [variants[b.name] for b in by_host[host_name]], force, dry_run)
            except WtRunError as exc:
                return exc

        planned_per_host = parallel_map(plan, host_names)
        if len(host_names) == 1 and isinstance(planned_per_host[0], WtRunError):
            raise planned_per_host[0]
        planned = [r for p in planned_per_host if isinstance(p, list) for r in p]
        if dry_run:
            outcomes = [HostOutcome(h, [], str(p) if isinstance(p, WtRunError) else None)
                        for h, p in zip(host_names, planned_per_host)]
            return LaunchReport(run_id, planned, outcomes, dry_run=True)

        def start(item: tuple[str, list[WorkerRecord] | WtRunError]
                  ) -> tuple[HostOutcome, list[WorkerRecord]]:
            host_name, recs = item
            if isinstance(recs, WtRunError):
                return HostOutcome(host_name, error=str(recs)), []
            try:
                return _start_host(config, host_name, recs)
            except WtRunError as exc:
                return HostOutcome(host_name, error=str(exc)), []

        _record_planned(store, manifest, planned)
        results = parallel_map(start, list(zip(host_names, planned_per_host)))
        store.update(run_id, *(r for _, recs in results for r in recs),
                     expected={r.name: r for r in planned})
    return LaunchReport(run_id, planned, [o for o, _ in results])


def _record_planned(store: RunStore, seen: RunManifest, records: Sequence[WorkerRecord]
                    ) -> None:
    """Save the workers about to start (launched_at unset) before starting them: a wt-run
    killed mid-launch then leaves them in the manifest, where status finds those that started
    and shows the others lost. The final update replaces these records. Refuses when another
    wt-run changed one of these workers since this launch looked at the run."""
    with store.locked():
        manifest = store.load(seen.run) if store.exists(seen.run) else seen
        for rec in records:
            if manifest.workers.get(rec.name) != seen.workers.get(rec.name):
                raise WtRunError(f"worker '{rec.name}' of run {seen.run} was changed by another "
                                 "wt-run command during this launch",
                                 "check `wt-run status`, then launch again")
            manifest = manifest.with_worker(rec)
        store.save(manifest)


def _refuse_live(config: Config, store: RunStore, manifest: RunManifest, names: Sequence[str],
                 force: bool, dry_run: bool) -> None:
    live = _still_live(config, (manifest.workers[n] for n in names if n in manifest.workers))
    if not live:
        return
    if not force:
        rec = live[0]
        raise WtRunError(
            f"worker '{rec.name}' of run {manifest.run} is still running (or pending/unknown)",
            f"stop it with `wt-run stop {rec.name} --run {manifest.run}`, "
            "or pass --force to stop and relaunch it")
    if not dry_run:
        stop(config, [r.name for r in live], run=manifest.run, _store=store)


def _plan_host(config: Config, store: RunStore, manifest: RunManifest, host_name: str,
               variants: Sequence[Variant], force: bool, dry_run: bool) -> list[WorkerRecord]:
    hc = config.host(host_name)
    names = [v.name for v in variants]
    gpus = assign_gpus(config, store, host_name, names, manifest.run)
    # Variants of one branch entry share its worktree (git checks a branch out only once).
    bases = list({v.base.name: v.base for v in variants}.values())
    prepared = prepare_host_worktrees(config, host_name, bases, force, dry_run)
    checkout = {b.name: (worktree, commit) for b, worktree, commit in prepared}
    layout = host_layout(config, hc, _remote_root(config, host_name))
    records = []
    for v in variants:
        worktree, commit = checkout[v.base.name]
        worker_dir = layout.worker_dir(manifest.run, v.name)
        previous = manifest.workers.get(v.name)
        attempt = previous.attempt + 1 if previous else 1
        values = {**v.vars, "name": v.name, "branch": v.base.branch,
                  "out": f"{worker_dir}/out", "data": layout.data, "run": manifest.run,
                  "worktree": worktree, "host": host_name}
        if v.seed is not None:
            values["seed"] = str(v.seed)
        command = render_command(config.commands[v.base.command], values,
                                 f"commands.{v.base.command}")
        records.append(WorkerRecord(
            name=v.name, branch=v.base.branch, commit=commit, host=host_name,
            kind=v.base.command, command=command, worktree=worktree, worker_dir=worker_dir,
            attempt=attempt, gpus=gpus[v.name], retry_max=config.retry_for(v.base.name).max,
            entry=v.base.name if v.base.name != v.name else None, vars=dict(v.vars),
            seed=v.seed, group=v.group))
    return records


def _remote_root(config: Config, host_name: str) -> str | None:
    hc = config.host(host_name)
    if hc.type == "local":
        return None
    from .sync import resolved_root

    return resolved_root(config, host_name)


def worker_env(config: Config, rec: WorkerRecord, data: str) -> dict[str, str]:
    hc = config.host(rec.host)
    b = config.branches.get(rec.branch_entry)
    env = {**config.env, **hc.env, **(b.env if b else {})}
    env.update({"WT_RUN_OUT": rec.out, "WT_RUN_NAME": rec.name, "WT_RUN_BRANCH": rec.branch,
                "WT_RUN_RUN": rec.worker_dir.rsplit("/", 3)[-3], "WT_RUN_DATA": data,
                "WT_RUN_COMMIT": rec.commit, "WT_RUN_ATTEMPT": str(rec.attempt)})
    if rec.seed is not None:
        env["WT_RUN_SEED"] = str(rec.seed)
    if rec.gpus:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(rec.gpus)
    return env


def queue_settings(hc: HostConfig) -> QueueSettings | None:
    """A shell host with slots or GPUs queues its workers; others start them at once."""
    if hc.type == "slurm" or hc.capacity is None:
        return None
    return QueueSettings(hc.slots if not hc.gpus else None, hc.gpus, hc.gpu_free_mib)


def _meta(config: Config, hc: HostConfig, rec: WorkerRecord) -> dict[str, Any]:
    policy = config.retry_for(rec.branch_entry)
    return {"name": rec.name, "run": rec.worker_dir.rsplit("/", 3)[-3], "notify": config.notify,
            "retry": {"max": policy.max, "on": list(policy.on)}, "grace": config.stop_grace,
            "gpu": bool(hc.gpus)}


def _start_host(config: Config, host_name: str, records: Sequence[WorkerRecord]
                ) -> tuple[HostOutcome, list[WorkerRecord]]:
    hc = config.host(host_name)
    now = time.time()
    if hc.type == "slurm":
        from .slurm import submit_slurm

        submitted, errors = submit_slurm(config, hc, records)
        return (HostOutcome(host_name, [r.name for r in submitted],
                            "; ".join(errors) if errors else None), submitted)
    with open_host(config, host_name) as host:
        layout = host_layout(config, hc, host.root if hc.type != "local" else None)
        specs = [LaunchSpec(r.name, r.worker_dir, r.worktree, r.command,
                            worker_env(config, r, layout.data), _meta(config, hc, r))
                 for r in records]
        try:
            started = start_workers(host, specs, config.stop_grace, queue_settings(hc))
        except HostUnreachable as exc:
            if not getattr(exc, "maybe_ran", False):
                raise
            # The connection died after the launch script was sent: it may have run. Never
            # send it again (that could start workers twice); keep the records so that
            # `status` reads the truth from the worker files.
            kept = [replace(r, launched_at=now) for r in records]
            return HostOutcome(host_name, [], f"{exc} (the workers may have started: "
                               "`wt-run status` shows them; nothing was retried)"), kept
    done = [replace(r, launched_at=now, state=None, exit_code=None, signal=None,
                    pid=None, ended_at=None, started_at=None)
            for r in records if isinstance(started.get(r.name), int)]
    errors = [f"{n}: {v}" for n, v in started.items() if not isinstance(v, int)]
    return HostOutcome(host_name, [r.name for r in done],
                       "; ".join(errors) if errors else None), done


# ---------------------------------------------------------------- generate

def generate(config: Config, *, host: str | None = None, run: str | None = None,
             extra_args: Sequence[str] = (), force: bool = False,
             dry_run: bool = False) -> LaunchReport:
    """Start dataset generation as a tracked worker named `generate` (no worktree: it runs in
    the repository itself and writes into the shared data path)."""
    if "generate" not in config.commands:
        raise WtRunError(f"no commands.generate in {config.path}",
                         "add e.g. `generate: python -m my.generate --out {data}` under commands:")
    import shlex

    host_name = host or config.default_host
    hc = config.host(host_name)
    template = config.commands["generate"]
    if extra_args:
        template = template + " " + " ".join(shlex.quote(a).replace("{", "{{").replace(
            "}", "}}") for a in extra_args)
    store = RunStore(config.state_dir)
    with store.launching(), store.planning():
        with store.locked():
            manifest = store.open_for_launch(run, str(config.path))
        run_id = manifest.run
        _refuse_live(config, store, manifest, ["generate"], force, dry_run)
        if hc.type == "local":
            repo_path, commit, branch = _local_head(config)
        else:
            from .sync import prepare_remote_repo

            repo_path, commit, branch = prepare_remote_repo(config, host_name, dry_run=dry_run)
        layout = host_layout(config, hc, _remote_root(config, host_name))
        worker_dir = layout.worker_dir(run_id, "generate")
        values = {"name": "generate", "branch": branch, "out": f"{worker_dir}/out",
                  "data": layout.data, "run": run_id, "worktree": repo_path, "host": host_name}
        command = render_command(template, values, "commands.generate")
        previous = manifest.workers.get("generate")
        rec = WorkerRecord(name="generate", branch=branch, commit=commit, host=host_name,
                           kind="generate", command=command, worktree=repo_path,
                           worker_dir=worker_dir,
                           attempt=previous.attempt + 1 if previous else 1)
        if dry_run:
            return LaunchReport(run_id, [rec], [HostOutcome(host_name)], dry_run=True)
        if hc.type == "local":
            Path(layout.data).mkdir(parents=True, exist_ok=True)
        _record_planned(store, manifest, [rec])
        try:
            outcome, done = _start_host(config, host_name, [rec])
        except WtRunError as exc:
            outcome, done = HostOutcome(host_name, error=str(exc)), []
        store.update(run_id, *done, expected={"generate": rec})
    return LaunchReport(run_id, [rec], [outcome])


def _local_head(config: Config) -> tuple[str, str, str]:
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(config.repo), *args], capture_output=True,
                              text=True, check=False).stdout.strip()

    return str(config.repo), git("rev-parse", "HEAD"), git("branch", "--show-current")


# ---------------------------------------------------------------- status

def status(config: Config, run: str | None = None, *, store: RunStore | None = None
           ) -> StatusReport:
    store = store or RunStore(config.state_dir)
    run_id = store.resolve(run)
    manifest = store.load(run_id)
    return _observe_manifest(config, store, manifest)


def _observe_manifest(config: Config, store: RunStore, manifest: RunManifest) -> StatusReport:
    records = list(manifest.workers.values())
    by_host = group_by_host(records)
    host_names = list(by_host)
    results = parallel_map(lambda h: observe_host(config, h, by_host[h]), host_names)
    observed: dict[str, Observation] = {}
    healths: list[HostHealth] = []
    for h, (health, observations) in zip(host_names, results):
        healths.append(health)
        for rec, obs in zip(by_host[h], observations):
            observed[rec.name] = obs
    views: list[WorkerView] = []
    changed: list[WorkerRecord] = []
    for rec in records:
        obs = observed[rec.name]
        if (obs.reason == NEVER_STARTED and rec.launched_at is None and rec.state is None
                and store.busy()):
            # Recorded by a launch that is still starting its workers: not lost, pending.
            obs = replace(obs, state=WorkerState.PENDING, reason=None)
        if rec.state is not None:
            # A terminal state never goes back: keep what was recorded.
            cached = Observation(WorkerState(rec.state), rec.pid, rec.exit_code, rec.signal,
                                 rec.started_at, rec.ended_at,
                                 obs.progress if obs.state != WorkerState.UNKNOWN else None,
                                 obs.host_time, rec.reason)
            views.append(WorkerView(rec, cached))
            continue
        views.append(WorkerView(rec, obs))
        if obs.env and not rec.env:
            rec = replace(rec, env=dict(obs.env))
            if not obs.state.terminal:
                changed.append(rec)
        if obs.state.terminal:
            changed.append(replace(rec, state=obs.state.value, exit_code=obs.exit_code,
                                   attempt=max(rec.attempt, obs.attempt or 0),
                                   gpus=obs.gpus or rec.gpus,
                                   signal=obs.signal, pid=obs.pid, started_at=obs.started_at,
                                   ended_at=obs.ended_at, reason=obs.reason,
                                   scheduler_state=getattr(obs, "scheduler_state",
                                                           rec.scheduler_state)))
    if changed:
        # Only over the records observed: a relaunch meanwhile made a new attempt.
        store.update(manifest.run, *changed, expected={r.name: r for r in records})
    return StatusReport(manifest.run, views, healths)


def wait(config: Config, run: str, on_update: Callable[[StatusReport], None] | None = None,
         interval: float = 1.0) -> StatusReport:
    """Poll until every worker is in a terminal state."""
    while True:
        report = status(config, run)
        if on_update:
            on_update(report)
        if report.done:
            return report
        time.sleep(interval)


# ---------------------------------------------------------------- stop

@dataclass(frozen=True)
class StopOutcome:
    name: str
    host: str
    result: str  # signalled | done | marked | mismatch | unknown: <why>


def stop(config: Config, names: Sequence[str], *, run: str | None = None, all_: bool = False,
         _store: RunStore | None = None) -> list[StopOutcome]:
    store = _store or RunStore(config.state_dir)
    run_id = store.resolve(run)
    manifest = store.load(run_id)
    targets = manifest.select(() if all_ else names)
    by_host = group_by_host(r for r in targets if r.state is None)
    outcomes = [StopOutcome(r.name, r.host, "done") for r in targets if r.state is not None]

    def stop_host(host_name: str) -> list[StopOutcome]:
        recs = by_host[host_name]
        hc = config.host(host_name)
        try:
            if hc.type == "slurm":
                from .slurm import cancel_slurm

                results = cancel_slurm(config, hc, recs)
            else:
                with open_host(config, host_name) as host:
                    results = stop_workers(host, [r.worker_dir for r in recs],
                                           config.stop_grace)
        except HostUnreachable as exc:
            results = [f"unknown: {exc.reason}"] * len(recs)
        return [StopOutcome(r.name, host_name, res) for r, res in zip(recs, results)]

    for chunk in parallel_map(stop_host, list(by_host)):
        outcomes += chunk
    return outcomes


# ---------------------------------------------------------------- logs

def logs(config: Config, name: str, *, run: str | None = None, follow: bool = False,
         lines: int = 50, out: TextIO | None = None) -> int:
    # Resolved at call time: a default of sys.stdout would pin the stream seen at import.
    out = out or sys.stdout
    store = RunStore(config.state_dir)
    run_id = store.resolve(run)
    manifest = store.load(run_id)
    [rec] = manifest.select([name])
    hc = config.host(rec.host)
    if hc.type == "slurm":
        from .slurm import slurm_log_path

        path = slurm_log_path(rec)
    else:
        path = rec.log
    with open_host(config, rec.host) as host:
        if not follow:
            result = host.run_script(log_script(path, lines, False))
            if result.exit_code == 3:
                raise WtRunError(f"worker '{name}' has no log yet at {path}",
                                 "wait for it to start (`wt-run status`)")
            out.write(result.check().stdout)
            return 0
        return host.stream_script(log_script(path, lines, True), out)


# ---------------------------------------------------------------- queue

def resume(config: Config, hosts: Sequence[str] = ()) -> list[tuple[str, str]]:
    """Start the queue drainer on each queueing host (all of them by default): after a reboot
    queued workers wait with nothing draining them. Returns (host, what happened)."""
    names = list(hosts) or [h.name for h in config.hosts.values() if queue_settings(h)]
    for h in names:
        config.host(h)

    def kick(host_name: str) -> tuple[str, str]:
        hc = config.host(host_name)
        if queue_settings(hc) is None:
            return host_name, "has no queue (no slots: or gpus:)"
        try:
            with open_host(config, host_name) as host:
                out = host.run_script(resume_script(host.root)).check().stdout.split()
        except HostUnreachable as exc:
            return host_name, f"unreachable: {exc.reason}"
        waiting = out[-1] if out and out[-1].isdigit() else "0"
        return host_name, f"queue drainer started ({waiting} waiting)"

    return parallel_map(kick, names)
