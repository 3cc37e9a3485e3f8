"""`clean --worktrees` on any host: the worktrees wt-run made there (this machine's under
`worktrees:`, a remote host's under `<root>/worktrees`, SSH or Slurm through its login node),
and what it refuses. One script lists them and their state, the collect lister (run on the
host) finds results that changed since their last collect, and one script removes what may
go: the same scripts on every host, like the ones that make worktrees (worktrees.py)."""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .backend import Backend
from .collect_listing import run_lister
from .config import Config
from .errors import WtRunError
from .hosts import Host
from .runs import HostLayout, WorkerRecord
from .worktrees import local_preamble

q = shlex.quote

_LIST = r"""
WTR=$(cd "$WT" 2>/dev/null && pwd -P) || exit 0
printf 'root %s\n' "$WTR"
printf 'root %s\n' "$WT"
git -C "$G" worktree list --porcelain 2>/dev/null
echo "end"
for p in "$WTR"/*; do
  [ -e "$p/.git" ] || continue
  if [ -n "$(git -C "$p" status --porcelain --untracked-files=no 2>/dev/null)" ]; then
    printf 'dirty %s\n' "${p##*/}"
  fi
  # Files git does not track (untracked or ignored: a checkpoint under *.pt is both gone
  # for good and invisible to `git status`), one per line, capped.
  git -C "$p" status --porcelain --ignored --untracked-files=all 2>/dev/null | head -n 5000 |
    while IFS= read -r l; do printf 'extra %s %s\n' "${p##*/}" "$l"; done
done
"""


@dataclass(frozen=True)
class HostWorktree:
    name: str
    path: str
    branch: str | None
    locked: bool
    dirty: bool
    untracked: tuple[str, ...] = ()  # files git does not track (ignored ones too)


def list_host_worktrees(host: Host, paths: HostLayout) -> list[HostWorktree]:
    """wt-run's worktrees on the host: git's entries directly in its worktrees directory
    (one whose directory is gone is left to `git worktree prune`)."""
    out = host.run_script(local_preamble(paths) + _LIST).check().stdout
    lines = out.splitlines()
    if len(lines) < 2 or not lines[0].startswith("root "):
        return []
    roots = {lines[0][5:], lines[1][5:]}
    end = lines.index("end") if "end" in lines else len(lines)
    dirty = {line[6:] for line in lines[end + 1:] if line.startswith("dirty ")}  # names
    untracked: dict[str, list[str]] = {}
    for line in lines[end + 1:]:
        if line.startswith("extra "):
            name, _, entry = line[6:].partition(" ")
            untracked.setdefault(name, []).append(entry[3:])  # after "?? " or "!! "
    found: list[HostWorktree] = []
    entry: dict[str, str] = {}
    for line in [*lines[2:end], ""]:
        if line:
            key, _, value = line.partition(" ")
            entry[key] = value
            continue
        path = entry.get("worktree", "")
        parent, _, name = path.rpartition("/")
        if parent in roots and "prunable" not in entry:
            branch = entry.get("branch")
            found.append(HostWorktree(name, path,
                                      branch.removeprefix("refs/heads/") if branch else None,
                                      "locked" in entry, name in dirty,
                                      tuple(untracked.get(name, ()))))
        entry = {}
    return found


CACHES = ("__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache", ".ipynb_checkpoints")


def uncollectable(untracked: Sequence[str], collect: Sequence[str],
                  shared: Sequence[str]) -> list[str]:
    """The files among `untracked` (paths git printed) that removing the worktree would lose
    for good: not a shared link, not a cache, not matched by a `collect:` glob (those are
    checked against the last collect instead)."""
    from .collect_lister import pattern_problem, pattern_regex

    links = {rel.strip("/") for rel in shared}
    globs = [pattern_regex(g) for g in collect if not pattern_problem(g)]
    lost = []
    for raw in untracked:
        rel = raw.strip('"').rstrip("/")
        parts = rel.split("/")
        if rel in links or any(c in CACHES for c in parts) or rel.endswith(".pyc"):
            continue
        if not any(g.match(rel) for g in globs):
            lost.append(rel)
    return lost


def fresh_results(config: Config, host: Host, worktrees: Mapping[str, str],
                  since: Mapping[str, float]) -> dict[str, list[str]]:
    """Per worktree name: files `collect:` would take that changed after `since[name]` (the
    last collect of the run that used it; 0: never collected), found by the collect lister."""
    if not config.collect or not worktrees:
        return {}
    spec = {"settle_s": 0, "workers": [
        {"id": name, "running": False, "cache": "",
         "roots": [{"key": "worktree", "path": path, "patterns": list(config.collect)}]}
        for name, path in worktrees.items()]}
    fresh: dict[str, list[str]] = {}
    for name, listing in run_lister(config, host, spec).items():
        newer = sorted(f.rel for f in listing.files if f.mtime_ns / 1e9 > since.get(name, 0.0))
        if newer:
            fresh[name] = newer
    return fresh


def removal_script(paths: HostLayout, shared: Sequence[str], names: Sequence[str],
                   branches: Sequence[str], *, force: bool) -> str:
    """Remove each named worktree (its shared links first, never followed), delete the given
    branches (unmerged ones only with force), prune git's stale entries."""
    unlink = "".join(f'  [ -L "$p"/{q(rel.strip("/"))} ] && rm -f "$p"/{q(rel.strip("/"))}\n'
                     for rel in shared)
    lines = [local_preamble(paths),
             "wt_rm() {\n  p=\"$WT/$1\"\n" + unlink
             + '  if git -C "$G" worktree remove ' + ("--force " if force else "")
             + '-- "$p" >/dev/null 2>&1 || git -C "$G" worktree remove --force -- "$p" '
             + ">/dev/null 2>&1; then printf 'removed\\t%s\\n' \"$1\"; fi\n}\n"]
    lines += [f"wt_rm {q(n)}" for n in names]
    flag = "-D" if force else "-d"
    # Output lines: WORD<tab>NAME[<tab>NOTE]; names are never pasted into the script unquoted.
    lines += [f'if why=$(git -C "$G" branch {flag} -- {q(b)} 2>&1); then '
              f"printf 'deleted\\t%s\\n' {q(b)}; else printf 'undeleted\\t%s\\t%s\\n' "
              f'{q(b)} "$(printf %s "$why" | head -n 1)"; fi'
              for b in branches]
    lines.append('git -C "$G" worktree prune')
    return "\n".join(lines) + "\n"


def clean_host_worktrees(config: Config, backend: Backend, busy: set[str],
                         records: Sequence[tuple[str, WorkerRecord]], *, dry_run: bool,
                         force: bool, delete_branches: bool
                         ) -> list[tuple[str, str, bool, str]]:
    """(what, target, done, note) for each of wt-run's worktrees on the host; raises when one
    holds results nobody collected (unless force). A remote host's targets are `HOST:path`."""
    host, paths = backend.connect(), backend.layout()
    at = "" if host.local else f"{host.name}:"
    found = list_host_worktrees(host, paths)
    actions: list[tuple[str, str, bool, str]] = []
    go: list[HostWorktree] = []
    for wt in found:
        why = ("a worker is still running" if wt.name in busy else
               "locked (git worktree unlock)" if wt.locked else
               "uncommitted changes (commit, or --force)" if wt.dirty and not force else None)
        if why:
            actions.append(("keep worktree", f"{at}{wt.path}", False, why))
        else:
            go.append(wt)
    if not force:
        blocked = _blocked(config, host, at, paths, go, records)
        if blocked and not dry_run:
            raise blocked[0][1]
        for name, error in blocked:  # a dry run lists every refusal instead of the first
            actions.append(("keep worktree", f"{at}{paths.worktree(name)}", False,
                            f"{error.message} — {error.fix}"))
        go = [wt for wt in go if wt.name not in {name for name, _ in blocked}]
    branches = [wt.branch for wt in go if wt.branch] if delete_branches else []
    done: dict[str, str] = {}
    if not dry_run:  # also when nothing is left to remove: prune what was deleted by hand
        out = host.run_script(removal_script(paths, config.shared, [wt.name for wt in go],
                                             branches, force=force)).check().stdout
        for line in out.splitlines():
            word, name, note = [*line.split("\t", 2), "", ""][:3]
            done[f"{word} {name}"] = note
    for wt in go:
        actions.append(("remove worktree", f"{at}{wt.path}",
                        f"removed {wt.name}" in done, ""))
        if wt.branch and delete_branches:
            actions.append(("delete branch", f"{at}{wt.branch}",
                            f"deleted {wt.branch}" in done,
                            done.get(f"undeleted {wt.branch}", "")))
    actions.append(("prune stale worktree entries", f"{at}{paths.repo}", not dry_run,
                    ""))
    return actions


def _blocked(config: Config, host: Host, at: str, paths: HostLayout,
             candidates: Sequence[HostWorktree], records: Sequence[tuple[str, WorkerRecord]]
             ) -> list[tuple[str, WtRunError]]:
    """The worktrees whose removal would lose something, each with the refusal: files git
    does not track that `collect:` does not take, or results not collected since they
    changed."""
    blocked: list[tuple[str, WtRunError]] = []
    for wt in candidates:
        extra = uncollectable(wt.untracked, config.collect, config.shared)
        if extra:
            blocked.append((wt.name, WtRunError(
                f"worktree {at}{wt.path} holds files git does not track, which collect: does "
                f"not bring back ({_shown(extra)})",
                "copy them out (or add a collect: glob and run `wt-run collect`), or pass "
                "--force to delete them")))
    newest: dict[str, tuple[float, str, WorkerRecord]] = {}
    for run, rec in records:  # the run that used each worktree last
        key = rec.worktree.rstrip("/").rpartition("/")[2]
        if rec.worktree and (key not in newest or (rec.launched_at or 0.0) >= newest[key][0]):
            newest[key] = (rec.launched_at or 0.0, run, rec)
    fresh = fresh_results(config, host, {wt.name: wt.path for wt in candidates},
                          {k: v[2].collected_at or 0.0 for k, v in newest.items()})
    for name, files in fresh.items():
        where = f"{at}{paths.worktree(name)}"
        if name not in newest:
            error = WtRunError(f"worktree {where} holds results no run has collected "
                               f"({_shown(files)})", "copy them out, or pass --force to "
                               "delete them")
        else:
            run = newest[name][1]
            error = WtRunError(f"worktree {where} holds results of run {run} not collected "
                               f"yet ({_shown(files)})", f"run `wt-run collect --run {run}` "
                               "first, or pass --force to delete them")
        blocked.append((name, error))
    return blocked


def _shown(files: Sequence[str]) -> str:
    return ", ".join(files[:3]) + (f" and {len(files) - 3} more" if len(files) > 3 else "")
