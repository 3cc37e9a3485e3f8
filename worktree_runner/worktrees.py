"""Git worktrees on the local repository (GitPython): create or reuse one per branch, link the
shared paths into it, and remove them again. Every git refusal becomes a GitError with a fix."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import git

from .config import BranchConfig, Config
from .errors import ConfigError, GitError


@dataclass(frozen=True)
class WorktreeInfo:
    """One entry of `git worktree list --porcelain`."""

    path: Path
    head: str
    branch: str | None  # short name, None when detached
    locked: bool
    prunable: bool


@dataclass(frozen=True)
class PreparedWorktree:
    name: str
    branch: str
    path: Path
    commit: str
    created: bool  # the worktree was made now (not reused)
    branch_created: bool


def open_repo(config: Config) -> git.Repo:
    try:
        return git.Repo(config.repo, expand_vars=False)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        raise ConfigError(f"{config.repo} is not a git repository",
                          f"set repo: in {config.path} to a git checkout") from None


def list_worktrees(repo: git.Repo) -> list[WorktreeInfo]:
    out = repo.git.worktree("list", "--porcelain")
    infos: list[WorktreeInfo] = []
    entry: dict[str, str] = {}
    for line in [*out.splitlines(), ""]:
        if not line:
            if "worktree" in entry:
                branch = entry.get("branch")
                infos.append(WorktreeInfo(
                    path=Path(entry["worktree"]), head=entry.get("HEAD", ""),
                    branch=branch.removeprefix("refs/heads/") if branch else None,
                    locked="locked" in entry, prunable="prunable" in entry))
            entry = {}
            continue
        key, _, value = line.partition(" ")
        entry[key] = value
    return infos


def worktree_path(config: Config, name: str) -> Path:
    """A worktree's directory: `<worktrees>/<name>`; names are validated, so this stays inside."""
    return config.worktrees / name


def local_branches(repo: git.Repo) -> set[str]:
    out = repo.git.for_each_ref("--format=%(refname:short)", "refs/heads/")
    return set(out.split())


def prepare_worktrees(config: Config, branches: Sequence[BranchConfig], *, force: bool = False,
                      dry_run: bool = False, link_shared: bool = True
                      ) -> list[PreparedWorktree]:
    """Create or reuse a worktree per branch and link the shared paths into each.

    All checks run before anything changes, so a refused launch leaves the repository as it
    was."""
    repo = open_repo(config)
    existing = {_real(w.path): w for w in list_worktrees(repo)}
    heads = local_branches(repo)
    plans: list[tuple[BranchConfig, Path, bool, bool]] = []
    # Registered worktrees whose directory was deleted by hand: made again in place.
    readd: set[str] = set()
    for b in branches:
        path = worktree_path(config, b.name)
        info = existing.get(_real(path))
        if info is not None and not (info.prunable and not path.exists()):
            _check_reusable(repo, info, b, force)
            plans.append((b, path, False, False))
            continue
        if info is not None:
            readd.add(b.name)
        elif path.exists() or path.is_symlink():
            raise GitError(f"{path} exists but is not a git worktree",
                           "move it away, or run `git worktree prune` if it was one")
        holder = next((w for w in existing.values() if w.branch == b.branch and w is not info),
                      None)
        if holder is not None:
            raise GitError(
                f"branch '{b.branch}' is already checked out at {holder.path}",
                "switch that checkout to another branch, or remove it with "
                f"`git worktree remove {holder.path}`")
        plans.append((b, path, True, b.branch not in heads))
    if link_shared:
        missing = [s for s in config.shared if not (config.repo / s).exists()]
        if missing:
            raise ConfigError(
                f"shared path '{missing[0]}' does not exist in {config.repo}",
                "create it (for the dataset: `wt-run generate`), or remove it from shared:")
    if any(created for *_, created in plans):
        _check_base(repo, config)
    if dry_run:
        return [PreparedWorktree(b.name, b.branch, path, "", made, bcreated)
                for b, path, made, bcreated in plans]
    prepared = []
    for b, path, made, bcreated in plans:
        if made:
            _add_worktree(repo, config, b, path, bcreated, b.name in readd)
        if link_shared:
            link_shared_paths(config, path)
        prepared.append(PreparedWorktree(b.name, b.branch, path, "", made, bcreated))
    shas = _resolve_commits(repo, [p.branch for p in prepared])
    _exclude_shared(repo, config.shared)
    return [PreparedWorktree(p.name, p.branch, p.path, sha, p.created, p.branch_created)
            for p, sha in zip(prepared, shas)]


def _real(path: Path) -> str:
    return os.path.realpath(path)


def _check_reusable(repo: git.Repo, info: WorktreeInfo, b: BranchConfig, force: bool) -> None:
    if info.locked:
        raise GitError(f"worktree {info.path} is locked",
                       f"unlock it with `git worktree unlock {info.path}`")
    if info.branch != b.branch:
        on = f"branch '{info.branch}'" if info.branch else "a detached HEAD"
        raise GitError(f"worktree {info.path} has {on} checked out, not '{b.branch}'",
                       f"check out {b.branch} there, or remove it with "
                       f"`wt-run clean --worktrees`")
    if not force and _dirty(info.path):
        raise GitError(f"worktree {info.path} has uncommitted changes to tracked files",
                       "commit or stash them there (or pass --force to run them as they are)")


def _dirty(path: Path) -> bool:
    return git.Repo(path, expand_vars=False).is_dirty(untracked_files=False)


def _check_base(repo: git.Repo, config: Config) -> None:
    try:
        repo.git.rev_parse("--verify", "--quiet", f"{config.base}^{{commit}}")
    except git.GitCommandError:
        raise ConfigError(f"base: '{config.base}' is not a commit in {config.repo}",
                          f"set base: in {config.path} to an existing branch or commit"
                          ) from None


def _add_worktree(repo: git.Repo, config: Config, b: BranchConfig, path: Path,
                  create_branch: bool, readd: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # --force only for a path git still registers after its directory was deleted; the
    # other checks git would skip with it (branch held elsewhere) were done above.
    force = ["--force"] if readd else []
    try:
        if create_branch:
            repo.git.worktree("add", *force, "-b", b.branch, "--", str(path), config.base)
        else:
            repo.git.worktree("add", *force, "--", str(path), b.branch)
    except git.GitCommandError as exc:
        detail = (exc.stderr or "").strip().splitlines()
        raise GitError(f"git worktree add for '{b.branch}' failed: "
                       f"{detail[-1] if detail else exc}",
                       "fix the repository state above and launch again") from None


def _resolve_commits(repo: git.Repo, branches: Sequence[str]) -> list[str]:
    if not branches:
        return []
    out = repo.git.rev_parse(*[f"refs/heads/{b}^{{commit}}" for b in branches])
    return out.split()


def link_shared_paths(config: Config, worktree: Path) -> None:
    """Symlink each `shared:` path of the repository into the worktree (idempotent)."""
    for rel in config.shared:
        target = config.repo / rel
        link = worktree / rel
        if link.is_symlink():
            if os.readlink(link) == str(target):
                continue
            link.unlink()
        elif link.exists():
            raise GitError(
                f"shared path '{rel}' exists in worktree {worktree} (the branch tracks it)",
                f"remove '{rel}' from shared:, or stop tracking it on that branch")
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(target)


def _exclude_shared(repo: git.Repo, shared: Iterable[str]) -> None:
    """Keep the symlinks out of git's view; info/exclude is shared by all worktrees."""
    exclude = Path(repo.git.rev_parse("--git-common-dir"))
    if not exclude.is_absolute():
        exclude = Path(repo.working_dir) / exclude
    exclude = exclude / "info" / "exclude"
    current = exclude.read_text(encoding="utf-8").splitlines() if exclude.exists() else []
    wanted = ["/.wt-run/", *(f"/{s.rstrip('/')}" for s in shared)]
    new = [w for w in wanted if w not in current]
    if new:
        exclude.parent.mkdir(parents=True, exist_ok=True)
        with exclude.open("a", encoding="utf-8") as fh:
            if current and current[-1] != "":
                fh.write("\n")
            fh.write("# wt-run shared paths\n" + "\n".join(new) + "\n")


@dataclass(frozen=True)
class RemovalPlan:
    path: Path
    branch: str | None
    reason: str  # remove | skip:<why>


def plan_removal(config: Config, busy: set[str]) -> list[RemovalPlan]:
    """Which wt-run worktrees `clean --worktrees` removes; `busy` holds names with live workers."""
    repo = open_repo(config)
    plans = []
    root = _real(config.worktrees)
    for info in list_worktrees(repo):
        real = _real(info.path)
        if os.path.dirname(real) != root:
            continue
        name = os.path.basename(real)
        if name in busy:
            plans.append(RemovalPlan(info.path, info.branch, "skip:a worker is still running"))
        elif info.locked:
            plans.append(RemovalPlan(info.path, info.branch, "skip:locked (git worktree unlock)"))
        elif not info.prunable and _dirty(info.path):
            plans.append(RemovalPlan(info.path, info.branch,
                                     "skip:uncommitted changes (commit, or --force)"))
        else:
            plans.append(RemovalPlan(info.path, info.branch, "remove"))
    return plans


def remove_worktree(config: Config, path: Path, force: bool) -> None:
    repo = open_repo(config)
    for rel in config.shared:
        link = path / rel
        if link.is_symlink():
            link.unlink()  # never follow a shared link into the dataset
    args = ["remove", "--force"] if force else ["remove"]
    try:
        repo.git.worktree(*args, "--", str(path))
    except git.GitCommandError:
        # Untracked outputs make `remove` refuse; they belong to the worktree, and results
        # live in the worker directories, so a second try with --force is safe.
        repo.git.worktree("remove", "--force", "--", str(path))


def prune_worktrees(config: Config) -> None:
    open_repo(config).git.worktree("prune")


def delete_branch(config: Config, branch: str, force: bool) -> str | None:
    """Delete a branch; without force git refuses unmerged ones. Returns why not, or None."""
    repo = open_repo(config)
    try:
        repo.git.branch("-D" if force else "-d", "--", branch)
    except git.GitCommandError as exc:
        lines = (exc.stderr or "").strip().splitlines()
        return lines[0].removeprefix("stderr: ").strip(" '") if lines else str(exc)
    return None
