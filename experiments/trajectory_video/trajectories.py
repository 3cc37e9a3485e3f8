"""The four trajectory classes and their randomised parameters.

A trajectory is ``frames + 1`` 3D points sampled at normalised times ``s = k / frames``;
the first ``frames`` points are rendered and the last one is the "next position" target.
All classes live inside roughly the cube [-1, 1]^3 with world z pointing up.
"""

from __future__ import annotations

import numpy as np

CLASS_NAMES: tuple[str, ...] = ("linear", "circular", "helical", "parabolic")
NUM_CLASSES = len(CLASS_NAMES)


def label_for_index(index: int) -> int:
    """Class of sample ``index``: round-robin, so any prefix of ``4k`` samples is balanced."""
    return index % NUM_CLASSES


def _unit(rng: np.random.Generator) -> np.ndarray:
    v = rng.normal(size=3)
    return v / np.linalg.norm(v)


def _plane_basis(normal: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two orthonormal vectors spanning the plane orthogonal to ``normal``."""
    helper = np.array([1.0, 0.0, 0.0]) if abs(normal[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    u = np.cross(normal, helper)
    u /= np.linalg.norm(u)
    return u, np.cross(normal, u)


def linear(rng: np.random.Generator, s: np.ndarray) -> np.ndarray:
    start = rng.uniform(-0.8, 0.8, size=3)
    length = rng.uniform(0.8, 1.6)
    end = np.clip(start + length * _unit(rng), -1.0, 1.0)
    return start + (end - start) * s[:, None]


def circular(rng: np.random.Generator, s: np.ndarray) -> np.ndarray:
    centre = rng.uniform(-0.3, 0.3, size=3)
    radius = rng.uniform(0.3, 0.7)
    u, w = _plane_basis(_unit(rng))
    span = rng.uniform(1.2, 2.0) * np.pi * rng.choice([-1.0, 1.0])
    angle = rng.uniform(0.0, 2 * np.pi) + span * s
    return centre + radius * (np.cos(angle)[:, None] * u + np.sin(angle)[:, None] * w)


def helical(rng: np.random.Generator, s: np.ndarray) -> np.ndarray:
    centre = rng.uniform(-0.2, 0.2, size=3)
    axis = _unit(rng)
    radius = rng.uniform(0.25, 0.5)
    turns = rng.uniform(1.5, 3.0) * rng.choice([-1.0, 1.0])
    height = rng.uniform(0.6, 1.2)
    u, w = _plane_basis(axis)
    angle = rng.uniform(0.0, 2 * np.pi) + 2 * np.pi * turns * s
    ring = np.cos(angle)[:, None] * u + np.sin(angle)[:, None] * w
    return centre + radius * ring + height * (s - 0.5)[:, None] * axis


def parabolic(rng: np.random.Generator, s: np.ndarray) -> np.ndarray:
    gravity = rng.uniform(2.5, 4.0)
    start = np.array([*rng.uniform(-0.7, 0.7, size=2), rng.uniform(-0.8, -0.4)])
    heading = rng.uniform(0.0, 2 * np.pi)
    speed = rng.uniform(0.6, 1.4)
    # The apex falls inside the clip (s in [0.35, 0.65]) so the arc is always visible.
    v_up = gravity * rng.uniform(0.35, 0.65)
    velocity = np.array([speed * np.cos(heading), speed * np.sin(heading), v_up])
    pos = start + velocity * s[:, None]
    pos[:, 2] -= 0.5 * gravity * s**2
    return pos


_GENERATORS = (linear, circular, helical, parabolic)


def sample_trajectory(rng: np.random.Generator, label: int, frames: int) -> np.ndarray:
    """``(frames + 1, 3)`` float32 positions of one trajectory of class ``label``."""
    s = np.arange(frames + 1, dtype=np.float64) / frames
    return _GENERATORS[label](rng, s).astype(np.float32)
