"""What else differs, besides the variable under test: within a group of seeds (which should
be alike in everything but the seed) and between groups (which should differ only in branch
and vars). Each finding is a `Confounder`; nothing here decides what is better.

Checked, from each worker's recorded `env` and its `out/progress.json`: GPU model, GPU driver,
package set (hash of the installed distributions; torch/numpy/python versions named when
they differ), uncommitted code (a snapshot commit), data fingerprint, commit, and the epochs
or steps completed. A key nobody recorded (a run from before `env` existed) is not flagged."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .compare_read import BranchResult


@dataclass(frozen=True)
class Confounder:
    """One difference that may explain a result. `scope` is the group's name, or "" when it
    lies between groups; `key` the thing that differs; `message` says how."""

    scope: str
    key: str
    message: str

    def to_json(self) -> dict[str, str]:
        return {"scope": self.scope or None, "key": self.key, "message": self.message}


def _env(key: str) -> Callable[[BranchResult], Any]:
    return lambda b: b.env.get(key)


def _dirty(b: BranchResult) -> Any:
    if "dirty" not in b.env:
        return None
    if not b.env.get("dirty"):
        return "clean"
    snap = b.env.get("snapshot")
    return f"uncommitted changes (snapshot {str(snap)[:8]})" if snap else "uncommitted changes"


def _completed(b: BranchResult) -> Any:
    p = b.progress
    if "epoch" in p:
        return f"{p['epoch']:g} epochs"
    if "step" in p:
        return f"{p['step']:g} steps"
    return None


def _packages(b: BranchResult) -> Any:
    return b.env.get("packages_hash")


# (key, label, how to read it from a worker). Order: most likely to change a result first.
CHECKS: tuple[tuple[str, str, Callable[[BranchResult], Any]], ...] = (
    ("gpu", "GPU model", _env("gpu")),
    ("data_fingerprint", "data", _env("data_fingerprint")),
    ("dirty", "uncommitted code", _dirty),
    ("packages_hash", "packages", _packages),
    ("torch", "torch version", _env("torch")),
    ("numpy", "numpy version", _env("numpy")),
    ("python", "python version", _env("python")),
    ("driver", "GPU driver", _env("driver")),
    ("completed", "epochs/steps completed", _completed),
    ("commit", "commit", lambda b: b.commit[:10] or None),
)


def _describe(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{_short(v)} ×{n}" for v, n in sorted(counts.items()))


def _short(value: str) -> str:
    return value if len(value) <= 40 else value[:37] + "…"


def _label(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in sorted(value.items()))
    return str(value)


def within(name: str, members: Sequence[BranchResult]) -> list[Confounder]:
    """What differs among the seeds of one group (only those that finished when any did:
    they are the ones its statistics come from)."""
    counted = [b for b in members if b.finished] or [b for b in members if b.collected]
    found = []
    for key, label, read in CHECKS:
        values = [read(b) for b in counted]
        known = Counter(_label(v) for v in values if v is not None)
        if len(known) > 1:
            found.append(Confounder(name, key, f"{label} differs among its seeds: "
                                              f"{_describe(known)}"))
        elif key == "dirty" and known and next(iter(known)) != "clean":
            found.append(Confounder(name, key, f"ran {next(iter(known))}"))
    return found


def between(groups: Mapping[str, Sequence[BranchResult]]) -> list[Confounder]:
    """Differences between groups other than their branch and vars: when two groups share no
    value of a check (all of one on A100s, all of the other on H100s), the comparison is not
    like with like. A mix inside a group is `within`'s to flag. The commit is left out
    (branches differ in code on purpose)."""
    found = []
    for key, label, read in CHECKS:
        if key == "commit":
            continue
        per_group: dict[str, frozenset[str]] = {}
        for name, members in groups.items():
            counted = [b for b in members if b.finished] or [b for b in members if b.collected]
            values = frozenset(_label(v) for b in counted if (v := read(b)) is not None)
            if values:
                per_group[name] = values
        sets = list(per_group.values())
        if any(not (x & y) for i, x in enumerate(sets) for y in sets[i + 1:]):
            detail = "; ".join(f"{n}: {', '.join(_short(v) for v in sorted(vs))}"
                               for n, vs in per_group.items())
            found.append(Confounder("", key, f"{label} differs between groups — {detail}"))
    return found
