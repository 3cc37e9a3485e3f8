"""The collecting side of the host's listing: the one round trip in which the host's python
runs `collect_lister.py` over every worker of a run on that host, and its answer as data."""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .collect_model import RemoteFile, Skipped, WorkerListing
from .config import Config
from .errors import WtRunError
from .hosts import Host
from .observe import NO_PYTHON_EXIT, find_python
from .runs import WorkerRecord

SETTLE_S = 2.0
WORKER_PATTERNS = ("log", "attempts/*/log", "out/**", "attempts/*/out/**")


def lister_source() -> str:
    return (Path(__file__).with_name("collect_lister.py")).read_text(encoding="utf-8")


def python_for(config: Config, host: Host) -> str:
    if host.local:
        return sys.executable
    return config.host(host.name).python if host.name in config.hosts else "python3"


def listing_spec(records: Sequence[WorkerRecord], patterns: Sequence[str],
                 running: Mapping[str, bool], exclude: Sequence[str] = ()) -> dict[str, Any]:
    """What the lister walks for each worker. `exclude`: directories never entered (wt-run's
    results and state, which lie inside the tree `generate` runs in)."""
    workers = []
    for rec in records:
        roots = [{"key": "worker", "path": rec.worker_dir, "patterns": list(WORKER_PATTERNS)}]
        if rec.worktree and patterns:
            roots.append({"key": "worktree", "path": rec.worktree, "patterns": list(patterns),
                          "exclude": list(exclude)})
        workers.append({"id": rec.name, "roots": roots, "running": running[rec.name],
                        "cache": f"{rec.worker_dir}/.collect-sums.json"})
    return {"workers": workers, "settle_s": SETTLE_S}


def listing_script(python: str, spec: Mapping[str, Any], root: str | None = None) -> str:
    """A sh script that runs the lister with the host's python (`-S`: stdlib only, no
    site-packages to import), the code on a quoted heredoc (nothing in it is expanded) and the
    spec as one quoted argument."""
    source = lister_source()
    marker = "WT_RUN_COLLECT_LISTER_EOF"
    assert marker not in source
    if root is not None and python == "python3":
        # The default: the host's python3, through the interpreter status and launch
        # remembered (no version-manager shim on every collect).
        find, exe = find_python(root), '"$PY"'
    else:
        find = (f"command -v {shlex.quote(python)} >/dev/null 2>&1 || "
                f"{{ echo 'python not found: {python}' >&2; exit 127; }}\n")
        exe = shlex.quote(python)
    return (f"{find}exec {exe} -S - {shlex.quote(json.dumps(spec))} <<'{marker}'\n"
            f"{source}\n{marker}\n")


def list_host(config: Config, host: Host, records: Sequence[WorkerRecord],
              running: Mapping[str, bool], dest: Path | None = None
              ) -> dict[str, WorkerListing]:
    """One round trip: every candidate file of every given worker on this host, hashed. On
    this machine the results (`dest` and the default one) and wt-run's state stay out."""
    exclude = [str(p) for p in (dest, config.repo / "results", config.state_dir)
               if p is not None] if host.local else []
    return run_lister(config, host, listing_spec(records, config.collect, running, exclude))


def run_lister(config: Config, host: Host, spec: Mapping[str, Any]
               ) -> dict[str, WorkerListing]:
    """Run the lister on the host with `spec` (see `listing_spec`); each spec id's listing."""
    root = None if host.local else host.root
    result = host.run_script(listing_script(python_for(config, host), spec, root),
                             timeout=_command_timeout(config, host))
    if result.exit_code in (NO_PYTHON_EXIT, 127):
        raise WtRunError(f"host {host.name}: {result.stderr.strip()}",
                         f"install python3 there or set hosts.{host.name}.python")
    raw = json.loads(result.check().stdout)
    listings = {}
    for name, data in raw["workers"].items():
        files = tuple(RemoteFile(str(k), str(r), int(s), int(m), str(h))
                      for k, r, s, m, h in data["files"])
        skipped = tuple(Skipped(f"{k}:{r}" if k != "worker" else r, why)
                        for k, r, why in data["skipped"])
        listings[name] = WorkerListing(files, skipped)
    return listings


def _command_timeout(config: Config, host: Host) -> float | None:
    if host.local or host.name not in config.hosts:
        return None
    # Hashing gigabytes of checkpoints the first time takes a while. (A Slurm host's login
    # node is named after the Slurm host.)
    return max(config.host(host.name).command_timeout, 3600.0)
