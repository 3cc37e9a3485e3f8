"""Where things live on a host: the repository, the worktrees, the dataset, the worker dirs.

On the local host these are the user's own repository and `worktrees:`; on remote hosts they
sit under the host's `root` (`<root>/repo`, `<root>/worktrees/<name>`)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from .config import Config, HostConfig


@dataclass(frozen=True)
class HostLayout:
    root: str  # wt-run's state directory on the host (runs/, wrapper.py)
    repo: str
    worktrees: str
    data: str

    def worktree(self, name: str) -> str:
        return f"{self.worktrees}/{name}"

    def worker_dir(self, run: str, name: str) -> str:
        return f"{self.root}/runs/{run}/workers/{name}"


def host_layout(config: Config, hc: HostConfig, root: str | None = None) -> HostLayout:
    """The layout on a host; `root` is the host's resolved root (remote `~` expanded)."""
    if hc.type == "local":
        return HostLayout(str(config.state_dir), str(config.repo), str(config.worktrees),
                          str(config.data_path()))
    base = (root or hc.root).rstrip("/")
    data = config.data if os.path.isabs(config.data) else f"{base}/repo/{config.data}"
    return HostLayout(base, f"{base}/repo", f"{base}/worktrees", data)
