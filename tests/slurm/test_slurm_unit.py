"""Slurm host logic that needs no cluster: settings validation, job grouping into arrays, the
state mapping, and the generated batch scripts (checked against a golden file)."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from worktree_runner.config import Config, parse_config
from worktree_runner.errors import ConfigError
from worktree_runner.runs import HostLayout, WorkerRecord
from worktree_runner.slurm import combine
from worktree_runner.slurm_jobs import plan_submissions
from worktree_runner.slurm_settings import AUTO_ARRAY_MIN, slurm_settings
from worktree_runner.states import Observation, WorkerState

GOLDEN = Path(__file__).parent / "golden" / "batch_scripts.txt"
ROOT = "/scratch/it's %j $HOME"
LAYOUT = HostLayout.remote(ROOT, "data")


def _config(tmp_path: Path, host: dict[str, Any], branches: dict[str, Any] | None = None
            ) -> Config:
    repo = tmp_path / "repo"
    if not repo.exists():
        repo.mkdir()
        subprocess.run(["git", "init", "-q", str(repo)], check=True)
    raw = {"hosts": {"hpc": {"type": "slurm", "via": "local", "root": ROOT, **host}},
           "branches": branches or {}, "commands": {"train": "true"}}
    path = repo / "wt-run.yaml"
    path.write_text(yaml.safe_dump(raw))
    return parse_config(raw, path)


def _record(name: str, branch: str = "exp/x") -> WorkerRecord:
    wdir = f"{ROOT}/runs/r1/workers/{name}"
    return WorkerRecord(name=name, branch=branch, commit="0" * 40, host="hpc", kind="train",
                        command="true", worktree=f"{ROOT}/worktrees/{name}", worker_dir=wdir)


# ---------------------------------------------------------------- golden batch scripts

def _render_golden(tmp_path: Path) -> str:
    hostile = "a b'c\"$(touch x)`y`;%j"
    config = _config(tmp_path, {"partition": "gpu", "gres": "gpu:1", "cpus": 4, "mem": "16G",
                                "time": "1-02:00:00", "account": "acct", "qos": "normal",
                                "requeue": True, "signal": 120,
                                "sbatch_args": ["--exclusive", f"--comment={hostile}"]},
                     {"we.ird-1": {"branch": "exp/we+ird.v1",
                                   "slurm": {"time": "10", "sbatch_args": [f"--x={hostile}"]}},
                      **{f"a{i}": {"branch": f"exp/a{i}"} for i in range(AUTO_ARRAY_MIN)}})
    recs = [_record("we.ird-1", "exp/we+ird.v1")] + [_record(f"a{i}") for i in
                                                     range(AUTO_ARRAY_MIN)]
    hc = config.host("hpc")
    parts = []
    for sub in plan_submissions(config, hc, recs, "t0", LAYOUT, "r1"):
        parts.append(f"===== {' '.join(r.name for r in sub.records)}\n"
                     f"$ {shlex.join([*sub.argv, sub.script_path])}\n"
                     f"links: {list(sub.links)}\n{sub.script}")
    return "\n".join(parts)


def test_batch_scripts_match_golden(tmp_path: Path) -> None:
    text = _render_golden(tmp_path)
    if os.environ.get("UPDATE_GOLDEN") == "1":
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text(), "rerun with UPDATE_GOLDEN=1 after checking the diff"


def test_batch_script_is_valid_sh_and_quotes_hostile_paths(tmp_path: Path) -> None:
    config = _config(tmp_path, {})
    sub = plan_submissions(config, config.host("hpc"), [_record("w")], "t0", LAYOUT, "r1")[0]
    subprocess.run(["sh", "-n"], input=sub.script, text=True, check=True)
    # The worker dir is one shell word and `%` is escaped for sbatch's --output pattern.
    assert f"d={shlex.quote(_record('w').worker_dir)}\n" in sub.script
    assert f"--output={ROOT.replace('%', '%%')}/runs/r1/workers/w/log" in sub.argv


# ---------------------------------------------------------------- grouping into arrays

@pytest.mark.parametrize(("host", "count", "expected"), [
    ({}, AUTO_ARRAY_MIN - 1, [1] * (AUTO_ARRAY_MIN - 1)),
    ({}, AUTO_ARRAY_MIN, [AUTO_ARRAY_MIN]),
    ({"array": True}, 2, [2]),
    ({"array": True}, 1, [1]),
    ({"array": False}, AUTO_ARRAY_MIN + 1, [1] * (AUTO_ARRAY_MIN + 1)),
])
def test_array_grouping(tmp_path: Path, host: dict[str, Any], count: int,
                        expected: list[int]) -> None:
    config = _config(tmp_path, host)
    subs = plan_submissions(config, config.host("hpc"), [_record(f"w{i}") for i in
                                                         range(count)], "t0", LAYOUT, "r1")
    assert [len(s.records) for s in subs] == expected
    for sub in subs:
        is_array = any(a.startswith("--array=") for a in sub.argv)
        assert is_array == (len(sub.records) > 1)


def test_branch_override_splits_array_groups(tmp_path: Path) -> None:
    config = _config(tmp_path, {"array": True, "partition": "cpu"},
                     {"big": {"branch": "exp/big", "slurm": {"partition": "gpu", "gpus": 2}}})
    subs = plan_submissions(config, config.host("hpc"),
                            [_record("a"), _record("big"), _record("b")], "t0", LAYOUT, "r1")
    assert [[r.name for r in s.records] for s in subs] == [["a", "b"], ["big"]]
    assert "--partition=gpu" in subs[1].argv and "--gpus=2" in subs[1].argv
    assert "--partition=cpu" in subs[0].argv


# ---------------------------------------------------------------- settings validation

@pytest.mark.parametrize(("host", "needle"), [
    ({"cpus": "four"}, "hpc.cpus must be a positive integer"),
    ({"cpus": 0}, "hpc.cpus must be a positive integer"),
    ({"time": "two hours"}, "is not a Slurm time"),
    ({"partition": "gpu\n#SBATCH --x"}, "hpc.partition must be one non-empty line"),
    ({"mem": ["16G"]}, "hpc.mem must be a string"),
    ({"sbatch_args": {"x": 1}}, "sbatch_args must be a list"),
    ({"sbatch_args": ["exclusive"]}, "is not an option"),
    ({"signal": "USR1 at 90"}, "is not a Slurm signal spec"),
    ({"requeue": "yes"}, "requeue must be true or false"),
    ({"array": 4}, "array must be true or false"),
    ({"generate_tasks": 0}, "generate_tasks must be a positive integer"),
])
def test_settings_errors_name_key_and_fix(tmp_path: Path, host: dict[str, Any],
                                          needle: str) -> None:
    config = _config(tmp_path, host)
    with pytest.raises(ConfigError) as err:
        slurm_settings(config, config.host("hpc"))
    assert needle in err.value.message and err.value.fix


def test_settings_and_signal_forms(tmp_path: Path) -> None:
    config = _config(tmp_path, {"gpus": "a100:2", "time": 30, "signal": "usr1@50"},
                     {"b": {"branch": "exp/b", "slurm": {"cpus": 2}}})
    s = slurm_settings(config, config.host("hpc"), "b")
    assert s.options == ("--gpus=a100:2", "--cpus-per-task=2", "--time=30")
    assert s.signal == "B:USR1@50" and s.requeue is None
    quiet = _config(tmp_path, {"signal": False})
    assert slurm_settings(quiet, quiet.host("hpc")).signal is None
    bad = _config(tmp_path, {}, {"b": {"branch": "exp/b", "slurm": {"cpus": -1}}})
    with pytest.raises(ConfigError, match=r"branches\.b\.slurm\.cpus"):
        slurm_settings(bad, bad.host("hpc"), "b")


# ---------------------------------------------------------------- state mapping

_NONE = Observation(WorkerState.PENDING)


def _combine(files: dict[str, Any], job: tuple[str, str | None] | None,
             error: str | None = None) -> tuple[str, Any, Any]:
    o = combine(files, job, error, "12", 1000.0, _NONE)
    return o.state.value, o.reason, o.scheduler_state


@pytest.mark.parametrize(("files", "job", "error", "expected"), [
    ({}, ("PENDING", "Resources"), None, ("pending", "Resources", "PENDING")),
    ({}, ("RUNNING", None), None, ("running", None, "RUNNING")),
    # A requeued job keeps its old exit file until it restarts: Slurm's active state wins.
    ({"exit": ["143", "9"]}, ("PENDING", "BeginTime"), None, ("pending", "BeginTime",
                                                              "PENDING")),
    ({"exit": ["0", "9"]}, ("COMPLETING", None), None, ("succeeded", None, "COMPLETING")),
    ({"exit": ["3", "9"]}, ("FAILED", "NonZeroExitCode"), None, ("failed", None, "FAILED")),
    ({"exit": ["143", "9"]}, ("TIMEOUT", None), None, ("killed", "time limit reached",
                                                       "TIMEOUT")),
    ({"exit": ["143", "9"], "stop": []}, ("CANCELLED", None), None,
     ("stopped", None, "CANCELLED")),
    ({"stop": []}, ("CANCELLED", None), None, ("stopped", None, "CANCELLED")),
    ({}, ("CANCELLED", None), None, ("killed", "Slurm: cancelled outside wt-run (scancel)",
                                     "CANCELLED")),
    ({}, ("OUT_OF_MEMORY", None), None, ("killed", "Slurm: out of memory", "OUT_OF_MEMORY")),
    ({}, ("NODE_FAIL", None), None, ("lost", "Slurm: node failure", "NODE_FAIL")),
    ({}, ("PREEMPTED", None), None, ("killed", "Slurm: preempted", "PREEMPTED")),
    # Forgotten by Slurm: the files decide.
    ({"exit": ["0", "9"]}, None, None, ("succeeded", None, None)),
    ({"stop": []}, None, None, ("stopped", None, None)),
    # Slurm unreachable: never a failure.
    ({}, None, "Unable to contact slurm controller", (
        "unknown", "Slurm: Unable to contact slurm controller", None)),
    ({"exit": ["0", "9"]}, None, "Unable to contact", ("succeeded", None, None)),
])
def test_state_mapping(files: dict[str, Any], job: Any, error: str | None,
                       expected: tuple[str, Any, Any]) -> None:
    assert _combine(files, job, error) == expected


def test_forgotten_without_exit_file_is_lost() -> None:
    state, reason, word = _combine({"pid": ["5", "1", "b", "9"]}, None)
    assert (state, word) == ("lost", None) and "no longer knows job 12" in reason
