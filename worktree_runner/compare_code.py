"""Code and config differences for the report: per git branch of a run, `git diff --stat` and
the patch against the config's `base` (from their merge base, `base...commit`); per worker that
ran uncommitted code, the difference of its snapshot against its commit; and the vars (and
command) that differ between groups. Read with GitPython from the local repository."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

MAX_PATCH_LINES = 600
MAX_PATCH_CHARS = 60_000


@dataclass(frozen=True)
class CodeDiff:
    """What one ref changes against another: the stat and the (possibly truncated) patch."""

    title: str  # e.g. "exp/a (1a2b3c4d) against main"
    stat: str
    patch: str = ""
    truncated_lines: int = 0  # patch lines left out

    def to_json(self) -> dict[str, Any]:
        return {"title": self.title, "stat": self.stat, "patch": self.patch,
                "truncated_lines": self.truncated_lines}


def truncate(patch: str, max_lines: int = MAX_PATCH_LINES,
             max_chars: int = MAX_PATCH_CHARS) -> tuple[str, int]:
    """The first lines of a patch within both limits, and how many lines were left out."""
    lines = patch.splitlines()
    kept: list[str] = []
    size = 0
    for line in lines[:max_lines]:
        size += len(line) + 1
        if size > max_chars:
            break
        kept.append(line)
    return "\n".join(kept), len(lines) - len(kept)


def _diff(repo: Any, title: str, *refs: str) -> CodeDiff:
    import git

    try:
        stat = repo.git.diff("--stat", *refs) or "(no changes)"
        patch, cut = truncate(repo.git.diff(*refs))
    except git.GitCommandError as exc:
        lines = (exc.stderr or "").strip().splitlines()
        return CodeDiff(title, f"(cannot diff: {lines[-1] if lines else exc})")
    return CodeDiff(title, stat, patch, cut)


class _Worker(Protocol):
    name: str
    branch: str
    commit: str
    env: Mapping[str, Any]


def code_diffs(repo_path: Path, base: str, workers: Sequence[_Worker]) -> dict[str, CodeDiff]:
    """Key -> diff: one per git branch (its newest commit in the run) against `base`, and one
    per snapshot of uncommitted code (key `snapshot:<sha>`) against its workers' commit.
    Empty when the repository cannot be opened here."""
    import git

    try:
        repo = git.Repo(repo_path)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        return {}
    out: dict[str, CodeDiff] = {}
    for w in workers:
        ref = w.commit or w.branch
        if ref and w.branch not in out:
            label = f"{w.branch} ({w.commit[:8]})" if w.commit else w.branch
            out[w.branch] = _diff(repo, f"{label} against {base}", f"{base}...{ref}")
    snapshots: dict[str, list[_Worker]] = {}
    for w in workers:
        snap = w.env.get("snapshot") if w.env.get("dirty") else None
        if isinstance(snap, str) and snap and w.commit:
            snapshots.setdefault(snap, []).append(w)
    for snap, ws in snapshots.items():
        names = ", ".join(w.name for w in ws[:4]) + (f" (+{len(ws) - 4})" if len(ws) > 4 else "")
        out[f"snapshot:{snap}"] = _diff(
            repo, f"{names}: uncommitted changes (snapshot {snap[:10]}) against "
                  f"{ws[0].commit[:8]}", ws[0].commit, snap)
    return out


class _Varied(Protocol):
    name: str
    command: str

    @property
    def vars(self) -> Mapping[str, Any]: ...


def differing_vars(items: Sequence[_Varied]) -> dict[str, dict[str, str]]:
    """Per item (worker or group), the vars whose values are not the same for every item; the
    command too when it differs while no var does."""
    keys = sorted({k for it in items for k in it.vars})
    differing = [k for k in keys if len({str(it.vars.get(k)) for it in items}) > 1]
    out = {it.name: {k: str(it.vars.get(k, "—")) for k in differing} for it in items}
    if not differing and len({it.command for it in items}) > 1:
        for it in items:
            out[it.name]["command"] = it.command
    return out
