"""`launch` and `generate`: plan workers (variants, hosts, worktrees, commands), record them,
then start them, written once against `Backend`.

The manifest lock is held only to read and write the manifest: status, stop, logs and collect
go on while a launch syncs code and prepares worktrees. Launches themselves take turns at the
planning lock, which also keeps `clean` from removing a worktree a worker is about to use."""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from dataclasses import replace

from .api import parallel_map, still_live, stop
from .backend import Backend
from .backends import backend_for
from .config import BranchConfig, Config
from .errors import WtRunError
from .reports import HostOutcome, LaunchReport
from .runs import RunManifest, RunStore, WorkerRecord
from .templates import render_command
from .variants import Variant, expand


def assign_hosts(config: Config, branches: Sequence[BranchConfig],
                 hosts: Sequence[str]) -> dict[str, str]:
    """name -> host. With --host options, branches are spread round-robin over them, filling
    hosts by capacity; otherwise each branch's own host or the default."""
    for h in hosts:
        config.host(h)
    if not hosts:
        return {b.name: b.host or config.default_host for b in branches}
    if len(hosts) == 1:
        return {b.name: hosts[0] for b in branches}
    # Round-robin, skipping hosts this launch has already filled to their capacity (slots or
    # gpus); when all are full, each host's own queue takes the rest.
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
        else:
            host = min(hosts, key=lambda h: load[h] / (config.host(h).capacity or 1))
        load[host] += 1
        placement[b.name] = host
    return placement


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
    placement = assign_hosts(config, [replace(v.base, name=v.name, vars=v.vars)
                                      for v in variants.values()], hosts)
    by_host: dict[str, list[Variant]] = {}
    for v in variants.values():
        by_host.setdefault(placement[v.name], []).append(v)
    notes = _checkout_notes(config, [v.base for v in variants.values()], dry_run)
    store = RunStore(config.state_dir)
    with store.launching(), store.planning():
        with store.locked():
            manifest = store.open_for_launch(run, str(config.path))
        _refuse_live(config, store, manifest, list(variants), force, dry_run)
        host_names = list(by_host)

        def plan(host_name: str) -> list[WorkerRecord] | WtRunError:
            try:
                return _plan_host(backend_for(config, host_name), manifest,
                                  by_host[host_name], force, dry_run)
            except WtRunError as exc:
                return exc

        planned_per_host = parallel_map(plan, host_names)
        if len(host_names) == 1 and isinstance(planned_per_host[0], WtRunError):
            raise planned_per_host[0]
        planned = [r for p in planned_per_host if isinstance(p, list) for r in p]
        if dry_run:
            return LaunchReport(manifest.run, planned, [
                HostOutcome(h, [], str(p) if isinstance(p, WtRunError) else None)
                for h, p in zip(host_names, planned_per_host)], dry_run=True, notes=notes)
        _record_planned(store, manifest, planned)
        results = parallel_map(lambda i: _start_host(config, manifest.run, host_names[i],
                                                     planned_per_host[i]),
                               list(range(len(host_names))))
        store.update(manifest.run, *(r for _, recs in results for r in recs),
                     expected={r.name: r for r in planned})
    return LaunchReport(manifest.run, planned, [o for o, _ in results], notes=notes)


def _checkout_notes(config: Config, bases: Sequence[BranchConfig], dry_run: bool
                    ) -> tuple[str, ...]:
    """A new branch starts from `base`'s commit: a dry run says so, and uncommitted edits in
    the user's checkout do not go with it, which is easy to miss (the worker reads clean)."""
    from .repo_refs import branch_commits, git_out

    unique = list({b.branch: b for b in bases}.values())
    wanted = branch_commits(config, unique)
    new = [(b.branch, w.commit) for b, w in zip(unique, wanted)
           if w.ref != f"refs/heads/{b.branch}"]
    if not new:
        return ()
    notes = []
    if dry_run:
        notes.append(f"would create branch(es) {', '.join(n for n, _ in new)} from base "
                     f"'{config.base}' ({new[0][1][:8]})")
    if git_out(config, "status", "--porcelain", "--untracked-files=no", check=False).strip():
        notes.append(f"your checkout {config.repo} has uncommitted changes; the new "
                     f"branch(es) {', '.join(n for n, _ in new)} start from base "
                     f"'{config.base}' without them (commit them first to run them)")
    return tuple(notes)


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
    live = still_live(config, (manifest.workers[n] for n in names if n in manifest.workers))
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


def _plan_host(backend: Backend, manifest: RunManifest, variants: Sequence[Variant],
               force: bool, dry_run: bool) -> list[WorkerRecord]:
    config = backend.config
    # Variants of one branch entry share its worktree (git checks a branch out only once).
    bases = list({v.base.name: v.base for v in variants}.values())
    checkouts = dict(zip([b.name for b in bases],
                         backend.prepare_worktrees(bases, force=force, dry_run=dry_run)))
    layout = backend.layout()
    records = []
    for v in variants:
        checkout = checkouts[v.base.name]
        worker_dir = layout.worker_dir(manifest.run, v.name)
        previous = manifest.workers.get(v.name)
        values = {**v.vars, "name": v.name, "branch": v.base.branch,
                  "out": f"{worker_dir}/out", "data": layout.data, "run": manifest.run,
                  "worktree": checkout.path, "host": backend.name}
        if v.seed is not None:
            values["seed"] = str(v.seed)
        command = render_command(config.commands[v.base.command], values,
                                 f"commands.{v.base.command}")
        records.append(WorkerRecord(
            name=v.name, branch=v.base.branch, commit=checkout.commit, host=backend.name,
            kind=v.base.command, command=command, worktree=checkout.path,
            worker_dir=worker_dir, attempt=previous.attempt + 1 if previous else 1,
            retry_max=config.retry_for(v.base.name).max,
            entry=v.base.name if v.base.name != v.name else None, vars=dict(v.vars),
            seed=v.seed, group=v.group))
    return records


def _start_host(config: Config, run: str, host_name: str,
                records: list[WorkerRecord] | WtRunError
                ) -> tuple[HostOutcome, list[WorkerRecord]]:
    if isinstance(records, WtRunError):
        return HostOutcome(host_name, error=str(records)), []
    backend = backend_for(config, host_name)
    try:
        started = backend.start(run, records)
    except WtRunError as exc:
        return HostOutcome(host_name, error=str(exc)), []
    names = [] if started.maybe_ran else [r.name for r in started.records]
    queued = names if backend.queue() is not None else []
    return (HostOutcome(host_name, [n for n in names if n not in queued],
                        "; ".join(started.errors) or None, queued), started.records)


def generate(config: Config, *, host: str | None = None, run: str | None = None,
             extra_args: Sequence[str] = (), force: bool = False,
             dry_run: bool = False) -> LaunchReport:
    """Start dataset generation as a tracked worker named `generate` (no worktree: it runs in
    the repository itself and writes into the shared data path)."""
    if "generate" not in config.commands:
        raise WtRunError(f"no commands.generate in {config.path}",
                         "add e.g. `generate: python -m my.generate --out {data}` under commands:")
    backend = backend_for(config, host or config.default_host)
    template = config.commands["generate"]
    if extra_args:
        template = template + " " + " ".join(shlex.quote(a).replace("{", "{{").replace(
            "}", "}}") for a in extra_args)
    store = RunStore(config.state_dir)
    with store.launching(), store.planning():
        with store.locked():
            manifest = store.open_for_launch(run, str(config.path))
        _refuse_live(config, store, manifest, ["generate"], force, dry_run)
        checkout = backend.prepare_repo(dry_run=dry_run)
        layout = backend.layout()
        worker_dir = layout.worker_dir(manifest.run, "generate")
        values = {"name": "generate", "branch": checkout.branch, "out": f"{worker_dir}/out",
                  "data": layout.data, "run": manifest.run, "worktree": checkout.path,
                  "host": backend.name}
        command = render_command(template, values, "commands.generate")
        previous = manifest.workers.get("generate")
        rec = WorkerRecord(name="generate", branch=checkout.branch, commit=checkout.commit,
                           host=backend.name, kind="generate", command=command,
                           worktree=checkout.path, worker_dir=worker_dir,
                           attempt=previous.attempt + 1 if previous else 1)
        if dry_run:
            return LaunchReport(manifest.run, [rec], [HostOutcome(backend.name)], dry_run=True)
        _record_planned(store, manifest, [rec])
        outcome, done = _start_host(config, manifest.run, backend.name, [rec])
        store.update(manifest.run, *done, expected={"generate": rec})
    return LaunchReport(manifest.run, [rec], [outcome])
