"""Sweeps: branches × --set values × seeds, their names, and what each worker records."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import WtRun, write_config

ECHO = ("import json, os, sys\n"
        "json.dump({'argv': sys.argv[1:], 'seed': os.environ.get('WT_RUN_SEED'),\n"
        "           'attempt': os.environ.get('WT_RUN_ATTEMPT')},\n"
        "          open(os.path.join(os.environ['WT_RUN_OUT'], 'seen.json'), 'w'))\n")


def _wt(repo_factory, **cfg) -> WtRun:
    repo = repo_factory(files={"echo.py": ECHO})
    doc = {"branches": {"a": {"branch": "exp/a", "vars": {"lr": "0.1", "wd": "0"}},
                        "b": {"branch": "exp/b", "vars": {"lr": "0.1", "wd": "0"}}},
           "commands": {"train": "python echo.py {lr} {wd} {seed}"}, **cfg}
    return WtRun(repo, write_config(repo, doc))


def test_dry_run_lists_the_product_and_starts_nothing(repo_factory) -> None:
    wt = _wt(repo_factory, matrix={"wd": [0]})
    out = wt("launch", "--branches", "a", "b", "--set", "lr=1e-3,3e-4",
             "--set", "wd=0,0.05", "--seeds", "3", "--dry-run").output
    names = [line.split()[2] for line in out.splitlines() if line.startswith("Would launch")]
    assert len(names) == 2 * 2 * 2 * 3 == len(set(names))
    assert "a-wd0-lr1e-3-s2" in names and "b-wd0.05-lr3e-4-s0" in names
    assert "24 worker(s)" in out
    assert not (wt.repo / ".wt-run/runs").exists() or not any(
        (wt.repo / ".wt-run/runs").iterdir())


def test_sweep_runs_every_variant_with_its_values_seed_and_env(repo_factory) -> None:
    wt = _wt(repo_factory)
    wt("launch", "--branches", "a", "--set", "lr=1e-3,3e-4", "--set", "wd=0", "--seeds", "2",
       "--wait")
    run = wt.status()["run"]
    workers = {w["name"]: w for w in wt.status()["workers"]}
    assert set(workers) == {"a-lr1e-3-wd0-s0", "a-lr1e-3-wd0-s1", "a-lr3e-4-wd0-s0",
                            "a-lr3e-4-wd0-s1"}
    w = workers["a-lr3e-4-wd0-s1"]
    assert (w["vars"], w["seed"], w["group"]) == ({"lr": "3e-4", "wd": "0"}, 1,
                                                  "a-lr3e-4-wd0")
    seen = json.loads(Path(w["out"], "seen.json").read_text())
    assert seen == {"argv": ["3e-4", "0", "1"], "seed": "1", "attempt": "1"}
    env = w["env"]
    assert env["python"] and env["packages_hash"] and env["dirty"] is False
    assert env["commit"] == w["commit"]
    # Relaunching the sweep into the same run reuses the names (new attempts).
    wt("launch", "--branches", "a", "--set", "lr=1e-3,3e-4", "--set", "wd=0", "--seeds", "2",
       "--run", run, "--wait")
    again = {w["name"]: w for w in wt.status(run)["workers"]}
    assert set(again) == set(workers) and {w["attempt"] for w in again.values()} == {2}


@pytest.mark.parametrize("value", ["it's", "a;touch PWNED", "$(touch PWNED)", "x/../y",
                                   "`touch PWNED`", "a b"])
def test_hostile_set_values_stay_data(repo_factory, value: str) -> None:
    wt = _wt(repo_factory)
    wt("launch", "--branches", "a", "--set", f"lr={value}", "--set", "wd=0", "--seeds", "1",
       "--wait")
    (w,) = wt.status()["workers"]
    assert w["name"].startswith("a-lr") and "/" not in w["name"] and " " not in w["name"]
    assert json.loads(Path(w["out"], "seen.json").read_text())["argv"][0] == value
    assert w["vars"]["lr"] == value
    assert not list(wt.repo.rglob("PWNED"))


def test_bad_set_options_are_one_line_errors(repo_factory) -> None:
    wt = _wt(repo_factory)
    for opt, needle in [("lr", "is not KEY=V1,V2"), ("lr=", "empty value"),
                        ("l r=1", "is not KEY=V1,V2")]:
        out = wt("launch", "--branches", "a", "--set", opt, "--set", "wd=0", ok=False).output
        assert needle in out and out.strip().count("\n") == 0, out
    out = wt("launch", "--branches", "a", ok=False).output  # no --seeds for {seed}
    assert "{seed}" in out and "--seeds N" in out


def test_dirty_worktree_snapshot_is_recoverable(repo_factory) -> None:
    wt = _wt(repo_factory)
    wt("launch", "--branches", "a", "--set", "wd=0", "--seeds", "1", "--wait")
    (w,) = wt.status()["workers"]
    Path(w["worktree"], "echo.py").write_text(ECHO + "# local experiment\n")
    # Two seeds share the dirty worktree: one record each, each with a snapshot ref of its own.
    wt("launch", "--branches", "a", "--set", "wd=0", "--seeds", "2", "--wait", "--force")
    workers = wt.status()["workers"]
    assert len(workers) == 2
    refs = set()
    for w in workers:
        env = w["env"]
        assert env["dirty"] is True and env["snapshot"] and w["name"] in env["snapshot_ref"]
        refs.add(env["snapshot_ref"])
        shown = subprocess.run(
            ["git", "-C", str(wt.repo), "show", f"{env['snapshot_ref']}:echo.py"],
            capture_output=True, text=True, check=True).stdout
        assert shown.endswith("# local experiment\n")
    assert len(refs) == 2


def test_status_folds_the_seeds_of_a_group_unless_all(repo_factory) -> None:
    wt = _wt(repo_factory)
    wt("launch", "--branches", "a", "b", "--seeds", "3", "--wait")
    folded = wt("status").output
    assert "a ×3" in folded and "b ×3" in folded and "3 succeeded" in folded
    assert "a-s1" not in folded and "--all shows every worker" in folded
    unfolded = wt("status", "--all").output
    assert all(f"{b}-s{i}" in unfolded for b in "ab" for i in range(3))
    assert "×3" not in unfolded


def test_sweep_launch_collect_compare_end_to_end(repo_factory) -> None:
    """A real sweep with seeds, collected and compared: each group's statistics come from its
    seeds' metrics, with the exact sample std and 95% Student-t half-width."""
    train = ("import json, os, sys\n"
             "seed, lr = int(os.environ['WT_RUN_SEED']), float(sys.argv[1])\n"
             "acc = {0.1: 0.5, 0.2: 0.8}[lr] + 0.01 * seed\n"
             "out = os.environ['WT_RUN_OUT']\n"
             "json.dump({'accuracy': acc}, open(os.path.join(out, 'metrics.json'), 'w'))\n")
    repo = repo_factory(files={"train.py": train})
    wt = WtRun(repo, write_config(repo, {
        "branches": {"a": {"branch": "exp/a", "vars": {"lr": "0.1"}}},
        "commands": {"train": "python train.py {lr}"}}))
    wt("launch", "--branches", "a", "--set", "lr=0.1,0.2", "--seeds", "3", "--wait")
    wt("collect")
    doc = json.loads(wt("compare", "--format", "json").output)
    groups = {g["name"]: g for g in doc["groups"]}
    assert set(groups) == {"a-lr0.1", "a-lr0.2"}
    g = groups["a-lr0.2"]
    assert g["n"] == 3 and g["vars"] == {"lr": "0.2"}
    m = g["metrics"]["accuracy"]
    assert sorted(m["values"]) == pytest.approx([0.80, 0.81, 0.82])
    assert m["mean"] == pytest.approx(0.81) and m["std"] == pytest.approx(0.01)
    assert m["ci95"] == pytest.approx(4.302652729911275 * 0.01 / 3 ** 0.5)


@pytest.mark.parametrize("option,needle", [
    ("lrr=0.1,0.01", "does not use {lrr}"),
    ("out=/etc", "filled by wt-run itself"),
    ("seed=5", "--seeds"),
])
def test_a_set_key_the_command_cannot_see_is_refused(repo_factory, option, needle) -> None:
    """Every variant would run the very same command: refused before anything starts, with
    the fields that could be swept."""
    wt = _wt(repo_factory)
    for extra in (["--dry-run"], []):
        out = wt("launch", "--branches", "a", "--set", option, *extra, ok=False).output
        assert needle in out and len(out.strip().splitlines()) == 1, out
    assert "lr" in wt("launch", "--branches", "a", "--set", "lrr=1", ok=False).output
    names = [line.split()[2] for line in wt("launch", "--branches", "a", "--set",
                                            "lr=0.1, 0.01", "--seeds", "1",
                                            "--dry-run").output.splitlines()
             if line.startswith("Would launch")]
    assert names == ["a-lr0.1-s0", "a-lr0.01-s0"]


def test_a_sweep_too_large_to_mean_it_is_refused(repo_factory) -> None:
    wt = _wt(repo_factory)
    values = ",".join(str(i) for i in range(200))
    out = wt("launch", "--branches", "a", "--set", f"lr={values}", "--set", f"wd={values}",
             "--seeds", "1", "--dry-run", ok=False).output
    assert "40000 workers" in out and "fewer values" in out
