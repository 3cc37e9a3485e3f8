"""Getting a branch's commits onto a host that shares no git remote with this machine, making
worktrees there, and bootstrapping the host (`wt-run setup`).

Everything goes through the `Host` interface (`run_script`, `put`, `root`), so SSH hosts and
Slurm login nodes (local or SSH, root on a shared filesystem) use the same code.

On the host, under `root` (mode 700):
  repo/            a non-bare repository fed by `git bundle`. Its own checkout stays detached
                   (at the commit `setup`/`generate` last used) so that no branch is held by
                   it, and it holds the shared paths (`data`, `.venv`).
  worktrees/NAME   one `git worktree` per worker, on the same branch name as locally.
  tmp/             bundles in transit.
Non-bare because the layout promises `<root>/repo/<shared>` and `generate` runs in
`<root>/repo` itself; a bare repository would need a second checkout for both.

Transfer: one round trip asks the host which commits it already has (its ref tips, and
whether each wanted commit is there). Nothing is sent when all are there; otherwise a bundle
of the needed refs minus the host's tips (`^have`) is uploaded and fetched into
`refs/wt-run/*`. If the host lacks a prerequisite after all, a full bundle is sent instead.
"""

from __future__ import annotations

import shlex
import subprocess
import tempfile
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .config import BranchConfig, Config
from .errors import ConfigError, GitError, HostError
from .hosts import CommandResult, Host
from .runs import HostLayout

q = shlex.quote

REF_NAMESPACE = "refs/wt-run/"
SETUP_TIMEOUT_S = 3600.0  # pip installs can take long; status/launch keep command_timeout
EXIT_REFUSED = 3
EXIT_NEED_FULL_BUNDLE = 4
EXIT_FAILED = 5

# ---------------------------------------------------------------------- entry points

def prepare_remote_worktrees(config: Config, host: Host, branches: Sequence[BranchConfig],
                             *, force: bool, dry_run: bool
                             ) -> list[tuple[BranchConfig, str, str]]:
    """Worktrees on a remote host for the branches' current commits: (branch, worktree path on
    the host, commit). Refuses, before changing anything, what a local launch refuses."""
    wanted = [_local_commit(config, b) for b in branches]
    paths = HostLayout.remote(host.root, config.data)
    needed = [rel for rel in config.shared if rel.strip("/") != paths.data_rel]
    inventory = inventory_of(host, paths, [w.commit for w in wanted], needed)
    if inventory.missing_shared:
        # Refused before anything is created or uploaded on the host.
        raise _refusal(f"shared-missing {inventory.missing_shared[0]}", host.name,
                       None, paths)
    if dry_run:
        return [(b, paths.worktree(b.name), w.commit) for b, w in zip(branches, wanted)]
    script = _worktrees_script(config, paths, branches, wanted, force)
    result = apply_with_bundle(config, host, paths, inventory, wanted, script)
    commits = _ok_lines(result)
    return [(b, paths.worktree(b.name), commits.get(b.name, w.commit))
            for b, w in zip(branches, wanted)]


def prepare_remote_repo(config: Config, host: Host, *, dry_run: bool) -> tuple[str, str, str]:
    """This checkout's HEAD commit, checked out (detached) in `<root>/repo` on the host, for
    `wt-run generate`. Returns (repo path on the host, commit, local branch name)."""
    head = head_commit(config)
    branch = _git(config, "branch", "--show-current").strip()
    paths = HostLayout.remote(host.root, config.data)
    inventory = inventory_of(host, paths, [head.commit])
    if dry_run:
        return paths.repo, head.commit, branch
    script = _repo_checkout_script(paths, head.commit)
    result = apply_with_bundle(config, host, paths, inventory, [head], script)
    return paths.repo, _ok_lines(result).get("repo", head.commit), branch


# ---------------------------------------------------------------------- local side

@dataclass(frozen=True)
class _Wanted:
    """A commit the host needs, and a local ref that reaches it (bundles carry refs)."""

    commit: str
    ref: str


def _git(config: Config, *args: str, check: bool = True) -> str:
    proc = subprocess.run(["git", "-C", str(config.repo), *args], capture_output=True,
                          text=True, check=False, stdin=subprocess.DEVNULL)
    if check and proc.returncode != 0:
        detail = proc.stderr.strip().splitlines()
        raise GitError(f"git {' '.join(args[:2])} failed in {config.repo}: "
                       f"{detail[-1] if detail else proc.returncode}",
                       "fix the repository state and retry")
    return proc.stdout if proc.returncode == 0 else ""


def _local_commit(config: Config, b: BranchConfig) -> _Wanted:
    """The branch's commit; a branch that does not exist yet starts from `base`, as locally."""
    ref = f"refs/heads/{b.branch}"
    sha = _git(config, "rev-parse", "-q", "--verify", f"{ref}^{{commit}}", check=False).strip()
    if sha:
        return _Wanted(sha, ref)
    return _base_commit(config)


def head_commit(config: Config) -> _Wanted:
    sha = _git(config, "rev-parse", "-q", "--verify", "HEAD^{commit}", check=False).strip()
    if not sha:
        raise GitError(f"{config.repo} has no commit yet", "commit something first")
    return _Wanted(sha, "HEAD")


def _base_commit(config: Config) -> _Wanted:
    sha = _git(config, "rev-parse", "-q", "--verify", f"{config.base}^{{commit}}",
               check=False).strip()
    if not sha:
        raise ConfigError(f"base: '{config.base}' is not a commit in {config.repo}",
                          f"set base: in {config.path} to an existing branch or commit")
    ref = _git(config, "rev-parse", "--symbolic-full-name", config.base, check=False).strip()
    if ref and (ref == "HEAD" or ref.startswith("refs/")):
        return _Wanted(sha, ref)
    # A bundle carries refs, not bare commits: name a ref that contains the base commit.
    holders = _git(config, "for-each-ref", "--contains", sha, "--format=%(refname)",
                   "refs/heads", "refs/tags", check=False).split()
    if holders:
        return _Wanted(sha, holders[0])
    raise ConfigError(f"base: '{config.base}' is not reachable from any branch or tag",
                      "set base: to a branch, or create a branch that contains it")


def _bundle(config: Config, wanted: Sequence[_Wanted], haves: Sequence[str],
            directory: Path) -> Path | None:
    """A bundle of the wanted refs minus what the host has; None when git finds it empty."""
    path = directory / "wt-run.bundle"
    refs = list(dict.fromkeys(w.ref for w in wanted))
    proc = subprocess.run(
        ["git", "-C", str(config.repo), "bundle", "create", "-q", str(path), *refs,
         *(f"^{h}" for h in haves)],
        capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        if "empty bundle" in proc.stderr:
            return None
        detail = proc.stderr.strip().splitlines()
        raise GitError(f"git bundle create failed: {detail[-1] if detail else proc.returncode}",
                       "check the local repository (git fsck)")
    return path


def _known_locally(config: Config, shas: Sequence[str]) -> list[str]:
    if not shas:
        return []
    proc = subprocess.run(["git", "-C", str(config.repo), "cat-file", "--batch-check"],
                          input="".join(f"{s}\n" for s in shas), capture_output=True,
                          text=True, check=False)
    return [line.split()[0] for line in proc.stdout.splitlines()
            if line and not line.endswith("missing")]


# ---------------------------------------------------------------------- the host side

@dataclass(frozen=True)
class _Inventory:
    root_exists: bool
    repo_exists: bool
    tips: tuple[str, ...] = ()
    present: frozenset[str] = field(default_factory=frozenset)
    missing_shared: tuple[str, ...] = ()


def inventory_of(host: Host, paths: HostLayout, commits: Sequence[str],
               shared: Sequence[str] = ()) -> _Inventory:
    """One read-only round trip: does the repo exist, its ref tips, which commits it has,
    which of the given shared paths are missing."""
    checks = "".join(
        f'  git -C "$G" cat-file -e {q(c + "^{commit}")} 2>/dev/null && echo "have {c}"\n'
        for c in dict.fromkeys(commits))
    checks += "".join(f'  [ -e "$G"/{q(rel)} ] || echo "noshared {i}"\n'
                      for i, rel in enumerate(shared))
    no_repo = "".join(f'  echo "noshared {i}"\n' for i in range(len(shared)))
    script = (f"R={q(paths.root)}\nG={q(paths.repo)}\n"
              '[ -d "$R" ] && echo root\n'
              'if [ -d "$G/.git" ]; then\n  echo repo\n'
              '  git -C "$G" for-each-ref --format="tip %(objectname)" 2>/dev/null\n'
              f"{checks}" + (f"else\n{no_repo}" if no_repo else "") + "fi\n"
              "exit 0\n")
    result = host.run_script(script)
    raise_for(result, host.name)
    lines = result.stdout.split("\n")
    missing = {int(x[9:]) for x in lines if x.startswith("noshared ")}
    return _Inventory("root" in lines, "repo" in lines,
                      tuple(dict.fromkeys(x[4:] for x in lines if x.startswith("tip "))),
                      frozenset(x[5:] for x in lines if x.startswith("have ")),
                      tuple(rel for i, rel in enumerate(shared) if i in missing))


@dataclass(frozen=True)
class _Applied:
    stdout: str
    bundle_note: str | None  # "fetched N KiB" or None when nothing was sent


def apply_with_bundle(config: Config, host: Host, paths: HostLayout, inventory: _Inventory,
                       wanted: Sequence[_Wanted], script_body: str,
                       timeout: float | None = None) -> _Applied:
    """Send the missing commits (if any) and run `script_body` after fetching them."""
    missing = [w for w in wanted if w.commit not in inventory.present]
    if not missing:
        result = host.run_script(preamble(paths) + script_body, timeout=timeout)
        raise_for(result, host.name, paths)
        return _Applied(result.stdout, None)
    haves = _known_locally(config, inventory.tips)
    for full in (False, True):
        with tempfile.TemporaryDirectory(prefix="wt-run-bundle-") as tmp:
            bundle = _bundle(config, missing, [] if full else haves, Path(tmp))
            if bundle is None:
                bundle = _bundle(config, missing, [], Path(tmp))
                assert bundle is not None
            size = bundle.stat().st_size
            remote = f"{paths.tmp}/{uuid.uuid4().hex}.bundle"
            host.put(bundle, remote)
        script = preamble(paths) + _fetch_lines(remote, missing) + script_body
        result = host.run_script(script, timeout=timeout)
        if result.exit_code == EXIT_NEED_FULL_BUNDLE and not full:
            continue
        raise_for(result, host.name, paths)
        kind = "full" if full or not haves else "incremental"
        return _Applied(result.stdout, f"fetched {_kib(size)} ({kind} bundle)")
    raise AssertionError("unreachable")


def _kib(size: int) -> str:
    return f"{max(1, round(size / 1024))} KiB"


def preamble(paths: HostLayout) -> str:
    """Shared head of every mutating script: private files, root and repository present."""
    return (
        "umask 077\n"
        f"R={q(paths.root)}\nG={q(paths.repo)}\nWT={q(paths.worktrees)}\nT={q(paths.tmp)}\n"
        'E="$T/err.$$"\n'
        "refuse() { printf 'refuse %s\\n' \"$*\"; rm -f \"$E\"; exit 3; }\n"
        "failed() { printf 'failed %s\\n' \"$1\"; if [ -f \"$E\" ]; then "
        "tail -n 20 \"$E\" >&2; rm -f \"$E\"; fi; exit 5; }\n"
        'if [ ! -d "$R" ]; then mkdir -p "$R" || failed mkdir-root; echo created-root; fi\n'
        'chmod 700 "$R" 2>/dev/null\n'
        'mkdir -p "$WT" "$T" || failed mkdir-root\n'
        'if [ ! -d "$G/.git" ]; then\n'
        '  git init -q "$G" </dev/null >"$E" 2>&1 || failed git-init\n'
        "  echo created-repo\n"
        "fi\n"
    )


def _fetch_lines(bundle: str, wanted: Sequence[_Wanted]) -> str:
    refspecs = " ".join(
        q(f"+{ref}:{REF_NAMESPACE}{ref}") for ref in dict.fromkeys(w.ref for w in wanted))
    verify = "".join(
        f'git -C "$G" cat-file -e {q(w.commit + "^{commit}")} 2>/dev/null '
        f"|| failed missing-commit\n" for w in wanted)
    return (
        f"B={q(bundle)}\n"
        f'if ! git -C "$G" fetch -q --no-tags "$B" {refspecs} </dev/null >"$E" 2>&1; then\n'
        '  rm -f "$B"\n'
        '  if grep -q prerequisite "$E"; then rm -f "$E"; echo need-full-bundle; exit 4; fi\n'
        "  failed fetch\n"
        "fi\n"
        'rm -f "$B"\n'
        f"{verify}"
        # The repository's own checkout never holds a branch (see the module docstring).
        'if ! git -C "$G" rev-parse -q --verify HEAD >/dev/null 2>&1; then\n'
        f'  git -C "$G" checkout -q --detach {q(wanted[0].commit)} </dev/null >"$E" 2>&1 '
        "|| failed checkout\n"
        "  echo repo-updated\n"
        "fi\n"
    )


def _data_lines(paths: HostLayout) -> str:
    if paths.data_rel is None:
        return ""
    return (f'[ -d "$G"/{q(paths.data_rel)} ] || mkdir -p "$G"/{q(paths.data_rel)} '
            "|| failed mkdir-data\n")


_WORKTREE_FNS = r"""
holder_of() {
  git -C "$G" worktree list --porcelain 2>/dev/null | while IFS= read -r line; do
    case $line in
      "worktree "*) w=${line#worktree } ;;
      "branch refs/heads/$1") printf '%s\n' "$w" ;;
    esac
  done
}
wt_check() {
  p="$WT/$1"
  if [ -e "$p/.git" ]; then
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
    h=$(holder_of "$2" | head -n 1)
    if [ -n "$h" ]; then refuse checked-out "$1" "$h"; fi
  fi
}
wt_link() {
  t="$G/$2"; l="$1/$2"
  if [ -L "$l" ]; then
    [ "$(readlink "$l")" = "$t" ] && return 0
    rm -f "$l"
  fi
  mkdir -p "$(dirname "$l")" && ln -s "$t" "$l" || failed link
}
wt_apply() {
  p="$WT/$1"
  if [ -e "$p/.git" ]; then
    git -C "$p" checkout -q -B "$2" "$3" </dev/null >"$E" 2>&1 || failed "checkout $1"
  else
    git -C "$G" worktree add -q -B "$2" "$p" "$3" </dev/null >"$E" 2>&1 || failed "add $1"
  fi
  wt_links "$p"
  printf 'ok %s %s\n' "$1" "$(git -C "$p" rev-parse HEAD)"
}
"""


def _worktrees_script(config: Config, paths: HostLayout, branches: Sequence[BranchConfig],
                      wanted: Sequence[_Wanted], force: bool) -> str:
    lines = [f"FORCE={'1' if force else ''}", _WORKTREE_FNS]
    links = "".join(f"  wt_link \"$1\" {q(rel)}\n" for rel in config.shared)
    lines.append("wt_links() {\n  :\n" + links + "}\n")
    # Phase 1: every check, before anything changes.
    for rel in config.shared:
        if rel.strip("/") == paths.data_rel:
            continue  # the dataset directory is created on demand below
        lines.append(f'[ -e "$G"/{q(rel)} ] || refuse shared-missing {q(rel)}')
    for b, w in zip(branches, wanted):
        lines.append(f"wt_check {q(b.name)} {q(b.branch)}")
        for rel in config.shared:
            lines.append(f'git -C "$G" cat-file -e {q(w.commit + ":" + rel.strip("/"))} '
                         f"2>/dev/null && refuse shared-tracked {q(b.name)} {q(rel)}")
    # Phase 2: act.
    lines.append('git -C "$G" worktree prune 2>/dev/null')
    lines.append(_data_lines(paths).rstrip("\n"))
    exclude = '"$G/.git/info/exclude"'
    lines.append('mkdir -p "$G/.git/info"')
    for rel in config.shared:
        entry = q("/" + rel.strip("/"))
        lines.append(f"grep -qxF -- {entry} {exclude} 2>/dev/null || "
                     f"printf '%s\\n' {entry} >> {exclude}")
    for b, w in zip(branches, wanted):
        lines.append(f"wt_apply {q(b.name)} {q(b.branch)} {q(w.commit)}")
    return "\n".join(lines) + "\n"


def _repo_checkout_script(paths: HostLayout, commit: str) -> str:
    return (
        'cur=$(git -C "$G" rev-parse -q --verify HEAD 2>/dev/null)\n'
        f"if [ \"$cur\" != {q(commit)} ]; then\n"
        '  if [ -n "$(git -C "$G" status --porcelain --untracked-files=no)" ]; then '
        "refuse repo-dirty; fi\n"
        f'  git -C "$G" checkout -q --detach {q(commit)} </dev/null >"$E" 2>&1 '
        "|| failed checkout\n"
        "  echo repo-updated\n"
        "fi\n"
        + _data_lines(paths)
        + "printf 'ok repo %s\\n' \"$(git -C \"$G\" rev-parse HEAD)\"\n"
    )


# ---------------------------------------------------------------------- results

def _ok_lines(result: _Applied | CommandResult) -> dict[str, str]:
    commits: dict[str, str] = {}
    for line in result.stdout.splitlines():
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


def raise_for(result: CommandResult, host_name: str, paths: HostLayout | None = None
               ) -> None:
    if result.exit_code == 0:
        return
    for line in result.stdout.splitlines():
        if line.startswith("refuse "):
            raise _refusal(line[7:], host_name, result, paths)
        if line.startswith("failed "):
            tail = " | ".join(result.stderr.strip().splitlines()[-3:]) or "(no output)"
            raise HostError(host_name, f"{line[7:]} failed: {tail}",
                            "fix the problem on the host, then retry")
    result.check()


def _refusal(text: str, host_name: str, result: CommandResult | None,
             paths: HostLayout | None) -> GitError:
    kind, _, rest = text.partition(" ")
    args = rest.split(" ", 1) if rest else []
    fields = {"host": host_name, "name": "", "branch": "", "path": "", "holder": "",
              "current": "a detached HEAD", "rel": ""}
    if kind in ("locked", "dirty", "not-worktree", "wrong-branch", "checked-out"):
        name = args[0] if args else ""
        fields["name"] = name
        fields["path"] = paths.worktree(name) if paths else f"<root>/worktrees/{name}"
        branch = _branch_in_script(result.command, name) if result else ""
        fields["branch"] = branch
        if kind == "wrong-branch" and len(args) > 1 and args[1]:
            fields["current"] = f"branch '{args[1]}'"
        if kind == "checked-out" and len(args) > 1:
            fields["holder"] = args[1]
    elif kind == "shared-missing":
        fields["rel"] = rest
    elif kind == "shared-tracked":
        fields["name"] = args[0] if args else ""
        fields["rel"] = args[1] if len(args) > 1 else ""
    message, fix = _REFUSALS.get(kind, ("{host}: refused: " + text, "see the message"))
    return GitError(message.format(**fields), fix.format(**fields))


def _branch_in_script(script: str, name: str) -> str:
    """The branch a `wt_check NAME BRANCH` line of the script named (for messages)."""
    for line in script.splitlines():
        parts = shlex.split(line) if line.startswith("wt_check ") else []
        if len(parts) == 3 and parts[1] == name:
            return parts[2]
    return ""
