"""The README documents every command and option, and the two main commands exist."""

from __future__ import annotations

import os
from pathlib import Path

import click
import pytest

from worktree_runner.cli import cli

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


@pytest.mark.parametrize("name", sorted(cli.commands))
def test_every_command_and_option_is_in_the_readme(name: str) -> None:
    command = cli.commands[name]
    assert f"### `wt-run {name}" in README, f"README lacks a section for `wt-run {name}`"
    for param in command.params:
        if isinstance(param, click.Option) and not param.hidden:
            longest = max(param.opts, key=len)
            if longest in ("--help",):
                continue
            assert longest in README, f"README does not mention {longest} of `wt-run {name}`"


def test_the_two_commands_are_documented_and_executable() -> None:
    root = Path(__file__).resolve().parents[2]
    for script in ("scripts/run_local.sh", "scripts/test.sh"):
        assert f"./{script}" in README
        assert os.access(root / script, os.X_OK)
    assert "scripts/test.sh" in (root / ".ci/run").read_text()
