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
from .errors import GitError
from .hosts import Host
from .repo_refs import Wanted, branch_commits, current_branch, head_commit
from .runs import HostLayout
from .worktrees import SCRIPT_FNS, ok_lines, raise_for, refusal, worktrees_script

q = shlex.quote

REF_NAMESPACE = "refs/wt-run/"
SETUP_TIMEOUT_S = 3600.0  # pip installs can take long; status/launch keep command_timeout
EXIT_NEED_FULL_BUNDLE = 4  # refuse/failed (worktrees.SCRIPT_FNS) exit 3 and 5

# ---------------------------------------------------------------------- entry points

def prepare_remote_worktrees(config: Config, host: Host, branches: Sequence[BranchConfig],
                             *, force: bool, dry_run: bool
                             ) -> list[tuple[BranchConfig, str, str]]:
    """Worktrees on a remote host for the branches' current commits: (branch, worktree path on
    the host, commit). Refuses, before changing anything, what a local launch refuses."""
    wanted = branch_commits(config, branches)
    paths = HostLayout.remote(host.root, config.data)
    needed = [rel for rel in config.shared if rel.strip("/") != paths.data_rel]
    inventory = inventory_of(host, paths, [w.commit for w in wanted], needed)
    if inventory.missing_shared:
        # Refused before anything is created or uploaded on the host.
        raise refusal(f"shared-missing {inventory.missing_shared[0]}", host.name, None, paths)
    if dry_run:
        return [(b, paths.worktree(b.name), w.commit) for b, w in zip(branches, wanted)]
    script = worktrees_script(paths, config.shared, branches, wanted, force=force, reset=True,
                              skip_missing=paths.data_rel)
    result = apply_with_bundle(config, host, paths, inventory, wanted, script)
    commits = ok_lines(result.stdout)
    return [(b, paths.worktree(b.name), commits.get(b.name, w.commit))
            for b, w in zip(branches, wanted)]


def prepare_remote_repo(config: Config, host: Host, *, dry_run: bool) -> tuple[str, str, str]:
    """This checkout's HEAD commit, checked out (detached) in `<root>/repo` on the host, for
    `wt-run generate`. Returns (repo path on the host, commit, local branch name)."""
    head = head_commit(config)
    branch = current_branch(config)
    paths = HostLayout.remote(host.root, config.data)
    inventory = inventory_of(host, paths, [head.commit])
    if dry_run:
        return paths.repo, head.commit, branch
    script = _repo_checkout_script(paths, head.commit)
    result = apply_with_bundle(config, host, paths, inventory, [head], script)
    return paths.repo, ok_lines(result.stdout).get("repo", head.commit), branch


# ---------------------------------------------------------------------- local side

def _bundle(config: Config, wanted: Sequence[Wanted], haves: Sequence[str],
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
                       wanted: Sequence[Wanted], script_body: str,
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
        + SCRIPT_FNS +
        'if [ ! -d "$R" ]; then mkdir -p "$R" || failed mkdir-root; echo created-root; fi\n'
        'chmod 700 "$R" 2>/dev/null\n'
        'mkdir -p "$WT" "$T" || failed mkdir-root\n'
        'if [ ! -d "$G/.git" ]; then\n'
        '  git init -q "$G" </dev/null >"$E" 2>&1 || failed git-init\n'
        "  echo created-repo\n"
        "fi\n"
    )


def _fetch_lines(bundle: str, wanted: Sequence[Wanted]) -> str:
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
