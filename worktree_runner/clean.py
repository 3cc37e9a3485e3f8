"""`wt-run clean`: remove worktrees and run files, never losing a result nobody collected.

Both operations run under the planning lock, so a launch in progress (which holds it until
its workers are recorded and started) is never cut short; `clean --run` also checks and
deletes under it, so a concurrent `launch --run X` cannot lose its new records."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from .api import host_records, parallel_map, status, still_live
from .backends import backend_for
from .collect_lister import pattern_regex
from .config import Config
from .errors import WtRunError
from .runs import RunStore, WorkerRecord, group_by_host


@dataclass(frozen=True)
class CleanAction:
    what: str
    target: str
    done: bool
    note: str = ""


def clean_worktrees(config: Config, *, hosts: Sequence[str] = (), dry_run: bool = False,
                    force: bool = False, delete_branches: bool = False) -> list[CleanAction]:
    """Remove wt-run's worktrees on this machine, or on `hosts` (not those with live workers,
    nor, without force, those holding results nobody collected) and prune stale entries;
    optionally delete their branches when merged (or when forced)."""
    store = RunStore(config.state_dir)
    with store.planning():
        if not hosts:
            return _clean_local_worktrees(config, store, "local", dry_run=dry_run,
                                          force=force, delete_branches=delete_branches)
        actions: list[CleanAction] = []
        for name in hosts:
            backend = backend_for(config, name)
            if backend.connect().local:
                actions += _clean_local_worktrees(config, store, name, dry_run=dry_run,
                                                  force=force, delete_branches=delete_branches)
                continue
            from .clean_remote import clean_host_worktrees

            records = list(host_records(store, name))
            busy = _busy(config, records)
            actions += [CleanAction(*a) for a in clean_host_worktrees(
                config, backend, busy, records, dry_run=dry_run, force=force,
                delete_branches=delete_branches)]
        return actions


def _busy(config: Config, records: Sequence[tuple[str, WorkerRecord]]) -> set[str]:
    """Worktree names (and worker names) with a live worker: variants of a sweep share
    their branch's worktree."""
    live = still_live(config, (r for _, r in records))
    return {r.name for r in live} | {os.path.basename(r.worktree) for r in live if r.worktree}


def _clean_local_worktrees(config: Config, store: RunStore, host: str, *, dry_run: bool,
                           force: bool, delete_branches: bool) -> list[CleanAction]:
    from .worktrees import delete_branch, plan_removal, prune_worktrees, remove_worktree

    busy = _busy(config, list(host_records(store, host)))
    plans = plan_removal(config, busy)
    if not force:
        _refuse_uncollected(config, store, [p.path for p in plans
                                            if not p.reason.startswith("skip:")])
    actions: list[CleanAction] = []
    for plan in plans:
        if plan.reason.startswith("skip:") and not (force and "uncommitted" in plan.reason):
            actions.append(CleanAction("keep worktree", str(plan.path), False,
                                       plan.reason[5:]))
            continue
        if not dry_run:
            remove_worktree(config, plan.path, force)
        actions.append(CleanAction("remove worktree", str(plan.path), not dry_run))
        if delete_branches and plan.branch:
            why = None if dry_run else delete_branch(config, plan.branch, force)
            actions.append(CleanAction("delete branch", plan.branch,
                                       not dry_run and why is None, why or ""))
    if not dry_run:
        prune_worktrees(config)
    actions.append(CleanAction("prune stale worktree entries", str(config.repo),
                               not dry_run))
    return actions


def _result_files(worktree: Path, patterns: Sequence[str], shared: Sequence[str]
                  ) -> Iterator[tuple[str, float]]:
    """(relative path, mtime) of each file in the worktree that collect would take (matched
    by collect's own glob rules)."""
    regexes = [pattern_regex(p) for p in patterns]
    skip = {".git", *shared}
    for top, dirs, files in os.walk(worktree):
        rel_top = os.path.relpath(top, worktree)
        dirs[:] = [d for d in dirs if os.path.normpath(os.path.join(rel_top, d)) not in skip
                   and not os.path.islink(os.path.join(top, d))]
        for f in files:
            rel = os.path.normpath(os.path.join(rel_top, f))
            full = os.path.join(top, f)
            if rel in skip or os.path.islink(full):
                continue
            if any(r.match(rel) for r in regexes):
                yield rel, os.stat(full).st_mtime


def _newest_record(store: RunStore, worktree: Path) -> tuple[str, WorkerRecord] | None:
    """The run and record that used this worktree last."""
    real = os.path.realpath(worktree)
    found = [(rec.launched_at or 0.0, run, rec) for run, rec in host_records(store, "local")
             if os.path.realpath(rec.worktree) == real]
    if not found:
        return None
    _, run, rec = max(found, key=lambda t: t[0])
    return run, rec


def _refuse_uncollected(config: Config, store: RunStore, worktrees: Sequence[Path]) -> None:
    for wt in worktrees:
        newest = _newest_record(store, wt)
        collected = (newest[1].collected_at or 0.0) if newest else 0.0
        fresh = sorted(rel for rel, mtime in _result_files(wt, config.collect, config.shared)
                       if mtime > collected)
        if not fresh:
            continue
        shown = ", ".join(fresh[:3]) + (f" and {len(fresh) - 3} more" if len(fresh) > 3 else "")
        if newest is None:
            raise WtRunError(f"worktree {wt} holds results no run has collected ({shown})",
                             "copy them out, or pass --force to delete them")
        run = newest[0]
        raise WtRunError(f"worktree {wt} holds results of run {run} not collected yet ({shown})",
                         f"run `wt-run collect --run {run}` first, or pass --force to delete "
                         "them")


def clean_run(config: Config, run: str, *, dry_run: bool = False, force: bool = False
              ) -> list[CleanAction]:
    """Delete a run's records and its worker directories on every host. Refuses while a worker
    runs, and (without force) before the run has been collected."""
    store = RunStore(config.state_dir)
    with store.planning():
        run_id = store.resolve(run)
        report = status(config, run_id, store=store)
        live = [w.record.name for w in report.workers if not w.state.terminal]
        if live:
            raise WtRunError(f"run {run_id} still has live or unreachable workers: "
                             f"{', '.join(live)}",
                             f"stop them first: `wt-run stop --all --run {run_id}`")
        uncollected = [w.record.name for w in report.workers if w.record.collected_at is None]
        if uncollected and not force:
            raise WtRunError(f"run {run_id} has results not collected yet "
                             f"({', '.join(uncollected)})",
                             f"run `wt-run collect --run {run_id}` first, or pass --force")
        hosts = list(group_by_host(w.record for w in report.workers))

        def remove(host_name: str) -> CleanAction:
            backend = backend_for(config, host_name)
            if dry_run:
                return CleanAction("remove run files",
                                   f"{host_name}:{backend.layout().run_dir(run_id)}", False)
            return CleanAction("remove run files",
                               f"{host_name}:{backend.remove_run_files(run_id)}", True)

        actions = parallel_map(remove, hosts)
        local_dir = store.run_dir(run_id)
        if not any(a.target == f"local:{local_dir}" for a in actions):
            actions.append(CleanAction("remove run files", f"local:{local_dir}", not dry_run))
        if not dry_run:
            with store.locked():
                shutil.rmtree(local_dir, ignore_errors=True)
        return actions
