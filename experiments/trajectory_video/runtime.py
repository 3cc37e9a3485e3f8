"""Where and how training runs: device and mixed-precision choice, and stop signals."""

from __future__ import annotations

import signal

import torch

from experiments.trajectory_video.config import ConfigError


def select_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name} but CUDA is not available; use --set device=auto")
    return device


def select_amp(setting: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype, or None for full precision. auto = bf16 where CUDA supports it."""
    if setting == "off" or (setting == "auto" and device.type != "cuda"):
        return None
    if setting == "fp16" or (setting == "auto" and not torch.cuda.is_bf16_supported()):
        return torch.float16
    return torch.bfloat16


class StopRequest:
    """Records SIGTERM / SIGUSR1; the loop polls it between steps."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous = {sig: signal.signal(sig, self._handle)
                          for sig in (signal.SIGTERM, signal.SIGUSR1)}

    def restore(self) -> None:
        """Put back the handlers that were installed before (matters when run in-process)."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, _frame: object) -> None:
        self.signum = signum
