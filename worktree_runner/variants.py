"""Sweeps: branches × `--set`/`matrix:` values × seeds expanded into named variants with
deterministic, readable, unique names. Pure data: no hosts, no git."""

from __future__ import annotations

import hashlib
import itertools
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from .config import BUILTIN_FIELDS, BranchConfig, Config, template_fields
from .errors import WtRunError
from .names import check_worker_name
from .policies import KEY


@dataclass(frozen=True)
class Variant:
    """One worker of a launch: a branch entry with its final vars and seed."""

    name: str
    base: BranchConfig
    vars: Mapping[str, str] = field(default_factory=dict)
    seed: int | None = None
    group: str = ""


MAX_VARIANTS = 10_000


def parse_set_options(options: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """`--set KEY=V1,V2` options, in order; a key given twice is an error."""
    out: dict[str, tuple[str, ...]] = {}
    for opt in options:
        key, sep, values = opt.partition("=")
        if not sep or not KEY.match(key):
            raise WtRunError(f"--set {opt!r} is not KEY=V1,V2,...",
                             "write e.g. --set lr=1e-3,3e-4 (KEY: letters, digits, _)")
        if key in out:
            raise WtRunError(f"--set {key} given twice", f"list all values once: --set {key}=a,b")
        parts = tuple(v.strip() for v in values.split(","))
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
        _check_sets(config, base, sets)
        matrix = {**config.matrix, **base.matrix, **{k: tuple(v) for k, v in sets.items()}}
        n_seeds = seeds if seeds is not None else (base.seeds or config.seeds)
        keys = list(matrix)
        size = (n_seeds or 1) * math.prod(len(v) or 1 for v in matrix.values())
        if size > MAX_VARIANTS:
            raise WtRunError(f"branch '{name}' would expand to {size} workers (values × seeds)",
                             f"sweep fewer values at once (at most {MAX_VARIANTS} workers per "
                             "branch and launch)")
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


def _check_sets(config: Config, base: BranchConfig, sets: Mapping[str, Sequence[str]]) -> None:
    """A `--set` key must be a field the branch's command uses, and not one wt-run fills
    itself: otherwise every variant runs the same command under different names, and compare
    would rank identical runs as if they differed."""
    used = template_fields(config.commands[base.command])
    own = ", ".join(sorted(used - BUILTIN_FIELDS - {"seed"})) or "none"
    for key in sets:
        if key == "seed":
            raise WtRunError("--set seed: seeds come from --seeds N (0..N-1) or seeds:",
                             "pass --seeds N instead of --set seed=...")
        if key in BUILTIN_FIELDS:
            raise WtRunError(f"--set {key}: {{{key}}} is filled by wt-run itself",
                             f"sweep one of the command's own fields instead ({own})")
        if key not in used:
            raise WtRunError(
                f"--set {key}: commands.{base.command} (branch '{base.name}') does not use "
                f"{{{key}}}, so every variant would run the same command",
                f"add {{{key}}} to the command, or sweep one of its fields ({own})")
