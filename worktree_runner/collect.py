"""`collect`: pull each worker's outputs, logs and metadata back to this machine, verified,
incrementally and resumably, from local, SSH and Slurm hosts.

Layout of what is collected (`results/` in the repository unless `--dest`)::

    results/<run>/<name>/
      worker.json          the WorkerRecord as JSON, plus the observed state and a collect summary
      log                  the worker's stdout+stderr (latest attempt)
      attempts/<n>/log     logs of earlier attempts, and attempts/<n>/out/ their outputs
      out/...              the worker's $WT_RUN_OUT: metrics, checkpoints, TensorBoard files...
      worktree/...         files matching `collect:` globs, at their worktree-relative paths
      .collect/            bookkeeping: index.json (verified sha256 of every file collected),
                           incoming/ (staging: partial and unverified copies)

How a worker is collected:
1. One round trip per host lists every candidate file of every worker with its size, mtime and
   sha256 (`collect_lister.py`, run by the host's python; the host caches checksums, so an
   unchanged file is hashed there once) and says why anything else was skipped or refused.
2. A file whose local copy already has the host's sha256 is left alone (a local index keyed by
   inode, size, mtime and ctime avoids re-hashing): an unchanged collect moves no data.
3. Other files are copied into `.collect/incoming/` (`collect_transfer.py`): OpenSSH's sftp
   client over the host's own OpenSSH settings, SFTP on wt-run's connection where this
   machine lacks the OpenSSH client, a plain copy on this machine. Copies resume where an
   interrupted collect stopped. A first collect connects and starts its first sftp while the
   host lists; each later sftp starts while the one before copies.
4. Each copy is checked: the listed size and mtime (otherwise the file changed during the
   collect and is skipped until next time) and the sha256 the host computed (otherwise: an
   error, retried once). Copies are hashed here as soon as each is complete, while the next
   ones arrive. Only a verified copy is renamed to its final path, inside the destination.
5. A worker whose files all verified, and that has ended, is marked collected in the manifest.

A Slurm host is reached through its login node (`via:`), or this machine's filesystem.
Files removed on the host after an earlier collect are kept here.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from .backends import open_host
from .collect_files import (
    BOOKKEEPING,
    LocalIndex,
    StagedHasher,
    inside,
    safe_rel,
    same_mtime,
    secure_staging,
)
from .collect_listing import list_host
from .collect_model import (
    CollectObserver,
    CollectReport,
    RemoteFile,
    Skipped,
    WorkerCollect,
    WorkerListing,
)
from .collect_openssh import OpenSSHTransport, choose_transport, openssh_here
from .collect_transfer import (
    TRANSPORT_ENV,
    TRANSPORTS,
    TransferResult,
    Transport,
)
from .config import Config
from .errors import HostUnreachable, WtRunError
from .runs import RunStore, WorkerRecord, atomic_write_text, group_by_host
from .states import WorkerState

__all__ = ["CollectObserver", "CollectReport", "Skipped", "WorkerCollect", "collect"]

CHANGED = "changed during the collect (still being written?); collect again later"


# ---------------------------------------------------------------- one worker

@dataclass
class WorkerPlan:
    rec: WorkerRecord
    dest: Path
    listing: WorkerListing
    state: str
    running: bool
    index: LocalIndex
    fetch: list[RemoteFile] = field(default_factory=list)
    refused: list[Skipped] = field(default_factory=list)
    error: str | None = None  # nothing may be written for this worker

    @property
    def staging(self) -> Path:
        return self.dest / BOOKKEEPING / "incoming"


def plan_worker(rec: WorkerRecord, dest: Path, listing: WorkerListing, state: str,
                running: bool) -> WorkerPlan:
    """Decide, for every listed file, whether its verified copy is already here."""
    plan = WorkerPlan(rec, dest, listing, state, running,
                      LocalIndex(dest / BOOKKEEPING / "index.json"))
    if dest.is_symlink():  # everything would land wherever it points: write nothing
        plan.error = f"{dest} is a symlink, not a directory: remove it and collect again"
        return plan
    dest.mkdir(parents=True, exist_ok=True)
    for f in listing.files:
        problem = safe_rel(f.rel)
        target = dest / f.local_rel
        if problem is None and not inside(dest, target.parent / "x"):
            problem = "its local directory resolves outside the results directory"
        if problem:
            plan.refused.append(Skipped(f.local_rel, f"refused: {problem}"))
        elif plan.index.sha256(f.local_rel, target, f.size) != f.sha256:
            plan.fetch.append(f)
    return plan


def transfer_worker(plan: WorkerPlan, transport: Transport, observer: CollectObserver,
                    then: tuple[str, Path] | None = None
                    ) -> tuple[TransferResult, list[str], list[Skipped]]:
    """Copy what is missing into staging, verify, move into place. Returns what moved, the
    errors and the files skipped because they changed or vanished during the copy. `then`:
    the (root, staging) the next transfer reads, started ahead (`Transport.prepare`)."""
    files = nbytes = 0
    errors: list[str] = []
    changed: list[Skipped] = []
    pending = list(plan.fetch)
    for attempt in (1, 2):
        if not pending:
            break
        observer.planned(len(pending), sum(f.size for f in pending))
        gone: dict[tuple[str, str], str] = {}
        groups = list(_by_root(pending))
        ahead = [(_source_root(plan, root), plan.staging / root) for root, _ in groups[1:]]
        with StagedHasher([(plan.staging / f.root / f.rel, f) for f in pending]) as hasher:
            for (root, group), upcoming in zip(groups, [*ahead, then]):
                if upcoming is not None and attempt == 1:
                    secure_staging(upcoming[1])
                    transport.prepare(*upcoming)
                secure_staging(plan.staging / root)
                moved = transport.fetch(_source_root(plan, root), [f.rel for f in group],
                                        plan.staging / root, {f.rel: f.size for f in group},
                                        observer)
                files += moved.files
                nbytes += moved.bytes
                gone.update(((root, rel), why) for rel, why in moved.unreadable)
        retry = []
        for f in pending:
            why = gone.get((f.root, f.rel))
            kind, why = ("skip", f"skipped on the host: {why}") if why else \
                _verify_and_place(plan, f, hasher)
            if kind == "skip":
                changed.append(Skipped(f.local_rel, why))
            elif kind == "retry" and attempt == 1:
                retry.append(f)  # a stale partial or a bad copy: once more from scratch
            elif kind == "retry":
                errors.append(f"{f.local_rel}: {why}")
        pending = retry
    plan.index.save()
    return TransferResult(files, nbytes), errors, changed


def first_read(plan: WorkerPlan | None) -> tuple[str, Path] | None:
    """The (root on the host, staging dir) a plan's transfer reads first, if it has one."""
    if plan is None or not plan.fetch:
        return None
    root = next(_by_root(plan.fetch))[0]
    return _source_root(plan, root), plan.staging / root


def _by_root(files: Iterable[RemoteFile]) -> Iterator[tuple[str, list[RemoteFile]]]:
    groups: dict[str, list[RemoteFile]] = {}
    for f in files:
        groups.setdefault(f.root, []).append(f)
    yield from groups.items()


def _source_root(plan: WorkerPlan, root: str) -> str:
    return plan.rec.worker_dir if root == "worker" else plan.rec.worktree


def _verify_and_place(plan: WorkerPlan, f: RemoteFile, hasher: StagedHasher
                      ) -> tuple[str, str]:
    """("ok", ""), ("skip", why) for a file that changed on the host, or ("retry", why) for a
    copy that is missing or wrong."""
    staged = plan.staging / f.root / f.rel
    if not inside(plan.staging, staged) or os.path.islink(staged):
        return "retry", "refused: staged copy is not a plain file inside the staging directory"
    try:
        st = staged.stat()
    except FileNotFoundError:
        return "retry", "was not transferred"
    if st.st_size != f.size or not same_mtime(st.st_mtime_ns, f.mtime_ns):
        return "skip", CHANGED
    digest = hasher.digest(staged, st)
    if digest != f.sha256:
        staged.unlink()
        return "retry", (f"checksum mismatch: host sha256 {f.sha256[:16]}…, copy "
                         f"{digest[:16]}… (copy discarded)")
    target = plan.dest / f.local_rel
    # Before creating its directories (a link on the way would have them made outside), and
    # after (a link that appeared meanwhile).
    if not inside(plan.dest, target.parent / "x"):
        return "retry", "refused: target directory resolves outside the results directory"
    target.parent.mkdir(parents=True, exist_ok=True)
    if not inside(plan.dest, target.parent / "x"):
        return "retry", "refused: target directory resolves outside the results directory"
    if target.is_symlink() or target.is_dir():
        return "retry", "refused: a symlink or directory is in the way of the copy"
    os.replace(staged, target)
    plan.index.record(f.local_rel, target, digest)
    return "ok", ""


def write_worker_json(run_id: str, plan: WorkerPlan, result: WorkerCollect,
                      collected_at: float | None) -> None:
    rec = replace(plan.rec, collected_at=collected_at or plan.rec.collected_at)
    data = asdict(rec)
    data["log"] = rec.log
    data["out"] = rec.out
    data["observed_state"] = plan.state
    data["run"] = run_id
    data["collect"] = {k: v for k, v in result.to_json().items() if k not in ("dest",)}
    atomic_write_text(plan.dest / "worker.json", json.dumps(data, indent=1, sort_keys=True)
                      + "\n", mode=0o644)


# ---------------------------------------------------------------- the run

def collect(config: Config, *, run: str | None = None, dest: Path | None = None,
            names: Sequence[str] = (), transport: str | None = None,
            observer: CollectObserver | None = None) -> CollectReport:
    """Collect every worker (or `names`) of a run from all its hosts, hosts in parallel."""
    from .api import observe_host, parallel_map

    observer = observer or CollectObserver()
    wanted = (transport or os.environ.get(TRANSPORT_ENV) or "auto").lower()
    if wanted not in TRANSPORTS:
        raise WtRunError(f"unknown collect transport '{wanted}'",
                         f"set {TRANSPORT_ENV} to one of {', '.join(TRANSPORTS)}")
    store = RunStore(config.state_dir)
    run_id = store.resolve(run)
    records = store.load(run_id).select(names)
    root = (dest or config.repo / "results").expanduser().resolve() / run_id
    by_host = group_by_host(records)

    def one_host(host_name: str) -> list[WorkerCollect]:
        recs = by_host[host_name]
        try:
            return _collect_host(config, store, run_id, host_name, recs, root, wanted,
                                 observer, observe_host)
        except (HostUnreachable, WtRunError) as exc:
            return [WorkerCollect(r.name, host_name, r.state or "unknown", root / r.name,
                                  errors=(str(exc),)) for r in recs]

    results = [w for chunk in parallel_map(one_host, list(by_host)) for w in chunk]
    order = {r.name: i for i, r in enumerate(records)}
    return CollectReport(run_id, root, tuple(sorted(results, key=lambda w: order[w.name])))


def _collect_host(config: Config, store: RunStore, run_id: str, host_name: str,
                  recs: Sequence[WorkerRecord], root: Path, wanted: str,
                  observer: CollectObserver, observe_host: Callable[..., Any]
                  ) -> list[WorkerCollect]:
    with open_host(config, host_name) as host:
        states = _states(config, host_name, recs, observe_host)
        running = {r.name: not WorkerState(states[r.name]).terminal for r in recs}
        transport: Transport | None = None
        first = next((r for r in recs  # (a symlinked results dir is refused in planning)
                      if not (root / r.name / BOOKKEEPING / "index.json").exists()
                      and not (root / r.name).is_symlink()), None)
        if wanted in ("auto", "openssh") and openssh_here(host) and first is not None:
            # A first collect will fetch: connect for OpenSSH, and start the sftp of the
            # first worker's files, while the host lists and hashes.
            transport = OpenSSHTransport(host)
            transport.connect_early()
            staging = root / first.name / BOOKKEEPING / "incoming" / "worker"
            secure_staging(staging)
            transport.prepare(first.worker_dir, staging)
        out: list[WorkerCollect] = []
        try:
            listing = list_host(config, host, recs, running, root)
            plans = []
            for rec in recs:
                wl = listing[rec.name]
                observer.listed(rec.name, host, wl)
                plans.append(plan_worker(rec, root / rec.name, wl, states[rec.name],
                                         running[rec.name]))
            if transport is None and any(p.fetch for p in plans):
                transport = choose_transport(host, wanted)
            for i, plan in enumerate(plans):
                later = next((p for p in plans[i + 1:] if p.fetch), None)
                out.append(_finish_worker(store, run_id, plan, transport, observer,
                                          first_read(later)))
        finally:
            if transport is not None:
                transport.close()
        return out


def _states(config: Config, host_name: str, recs: Sequence[WorkerRecord],
            observe_host: Callable[..., Any]) -> dict[str, str]:
    """Each worker's state now: the cached terminal state, else one status round trip (its
    backend's, over the same pooled connection)."""
    states = {r.name: r.state for r in recs if r.state is not None}
    live = [r for r in recs if r.state is None]
    if live:
        _, observations = observe_host(config, host_name, live)
        for r, obs in zip(live, observations):
            states[r.name] = obs.state.value
    return {n: str(s) for n, s in states.items()}


def _finish_worker(store: RunStore, run_id: str, plan: WorkerPlan, transport: Transport | None,
                   observer: CollectObserver, then: tuple[str, Path] | None) -> WorkerCollect:
    if plan.error:
        return WorkerCollect(plan.rec.name, plan.rec.host, plan.state, plan.dest, "none", 0, 0,
                             0, 0, plan.listing.skipped, (plan.error,), False)
    moved, errors, changed = TransferResult(), [], []
    used = transport if plan.fetch else None
    if used is not None:
        try:
            moved, errors, changed = transfer_worker(plan, used, observer, then)
        except WtRunError as exc:
            errors = [str(exc)]
    else:
        plan.index.save()
    skipped = (*plan.listing.skipped, *plan.refused, *changed)
    verified = [f for f in plan.listing.files if plan.index.verified(f.local_rel) == f.sha256]
    done = (not errors and not plan.running and not changed and len(verified)
            == len(plan.listing.files) - len(plan.refused))
    collected_at = time.time() if done else None
    result = WorkerCollect(
        plan.rec.name, plan.rec.host, plan.state, plan.dest,
        used.name if used is not None else "none",
        len(verified), sum(f.size for f in verified), moved.files, moved.bytes,
        tuple(skipped), tuple(errors), done)
    write_worker_json(run_id, plan, result, collected_at)
    if done:
        current = store.load(run_id).workers.get(plan.rec.name, plan.rec)
        if (current.attempt, current.launched_at) == (plan.rec.attempt, plan.rec.launched_at):
            # Not when a relaunch meanwhile recorded a new attempt: these files are the old one's.
            store.update(run_id, replace(current, collected_at=collected_at),
                         expected={current.name: current})
        shutil.rmtree(plan.staging, ignore_errors=True)
    return result
