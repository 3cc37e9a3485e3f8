"""Building a `Backend` for a host of the config: the one place that looks at a host's type
(besides config validation). Adding a kind of host (Kubernetes, a cloud VM) means a new
Backend subclass and one line here."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from .backend import Backend, LocalBackend, SSHBackend
from .config import Config, HostConfig
from .errors import ConfigError
from .hosts import Host, LocalHost


def backend_for(config: Config, name: str) -> Backend:
    hc = config.host(name)
    if hc.type == "local":
        return LocalBackend(config, hc)
    if hc.type == "ssh":
        return SSHBackend(config, hc)
    if hc.type == "slurm":
        from .slurm import SlurmBackend

        return SlurmBackend(config, hc, lambda: _login_node(config, hc))
    raise AssertionError(hc.type)


def open_host(config: Config, name: str) -> Host:
    """A Host to run scripts on for the named host (its login node for Slurm)."""
    return backend_for(config, name).connect()


def _login_node(config: Config, hc: HostConfig) -> Host:
    """The login node as a Host whose root is the Slurm host's root on the shared filesystem:
    worktrees, worker dirs and the wrapper live there, and Slurm commands run there."""
    if hc.via == "local":
        # Relative roots are relative to the config file, like every path in it.
        path = os.path.normpath(config.path.parent / os.path.expanduser(hc.root))
        return LocalHost(hc.name, Path(path))
    via = config.host(hc.via)
    if via.type != "ssh":
        raise ConfigError(f"{config.path}: hosts.{hc.name}.via: '{hc.via}' is a {via.type} host",
                          "set via: to an ssh host name or to local")
    from .ssh import shared_ssh_host

    # The login node's connection settings with the Slurm host's root, named after the Slurm
    # host (messages, `setup --host` fixes, collect's python). Pooled: the steps of one
    # command (root, code sync, sbatch/squeue/scancel) share one SSH connection.
    return shared_ssh_host(replace(via, root=hc.root), name=hc.name)
