"""A collected sweep with known values, laid out exactly as `wt-run collect` leaves it
(`results/<run>/<name>/worker.json` + `out/metrics.json`, `metrics.jsonl`, `progress.json`),
in a real git repository whose branches differ in code, one of them with a real snapshot commit
of uncommitted changes. Used by the group, report and Chromium tests."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tests.collect.helpers import git, make_training_repo
from worktree_runner.runs import WorkerRecord

RUN = "20260101-120000"
HOSTILE = "it's \"q\"; $(touch /tmp/pwned) `id` ../../etc/passwd <script>alert(1)</script> | x"
T975_2 = 4.302652729749411  # Student t, 0.975 quantile, 2 degrees of freedom

ENV: dict[str, Any] = {"host": "local", "gpu": "NVIDIA H100 80GB HBM3", "driver": "550.54",
                       "python": "3.11.2", "torch": "2.13.0", "numpy": "2.1.0",
                       "packages_hash": "p1" * 8, "dirty": False, "snapshot": None,
                       "data_fingerprint": "d1" * 8}

# name -> (group, branch, vars, seed, state, accuracy, loss, env overrides, epochs done)
WORKERS: dict[str, tuple[Any, ...]] = {
    "a-s0": ("a", "exp/a", {"lr": "0.1"}, 0, "succeeded", 0.5, 0.3, {}, 3),
    "a-s1": ("a", "exp/a", {"lr": "0.1"}, 1, "succeeded", 0.6, 0.2, {}, 3),
    "a-s2": ("a", "exp/a", {"lr": "0.1"}, 2, "succeeded", 0.7, 0.1, {}, 3),
    "b-s0": ("b", "exp/b", {"lr": "0.01"}, 0, "succeeded", 0.90, 0.10, {}, 3),
    "b-s1": ("b", "exp/b", {"lr": "0.01"}, 1, "succeeded", 0.91, 0.20, {}, 2),
    "b-s2": ("b", "exp/b", {"lr": "0.01"}, 2, "succeeded", 0.92, 0.15,
             {"gpu": "NVIDIA A100-SXM4-40GB"}, 3),
    "c-s0": ("c", "exp/c", {"lr": "0.1", "note": HOSTILE}, 0, "succeeded", 0.4, 0.5,
             {"dirty": True, "data_fingerprint": "d2" * 8}, 3),
    "c-s1": ("c", "exp/c", {"lr": "0.1", "note": HOSTILE}, 1, "failed", 0.2, 0.8,
             {"dirty": True, "data_fingerprint": "d2" * 8}, 2),
    "c-s2": ("c", "exp/c", {"lr": "0.1", "note": HOSTILE}, 2, "running", 0.1, 0.9,
             {"dirty": True, "data_fingerprint": "d2" * 8}, 1),
    "baseline-oracle": ("baseline-oracle", "main", {}, None, "succeeded", 0.99, 0.01, {}, 3),
}
# Per-class metrics make a wide family that the report must fold.
CLASSES = [f"class{i}" for i in range(14)]


def build(root: Path) -> Path:
    """The repository (branches exp/a, exp/b, exp/c, a snapshot of uncommitted changes on
    exp/c) and the collected run; returns the config path."""
    repo = root / "repo"
    cfg = make_training_repo(repo, {"a": {}, "b": {}, "c": {}})
    commits = {b: git(repo, "rev-parse", f"refs/heads/{b}") for b in ("exp/a", "exp/b", "exp/c")}
    commits["main"] = git(repo, "rev-parse", "main")
    # A real snapshot, the way a worker records one: `git stash create` in its worktree.
    git(repo, "checkout", "-q", "exp/c")
    (repo / "NOTES-c.md").write_text("variant c, edited but not committed\n")
    snapshot = git(repo, "stash", "create")
    git(repo, "checkout", "-q", "--", ".")
    git(repo, "checkout", "-q", "main")
    now = time.time()
    for name, (group, branch, vars_, seed, state, acc, loss, env, done) in WORKERS.items():
        rec = WorkerRecord(
            name=name, branch=branch, commit=commits[branch], host="local", kind="train",
            command=f"python train.py --seed {seed}", worktree=f"/wt/{name}",
            worker_dir=f"/runs/{RUN}/workers/{name}", launched_at=now - 100,
            state=state if state != "running" else None, started_at=now - 90,
            ended_at=None if state == "running" else now - 10, collected_at=now,
            vars=dict(vars_), seed=seed, group=group,
            env={**ENV, **env, **({"snapshot": snapshot} if env.get("dirty") else {})})
        d = root / "repo" / "results" / RUN / name
        (d / "out").mkdir(parents=True)
        meta = {**asdict(rec), "observed_state": state, "collected_at": now,
                "unknown_future_key": {"ignored": True}}
        (d / "worker.json").write_text(json.dumps(meta))
        lines = [{"epoch": e, "loss": loss + 0.1 * (done - e), "val_accuracy": acc * e / done}
                 for e in range(1, done + 1)]
        (d / "out" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
        (d / "out" / "progress.json").write_text(json.dumps({"epoch": done, "epochs": 3}))
        if state == "succeeded":
            summary = {"accuracy": acc, "loss": loss, "params": 1000,
                       "val": {f"acc_{c}": acc for c in CLASSES}}
            (d / "out" / "metrics.json").write_text(json.dumps(summary))
    return cfg
