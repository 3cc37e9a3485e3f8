"""`wt-run clean`: remove worktrees and run files, never losing a result nobody collected.

Both operations run under the planning lock, so a launch in progress (which holds it until
its workers are recorded and started) is never cut short; `clean --run` also checks and
deletes under it, so a concurrent `launch --run X` cannot lose its new records."""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass

from .api import host_records, parallel_map, status, still_live
from .backends import backend_for
from .config import Config
from .errors import WtRunError
from .runs import RunStore, group_by_host


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
    from .clean_worktrees import clean_host_worktrees

    store = RunStore(config.state_dir)
    actions: list[CleanAction] = []
    with store.planning():
        for name in hosts or ["local"]:
            records = list(host_records(store, name))
            live = still_live(config, (r for _, r in records))
            # Variants of a sweep share their branch's worktree.
            busy = {r.name for r in live} | {os.path.basename(r.worktree) for r in live
                                             if r.worktree}
            actions += [CleanAction(*a) for a in clean_host_worktrees(
                config, backend_for(config, name), busy, records, dry_run=dry_run,
                force=force, delete_branches=delete_branches)]
    return actions


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
