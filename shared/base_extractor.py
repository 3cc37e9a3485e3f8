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
    """Video in, features out. Subclasses set ``feature_dim`` in ``__init__``.

    An extractor that is pre-trained on its own objective first (e.g. a tokenizer on
    reconstruction) sets ``pretrain_epochs`` and implements ``pretrain_losses``; the
    trainer then calls ``set_frozen(True)`` and trains the heads on its frozen features.
    """

    feature_dim: int
    config_class: ClassVar[type]
    pretrain_epochs: int = 0

    @abc.abstractmethod
    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """``video (N, C, T, H, W)`` -> ``features (N, feature_dim)``."""

    def auxiliary_losses(self) -> dict[str, torch.Tensor]:
        """Extra losses from the last forward pass (already weighted); none by default."""
        return {}

    def pretrain_losses(self, video: torch.Tensor) -> dict[str, torch.Tensor]:
        """The weighted losses of the extractor's own pre-training objective."""
        raise NotImplementedError(f"{type(self).__name__} has no pre-training objective")

    def set_frozen(self, frozen: bool) -> None:
        """Freeze (or unfreeze) the pre-trained part; a no-op without pre-training."""


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


FEATURE_DIM_KEY = "feature_dim"


def split_feature_dim(options: Mapping[str, Any]) -> tuple[dict[str, Any], int]:
    """``extractors.<name>`` options -> (the extractor's own options, the per-view feature
    size the model projects its features to; 0 = keep the extractor's own)."""
    rest = {k: v for k, v in options.items() if k != FEATURE_DIM_KEY}
    size = options.get(FEATURE_DIM_KEY, 0)
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ValueError(f"{FEATURE_DIM_KEY} must be a whole number >= 0, got {size!r}")
    return rest, size


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
