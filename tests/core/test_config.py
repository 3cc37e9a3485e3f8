"""Config mistakes give one line naming the file, the key and the fix, and exit 1."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import WtRun, basic_config, write_config
from worktree_runner.config import load_config


@pytest.mark.parametrize("mutate,needle,fix", [
    (lambda c: c.update(colour="red"), "unknown key 'colour'", "remove it"),
    (lambda c: c["branches"]["a"].update(vars={"x": "1"}, extra=1),
     "unknown key 'branches.a.extra'", "remove it"),
    (lambda c: c.update(default_host="gpu9"), "default_host: 'gpu9'", "add gpu9 under hosts"),
    (lambda c: c["branches"]["a"].update(host="gpu9"), "branches.a.host: 'gpu9'", "add the host"),
    (lambda c: c["commands"].update(train="python t.py --x {nonsense}"),
     "uses {nonsense}", "vars"),
    (lambda c: c["branches"]["a"].update(branch="-rf"), "starts with '-'", "letters"),
    (lambda c: c["branches"]["a"].update(branch="x;touch /tmp/p"), "';'", "letters"),
    (lambda c: c["branches"]["a"].update(branch="a..b"), "'..'", "letters"),
    (lambda c: c.update(hosts={"gpu1": {"type": "ssh"}}), "hosts.gpu1.address is missing",
     "user@host"),
    (lambda c: c.update(hosts={"x": {"type": "kube"}}), "'kube' is not a host type", "ssh"),
    (lambda c: c.update(shared=["../outside"]), "must be a path inside the repo", "relative"),
    (lambda c: c.update(hosts={"g": {"type": "ssh", "address": ""}}), "is not a host address",
     "user@host"),
    (lambda c: c.update(hosts={"g": {"type": "ssh", "address": "-oProxyCommand=x"}}),
     "is not a host address", "user@host"),
    (lambda c: c["branches"]["a"].update(branch="refs/heads/main"), "a ref path",
     "without refs/heads/"),
    (lambda c: c.update(hosts={"g": {"type": "local", "gpu_free_mib": -1}}),
     "gpu_free_mib must be", "(MiB)"),
    (lambda c: c.update(shared=[".git"]), "git's or wt-run's own", "share only"),
    (lambda c: c["commands"].update(train="python t.py {name:>10}"), "has a format",
     "{name}"),
    (lambda c: c["commands"].update(train=42), "commands.train must be a command line",
     "python train.py"),
    (lambda c: c.update(retry={"max": 10**20, "on": ["failed"]}), "retry.max must be",
     "max: 2"),
])
def test_config_mistakes_are_one_line_with_fix(repo_factory, mutate, needle, fix) -> None:
    repo = repo_factory()
    cfg = basic_config(["a"], "python t.py")
    mutate(cfg)
    path = write_config(repo, cfg)
    result = WtRun(repo, path)("status", ok=False)
    assert result.exit_code == 1
    line = result.output.strip()
    assert len(line.splitlines()) == 1, line
    assert line.startswith("Error: ") and needle in line and fix in line
    assert str(path) in line


def test_bad_yaml_names_line(repo_factory) -> None:
    repo = repo_factory()
    path = repo / "wt-run.yaml"
    path.write_text("branches:\n  a: {branch: x\ncommands: {}\n")
    result = WtRun(repo, path)("status", ok=False)
    assert result.exit_code == 1 and "line" in result.output and "YAML" in result.output


def test_unknown_branch_name_on_launch(repo_factory) -> None:
    repo = repo_factory()
    wt = WtRun(repo, write_config(repo, basic_config(["a"], "true")))
    result = wt("launch", "--branches", "nope", ok=False)
    assert result.exit_code == 1
    assert "no entry 'nope' under branches:" in result.output and "known: a" in result.output


def test_missing_config_says_run_init(tmp_path: Path, monkeypatch) -> None:
    from click.testing import CliRunner

    from worktree_runner.cli import cli

    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["status"])
    assert result.exit_code == 1 and "wt-run init" in result.output


def test_init_writes_a_starter_that_loads(repo_factory, monkeypatch) -> None:
    from click.testing import CliRunner

    from worktree_runner.cli import cli

    repo = repo_factory()
    monkeypatch.chdir(repo)
    assert CliRunner().invoke(cli, ["init"]).exit_code == 0
    config = load_config(None, cwd=repo)
    assert set(config.branches) == {"baseline", "bigger-lr"}
    assert "# " in (repo / "wt-run.yaml").read_text()
    again = CliRunner().invoke(cli, ["init"])
    assert again.exit_code == 1 and "--force" in again.output


def test_config_found_in_configs_dir_with_relative_repo(repo_factory) -> None:
    repo = repo_factory()
    (repo / "configs").mkdir()
    cfg = basic_config(["a"], "true", repo="..")
    write_config(repo / "configs", cfg)
    config = load_config(None, cwd=repo)
    assert config.repo == repo.resolve()
    assert config.worktrees == repo.resolve() / ".wt-run/worktrees"


def test_usage_errors_exit_2(repo_factory) -> None:
    repo = repo_factory()
    wt = WtRun(repo, write_config(repo, basic_config(["a"], "true")))
    assert wt("stop", ok=False).exit_code == 2
    assert wt("launch", ok=False).exit_code == 2
    assert wt("clean", ok=False).exit_code == 2


def test_file_system_errors_are_one_line(repo_factory, tmp_path: Path) -> None:
    """A path the user gave that cannot be written gives one line naming it, no traceback."""
    repo = repo_factory()
    wt = WtRun(repo, write_config(repo, basic_config(["a"], "python t.py")))
    result = wt("init", "--path", str(tmp_path / "no" / "such" / "dir" / "w.yaml"), ok=False)
    assert result.exit_code == 1, result.output
    line = result.output.strip()
    assert len(line.splitlines()) == 1 and line.startswith("Error: ") and "no/such" in line


def test_init_does_not_hide_a_config_in_configs(repo_factory, monkeypatch) -> None:
    repo = repo_factory()
    (repo / "configs").mkdir()
    (repo / "configs" / "wt-run.yaml").write_text("branches: {}\n")
    monkeypatch.chdir(repo)
    wt = WtRun(repo, repo / "configs" / "wt-run.yaml")
    out = wt("init", ok=False).output
    assert "configs/wt-run.yaml already exists" in out and "--force" in out
    assert not (repo / "wt-run.yaml").exists()


def test_a_file_that_is_no_config_is_not_echoed(tmp_path: Path, repo_factory) -> None:
    repo = repo_factory()
    secret = repo / "shadow"
    secret.write_text("root:$y$j9T$SECRETHASH:19000:0:99999:7:::\n")
    result = WtRun(repo, secret)("status", ok=False)
    assert result.exit_code == 1 and "not a config key" in result.output
    assert "SECRETHASH" not in result.output
