"""Atomic checkpoint files and finding the newest complete one.

A checkpoint is written to a hidden tmp file and renamed into place, so a file with the
final name is always complete; loading still tolerates an unreadable file by falling
back to the next newest.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch

_NAME = re.compile(r"^ckpt_step(\d{9})\.pt$")


def checkpoint_dir(out: Path) -> Path:
    return out / "checkpoints"


def save_checkpoint(out: Path, state: dict[str, Any], global_step: int, keep: int) -> Path:
    directory = checkpoint_dir(out)
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"ckpt_step{global_step:09d}.pt"
    tmp = directory / f".{final.name}.{os.getpid()}.tmp"
    torch.save(state, tmp)
    os.replace(tmp, final)
    for old in list_checkpoints(out)[:-keep]:
        old.unlink(missing_ok=True)
    return final


def list_checkpoints(out: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    directory = checkpoint_dir(out)
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if _NAME.match(p.name))


def load_newest(out: Path, device: torch.device) -> dict[str, Any] | None:
    for path in reversed(list_checkpoints(out)):
        try:
            return torch.load(path, map_location=device, weights_only=False)
        except (OSError, RuntimeError, EOFError):
            continue
    return None
