"""The four trajectory classes and their randomised parameters, vectorised over samples.

A trajectory is ``frames + 1`` 3D points sampled at normalised times ``s = k / frames``;
the first ``frames`` points are rendered and the last one is the "next position" target.
All classes live inside roughly the cube [-1, 1]^3 with world z pointing up.

Each sample's parameters come from its own row of ``PARAMETER_WORDS`` uniforms in [0, 1)
(see ``generate.sample_uniforms``); every value is computed elementwise from that row, so
a sample's trajectory is the same whichever batch it is computed in.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from experiments.trajectory_video.cameras import cross

CLASS_NAMES: tuple[str, ...] = ("linear", "circular", "helical", "parabolic")
NUM_CLASSES = len(CLASS_NAMES)
PARAMETER_WORDS = 16  # uniforms per sample: words 0-9 shape the classes, 14 is every
# class's path length, 15 its time warp


def label_for_index(index: int | np.ndarray) -> int | np.ndarray:
    """Class of sample ``index``: round-robin, so any prefix of ``4k`` samples is balanced."""
    return index % NUM_CLASSES


def _between(u: np.ndarray, low: float, high: float) -> np.ndarray:
    return low + (high - low) * u


def _sign(u: np.ndarray) -> np.ndarray:
    return np.where(u < 0.5, -1.0, 1.0)


def unit_vectors(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Directions uniform on the sphere from two uniforms each (``(n,)`` -> ``(n, 3)``):
    z uniform in [-1, 1] and an independent uniform azimuth (Archimedes' theorem)."""
    z = 2.0 * a - 1.0
    phi = 2.0 * np.pi * b
    r = np.sqrt(np.maximum(1.0 - z * z, 0.0))
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=-1)


def _normalise(v: np.ndarray) -> np.ndarray:
    return v / np.sqrt((v * v).sum(-1, keepdims=True))


def plane_basis(normal: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two orthonormal vectors ``(n, 3)`` spanning the planes orthogonal to ``normal``."""
    helper = np.where((np.abs(normal[:, 0]) < 0.9)[:, None],
                      np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0]))
    u = _normalise(cross(normal, helper))
    return u, cross(normal, u)


def _ring(angle: np.ndarray, u: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``cos(angle) u + sin(angle) w`` for angles ``(n, P)`` and vectors ``(n, 3)``."""
    return np.cos(angle)[..., None] * u[:, None] + np.sin(angle)[..., None] * w[:, None]


# Every class draws its path length from the same range (word 14) and its speed profile
# from the same random warp (word 15), and the shapes' ranges overlap (short arcs, shallow
# helices and flat throws are nearly straight), so no global statistic of the path --
# length, extent, speed -- tells the classes apart; the shape does. The warp also keeps
# constant-velocity extrapolation from being exact.
PATH_LENGTH = (1.0, 2.5)  # world units, over s in [0, 1]


def time_warp(u: np.ndarray, s: np.ndarray) -> np.ndarray:
    """``(n, P)`` warped times ``s + w s (1 - s)``, ``w`` in [-0.6, 0.6]: monotonic, fixed
    ends, speed varying by up to 4x along the path."""
    w = _between(u, -0.6, 0.6)[:, None]
    return s[None] + w * s[None] * (1.0 - s[None])


def _length(p: np.ndarray) -> np.ndarray:
    return _between(p[:, 14], *PATH_LENGTH)


def linear(p: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Motion along a straight line, easing in and out, that may turn back: it covers
    ``k`` in [1, 2.5] half-swings of ``length / k`` each (a shuttle on a rail)."""
    start = _between(p[:, 0:3], -0.6, 0.6)
    swings = _between(p[:, 6], 1.0, 2.5)
    step = (_length(p) / swings)[:, None] * unit_vectors(p[:, 4], p[:, 5])
    t = time_warp(p[:, 15], s)
    along = 0.5 * (1.0 - np.cos(np.pi * swings[:, None] * t))
    return start[:, None] + step[:, None] * along[..., None]


def circular(p: np.ndarray, s: np.ndarray) -> np.ndarray:
    centre = _between(p[:, 0:3], -0.3, 0.3)
    span = _between(p[:, 6], 0.5, 1.6) * np.pi
    radius = _length(p) / span
    u, w = plane_basis(unit_vectors(p[:, 4], p[:, 5]))
    t = time_warp(p[:, 15], s)
    angle = (_between(p[:, 8], 0.0, 2 * np.pi)[:, None]
             + (span * _sign(p[:, 7]))[:, None] * t)
    return centre[:, None] + radius[:, None, None] * _ring(angle, u, w)


def helical(p: np.ndarray, s: np.ndarray) -> np.ndarray:
    centre = _between(p[:, 0:3], -0.2, 0.2)
    axis = unit_vectors(p[:, 3], p[:, 4])
    turns = _between(p[:, 6], 0.6, 2.0)
    length = _length(p)
    height = length * _between(p[:, 5], 0.2, 0.7)
    radius = np.sqrt(length**2 - height**2) / (2 * np.pi * turns)
    u, w = plane_basis(axis)
    t = time_warp(p[:, 15], s)
    angle = (_between(p[:, 9], 0.0, 2 * np.pi)[:, None]
             + (2 * np.pi * turns * _sign(p[:, 7]))[:, None] * t)
    rise = (height[:, None] * (t - 0.5))[..., None] * axis[:, None]
    return centre[:, None] + radius[:, None, None] * _ring(angle, u, w) + rise


def parabolic(p: np.ndarray, s: np.ndarray) -> np.ndarray:
    """A throw under gravity, rescaled about its start to the sample's path length."""
    gravity = _between(p[:, 0], 1.0, 4.0)
    start = np.stack([_between(p[:, 1], -0.7, 0.7), _between(p[:, 2], -0.7, 0.7),
                      _between(p[:, 3], -0.6, 0.0)], axis=-1)
    heading = _between(p[:, 4], 0.0, 2 * np.pi)
    speed = _between(p[:, 5], 0.3, 1.5)
    # The apex falls inside the clip (t in [0.3, 0.7]) so the arc is visible.
    v_up = gravity * _between(p[:, 6], 0.3, 0.7)
    velocity = np.stack([speed * np.cos(heading), speed * np.sin(heading), v_up], axis=-1)
    t = time_warp(p[:, 15], s)
    shape = velocity[:, None] * t[..., None]
    shape[..., 2] -= 0.5 * gravity[:, None] * t**2
    # The arc length of the unwarped throw over s in [0, 1], from 64 chords.
    fine = np.linspace(0.0, 1.0, 65)
    ref = velocity[:, None] * fine[None, :, None]
    ref[..., 2] -= 0.5 * gravity[:, None] * fine**2
    arc = np.sqrt((np.diff(ref, axis=1) ** 2).sum(-1)).sum(-1)
    return start[:, None] + shape * (_length(p) / arc)[:, None, None]


_GENERATORS: tuple[Callable[[np.ndarray, np.ndarray], np.ndarray], ...] = (
    linear, circular, helical, parabolic)


def sample_trajectories(params: np.ndarray, labels: np.ndarray, frames: int) -> np.ndarray:
    """``(n, frames + 1, 3)`` float32 positions from uniforms ``params (n, PARAMETER_WORDS)``
    and classes ``labels (n,)``; each class's rows are computed together."""
    s = np.arange(frames + 1, dtype=np.float64) / frames
    out = np.empty((len(labels), frames + 1, 3), dtype=np.float32)
    for label, draw in enumerate(_GENERATORS):
        rows = np.flatnonzero(labels == label)
        if rows.size:
            out[rows] = draw(params[rows], s)
    return out
