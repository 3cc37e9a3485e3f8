"""Simple hand features of a trajectory and a multinomial logistic regression, in numpy.

The features are what a quick look at the clips would measure, per camera view, from the
object's exact projected image positions (privileged: the models only see pixels): path
length, extent (the larger side of the bounding box) and mean speed, in pixels. The
dataset is meant to defeat them: a linear classifier on these features should stay far
from the accuracy the video models reach.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from experiments.trajectory_video.cameras import project

FEATURES_PER_VIEW = ("path_length", "extent", "mean_speed")


def hand_features(positions: np.ndarray, intrinsics: np.ndarray, extrinsics: np.ndarray,
                  frames: int) -> np.ndarray:
    """``(n, views * 3)`` features of the ``frames`` rendered positions of each sample:
    per view, path length, extent and mean speed in pixels."""
    u, v, _ = project(positions[:, :frames].astype(np.float32), intrinsics, extrinsics)
    steps = np.hypot(np.diff(u, axis=-1), np.diff(v, axis=-1))  # (n, V, T - 1)
    length = steps.sum(-1)
    extent = np.maximum(u.max(-1) - u.min(-1), v.max(-1) - v.min(-1))
    speed = steps.mean(-1)
    return np.stack([length, extent, speed], axis=-1).reshape(len(positions), -1)


@dataclass(frozen=True)
class LogisticRegression:
    """A fitted multinomial logistic regression on standardised features."""

    mean: np.ndarray
    scale: np.ndarray
    weights: np.ndarray  # (features + 1, classes), the last row is the bias

    def logits(self, features: np.ndarray) -> np.ndarray:
        x = (features - self.mean) / self.scale
        return x @ self.weights[:-1] + self.weights[-1]

    def predict(self, features: np.ndarray) -> np.ndarray:
        return self.logits(features).argmax(-1)


def fit_logistic(features: np.ndarray, labels: np.ndarray, classes: int,
                 l2: float = 1e-3, iterations: int = 500) -> LogisticRegression:
    """Full-batch gradient descent with Nesterov momentum on the mean cross-entropy plus
    ``l2`` times the squared weights (the loss is convex, so this finds its minimum)."""
    mean = features.mean(0)
    scale = features.std(0) + 1e-8
    x = np.hstack([(features - mean) / scale, np.ones((len(features), 1))])
    onehot = np.eye(classes)[labels]
    weights = np.zeros((x.shape[1], classes))
    velocity = np.zeros_like(weights)
    step = 0.5
    for _ in range(iterations):
        ahead = weights + 0.9 * velocity
        z = x @ ahead
        z -= z.max(1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(1, keepdims=True)
        grad = x.T @ (p - onehot) / len(x)
        grad[:-1] += l2 * ahead[:-1]
        velocity = 0.9 * velocity - step * grad
        weights = weights + velocity
    return LogisticRegression(mean, scale, weights)
