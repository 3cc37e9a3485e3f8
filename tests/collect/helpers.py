"""Helpers for the collect/compare tests: a real git repository whose branches run a small
training script honouring the worker contract (metrics.jsonl, metrics.json, progress.json,
a checkpoint, TensorBoard events, a results/ file in the worktree), and the wt-run CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from click.testing import CliRunner, Result

# The training script every branch runs. Branches differ by `vars` (quality, mode) and by a
# committed file, so `git diff --stat` against base differs too.
TRAIN_PY = r'''
import argparse, json, os, sys, time

p = argparse.ArgumentParser()
p.add_argument("--out", required=True)
p.add_argument("--quality", type=float, default=0.5)
p.add_argument("--epochs", type=int, default=3)
p.add_argument("--mode", default="jsonl")  # jsonl | tensorboard | fail | slow
p.add_argument("--ckpt-kib", type=int, default=64)
p.add_argument("--ckpts", type=int, default=1)
a = p.parse_args()
os.makedirs(a.out, exist_ok=True)
os.makedirs("results", exist_ok=True)
if a.mode == "slow":
    # Keep running (and writing) until stopped: lets tests collect a live worker.
    i = 0
    while True:
        with open(os.path.join(a.out, "metrics.jsonl"), "a") as fh:
            fh.write(json.dumps({"epoch": i, "loss": 1.0 / (i + 1)}) + "\n")
        i += 1
        time.sleep(0.2)
writer = None
if a.mode == "tensorboard":
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.summary.writer.event_file_writer import EventFileWriter
    writer = EventFileWriter(os.path.join(a.out, "tb"))
    def scalar(tag, value, step):
        writer.add_event(Event(wall_time=time.time(), step=step, summary=Summary(
            value=[Summary.Value(tag=tag, simple_value=value)])))
start = time.time()
for epoch in range(1, a.epochs + 1):
    acc = a.quality * epoch / a.epochs
    loss = 1.0 - acc
    if writer is not None:
        scalar("train/loss", loss, epoch)
        scalar("val/accuracy", acc, epoch)
    else:
        with open(os.path.join(a.out, "metrics.jsonl"), "a") as fh:
            fh.write(json.dumps({"epoch": epoch, "train_loss": loss, "val_accuracy": acc,
                                 "val_macro_f1": acc * 0.9}) + "\n")
    with open(os.path.join(a.out, "progress.json"), "w") as fh:
        json.dump({"epoch": epoch, "epochs": a.epochs}, fh)
    if a.mode == "fail" and epoch == 2:
        print("diverged: loss is nan", file=sys.stderr)
        sys.exit(3)
os.makedirs(os.path.join(a.out, "checkpoints"), exist_ok=True)
for i in range(a.ckpts):
    name = "last.pt" if i == a.ckpts - 1 else "epoch-%d.pt" % i
    with open(os.path.join(a.out, "checkpoints", name), "wb") as fh:
        fh.write(os.urandom(a.ckpt_kib * 1024))
if writer is not None:
    writer.close()
else:
    final = {"accuracy": a.quality, "macro_f1": a.quality * 0.9,
             "next_pos_mse": 1.0 - a.quality, "params": int(a.quality * 1e6),
             "flops_per_clip": 2.5e9, "train_time_s": time.time() - start + 1.0,
             "throughput_clips_s": 100 * a.quality, "device": "cpu",
             "confusion_matrix": [[5, 1], [2, 4]], "class_names": ["left", "right"]}
    with open(os.path.join(a.out, "metrics.json"), "w") as fh:
        json.dump(final, fh)
with open(os.path.join("results", "summary.txt"), "w") as fh:
    fh.write("quality %s\n" % a.quality)
print("done")
'''

COMMAND = ("{python} train.py --out {out} --quality {quality} --mode {mode} "
           "--ckpt-kib {ckpt_kib} --ckpts {ckpts}")


def git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                          env=env, check=True).stdout.strip()


def make_training_repo(path: Path, branches: Mapping[str, Mapping[str, Any]],
                       hosts: Mapping[str, Any] | None = None,
                       collect: Sequence[str] = ("results/**",),
                       shared: Sequence[str] = ()) -> Path:
    """A repo with train.py on main and one branch per entry (each commits a NOTES file);
    returns the config path. `branches`: name -> vars (quality, mode, ckpt_kib)."""
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    (path / "train.py").write_text(TRAIN_PY)
    (path / ".gitignore").write_text(".wt-run/\nresults/\n")
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "initial")
    for name in branches:
        git(path, "checkout", "-q", "-b", f"exp/{name}", "main")
        (path / f"NOTES-{name}.md").write_text(f"variant {name}\n" * 3)
        git(path, "add", "-A")
        git(path, "commit", "-q", "-m", f"variant {name}")
        git(path, "checkout", "-q", "main")
    config: dict[str, Any] = {
        "repo": ".",
        "base": "main",
        "shared": list(shared),
        "hosts": dict(hosts or {"local": {"type": "local"}}),
        "branches": {
            name: {"branch": f"exp/{name}",
                   "vars": {"python": sys.executable, "quality": 0.5, "mode": "jsonl",
                            "ckpt_kib": 64, "ckpts": 1, **v}}
            for name, v in branches.items()},
        "commands": {"train": COMMAND},
        "collect": list(collect),
    }
    cfg = path / "wt-run.yaml"
    cfg.write_text(yaml.safe_dump(config, sort_keys=False))
    return cfg


def wt(config: Path, *args: str, ok: bool | None = True) -> Result:
    """Run the real CLI in-process; `ok=True` asserts exit 0, False asserts non-zero."""
    from worktree_runner.cli import cli

    result = CliRunner().invoke(cli, ["--config", str(config), *args], catch_exceptions=False)
    if ok is True and result.exit_code != 0:
        raise AssertionError(f"wt-run {' '.join(args)} exited {result.exit_code}:\n"
                             f"{result.output}")
    if ok is False and result.exit_code == 0:
        raise AssertionError(f"wt-run {' '.join(args)} unexpectedly succeeded:\n{result.output}")
    return result


def latest_run(config: Path) -> str:
    return (config.parent / ".wt-run" / "runs" / "latest").read_text().strip()


def worker_json(results: Path, run: str, name: str) -> dict[str, Any]:
    return json.loads((results / run / name / "worker.json").read_text())


def tree(root: Path) -> dict[str, bytes]:
    """Every regular file under root (bookkeeping excluded) -> content."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and not p.is_symlink() and not rel.startswith(".collect"):
            out[rel] = p.read_bytes()
    return out
