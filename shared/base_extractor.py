"""The extractor interface every branch implements, and the name -> extractor registry.

An extractor maps one camera's video ``(N, C, T, H, W)`` float tensor to features
``(N, feature_dim)``. It may expose auxiliary training losses (e.g. a quantiser's
commitment and entropy terms) through :meth:`VideoExtractor.auxiliary_losses`.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn


@dataclass(frozen=True)
class VideoSpec:
    """The shape of one view's video that an extractor is built for."""

    channels: int
    frames: int
    size: int


class VideoExtractor(nn.Module, abc.ABC):
    """Video in, features out. Subclasses set ``feature_dim`` in ``__init__``."""

    feature_dim: int
    config_class: ClassVar[type]

    @abc.abstractmethod
    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """``video (N, C, T, H, W)`` -> ``features (N, feature_dim)``."""

    def auxiliary_losses(self) -> dict[str, torch.Tensor]:
        """Extra losses from the last forward pass (already weighted); none by default."""
        return {}


def grid_pool(x: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    """Average-pool ``(N, C, T, H, W)`` to a coarse ``grid`` and flatten it.

    A plain global average pool would throw away *where* and *when* the object is, which
    the next-position head needs; a 2x2x2 grid keeps it at negligible cost.
    """
    return torch.nn.functional.adaptive_avg_pool3d(x, grid).flatten(1)


ExtractorFactory = Callable[[Any, VideoSpec], VideoExtractor]
_REGISTRY: dict[str, tuple[type[VideoExtractor], type]] = {}


def register_extractor(name: str) -> Callable[[type[VideoExtractor]], type[VideoExtractor]]:
    """Class decorator: make an extractor buildable by ``name``."""

    def decorate(cls: type[VideoExtractor]) -> type[VideoExtractor]:
        if name in _REGISTRY and _REGISTRY[name][0] is not cls:
            raise ValueError(f"extractor {name!r} is already registered")
        _REGISTRY[name] = (cls, cls.config_class)
        return cls

    return decorate


def registered_extractors() -> list[str]:
    return sorted(_REGISTRY)


def build_extractor(name: str, options: Mapping[str, Any], spec: VideoSpec) -> VideoExtractor:
    """Build extractor ``name`` with its config built from ``options`` (unknown keys fail)."""
    if name not in _REGISTRY:
        raise ValueError(
            f"unknown extractor {name!r}; registered: {', '.join(registered_extractors())}"
        )
    cls, config_class = _REGISTRY[name]
    fields = {f.name for f in dataclasses.fields(config_class)}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise ValueError(
            f"extractors.{name}: unknown key(s) {', '.join(unknown)}; "
            f"valid: {', '.join(sorted(fields))}"
        )
    # YAML gives lists; configs are frozen, so store tuples.
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}
    return cls(config_class(**values), spec)
