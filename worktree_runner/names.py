"""Validation of names that end up in paths and shell commands: branches, workers, runs."""

from __future__ import annotations

import re

from .errors import ConfigError

# Stricter than git's own rules on purpose: these names become directory names and
# arguments on remote hosts, so only characters that need no quoting anywhere are allowed.
_BRANCH_CHARS = re.compile(r"[A-Za-z0-9._/+-]+")
_WORKER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def branch_name_problem(name: str) -> str | None:
    """Why `name` is not an acceptable branch name, or None when it is."""
    if not name:
        return "it is empty"
    if name.startswith("-"):
        return "it starts with '-'"
    if not _BRANCH_CHARS.fullmatch(name):
        bad = sorted({c for c in name if not _BRANCH_CHARS.fullmatch(c)})
        return f"it contains {', '.join(repr(c) for c in bad)}"
    if name.startswith("/") or name.endswith("/") or "//" in name:
        return "it has an empty path component"
    if ".." in name:
        return "it contains '..'"
    if name.endswith("."):
        return "it ends with '.'"
    if name == "@" or name == "HEAD":
        return f"'{name}' is reserved by git"
    if name.startswith(("refs/", "heads/")):
        # git would make refs/heads/refs/heads/x: write the short name (x)
        return "it is a ref path, not a branch name (write it without refs/heads/)"
    for part in name.split("/"):
        if part.startswith("."):
            return f"component '{part}' starts with '.'"
        if part.endswith(".lock"):
            return f"component '{part}' ends with '.lock'"
    return None


def check_branch_name(name: str, where: str) -> str:
    problem = branch_name_problem(name)
    if problem:
        raise ConfigError(
            f"{where}: branch name {name!r} is not allowed: {problem}",
            "use letters, digits and . _ - / + only, not starting with '-' or '.'",
        )
    return name


def check_worker_name(name: str, where: str) -> str:
    if not _WORKER_NAME.fullmatch(name):
        raise ConfigError(
            f"{where}: name {name!r} is not allowed",
            "use up to 64 letters, digits, '.', '_' or '-', starting with a letter or digit",
        )
    return name


def check_run_id(run_id: str) -> str:
    if not _RUN_ID.fullmatch(run_id) or ".." in run_id:
        raise ConfigError(
            f"run id {run_id!r} is not allowed",
            "use letters, digits, '.', '_' or '-', e.g. 20260125-194400",
        )
    return run_id
