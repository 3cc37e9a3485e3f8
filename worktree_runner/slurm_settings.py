"""Slurm settings: a host's `slurm` keys with a branch's overrides, validated into sbatch
options (partition, gres, time, signal, requeue, arrays, sharded generation)."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from typing import Any

from .config import Config, HostConfig
from .errors import ConfigError

# Groups of at least this many workers with the same sbatch settings go in as one job array
# unless the host says `array: false` (`array: true` makes every group of 2+ an array).
AUTO_ARRAY_MIN = 8
DEFAULT_SIGNAL = "B:USR1@90"
# Keys of the host's `slurm` mapping (config.py keeps every slurm-only key there).
SBATCH_KEYS = ("partition", "gres", "gpus", "cpus", "mem", "time", "account", "qos")
HOST_ONLY_KEYS = ("sbatch_args", "signal", "requeue", "array", "generate_tasks")

_TIME = re.compile(r"(\d+-)?\d+(:\d+){0,2}|\d+-\d+|UNLIMITED|INFINITE")
_SIGNAL = re.compile(r"(?:(B|R|RB|BR):)?([A-Z0-9]+)(?:@(\d+))?")


@dataclass(frozen=True)
class SlurmSettings:
    """Validated sbatch settings for one worker (host settings with the branch's overrides)."""

    options: tuple[str, ...]  # sbatch options that may differ per worker (grouping key)
    signal: str | None
    requeue: bool | None
    array: bool | None
    generate_tasks: int


def _where(hc: HostConfig, key: str, branch: str | None) -> str:
    return f"branches.{branch}.slurm.{key}" if branch else f"hosts.{hc.name}.{key}"


def _word(value: Any, where: str, example: str) -> str:
    """A single-line sbatch value; newlines or NUL would let a value escape its argument's
    meaning in the generated script's comments and in sbatch's own parsing."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ConfigError(f"{where} must be a string, got {type(value).__name__}",
                          f"write e.g. {example}")
    text = str(value)
    if not text or any(c in text for c in "\n\r\0"):
        raise ConfigError(f"{where} must be one non-empty line", f"write e.g. {example}")
    return text


def _positive_int(value: Any, where: str, example: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{where} must be a positive integer", f"write e.g. {example}")
    return value


def _sbatch_option(key: str, value: Any, where: str) -> str:
    if key == "cpus":
        return f"--cpus-per-task={_positive_int(value, where, 'cpus: 8')}"
    if key == "gpus":
        if isinstance(value, int) and not isinstance(value, bool):
            return f"--gpus={_positive_int(value, where, 'gpus: 1')}"
        return f"--gpus={_word(value, where, 'gpus: a100:1')}"
    if key == "time":
        text = _word(value, where, 'time: "04:00:00"')
        if not _TIME.fullmatch(text):
            raise ConfigError(f"{where}: '{text}' is not a Slurm time",
                              'write minutes or [D-]HH:MM:SS, e.g. time: "04:00:00"')
        return f"--time={text}"
    if key == "mem":
        return f"--mem={_word(value, where, 'mem: 32G')}"
    flag = {"partition": "partition", "gres": "gres", "account": "account", "qos": "qos"}[key]
    return f"--{flag}={_word(value, where, f'{key}: name')}"


def _sbatch_args(value: Any, where: str) -> list[str]:
    if isinstance(value, str):
        try:
            items: list[Any] = shlex.split(value)
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}", "write it as a YAML list of arguments") from None
    elif isinstance(value, list):
        items = value
    else:
        raise ConfigError(f"{where} must be a list of sbatch arguments",
                          'write e.g. sbatch_args: ["--constraint=a100", "--exclusive"]')
    args = [_word(item, f"{where}[{i}]", '"--exclusive"') for i, item in enumerate(items)]
    if args and not args[0].startswith("-"):
        raise ConfigError(f"{where}[0]: '{args[0]}' is not an option",
                          "each item is an sbatch option such as --exclusive or --nice=10")
    return args


def _signal(value: Any, where: str) -> str | None:
    if value is None or value is False:
        return None
    if value is True:
        return DEFAULT_SIGNAL
    if isinstance(value, int) and not isinstance(value, bool):
        return f"B:USR1@{_positive_int(value, where, 'signal: 90')}"
    text = _word(value, where, 'signal: "USR1@90"').upper()
    match = _SIGNAL.fullmatch(text)
    if not match:
        raise ConfigError(f"{where}: '{value}' is not a Slurm signal spec",
                          'write seconds (signal: 90), "USR1@90", or false to disable')
    # Only the batch shell (wt-run's job script) may get it: it passes USR1 on to the
    # command alone; Slurm signalling every process would also hit helper processes.
    return f"B:{match.group(2)}@{match.group(3) or 90}"


def _flag(value: Any, where: str) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    raise ConfigError(f"{where} must be true or false", f"write {where.rsplit('.', 1)[-1]}: true")


def slurm_settings(config: Config, hc: HostConfig, branch: str | None = None) -> SlurmSettings:
    """The host's settings with the branch's `slurm:` overrides, validated."""
    host = dict(hc.slurm)
    unknown = sorted(set(host) - set(SBATCH_KEYS) - set(HOST_ONLY_KEYS))
    if unknown:
        raise ConfigError(f"{config.path}: unknown key 'hosts.{hc.name}.{unknown[0]}'",
                          f"use one of: {', '.join(SBATCH_KEYS + HOST_ONLY_KEYS)}")
    override = dict(config.branches[branch].slurm) if branch in config.branches else {}
    options: list[str] = []
    for key in SBATCH_KEYS:
        if override.get(key) is not None:
            options.append(_sbatch_option(key, override[key], _where(hc, key, branch)))
        elif host.get(key) is not None:
            options.append(_sbatch_option(key, host[key], _where(hc, key, None)))
    for source, name in ((host, None), (override, branch)):
        if source.get("sbatch_args") is not None:
            options += _sbatch_args(source["sbatch_args"], _where(hc, "sbatch_args", name))
    array = host.get("array")
    if isinstance(array, int) and not isinstance(array, bool):
        raise ConfigError(f"hosts.{hc.name}.array must be true or false",
                          f"write array: true (groups of {AUTO_ARRAY_MIN}+ go in as arrays "
                          "anyway)")
    tasks = host.get("generate_tasks", 1)
    return SlurmSettings(
        options=tuple(options),
        signal=_signal(host.get("signal", True), _where(hc, "signal", None)),
        requeue=_flag(host.get("requeue"), _where(hc, "requeue", None)),
        array=_flag(array, _where(hc, "array", None)),
        generate_tasks=_positive_int(tasks, _where(hc, "generate_tasks", None),
                                     "generate_tasks: 8"),
    )


def pattern_safe(path: str) -> str:
    """A path for sbatch --output: `%` starts a replacement symbol there."""
    if "\\" in path:
        raise ConfigError(f"path {path!r} contains a backslash, which sbatch --output cannot "
                          "take literally", "choose a root: without backslashes")
    return path.replace("%", "%%")
