"""Fixtures for the trajectory-video workload tests: tiny configs and a tiny dataset."""

from __future__ import annotations

from pathlib import Path

import pytest

from experiments.trajectory_video.config import CONFIG_DIR, DataConfig, build, load_yaml
from experiments.trajectory_video.generate import generate

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def tiny_data_config() -> DataConfig:
    return build(DataConfig, load_yaml(CONFIG_DIR / "data_tiny.yaml"), "data_tiny.yaml")


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory, tiny_data_config: DataConfig) -> Path:
    root = tmp_path_factory.mktemp("data") / "tiny"
    generate(tiny_data_config, root, workers=0, quiet=True)
    return root
