"""Classification and regression metrics computed from predictions (no torch needed)."""

from __future__ import annotations

import numpy as np


def confusion_matrix(predicted: np.ndarray, target: np.ndarray, classes: int) -> np.ndarray:
    """``[true, predicted]`` counts."""
    matrix = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(target), np.asarray(predicted)), 1)
    return matrix


def accuracy(matrix: np.ndarray) -> float:
    total = matrix.sum()
    return float(np.trace(matrix) / total) if total else 0.0


def per_class_f1(matrix: np.ndarray) -> np.ndarray:
    true_pos = np.diag(matrix).astype(np.float64)
    predicted = matrix.sum(axis=0)
    actual = matrix.sum(axis=1)
    denominator = predicted + actual
    # F1 = 2TP / (2TP + FP + FN); a class never predicted nor present scores 0.
    return np.divide(2 * true_pos, denominator, out=np.zeros_like(true_pos),
                     where=denominator > 0)


def macro_f1(matrix: np.ndarray) -> float:
    return float(per_class_f1(matrix).mean())
