"""Git worktrees, one per branch, on every host: one POSIX shell script checks every refusal
(locked, wrong branch, dirty, not a worktree, branch checked out elsewhere, shared path missing
or tracked) before anything changes, then creates or reuses the worktrees and links the
shared paths into each. The local host runs it in the user's repository, remote hosts in
`<root>/repo` after the code sync (sync.py). Removal for `clean --worktrees`, on every host
alike, is in clean_worktrees.py."""

from __future__ import annotations

import os
import shlex
from collections.abc import Sequence

from .config import BranchConfig, Config
from .errors import ConfigError, GitError, HostError
from .hosts import CommandResult, Host
from .repo_refs import Wanted, branch_commits
from .runs import HostLayout

q = shlex.quote

# The head of every script that may refuse: `refuse KIND ARGS` (exit 3) and `failed STEP`
# (exit 5, the tail of "$E" on stderr) are read back by raise_for.
SCRIPT_FNS = (
    "refuse() { printf 'refuse %s\\n' \"$*\"; rm -f \"$E\"; exit 3; }\n"
    "failed() { printf 'failed %s\\n' \"$1\"; if [ -f \"$E\" ]; then "
    "tail -n 20 \"$E\" >&2; rm -f \"$E\"; fi; exit 5; }\n"
)

_WORKTREE_FNS = r"""
NL='
'
LIST=$(git -C "$G" worktree list --porcelain 2>/dev/null)
WTR=$(cd "$WT" 2>/dev/null && pwd -P) || WTR=$WT
# Both read the listing taken above without starting a process per worktree.
registered() {
  case "$NL$LIST$NL" in *"${NL}worktree $1$NL"*) return 0 ;; esac
  return 1
}
holder_of() {  # sets h: a worktree other than $2 that has branch $1 checked out
  h=; w=; set -f; old_ifs=$IFS; IFS=$NL
  for line in $LIST; do
    case $line in
      "worktree "*) w=${line#worktree } ;;
      "branch refs/heads/$1") if [ "$w" != "$2" ]; then h=$w; break; fi ;;
    esac
  done
  IFS=$old_ifs; set +f
}
wt_check() {
  p="$WT/$1"
  if [ -e "$p/.git" ] && registered "$WTR/$1"; then
    gd=$(git -C "$p" rev-parse --absolute-git-dir 2>/dev/null)
    if [ -n "$gd" ] && [ -e "$gd/locked" ]; then refuse locked "$1"; fi
    cur=$(git -C "$p" symbolic-ref -q --short HEAD 2>/dev/null)
    if [ "$cur" != "$2" ]; then refuse wrong-branch "$1" "$cur"; fi
    if [ -z "$FORCE" ] && [ -n "$(git -C "$p" status --porcelain --untracked-files=no)" ]; then
      refuse dirty "$1"
    fi
  elif [ -e "$p" ] || [ -L "$p" ]; then
    refuse not-worktree "$1"
  else
    holder_of "$2" "$WTR/$1"
    if [ -n "$h" ]; then refuse checked-out "$1" "$h"; fi
  fi
}
wt_link() {
  t="$G/$3"; l="$1/$3"
  if [ -L "$l" ]; then
    [ "$(readlink "$l")" = "$t" ] && return 0
    rm -f "$l"
  elif [ -e "$l" ]; then
    refuse shared-tracked "$2" "$3"
  fi
  mkdir -p "$(dirname "$l")" && ln -s "$t" "$l" || failed link
}
wt_apply() {
  p="$WT/$1"
  if [ -e "$p/.git" ]; then
    if [ -n "$RESET" ]; then
      git -C "$p" checkout -q -B "$2" "$3" </dev/null >"$E" 2>&1 || failed "checkout $1"
    fi
  else
    f=; if registered "$WTR/$1"; then f=-f; fi
    if [ -n "$RESET" ]; then
      git -C "$G" worktree add -q $f -B "$2" -- "$p" "$3" </dev/null >"$E" 2>&1
    elif [ -n "$4" ]; then
      git -C "$G" worktree add -q $f -- "$p" "$2" </dev/null >"$E" 2>&1
    else
      git -C "$G" worktree add -q $f -b "$2" -- "$p" "$3" </dev/null >"$E" 2>&1
    fi || failed "add $1"
  fi
  wt_links "$p" "$1"
  printf 'ok %s %s\n' "$1" "$3"
}
"""


def worktrees_script(paths: HostLayout, shared: Sequence[str],
                     branches: Sequence[BranchConfig], wanted: Sequence[Wanted], *,
                     force: bool, reset: bool, dry_run: bool = False,
                     skip_missing: str | None = None) -> str:
    """The script body (after a preamble that sets G, WT, T, E and SCRIPT_FNS): every check
    first, then (unless dry_run) every change; prints `ok NAME COMMIT` per worktree (the
    commit each branch was resolved to, which a reused worktree without `reset` is on).

    `reset` moves each branch to its wanted commit (a remote host mirrors this machine's
    branches); without it an existing branch is checked out as it is and a new one starts at
    its wanted commit (`base`). `skip_missing` names a shared path that is created on demand
    rather than refused when absent (the dataset on a remote host)."""
    owner: dict[str, str] = {}
    for b in branches:
        other = owner.setdefault(b.branch, b.name)
        if other != b.name:
            raise ConfigError(
                f"entries '{other}' and '{b.name}' both use git branch '{b.branch}', and a "
                "branch can be checked out in one worktree only",
                f"give '{b.name}' a branch of its own, or make them one entry that varies its "
                "values (vars with matrix:, or launch --set)")
    lines = [f"FORCE={'1' if force else ''}", f"RESET={'1' if reset else ''}", _WORKTREE_FNS]
    links = "".join(f'  wt_link "$1" "$2" {q(rel)}\n' for rel in shared)
    lines.append("wt_links() {\n  :\n" + links + "}\n")
    # Phase 1: every check, before anything changes.
    for rel in shared:
        if rel.strip("/") != skip_missing:
            lines.append(f'[ -e "$G"/{q(rel)} ] || refuse shared-missing {q(rel)}')
    for b, w in zip(branches, wanted):
        lines.append(f"wt_check {q(b.name)} {q(b.branch)}")
        for rel in shared:
            lines.append(f'git -C "$G" cat-file -e {q(w.commit + ":" + rel.strip("/"))} '
                         f"2>/dev/null && refuse shared-tracked {q(b.name)} {q(rel)}")
    if dry_run:
        return "\n".join(lines) + "\nexit 0\n"
    # Phase 2: act.
    lines.append('mkdir -p "$WT" "$T" || failed mkdir-worktrees')
    if skip_missing:
        lines.append(f'[ -d "$G"/{q(skip_missing)} ] || mkdir -p "$G"/{q(skip_missing)} '
                     "|| failed mkdir-data")
    lines.append('X=$(git -C "$G" rev-parse --git-common-dir) || failed git-dir')
    lines.append('case $X in /*) ;; *) X="$G/$X" ;; esac; X="$X/info/exclude"')
    lines.append('mkdir -p "$(dirname "$X")"')
    for entry in ["/.wt-run/", *(f"/{rel.strip('/')}" for rel in shared)]:
        lines.append(f'grep -qxF -- {q(entry)} "$X" 2>/dev/null || '
                     f'printf \'%s\\n\' {q(entry)} >> "$X"')
    for b, w in zip(branches, wanted):
        exists = "1" if w.ref == f"refs/heads/{b.branch}" else "''"
        lines.append(f"wt_apply {q(b.name)} {q(b.branch)} {q(w.commit)} {exists}")
    return "\n".join(lines) + "\n"


def local_preamble(paths: HostLayout) -> str:
    """The local host's script head: the user's own repository, worktrees under `worktrees:`
    (nothing is created before the checks; the user's umask stays)."""
    return (f"G={q(paths.repo)}\nWT={q(paths.worktrees)}\nT={q(paths.tmp)}\n"
            'E="$T/err.$$"\n' + SCRIPT_FNS)


def prepare_local_worktrees(config: Config, host: Host, paths: HostLayout,
                            branches: Sequence[BranchConfig], *, force: bool, dry_run: bool
                            ) -> list[tuple[str, str]]:
    """Create or reuse a worktree per branch in the user's repository; (path, commit) each.
    All checks run before anything changes, so a refused launch leaves the repository as it
    was."""
    wanted = branch_commits(config, branches)
    script = local_preamble(paths) + worktrees_script(
        paths, config.shared, branches, wanted, force=force, reset=False, dry_run=dry_run)
    result = host.run_script(script)
    raise_for(result, host.name, paths, local=True)
    commits = ok_lines(result.stdout)
    return [(paths.worktree(b.name), commits.get(b.name, "" if dry_run else w.commit))
            for b, w in zip(branches, wanted)]


# ---------------------------------------------------------------------- results

def ok_lines(stdout: str) -> dict[str, str]:
    """`ok NAME COMMIT` lines of a script's output, as name -> commit."""
    commits: dict[str, str] = {}
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "ok":
            commits[parts[1]] = parts[2]
    return commits


_REFUSALS = {
    "locked": ("worktree {path} on {host} is locked",
               "unlock it there with `git worktree unlock {path}`"),
    "wrong-branch": ("worktree {path} on {host} has {current} checked out, not '{branch}'",
                     "check out {branch} there, or remove the worktree on the host"),
    "dirty": ("worktree {path} on {host} has uncommitted changes to tracked files",
              "commit or discard them there (or pass --force to run them as they are)"),
    "not-worktree": ("{path} on {host} exists but is not a git worktree",
                     "move it away on the host"),
    "checked-out": ("branch '{branch}' is already checked out at {holder} on {host}",
                    "remove that worktree on the host (`git worktree remove {holder}`)"),
    "shared-missing": ("shared path '{rel}' does not exist on {host}",
                       "run `wt-run setup --host {host}`, or remove it from shared:"),
    "shared-tracked": ("shared path '{rel}' is tracked by the branch of '{name}'",
                       "remove '{rel}' from shared:, or stop tracking it on that branch"),
    "repo-dirty": ("the repository checkout on {host} has uncommitted changes",
                   "discard them there (git -C <root>/repo checkout -- .)"),
}
# The local host speaks of the user's own repository.
_LOCAL_REFUSALS = {
    "locked": ("worktree {path} is locked", "unlock it with `git worktree unlock {path}`"),
    "wrong-branch": ("worktree {path} has {current} checked out, not '{branch}'",
                     "check out {branch} there, or remove it with `wt-run clean --worktrees`"),
    "dirty": ("worktree {path} has uncommitted changes to tracked files",
              "commit or stash them there (or pass --force to run them as they are)"),
    "not-worktree": ("{path} exists but is not a git worktree",
                     "move it away, or run `git worktree prune` if it was one"),
    "checked-out": ("branch '{branch}' is already checked out at {holder}",
                    "switch that checkout to another branch, or remove it with "
                    "`git worktree remove {holder}`"),
    "shared-missing": ("shared path '{rel}' does not exist in {repo}",
                       "create it (for the dataset: `wt-run generate`), or remove it from "
                       "shared:"),
    "shared-tracked": ("shared path '{rel}' exists in worktree {path} (the branch tracks it)",
                       "remove '{rel}' from shared:, or stop tracking it on that branch"),
}


def raise_for(result: CommandResult, host_name: str, paths: HostLayout | None = None,
              *, local: bool = False) -> None:
    """Turn a script's `refuse`/`failed` line (or any non-zero exit) into an error."""
    if result.exit_code == 0:
        return
    for line in result.stdout.splitlines():
        if line.startswith("refuse "):
            raise refusal(line[7:], host_name, result, paths, local=local)
        if line.startswith("failed "):
            tail = " | ".join(result.stderr.strip().splitlines()[-3:]) or "(no output)"
            if local and line.startswith("failed add "):
                branch = _branch_in_script(result.command, line[11:])
                last = result.stderr.strip().splitlines()[-1:] or ["(no output)"]
                raise GitError(f"git worktree add for '{branch}' failed: {last[0]}",
                               "fix the repository state above and launch again")
            raise HostError(host_name, f"{line[7:]} failed: {tail}",
                            "fix the problem on the host, then retry")
    result.check()


def refusal(text: str, host_name: str, result: CommandResult | None,
            paths: HostLayout | None, *, local: bool = False) -> GitError:
    kind, _, rest = text.partition(" ")
    args = rest.split(" ", 1) if rest else []
    fields = {"host": host_name, "name": "", "branch": "", "path": "", "holder": "",
              "current": "a detached HEAD", "rel": "", "repo": paths.repo if paths else ""}
    if kind in ("locked", "dirty", "not-worktree", "wrong-branch", "checked-out"):
        name = args[0] if args else ""
        fields["name"] = name
        fields["path"] = paths.worktree(name) if paths else f"<root>/worktrees/{name}"
        fields["branch"] = _branch_in_script(result.command, name) if result else ""
        if kind == "wrong-branch" and len(args) > 1 and args[1]:
            fields["current"] = f"branch '{args[1]}'"
        if kind == "checked-out" and len(args) > 1:
            fields["holder"] = args[1]
    elif kind == "shared-missing":
        fields["rel"] = rest
    elif kind == "shared-tracked":
        fields["name"] = args[0] if args else ""
        fields["rel"] = args[1] if len(args) > 1 else ""
        fields["path"] = paths.worktree(fields["name"]) if paths else ""
    table = {**_REFUSALS, **_LOCAL_REFUSALS} if local else _REFUSALS
    message, fix = table.get(kind, ("{host}: refused: " + text, "see the message"))
    if (kind == "checked-out" and local and fields["holder"] and fields["repo"]
            and os.path.realpath(fields["holder"]) == os.path.realpath(fields["repo"])):
        # The user's own checkout, which git cannot remove as a worktree.
        fix = ("switch your checkout to another branch (`git switch <other>`), or give "
               f"entry '{fields['name']}' a branch of its own (branches.{fields['name']}.branch)")
    error = ConfigError if local and kind == "shared-missing" else GitError
    return error(message.format(**fields), fix.format(**fields))


def _branch_in_script(script: str, name: str) -> str:
    """The branch a `wt_check NAME BRANCH` line of the script named (for messages)."""
    for line in script.splitlines():
        parts = shlex.split(line) if line.startswith("wt_check ") else []
        if len(parts) == 3 and parts[1] == name:
            return parts[2]
    return ""
