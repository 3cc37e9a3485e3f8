"""Train / validation / test splits of a dataset (no torch: the baselines use them too).

Samples cycle through the classes (sample i has class i mod 4), so each split is a run of
consecutive samples in whole class cycles: the test split is the last ``test_fraction``,
validation the ``val_fraction`` before it, training the rest. The test split is only
scored once, at the end; model selection and learning curves use validation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from experiments.trajectory_video.trajectories import NUM_CLASSES


@dataclass(frozen=True)
class Splits:
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def _cycles(n: int, fraction: float) -> int:
    return max(NUM_CLASSES, round(n * fraction / NUM_CLASSES) * NUM_CLASSES)


def split_indices(n: int, val_fraction: float, test_fraction: float) -> Splits:
    n_test = _cycles(n, test_fraction)
    n_val = _cycles(n, val_fraction)
    n_train = n - n_val - n_test
    if n_train < NUM_CLASSES:
        raise ValueError(f"dataset of {n} samples is too small for validation and test "
                         f"splits of {n_val} and {n_test}; generate more samples")
    return Splits(np.arange(n_train), np.arange(n_train, n_train + n_val),
                  np.arange(n_train + n_val, n))
