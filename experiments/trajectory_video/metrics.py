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


def rmse(predicted: np.ndarray, target: np.ndarray) -> float:
    """Root mean squared error over samples and coordinates: for 3D positions in world
    units, the typical error per coordinate, in world units."""
    diff = np.asarray(predicted, dtype=np.float64) - np.asarray(target, dtype=np.float64)
    return float(np.sqrt(np.mean(diff**2)))


def classification(predicted: np.ndarray, target: np.ndarray, classes: int,
                   prefix: str = "") -> dict[str, object]:
    """Accuracy, macro-F1, per-class F1 and the confusion matrix, keys prefixed."""
    matrix = confusion_matrix(predicted, target, classes)
    return {f"{prefix}accuracy": accuracy(matrix), f"{prefix}macro_f1": macro_f1(matrix),
            f"{prefix}per_class_f1": per_class_f1(matrix).tolist(),
            f"{prefix}confusion_matrix": matrix.tolist()}
