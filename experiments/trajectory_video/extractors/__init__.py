"""The four video extractors; importing this package registers them by name."""

from experiments.trajectory_video.extractors import i3d, magvit, slowfast, transformer

__all__ = ["i3d", "magvit", "slowfast", "transformer"]
