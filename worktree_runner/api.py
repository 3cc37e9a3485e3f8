"""The library behind status, stop, logs and resume, written once against `Backend`.

Work is grouped per host and each host is handled in one round trip, hosts in parallel; one
unreachable host never hides the others."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import TextIO, TypeVar

from .backends import backend_for
from .config import Config
from .errors import HostUnreachable, WtRunError
from .reports import StatusReport, StopOutcome, WorkerView
from .runs import RunManifest, RunStore, WorkerRecord, group_by_host
from .states import NEVER_STARTED, HostHealth, Observation, WorkerState
from .workers import log_script

T = TypeVar("T")
R = TypeVar("R")


def parallel_map(fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
    """Run fn over items in threads (one per host); results in order."""
    if len(items) <= 1:
        return [fn(i) for i in items]
    with ThreadPoolExecutor(max_workers=min(16, len(items))) as pool:
        return list(pool.map(fn, items))


def observe_host(config: Config, host_name: str, records: Sequence[WorkerRecord],
                 timeout: float | None = None) -> tuple[HostHealth, list[Observation]]:
    """One round trip to a host: its health and every record's observation. An unreachable
    host yields `unknown` for each of its workers, with the reason."""
    try:
        return backend_for(config, host_name).observe(records, timeout)
    except HostUnreachable as exc:
        obs = Observation(WorkerState.UNKNOWN, reason=exc.reason)
        return HostHealth(host_name, False, exc.reason), [obs] * len(records)


def still_live(config: Config, records: Iterable[WorkerRecord]) -> list[WorkerRecord]:
    """Those of the records whose worker is not in a terminal state now (pending, running or
    unknown); one round trip per host, and none for records already cached terminal."""
    by_host = group_by_host(r for r in records if r.state is None)
    live: list[WorkerRecord] = []
    for host_name, recs in by_host.items():
        _, observations = observe_host(config, host_name, recs)
        live += [r for r, o in zip(recs, observations) if not o.state.terminal]
    return live


def host_records(store: RunStore, host: str) -> Iterator[tuple[str, WorkerRecord]]:
    """(run, record) for every worker of every run on `host`."""
    for run in store.list_runs():
        for rec in store.load(run).workers.values():
            if rec.host == host:
                yield run, rec


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

def stop(config: Config, names: Sequence[str], *, run: str | None = None, all_: bool = False,
         _store: RunStore | None = None) -> list[StopOutcome]:
    store = _store or RunStore(config.state_dir)
    run_id = store.resolve(run)
    manifest = store.load(run_id)
    targets = manifest.select(() if all_ else names)
    # A lost worker's wrapper is gone, but its command may run on (a wrapper killed -9):
    # the host looks for what is left of it.
    live = [r for r in targets if r.state is None or r.state == "lost"]
    by_host = group_by_host(live)
    outcomes = [StopOutcome(r.name, r.host, "done") for r in targets if r not in live]

    def stop_host(host_name: str) -> list[StopOutcome]:
        recs = by_host[host_name]
        try:
            results = backend_for(config, host_name).stop(recs)
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
    backend = backend_for(config, rec.host)
    path = backend.log_path(rec)
    host = backend.connect()
    if rec.state is not None:
        follow = False  # it has ended: following would wait forever for lines that never come
    if not follow:
        result = host.run_script(log_script(path, lines, False))
        if result.exit_code == 3 and rec.state is not None:
            raise WtRunError(f"worker '{name}' has ended ({rec.state}) and has no log at "
                             f"{path} (removed?)", "look in the collected results, "
                             f"results/{run_id}/{name}/log, if it was collected")
        if result.exit_code == 3:
            raise WtRunError(f"worker '{name}' has no log yet at {path}",
                             "wait for it to start (`wt-run status`)")
        out.write(result.check().stdout)
        return 0
    return host.stream_script(log_script(path, lines, True), out)


# ---------------------------------------------------------------- queue and setup

def resume(config: Config, hosts: Sequence[str] = ()) -> list[tuple[str, str]]:
    """Start the queue drainer on each queueing host (all of them by default): after a reboot
    queued workers wait with nothing draining them. Returns (host, what happened)."""
    names = list(hosts) or [h for h in config.hosts if backend_for(config, h).queue()]
    backends = [backend_for(config, h) for h in names]

    def kick(i: int) -> tuple[str, str]:
        try:
            return names[i], backends[i].resume()
        except HostUnreachable as exc:
            return names[i], f"unreachable: {exc.reason}"

    return parallel_map(kick, list(range(len(names))))


def setup(config: Config, host: str, *, dry_run: bool = False) -> list[str]:
    """Prepare a host (idempotent): code, virtualenv, shared paths."""
    return backend_for(config, host).setup(dry_run=dry_run)
