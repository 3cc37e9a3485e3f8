"""Vectorised rendering of scenes into multi-view uint8 videos.

A frame is, in drawing order: sensor noise (a row of a fixed noise table per frame,
scaled by the sample's noise level), the view's static background (a tinted texture of
two random gratings and a brightness gradient, with an optional occluding pillar), two
small grey distractor blobs drifting in straight lines, and the target object, a
coloured gaussian blob of the sample's own size. Blobs are alpha-blended over what is
already drawn and vanish behind the pillar, so the target is occluded for part of its
path in some views.

Only the blob footprints are computed in float32; full frames are touched by three
uint8 passes (noise gather, noise scaling, background add). ``splats`` does the blob
geometry for a whole batch at once and ``Splats.draw`` blends any run of its samples,
so a large batch can be drawn a small, cache-resident chunk at a time. Every value
depends only on its own sample's inputs, whatever the batch.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from experiments.trajectory_video.cameras import DISTANCE, FOV_DEG, project

TARGET_SIGMA = (0.10, 0.18)  # world units: the target's size range
TARGET_PEAK = 0.95  # blob opacity at its centre (some sensor noise stays visible)
DISTRACTOR_SIGMA = 0.04
MAX_LEVEL = 224  # brightest drawn value: leaves room for noise up to 31 in uint8
NOISE_ROWS = 512  # rows (one frame-plane each) of the noise table, per noise level
NOISE_LEVELS = 3  # noise up to 15, 7 or 3
NOISE_MAX = 31
BACKGROUND_WORDS = 16  # uniforms per view


def splat_radius(size: int, sigma: float) -> int:
    """Half-width in pixels of the square window a blob of world size ``sigma`` needs (two
    standard deviations at the typical camera distance; larger blobs are clipped to it)."""
    focal = (size / 2.0) / math.tan(math.radians(FOV_DEG) / 2.0)
    return max(1, round(2.0 * sigma * focal / DISTANCE))


def _between(u: np.ndarray, low: float, high: float) -> np.ndarray:
    return low + (high - low) * u


@dataclass(frozen=True)
class Splats:
    """Blobs to blend into a batch of videos: ``index (C, k*k, B, V*T)`` offsets into each
    sample's own ``shape`` video (flattened); a pixel becomes ``pixel * keep + add``, with
    ``keep = 1 - alpha`` ``(k*k, B, V*T)`` and ``add = alpha * colour`` ``(C, k*k, B, V*T)``.
    The sample axis is in the middle so every array operation runs over long rows."""

    index: np.ndarray
    keep: np.ndarray
    add: np.ndarray
    shape: tuple[int, ...]  # one sample's video shape

    def draw(self, out: np.ndarray, start: int = 0) -> np.ndarray:
        """Blend samples ``start .. start + len(out)`` into the uint8 videos ``out``."""
        count = len(out)
        if out.shape[1:] != self.shape or out.dtype != np.uint8:
            raise ValueError(f"out must be uint8 (n, {self.shape}), got {out.dtype} {out.shape}")
        base = np.arange(count, dtype=np.int64)[:, None] * math.prod(self.shape)
        index = self.index[:, :, start : start + count] + base
        flat = out.reshape(-1)
        # A window never holds a pixel twice, so the write order is irrelevant; the result
        # is a convex combination of uint8 values, so it fits (truncated) in uint8.
        blended = np.multiply(flat[index], self.keep[:, start : start + count])
        blended += self.add[:, :, start : start + count]
        flat[index] = blended
        return out


def splats(
    positions: np.ndarray,
    intrinsics: np.ndarray,
    extrinsics: np.ndarray,
    colours: np.ndarray,
    sigma: np.ndarray,
    peak: np.ndarray,
    occluders: np.ndarray,
    size: int,
    radius: int,
) -> Splats:
    """Blobs at ``positions (B, T, 3)`` seen by cameras ``(B, V, ...)``: ``colours (B, C)``
    in [0, 1], world size ``sigma (B,)``, opacity ``peak (B,)``, hidden inside each view's
    occluder rectangle ``occluders (B, V, 4)`` (x0, x1, y0, y1 in pixels)."""
    batch, frames, _ = positions.shape
    views = intrinsics.shape[1]
    channels = colours.shape[1]
    width = 2 * radius + 1
    if size < width:
        raise ValueError(f"frame size {size} is smaller than the splat ({width} px)")

    u, v, depth = project(positions.astype(np.float32), intrinsics, extrinsics)  # (B, V, T)
    focal = intrinsics[:, :, 0, 0, None]
    world = sigma.astype(np.float32)[:, None, None]
    px_sigma = np.clip(world * focal / np.maximum(depth, 1e-3), 0.5, radius / 1.3)
    inv_two_var = -0.5 / (px_sigma * px_sigma)

    # The window is clamped inside the frame (values still come from the true centre), so
    # every pixel written is on screen; a blob far off screen evaluates to ~0 at the border.
    offsets = np.arange(width, dtype=np.float32)[:, None, None, None]  # (k, 1, 1, 1)
    col0 = np.clip(np.rint(u) - radius, 0, size - width)
    row0 = np.clip(np.rint(v) - radius, 0, size - width)
    cols = col0 + offsets  # (k, B, V, T)
    rows = row0 + offsets
    gx = np.exp((cols - u) ** 2 * inv_two_var)
    gy = np.exp((rows - v) ** 2 * inv_two_var)
    gy *= (depth > 0.1) * peak.astype(np.float32)[:, None, None]  # behind the camera: none
    occ = occluders.astype(np.float32)[..., None]  # (B, V, 4, 1)
    in_x = (cols >= occ[:, :, 0]) & (cols < occ[:, :, 1])
    in_y = (rows >= occ[:, :, 2]) & (rows < occ[:, :, 3])
    alpha = gy[:, None] * gx[None, :]  # (k, k, B, V, T), rows first
    alpha *= ~(in_y[:, None] & in_x[None, :])

    plane = size * size
    shape = (views, frames, channels, size, size)
    # int32 offsets within one sample halve the index memory; draw() widens them.
    dtype = np.int32 if math.prod(shape) < 2**31 else np.int64
    view_frame = np.arange(views * frames, dtype=dtype).reshape(views, frames)
    plane_start = (view_frame * channels
                   + np.arange(channels, dtype=dtype)[:, None, None, None, None, None])
    window = np.arange(width, dtype=dtype)[:, None] * size + np.arange(width, dtype=dtype)
    fixed = plane_start * plane + window[None, :, :, None, None, None]  # (C, k, k, 1, V, T)
    index = fixed + (row0 * size + col0).astype(dtype)  # (C, k, k, B, V, T)
    alpha = alpha.reshape(width * width, batch, -1)
    level = (colours.astype(np.float32) * MAX_LEVEL).T[:, None, :, None]  # (C, 1, B, 1)
    return Splats(index.reshape(channels, width * width, batch, -1), 1.0 - alpha,
                  alpha * level, shape)


def backgrounds(words: np.ndarray, channels: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-view static backgrounds from uniforms ``(B, V, BACKGROUND_WORDS)``: uint8
    ``(B, V, C, size, size)`` and occluder rectangles ``(B, V, 4)`` (x0, x1, y0, y1; empty
    when the view has none). A tinted texture (two gratings of 0.5-5 cycles per frame at
    random angles) with a vertical brightness gradient; in 40% of views a flat grey pillar
    standing on the bottom edge, 10-25% of the frame wide."""
    w = words.astype(np.float32)
    level = _between(w[..., 0:3], 20.0, 90.0)[..., :channels]  # (B, V, C)
    amp = _between(w[..., 3], 5.0, 25.0)
    grad = _between(w[..., 4], -40.0, 40.0)
    coords = (np.arange(size, dtype=np.float32) - np.float32((size - 1) / 2.0)) / size
    # Each grating cos(fx x + fy y + p) = cos(fx x + p) cos(fy y) - sin(fx x + p) sin(fy y):
    # a sum of two outer products of 1D waves, so only O(size) trigonometry per view.
    shade = (grad[..., None, None] * coords[:, None]).astype(np.float32)  # (B, V, H, 1)
    shade = np.broadcast_to(shade, (*w.shape[:2], size, size)).copy()
    for g in (5, 8):
        cycles = _between(w[..., g], 0.5, 5.0) * np.float32(2 * np.pi)
        angle = w[..., g + 1] * np.float32(np.pi)
        half = (0.5 * amp)[..., None]
        phase = (w[..., g + 2] * np.float32(2 * np.pi))[..., None]
        along_x = (cycles * np.cos(angle))[..., None] * coords + phase  # (B, V, W)
        along_y = (cycles * np.sin(angle))[..., None] * coords  # (B, V, H)
        shade += (half * np.cos(along_x))[..., None, :] * np.cos(along_y)[..., :, None]
        shade -= (half * np.sin(along_x))[..., None, :] * np.sin(along_y)[..., :, None]

    present = w[..., 11] < 0.4
    pillar_w = np.rint(_between(w[..., 12], 0.10, 0.25) * size)
    x0 = np.floor(w[..., 13] * (size - pillar_w))
    y0 = np.floor(_between(w[..., 14], 0.0, 0.6) * size)
    x1 = np.where(present, x0 + pillar_w, x0)
    occluders = np.stack([x0, x1, y0, np.full_like(y0, size)], axis=-1)
    grid = np.arange(size, dtype=np.float32)
    in_x = (grid >= x0[..., None]) & (grid < x1[..., None])  # (B, V, W)
    in_y = grid >= y0[..., None]  # (B, V, H)
    inside = in_y[..., :, None] & in_x[..., None, :]  # (B, V, H, W)
    image = np.empty((*w.shape[:2], channels, size, size), dtype=np.float32)
    np.add(level[..., None, None], shade[:, :, None], out=image)
    grey = _between(w[..., 15], 20.0, 200.0)[..., None, None, None]
    np.copyto(image, grey, where=inside[:, :, None])
    np.clip(image, 0.0, MAX_LEVEL - NOISE_MAX, out=image)
    return image.astype(np.uint8), occluders


@functools.lru_cache(maxsize=4)
def noise_table(seed: int, plane: int) -> np.ndarray:
    """``(NOISE_LEVELS * NOISE_ROWS, plane)`` uint8: one frame's sensor noise per row, from
    its own Philox stream keyed by ``seed`` (read-only, shared by all samples). Level ``l``
    (rows ``l * NOISE_ROWS ...``) is uniform in [0, NOISE_MAX >> (l + 1)]."""
    key = np.random.SeedSequence(seed, spawn_key=(1,)).generate_state(2, dtype=np.uint64)
    words = -(-NOISE_ROWS * plane // 8)
    raw = np.random.Philox(key=key).random_raw(words).view(np.uint8)[: NOISE_ROWS * plane]
    base = (raw & np.uint8(NOISE_MAX)).reshape(NOISE_ROWS, plane)
    table = np.concatenate([base >> np.uint8(level + 1) for level in range(NOISE_LEVELS)])
    table.flags.writeable = False
    return table


def noise_rows(level: np.ndarray, first: np.ndarray, stride: np.ndarray,
               planes: int) -> np.ndarray:
    """``(B, planes)`` noise-table rows of each sample's (view, frame) planes, from
    per-sample uniforms: the noise level, and ``first + k * stride`` (mod NOISE_ROWS) for
    the k-th plane, an odd stride so the rows repeat only after NOISE_ROWS planes."""
    lvl = np.minimum(np.floor(level * NOISE_LEVELS), NOISE_LEVELS - 1).astype(np.int64)
    start = np.floor(first * NOISE_ROWS).astype(np.int64)
    step = 2 * np.floor(stride * (NOISE_ROWS // 2)).astype(np.int64) + 1
    rows = (start[:, None] + np.arange(planes)[None] * step[:, None]) % NOISE_ROWS
    return rows + (lvl * NOISE_ROWS)[:, None]


def frame_base(out: np.ndarray, table: np.ndarray, rows: np.ndarray,
               background: np.ndarray) -> np.ndarray:
    """Fill ``out (n, V, T, C, H, W)`` with sensor noise (noise-table ``rows (n, V*T)``)
    plus each view's ``background (n, V, C, H, W)``."""
    n, views, frames = out.shape[:3]
    per_frame = out.reshape(n * views * frames, -1)
    if table.shape[1] != per_frame.shape[1]:
        raise ValueError(f"noise rows of {table.shape[1]} bytes for frames of "
                         f"{per_frame.shape[1]}")
    # mode='wrap' (rows are in range anyway): with the default mode, take buffers ``out``.
    np.take(table, rows.reshape(-1), axis=0, out=per_frame, mode="wrap")
    np.add(out, background[:, :, None], out=out)
    return out
