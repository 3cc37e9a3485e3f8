"""Baselines and data difficulty: the trivial predictors' rows, and the hand-feature
classifier that the dataset is built to defeat."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from experiments.trajectory_video import baselines, generate
from experiments.trajectory_video.config import DataConfig
from experiments.trajectory_video.dataset import TrajectoryVideoData
from experiments.trajectory_video.hand_features import fit_logistic, hand_features
from experiments.trajectory_video.splits import split_indices

REPO = Path(__file__).resolve().parents[2]
TINY = str(REPO / "configs" / "train_tiny.yaml")


def test_hand_feature_logistic_regression_stays_below_60_percent(
    tiny_data_config: DataConfig,
) -> None:
    """Path length, extent and mean speed per view, from the exact projected positions,
    do not separate the classes: a logistic regression on them stays below 60%."""
    cfg = replace(tiny_data_config, samples=4000, frames=16, size=32)
    params = generate.sample_params(cfg, 0, cfg.samples)
    features = hand_features(params["positions"], params["intrinsics"], params["extrinsics"],
                             cfg.frames)
    labels = params["labels"]
    model = fit_logistic(features[:3000], labels[:3000], 4)
    train_accuracy = float((model.predict(features[:3000]) == labels[:3000]).mean())
    test_accuracy = float((model.predict(features[3000:]) == labels[3000:]).mean())
    assert train_accuracy < 0.6 and test_accuracy < 0.6
    # The regression itself works: on features that do hold the class it is near perfect.
    marked = np.hstack([features, labels[:, None] + np.random.default_rng(0).normal(
        0, 0.1, (len(labels), 1))])
    assert (fit_logistic(marked[:3000], labels[:3000], 4).predict(marked[3000:])
            == labels[3000:]).mean() > 0.95


def test_path_statistics_overlap_across_classes(tiny_data_config: DataConfig) -> None:
    cfg = replace(tiny_data_config, samples=2000, frames=16)
    params = generate.sample_params(cfg, 0, cfg.samples)
    steps = np.linalg.norm(np.diff(params["positions"][:, : cfg.frames], axis=1), axis=-1)
    length = steps.sum(1)
    per_class = [length[params["labels"] == c] for c in range(4)]
    # Every class's middle 80% of path lengths overlaps every other class's.
    low = max(np.quantile(x, 0.1) for x in per_class)
    high = min(np.quantile(x, 0.9) for x in per_class)
    assert low < high


def test_baseline_rows(tmp_path: Path, tiny_dataset: Path, capsys) -> None:
    assert baselines.main(["--baseline", "all", "--data", str(tiny_dataset), "--out",
                           str(tmp_path), "--config", TINY]) == 0
    printed = capsys.readouterr().out
    assert "baseline-majority" in printed and "baseline-hand-features" in printed
    rows = {name: json.loads((tmp_path / name / "metrics.json").read_text())
            for name in baselines.BASELINES}
    data = TrajectoryVideoData(tiny_dataset)
    splits = split_indices(len(data), 0.34, 0.17)
    assert rows["majority"]["test_samples"] == len(splits.test)
    assert rows["majority"]["accuracy"] == 0.25  # balanced classes, always class 0
    for name in ("majority", "hand-features"):
        assert {"accuracy", "macro_f1", "val_accuracy", "confusion_matrix"} <= set(rows[name])
    frames = data.config.frames
    p = data.positions[splits.test].astype(np.float64)
    expected = np.sqrt(np.mean((2 * p[:, frames - 1] - p[:, frames - 2] - p[:, frames]) ** 2))
    assert rows["constant-velocity"]["next_pos_rmse"] == pytest.approx(expected, rel=1e-6)
    assert rows["last-position"]["next_pos_rmse"] > 0
