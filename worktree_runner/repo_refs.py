"""Reading refs and commits in the user's repository: which commit a branch, `base` or HEAD
stands for, and a ref that reaches it (bundles carry refs, not bare commits)."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

from .config import BranchConfig, Config
from .errors import ConfigError, GitError


@dataclass(frozen=True)
class Wanted:
    """A commit a worktree or host needs, and a local ref that reaches it."""

    commit: str
    ref: str


def git_out(config: Config, *args: str, check: bool = True) -> str:
    """stdout of `git -C <repo> ARGS`; with check, a failure is a GitError naming the repo."""
    proc = subprocess.run(["git", "-C", str(config.repo), *args], capture_output=True,
                          text=True, check=False, stdin=subprocess.DEVNULL)
    if check and proc.returncode != 0:
        detail = proc.stderr.strip().splitlines()
        raise GitError(f"git {' '.join(args[:2])} failed in {config.repo}: "
                       f"{detail[-1] if detail else proc.returncode}",
                       "fix the repository state and retry")
    return proc.stdout if proc.returncode == 0 else ""


def branch_commits(config: Config, branches: Sequence[BranchConfig]) -> list[Wanted]:
    """Each branch's commit, in one git call; a branch that does not exist yet starts from
    `base`."""
    if not branches:
        return []
    refs = [f"refs/heads/{b.branch}" for b in branches]
    proc = subprocess.run(
        ["git", "-C", str(config.repo), "for-each-ref", "--format=%(refname) %(objectname)",
         *refs], capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise GitError(f"git for-each-ref failed in {config.repo}: "
                       f"{proc.stderr.strip() or proc.returncode}",
                       f"set repo: in {config.path} to a git checkout")
    # Patterns also match refs below a name (refs/heads/a/b for a): only exact names count.
    found = dict(line.split(" ", 1) for line in proc.stdout.splitlines() if " " in line)
    base: Wanted | None = None
    out = []
    for ref in refs:
        if ref in found:
            out.append(Wanted(found[ref], ref))
        else:
            base = base or base_commit(config)
            out.append(base)
    return out


def head_commit(config: Config) -> Wanted:
    sha = git_out(config, "rev-parse", "-q", "--verify", "HEAD^{commit}", check=False).strip()
    if not sha:
        raise GitError(f"{config.repo} has no commit yet", "commit something first")
    return Wanted(sha, "HEAD")


def current_branch(config: Config) -> str:
    return git_out(config, "branch", "--show-current", check=False).strip()


def base_commit(config: Config) -> Wanted:
    sha = git_out(config, "rev-parse", "-q", "--verify", f"{config.base}^{{commit}}",
                  check=False).strip()
    if not sha:
        raise ConfigError(f"base: '{config.base}' is not a commit in {config.repo}",
                          f"set base: in {config.path} to an existing branch or commit")
    ref = git_out(config, "rev-parse", "--symbolic-full-name", config.base, check=False).strip()
    if ref and (ref == "HEAD" or ref.startswith("refs/")):
        return Wanted(sha, ref)
    # A bundle carries refs, not bare commits: name a ref that contains the base commit.
    holders = git_out(config, "for-each-ref", "--contains", sha, "--format=%(refname)",
                      "refs/heads", "refs/tags", check=False).split()
    if holders:
        return Wanted(sha, holders[0])
    raise ConfigError(f"base: '{config.base}' is not reachable from any branch or tag",
                      "set base: to a branch, or create a branch that contains it")
