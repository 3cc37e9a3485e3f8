"""Vectorised rendering of trajectories into multi-view uint8 videos.

Each trajectory point is drawn as a small gaussian splat (size shrinking with depth) of
the sample's colour on a black background. The whole batch (samples x cameras x frames
x channels x splat pixels) is computed with a handful of numpy operations and scattered
into a zeroed uint8 buffer, so the cost is dominated by the bytes written, not by
Python overhead. Only the splat footprint is computed in float32; no full-frame float
temporaries exist. ``splats`` does the geometry for a whole batch at once and
``Splats.draw`` scatters any run of its samples, so a large batch can be drawn a small,
cache-resident chunk at a time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from experiments.trajectory_video.cameras import DISTANCE, FOV_DEG, project

SPLAT_SIGMA = 0.1  # world units; ~0.9 px at 32x32 and ~1.7 px at 64x64 from the rig distance


def splat_radius(size: int) -> int:
    """Half-width of the square splat footprint in pixels."""
    focal = (size / 2.0) / math.tan(math.radians(FOV_DEG) / 2.0)
    return max(2, round(2.0 * SPLAT_SIGMA * focal / DISTANCE))


@dataclass(frozen=True)
class Splats:
    """What to draw for a batch of samples: ``offsets (Q, B, P)`` into each sample's own
    ``shape`` video (flattened) and the uint8 ``values (Q, B, P)`` there. The sample axis
    is in the middle so every array operation runs over long contiguous rows."""

    offsets: np.ndarray
    values: np.ndarray
    shape: tuple[int, ...]  # one sample's video shape

    def draw(self, out: np.ndarray, start: int = 0) -> np.ndarray:
        """Draw samples ``start .. start + len(out)`` into the all-zero uint8 ``out``."""
        count = len(out)
        if out.shape[1:] != self.shape or out.dtype != np.uint8:
            raise ValueError(f"out must be uint8 (n, {self.shape}), got {out.dtype} {out.shape}")
        base = np.arange(count, dtype=np.int64)[:, None] * math.prod(self.shape)
        index = self.offsets[:, start : start + count] + base
        # No pixel appears twice (one window per plane), so the write order is irrelevant.
        out.reshape(-1)[index.ravel()] = self.values[:, start : start + count].ravel()
        return out


def splats(
    positions: np.ndarray,
    intrinsics: np.ndarray,
    extrinsics: np.ndarray,
    colours: np.ndarray,
    size: int,
) -> Splats:
    """The splats of ``positions (B, T, 3)`` seen by cameras ``(B, V, ...)`` with
    ``colours (B, C)``. Deterministic: every value depends only on its own sample's inputs."""
    batch, frames, _ = positions.shape
    views = intrinsics.shape[1]
    channels = colours.shape[1]
    radius = splat_radius(size)
    width = 2 * radius + 1
    if size < width:
        raise ValueError(f"frame size {size} is smaller than the splat ({width} px)")

    u, v, depth = project(positions.astype(np.float32), intrinsics, extrinsics)  # (B, V, T)
    focal = intrinsics[:, :, 0, 0, None]
    sigma = np.clip(SPLAT_SIGMA * focal / np.maximum(depth, 1e-3), 0.5, radius / 1.5)
    inv_two_var = -0.5 / (sigma * sigma)

    # The splat window is clamped inside the frame (values still come from the true
    # centre), so every scattered pixel is on screen and no mask is needed; a splat far
    # off screen evaluates to zeros at the border. Window axes come first (k, B, V, T).
    offsets = np.arange(width, dtype=np.float32)[:, None, None, None]
    col0 = np.clip(np.rint(u) - radius, 0, size - width)
    row0 = np.clip(np.rint(v) - radius, 0, size - width)
    gx = np.exp((col0 + offsets - u) ** 2 * inv_two_var)
    gy = np.exp((row0 + offsets - v) ** 2 * inv_two_var)
    gy *= depth > 1e-3  # points behind the camera are not drawn
    scale = (colours.astype(np.float32) * 255.0).T[:, None, :, None, None]  # (C, 1, B, 1, 1)
    gx_c = gx * scale  # (C, k, B, V, T)
    # Cast to uint8 (truncating, as astype would) inside the multiply: no float temporary.
    values = np.empty((channels, width, width, batch, views, frames), dtype=np.uint8)
    np.multiply(gy[None, :, None], gx_c[:, None], out=values, casting="unsafe")

    plane = size * size
    shape = (views, frames, channels, size, size)
    # int32 offsets within one sample halve the index memory; draw() widens them.
    dtype = np.int32 if math.prod(shape) < 2**31 else np.int64
    view_frame = np.arange(views * frames, dtype=dtype).reshape(views, frames)
    plane_start = (view_frame * channels + np.arange(channels, dtype=dtype)[:, None, None,
                                                                             None, None, None])
    window = (np.arange(width, dtype=dtype)[:, None] * size + np.arange(width, dtype=dtype))
    fixed = plane_start * plane + window[None, :, :, None, None, None]  # (C, k, k, 1, V, T)
    index = fixed + (row0 * size + col0).astype(dtype)  # (C, k, k, B, V, T)
    rows = channels * width * width
    return Splats(index.reshape(rows, batch, -1), values.reshape(rows, batch, -1), shape)


def render_batch(
    positions: np.ndarray,
    intrinsics: np.ndarray,
    extrinsics: np.ndarray,
    colours: np.ndarray,
    size: int,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Render ``positions (B, T, 3)`` seen by cameras ``(B, V, ...)`` with ``colours (B, C)``.

    Returns ``(B, V, T, C, size, size)`` uint8. ``out``, when given, must be an all-zero
    uint8 buffer of that shape; it is filled and returned.
    """
    drawn = splats(positions, intrinsics, extrinsics, colours, size)
    if out is None:
        out = np.zeros((len(positions), *drawn.shape), dtype=np.uint8)
    elif len(out) != len(positions):
        raise ValueError(f"out holds {len(out)} samples, positions {len(positions)}")
    return drawn.draw(out)
