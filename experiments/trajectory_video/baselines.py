"""Reference results beside the learned extractors, scored on the same splits.

    python -m experiments.trajectory_video.baselines --baseline NAME --data DIR [--out DIR]
        [--config configs/train_small.yaml]

NAME is one of:

- ``majority``: always the most frequent training class;
- ``last-position``: the next position is the last seen one;
- ``constant-velocity``: the next position continues the last step;
- ``hand-features``: a logistic regression on per-view path length, extent and mean speed
  (``hand_features.py``);
- ``all``: every one of them, printed as a table (``--out`` then gets one directory each).

The position baselines read the exact 3D positions of the clip (the models only see
pixels), so they are strong references. Each writes ``metrics.json`` to ``--out``
(default ``$WT_RUN_OUT``) with the keys the trainer uses (``accuracy``, ``macro_f1``,
``next_pos_rmse`` on the test split, ``val_*`` on the validation split), so ``wt-run
compare`` shows them as rows; ``configs/wt-run.yaml`` runs them as ``baseline-*`` workers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from experiments.trajectory_video import metrics
from experiments.trajectory_video.config import (
    CONFIG_DIR,
    ConfigError,
    TrainConfig,
    build,
    load_yaml,
)
from experiments.trajectory_video.dataset import (
    DatasetError,
    TrajectoryVideoData,
    write_json_atomic,
)
from experiments.trajectory_video.hand_features import fit_logistic, hand_features
from experiments.trajectory_video.splits import Splits, split_indices
from experiments.trajectory_video.trajectories import CLASS_NAMES, NUM_CLASSES

SPLITS = (("val_", "val"), ("", "test"))  # metric prefix, split


def _classes(predict: Callable[[np.ndarray], np.ndarray], labels: np.ndarray,
             splits: Splits) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for prefix, name in SPLITS:
        idx = getattr(splits, name)
        out.update(metrics.classification(predict(idx), labels[idx], NUM_CLASSES, prefix))
    out["class_names"] = list(CLASS_NAMES)
    return out


def _positions(predict: Callable[[np.ndarray], np.ndarray], data: TrajectoryVideoData,
               splits: Splits) -> dict[str, Any]:
    frames = data.config.frames
    return {f"{prefix}next_pos_rmse": metrics.rmse(predict(getattr(splits, name)),
                                                   data.positions[getattr(splits, name),
                                                                  frames])
            for prefix, name in SPLITS}


def majority(data: TrajectoryVideoData, splits: Splits) -> dict[str, Any]:
    counts = np.bincount(data.labels[splits.train], minlength=NUM_CLASSES)
    winner = int(counts.argmax())  # ties: the lowest class id
    return _classes(lambda idx: np.full(len(idx), winner), data.labels, splits)


def last_position(data: TrajectoryVideoData, splits: Splits) -> dict[str, Any]:
    last = data.config.frames - 1
    return _positions(lambda idx: data.positions[idx, last], data, splits)


def constant_velocity(data: TrajectoryVideoData, splits: Splits) -> dict[str, Any]:
    last = data.config.frames - 1
    p = data.positions
    return _positions(lambda idx: 2 * p[idx, last] - p[idx, last - 1], data, splits)


def hand_feature_logistic(data: TrajectoryVideoData, splits: Splits) -> dict[str, Any]:
    features = hand_features(data.positions, data.intrinsics, data.extrinsics,
                             data.config.frames)
    model = fit_logistic(features[splits.train], data.labels[splits.train], NUM_CLASSES)
    return _classes(lambda idx: model.predict(features[idx]), data.labels, splits)


BASELINES: dict[str, Callable[[TrajectoryVideoData, Splits], dict[str, Any]]] = {
    "majority": majority,
    "last-position": last_position,
    "constant-velocity": constant_velocity,
    "hand-features": hand_feature_logistic,
}


def run_baseline(name: str, data: TrajectoryVideoData, cfg: TrainConfig) -> dict[str, Any]:
    splits = split_indices(len(data), cfg.val_fraction, cfg.test_fraction)
    return {"baseline": name, **BASELINES[name](data, splits),
            "train_samples": len(splits.train), "val_samples": len(splits.val),
            "test_samples": len(splits.test)}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m experiments.trajectory_video.baselines",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", required=True, choices=[*BASELINES, "all"])
    parser.add_argument("--data", required=True, help="dataset directory (from generate)")
    parser.add_argument("--out", help="output directory (default: $WT_RUN_OUT)")
    parser.add_argument("--config", help="training YAML whose splits to use "
                        "(default: configs/train_default.yaml)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out_text = args.out or os.environ.get("WT_RUN_OUT")
    if not out_text and args.baseline != "all":
        print("Error: no output directory: pass --out DIR or set WT_RUN_OUT", file=sys.stderr)
        return 1
    path = Path(args.config) if args.config else CONFIG_DIR / "train_default.yaml"
    try:
        cfg = build(TrainConfig, load_yaml(path), where=str(path))
        data = TrajectoryVideoData(args.data)
        names = list(BASELINES) if args.baseline == "all" else [args.baseline]
        results = {name: run_baseline(name, data, cfg) for name in names}
    except (ConfigError, DatasetError, ValueError) as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    for name, result in results.items():
        if out_text:
            out = Path(out_text) / (name if args.baseline == "all" else "")
            out.mkdir(parents=True, exist_ok=True)
            write_json_atomic(out / "metrics.json", result)
        shown = {k: round(v, 4) for k, v in result.items()
                 if isinstance(v, float) and not k.startswith("val_")}
        print(f"baseline-{name}: {json.dumps(shown)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
