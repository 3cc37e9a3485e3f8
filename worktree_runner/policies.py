"""Config values that shape sweeps and retries: `retry:`, `seeds:` and `matrix:`, parsed and
validated (at top level and per branch)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError

RETRY_REASONS = ("oom", "lost", "killed", "failed")
KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,31}\Z")
MAX_RETRIES = 100


@dataclass(frozen=True)
class RetryPolicy:
    """`retry: {max: N, on: [...]}`: how often a worker ending for one of `on` is rerun."""

    max: int = 0
    on: tuple[str, ...] = ()

    def allows(self, reason: str | None, attempts_so_far: int) -> bool:
        return reason in self.on and attempts_so_far <= self.max


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
    if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n <= MAX_RETRIES:
        raise ConfigError(f"{where}.max must be an integer from 0 to {MAX_RETRIES}",
                          "write e.g. max: 2")
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
        if not KEY.match(str(key)) or not values or any(
                not isinstance(v, (str, int, float, bool)) for v in values):
            raise ConfigError(f"{where}.{key} must be a list of strings or numbers under a "
                              "plain name", "write e.g. lr: [1e-3, 3e-4]")
        out[str(key)] = tuple(str(v) for v in values)
    return out
