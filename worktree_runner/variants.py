"""Sweeps: branches × `--set`/`matrix:` values × seeds expanded into named variants, plus the
retry policy that travels with each branch. Pure data: no hosts, no git."""

from __future__ import annotations

import hashlib
import itertools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import ConfigError, WtRunError
from .names import check_worker_name

if TYPE_CHECKING:
    from .config import BranchConfig, Config

RETRY_REASONS = ("oom", "lost", "killed", "failed")
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,31}\Z")


@dataclass(frozen=True)
class RetryPolicy:
    """`retry: {max: N, on: [...]}`: how often a worker ending for one of `on` is rerun."""

    max: int = 0
    on: tuple[str, ...] = ()

    def allows(self, reason: str | None, attempts_so_far: int) -> bool:
        return reason in self.on and attempts_so_far <= self.max


@dataclass(frozen=True)
class Variant:
    """One worker of a launch: a branch entry with its final vars and seed."""

    name: str
    base: BranchConfig
    vars: Mapping[str, str] = field(default_factory=dict)
    seed: int | None = None
    group: str = ""


def parse_retry(raw: Any, where: str) -> RetryPolicy:
    if raw is None:
        return RetryPolicy()
    if isinstance(raw, dict) and True in raw:
        # YAML 1.1 reads a bare `on:` key as the boolean true.
        raw = {("on" if k is True else k): v for k, v in raw.items()}
    if not isinstance(raw, dict) or set(raw) - {"max", "on"}:
        raise ConfigError(f"{where} must be a mapping with max: and on:",
                          "write e.g. retry: {max: 2, on: [oom, lost]}")
    n = raw.get("max", 1)
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise ConfigError(f"{where}.max must be a non-negative integer", "write e.g. max: 2")
    on = raw.get("on", ["oom", "lost"])
    on = [on] if isinstance(on, str) else on
    if not isinstance(on, list) or any(r not in RETRY_REASONS for r in on):
        raise ConfigError(f"{where}.on must list some of {', '.join(RETRY_REASONS)}",
                          "write e.g. on: [oom, lost]")
    return RetryPolicy(n, tuple(on))


def parse_seeds(raw: Any, where: str) -> int | None:
    if raw is None:
        return None
    if not isinstance(raw, int) or isinstance(raw, bool) or not 1 <= raw <= 1000:
        raise ConfigError(f"{where} must be an integer from 1 to 1000", "write e.g. seeds: 3")
    return raw


def parse_matrix(raw: Any, where: str) -> dict[str, tuple[str, ...]]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must map names to lists of values",
                          "write e.g. matrix: {lr: [1e-3, 3e-4]}")
    out: dict[str, tuple[str, ...]] = {}
    for key, values in raw.items():
        values = values if isinstance(values, list) else [values]
        if not _KEY.match(str(key)) or not values or any(
                not isinstance(v, (str, int, float, bool)) for v in values):
            raise ConfigError(f"{where}.{key} must be a list of strings or numbers under a "
                              "plain name", "write e.g. lr: [1e-3, 3e-4]")
        out[str(key)] = tuple(str(v) for v in values)
    return out


def parse_set_options(options: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """`--set KEY=V1,V2` options, in order; a key given twice is an error."""
    out: dict[str, tuple[str, ...]] = {}
    for opt in options:
        key, sep, values = opt.partition("=")
        if not sep or not _KEY.match(key):
            raise WtRunError(f"--set {opt!r} is not KEY=V1,V2,...",
                             "write e.g. --set lr=1e-3,3e-4 (KEY: letters, digits, _)")
        if key in out:
            raise WtRunError(f"--set {key} given twice", f"list all values once: --set {key}=a,b")
        parts = tuple(values.split(","))
        if any(p == "" for p in parts):
            raise WtRunError(f"--set {opt!r} has an empty value",
                             "separate non-empty values with commas")
        out[key] = parts
    return out


def _slug(value: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9.-]+", "_", value).strip("._-") or "x"
    if slug != value:  # readable, yet two values that slug alike never share a name
        slug = f"{slug[:12]}_{hashlib.sha256(value.encode()).hexdigest()[:6]}"
    return slug[:24]


def expand(config: Config, names: Sequence[str], sets: Mapping[str, Sequence[str]] = {},
           seeds: int | None = None) -> list[Variant]:
    """Branches × values × seeds, in a fixed order with deterministic, unique, valid names
    (e.g. `i3d-lr1e-3-s2`). `--set` overrides `matrix:` and the branch's vars."""
    variants: list[Variant] = []
    for name in names:
        base = config.branch(name)
        matrix = {**config.matrix, **base.matrix, **{k: tuple(v) for k, v in sets.items()}}
        n_seeds = seeds if seeds is not None else (base.seeds or config.seeds)
        keys = list(matrix)
        for combo in itertools.product(*(matrix[k] for k in keys)):
            chosen = dict(zip(keys, combo))
            group = name + "".join(f"-{k}{_slug(v)}" for k, v in chosen.items())
            final = {**base.vars, **chosen}
            for seed in range(n_seeds) if n_seeds else [None]:
                wname = group if seed is None else f"{group}-s{seed}"
                if len(wname) > 64:
                    wname = f"{wname[:50]}-{hashlib.sha256(wname.encode()).hexdigest()[:8]}"
                check_worker_name(wname, "a sweep worker")
                variants.append(Variant(wname, base, final, seed, group))
    seen: set[str] = set()
    for v in variants:
        if v.name in seen:
            raise WtRunError(f"two workers of this launch would be named '{v.name}'",
                             "name each branch once and give --set values that differ")
        seen.add(v.name)
    return variants
