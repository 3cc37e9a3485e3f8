"""The starter config written by `wt-run init`."""

from __future__ import annotations

from pathlib import Path

from .errors import WtRunError

STARTER = """\
# wt-run configuration. Relative paths are relative to this file's directory.
repo: .                          # the git repository whose branches are run
worktrees: .wt-run/worktrees     # one worktree per branch is made here
base: HEAD                       # a branch that does not exist yet is created from this ref
shared: []                       # repo paths symlinked into every worktree, e.g. [data, .venv]
data: data                       # the dataset directory; {data} in commands
default_host: local
stop_grace: 10                   # seconds between TERM and KILL on `wt-run stop`

hosts:
  local: {type: local}
  # gpu1: {type: ssh, address: ubuntu@203.0.113.7, key: ~/.ssh/id_ed25519,
  #        root: ~/wt-run, gpus: [0, 1, 2, 3]}
  # hpc:  {type: slurm, via: local, root: /scratch/me/wt-run,
  #        partition: gpu, gres: "gpu:1", time: "04:00:00"}

branches:                        # NAME: {branch: git branch, vars: {...} for the templates}
  baseline: {branch: exp/baseline, vars: {lr: "0.001"}}
  bigger-lr: {branch: exp/bigger-lr, vars: {lr: "0.01"}}

commands:                        # fields: {name} {branch} {out} {data} {run} {worktree} {host}
  train: python train.py --lr {lr} --out {out}   # + every vars key; values are shell-quoted
  # generate: python make_data.py --out {data}

env: {}                          # extra environment for every worker
collect: ["results/**"]          # globs relative to each worktree, collected with out/
"""


def write_starter(path: Path, force: bool = False) -> Path:
    if path.exists() and not force:
        raise WtRunError(f"{path} already exists", "edit it, or pass --force to overwrite it")
    other = path.parent / "configs" / "wt-run.yaml"
    if path.name == "wt-run.yaml" and other.exists() and not force:
        # wt-run.yaml is looked up before configs/wt-run.yaml: the starter would hide it.
        raise WtRunError(f"{other} already exists, and a new {path.name} next to configs/ "
                         "would take its place for every command",
                         "edit that one, or pass --force to write the starter anyway")
    path.write_text(STARTER, encoding="utf-8")
    return path
