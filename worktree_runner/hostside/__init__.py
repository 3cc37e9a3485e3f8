"""Programs that wt-run runs on a host (local, SSH or a Slurm node) with the host's python3.

They are shipped as source text: nothing is installed on a host beyond what `setup` needs.
They must run on any Python 3.6+ and import nothing outside the standard library."""

from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).parent


def source(name: str) -> str:
    """The source text of one host-side program (`wrapper` or `probe`)."""
    return (_HERE / f"{name}.py").read_text(encoding="utf-8")
