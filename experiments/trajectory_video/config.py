"""Typed configuration: YAML files + ``key=value`` overrides -> frozen dataclasses.

Every error names the offending key and says how to fix it. Overrides use dotted keys
(``extractors.i3d.width=16``) and YAML-parsed values (``lr=3e-4``, ``amp=off``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value is missing, unknown or invalid (the message says which)."""


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; pass an existing --config")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


def apply_overrides(raw: Mapping[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Return a copy of ``raw`` with each ``dotted.key=value`` override applied."""
    result = _deep_copy(raw)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not key=value (e.g. --set lr=1e-3)")
        node = result
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a mapping")
        node[parts[-1]] = yaml.safe_load(text)
    return result


def _deep_copy(raw: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, Mapping) else v for k, v in raw.items()}


def build(cls: type[T], raw: Mapping[str, Any], where: str) -> T:
    """Instantiate dataclass ``cls`` from ``raw``, rejecting unknown keys and bad types."""
    names = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(raw) - set(names))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(names))}"
        )
    values: dict[str, Any] = {}
    for key, value in raw.items():
        default = getattr(cls, key, None)
        if isinstance(default, bool) and not isinstance(value, bool):
            raise ConfigError(f"{where}.{key} must be true or false, got {value!r}")
        if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(default, (int, float, str)) and not isinstance(value, type(default)):
            raise ConfigError(
                f"{where}.{key} must be a {type(default).__name__}, got {value!r}"
            )
        values[key] = value
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from exc


@dataclass(frozen=True)
class DataConfig:
    """What the generated dataset looks like; every field changes the bytes written."""

    samples: int = 4096
    frames: int = 32
    size: int = 64
    cameras: int = 4
    channels: int = 3
    seed: int = 0
    shard_size: int = 128

    def __post_init__(self) -> None:
        for name in ("samples", "frames", "size", "cameras", "channels", "shard_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")
        if self.size < 8:
            raise ValueError(f"size must be >= 8 pixels, got {self.size}")
        if self.frames < 2:
            raise ValueError(f"frames must be >= 2, got {self.frames}")

    @property
    def shards(self) -> int:
        return -(-self.samples // self.shard_size)

    @property
    def bytes_per_sample(self) -> int:
        return self.cameras * self.frames * self.channels * self.size * self.size


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation, data pipeline and runtime settings; model sizes live in ``extractors``."""

    seed: int = 0
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    min_lr_ratio: float = 0.05
    grad_clip: float = 1.0
    val_fraction: float = 0.2
    test_fraction: float = 0.1  # held out: scored once, at the end
    pos_loss_weight: float = 1.0
    aux_loss_weight: float = 0.1
    fusion_dim: int = 128
    dropout: float = 0.1
    checkpoint_every: int = 1
    keep_checkpoints: int = 2
    max_steps_per_epoch: int = 0  # 0 = the whole training split each epoch
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: str = "auto"  # auto (bf16 on CUDA, off on CPU) | bf16 | fp16 | off
    prefetch: int = 4  # batches assembled ahead by the background loader thread
    threads: int = 0  # torch intra-op threads; 0 = torch's default
    compile: bool = False  # torch.compile the model (CUDA runs)
    extractors: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be >= 1")
        if not 0.0 < self.val_fraction < 1.0 or not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"val_fraction and test_fraction must be in (0, 1), got "
                             f"{self.val_fraction} and {self.test_fraction}")
        if self.amp not in ("auto", "bf16", "fp16", "off"):
            raise ValueError(f"amp must be auto, bf16, fp16 or off, got {self.amp!r}")
        if self.checkpoint_every < 1 or self.keep_checkpoints < 1:
            raise ValueError("checkpoint_every and keep_checkpoints must be >= 1")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
