"""Vectorised rendering of scenes into multi-view uint8 videos.

A frame is, in drawing order: sensor noise (the sample's own run of a fixed noise
table, at the sample's noise level), the view's static background (a tinted texture of
two random gratings and a brightness gradient, with an optional occluding pillar), two
small grey distractor blobs drifting in straight lines, and the target object, a
coloured gaussian blob of the sample's own size. Blobs are alpha-blended over what is
already drawn and vanish behind the pillar, so the target is occluded for part of its
path in some views.

Full frames are touched by one uint8 pass (a contiguous slice of the noise table plus
the background); blobs are blended with uint16 integer arithmetic on their windows only.
``splats`` does the blob geometry for a whole batch at once and ``Splats.draw`` blends any
run of its samples, so a large batch can be drawn a small, cache-resident chunk at a
time. Every value depends only on its own sample's inputs, whatever the batch."""

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
NOISE_ROWS = 512  # frame planes of noise in the noise table, per noise level
NOISE_LEVELS = 3  # noise up to 15, 7 or 3
NOISE_MAX = 31
BACKGROUND_WORDS = 16  # uniforms per view
TEXTURE_BLOCK_BYTES = 256 << 10  # float texture computed at a time (stays in cache)


def splat_radius(size: int, sigma: float) -> int:
    """Half-width in pixels of the square window a blob of world size ``sigma`` needs (two
    standard deviations at the typical camera distance; larger blobs are clipped to it)."""
    focal = (size / 2.0) / math.tan(math.radians(FOV_DEG) / 2.0)
    return max(1, round(2.0 * sigma * focal / DISTANCE))


def _between(u: np.ndarray, low: float, high: float) -> np.ndarray:
    return low + (high - low) * u


@dataclass(frozen=True)
class Splats:
    """Blobs to blend into a batch of videos, one window of ``k`` rows of ``w`` words per
    (sample, view, frame); a word is ``word`` bytes (2 when the frame width is even, so
    windows start on even columns and half as many indices are gathered and scattered).
    ``corner (B, V*T)`` is the word offset of a window's top-left pixel in channel 0 within
    its sample's flattened ``shape`` video and ``window (C, k*w)`` the word offsets of its
    words from there. With the opacity ``alpha (k*w, B, V*T*word)`` per byte in 1/256,
    ``keep = 256 - alpha`` and the colour ``level (C, 1, B, 1)``, a pixel becomes
    ``(pixel * keep + level * alpha) >> 8``: uint16 arithmetic on a convex combination of
    values up to 255, so it never overflows and fits (truncated) in uint8. The frame axes
    are innermost so every array operation runs over long rows."""

    corner: np.ndarray
    window: np.ndarray
    alpha: np.ndarray
    keep: np.ndarray
    level: np.ndarray
    shape: tuple[int, ...]  # one sample's video shape
    word: int

    def draw(self, out: np.ndarray, start: int = 0) -> np.ndarray:
        """Blend samples ``start .. start + len(out)`` into the uint8 videos ``out``."""
        count = len(out)
        if out.shape[1:] != self.shape or out.dtype != np.uint8 or not out.flags.c_contiguous:
            raise ValueError(f"out must be C-contiguous uint8 (n, {self.shape}), got "
                             f"{out.dtype} {out.shape}")
        batch = slice(start, start + count)
        words = out.reshape(-1).view(f"u{self.word}")
        base = np.arange(count, dtype=np.int64)[:, None] * (math.prod(self.shape) // self.word)
        corner = self.corner[batch] + base
        # One flat index array: the gather and the scatter each run as one inner loop. A
        # window never holds a word twice, so the write order is irrelevant.
        index = np.add(self.window[..., None, None], corner).reshape(-1)  # (C, k*w, n, V*T)
        gathered = words.take(index)
        pixels = gathered.view(np.uint8).reshape(*self.window.shape, count, -1)
        blended = np.multiply(pixels, self.keep[:, batch], dtype=np.uint16)
        blended += self.alpha[:, batch] * self.level[:, :, batch]
        np.right_shift(blended, np.uint16(8), out=pixels, casting="unsafe")
        words[index] = gathered
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
    word = 2 if size % 2 == 0 and size > width else 1
    span = width + word - 1  # columns: the window starts on a word boundary

    u, v, depth = project(positions.astype(np.float32), intrinsics, extrinsics)  # (B, V, T)
    focal = intrinsics[:, :, 0, 0, None]
    world = sigma.astype(np.float32)[:, None, None]
    px_sigma = np.clip(world * focal / np.maximum(depth, 1e-3), 0.5, radius / 1.3)
    inv_two_var = -0.5 / (px_sigma * px_sigma)

    # The window is clamped inside the frame (values still come from the true centre), so
    # every pixel written is on screen; a blob far off screen evaluates to ~0 at the border.
    # With 2-byte words it starts on the even column at or left of the centred one, and
    # (the frame width being even) still ends inside the frame.
    col0 = np.clip(np.rint(u) - radius, 0, size - width)
    col0 = np.floor(col0 / word) * word
    row0 = np.clip(np.rint(v) - radius, 0, size - width)
    cols = col0 + np.arange(span, dtype=np.float32)[:, None, None, None]  # (span, B, V, T)
    rows = row0 + np.arange(width, dtype=np.float32)[:, None, None, None]  # (k, B, V, T)
    gx = np.exp((cols - u) ** 2 * inv_two_var)
    gy = np.exp((rows - v) ** 2 * inv_two_var)
    gy *= (depth > 0.1) * (peak.astype(np.float32) * 256)[:, None, None]  # behind: none
    occ = occluders.astype(np.float32)  # (B, V, 4)
    gx_in = gx * ((cols >= occ[..., 0, None]) & (cols < occ[..., 1, None]))
    gy_in = gy * ((rows >= occ[..., 2, None]) & (rows < occ[..., 3, None]))

    def per_byte(g: np.ndarray, columns: bool) -> np.ndarray:
        """``(rows or words, B*V*T, word)``: the factor of each byte of each word."""
        lines = g.reshape(-1, word, batch * views * frames) if columns else g.reshape(width, 1, -1)
        spread = np.empty((len(lines), batch * views * frames, word), dtype=np.float32)
        for b in range(word):  # strided copies along the long axis (np.repeat is slower)
            spread[..., b] = lines[:, b if columns else 0]
        return spread

    # Opacity in 1/256, truncated: gy x gx, less the same product over the pixels inside
    # the occluder (identical there, so exactly zero).
    alpha = np.empty((width, span // word, batch * views * frames, word), dtype=np.uint16)
    np.multiply(per_byte(gy, False)[:, None], per_byte(gx, True)[None], out=alpha,
                casting="unsafe")
    hidden = np.empty_like(alpha)
    np.multiply(per_byte(gy_in, False)[:, None], per_byte(gx_in, True)[None], out=hidden,
                casting="unsafe")
    alpha -= hidden
    alpha = alpha.reshape(-1, batch, views * frames * word)

    plane = size * size
    shape = (views, frames, channels, size, size)
    frame_start = np.arange(views * frames, dtype=np.int64).reshape(views, frames)
    corner = frame_start * (channels * plane) + (row0 * size + col0).astype(np.int64)
    window = (np.arange(channels, dtype=np.int64)[:, None, None] * plane
              + np.arange(width, dtype=np.int64)[:, None] * size
              + np.arange(0, span, word, dtype=np.int64))
    level = np.rint(colours.astype(np.float32) * MAX_LEVEL).astype(np.uint16)
    return Splats(corner.reshape(batch, -1) // word, window.reshape(channels, -1) // word,
                  alpha, np.subtract(np.uint16(256), alpha), level.T[:, None, :, None], shape,
                  word)


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
    # Each grating cos(fx x + fy y + p) = cos(fx x + p) cos(fy y) - sin(fx x + p) sin(fy y),
    # so a channel's texture (its level, the gradient and the two gratings) is a rank-5
    # matrix: row factors (H, 5) times column factors (5, W), with only O(size)
    # trigonometry per view. Each matrix product is computed on its own, so a view's
    # texture does not depend on the batch it is in.
    batch = w.shape[:2]
    rows = np.empty((*batch, channels, size, 5), dtype=np.float32)
    cols = np.empty((*batch, 5, size), dtype=np.float32)
    rows[..., 0] = level[..., None] + (grad[..., None] * coords)[:, :, None]
    cols[..., 0, :] = 1.0
    for k, g in ((1, 5), (3, 8)):
        cycles = _between(w[..., g], 0.5, 5.0) * np.float32(2 * np.pi)
        angle = w[..., g + 1] * np.float32(np.pi)
        half = (0.5 * amp)[..., None]
        phase = (w[..., g + 2] * np.float32(2 * np.pi))[..., None]
        along_x = (cycles * np.cos(angle))[..., None] * coords + phase  # (B, V, W)
        along_y = (cycles * np.sin(angle))[..., None] * coords  # (B, V, H)
        rows[..., k] = np.cos(along_y)[:, :, None]
        rows[..., k + 1] = -np.sin(along_y)[:, :, None]
        cols[..., k, :] = half * np.cos(along_x)
        cols[..., k + 1, :] = half * np.sin(along_x)
    # One (C*H, 5) @ (5, W) product per view (its channels' rows stacked), a few samples at
    # a time so the float texture stays in cache until it is clipped and converted.
    rows = rows.reshape(*batch, channels * size, 5)
    texture = np.empty((*batch, channels, size, size), dtype=np.uint8)
    step = max(1, TEXTURE_BLOCK_BYTES // (4 * texture[0].size))
    image = np.empty((min(step, len(texture)), batch[1], channels * size, size), np.float32)
    for a in range(0, len(texture), step):
        block = image[: len(texture[a : a + step])]
        np.matmul(rows[a : a + step], cols[a : a + step], out=block)
        np.clip(block, 0.0, MAX_LEVEL - NOISE_MAX, out=block)
        texture[a : a + step] = block.reshape(texture[a : a + step].shape)

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
    grey = np.minimum(_between(w[..., 15], 20.0, 200.0), MAX_LEVEL - NOISE_MAX)
    np.copyto(texture, grey.astype(np.uint8)[..., None, None, None], where=inside[:, :, None])
    return texture, occluders


@functools.lru_cache(maxsize=4)
def noise_table(seed: int, plane: int, span: int) -> np.ndarray:
    """``(NOISE_LEVELS, NOISE_ROWS * plane + span)`` uint8 (read-only, shared by all
    samples): per noise level, ``NOISE_ROWS`` frames' worth of sensor noise from its own
    Philox stream keyed by ``seed``, followed by its own first ``span`` bytes again, so the
    ``span`` bytes from any offset below ``NOISE_ROWS * plane`` are one contiguous slice.
    Level ``l`` is uniform in [0, NOISE_MAX >> (l + 1)]."""
    key = np.random.SeedSequence(seed, spawn_key=(1,)).generate_state(2, dtype=np.uint64)
    words = -(-NOISE_ROWS * plane // 8)
    raw = np.random.Philox(key=key).random_raw(words).view(np.uint8)[: NOISE_ROWS * plane]
    base = np.resize(raw & np.uint8(NOISE_MAX), NOISE_ROWS * plane + span)  # wraps around
    table = np.stack([base >> np.uint8(level + 1) for level in range(NOISE_LEVELS)])
    table.flags.writeable = False
    return table


def noise_choice(level: np.ndarray, offset: np.ndarray, plane: int) -> np.ndarray:
    """``(B, 2)`` int64 (noise level, byte offset into that level's table row) from
    per-sample uniforms: a sample's noise is the run of table bytes from its offset."""
    lvl = np.minimum(np.floor(level * NOISE_LEVELS), NOISE_LEVELS - 1)
    return np.stack([lvl, np.floor(offset * (NOISE_ROWS * plane))], axis=-1).astype(np.int64)


def frame_base(out: np.ndarray, table: np.ndarray, noise: np.ndarray,
               background: np.ndarray) -> np.ndarray:
    """Fill ``out (n, V, T, C, H, W)`` with sensor noise (``noise (n, 2)``: table row and
    offset per sample) plus each view's ``background (n, V, C, H, W)``, in one pass."""
    views, frames = out.shape[1:3]
    span = math.prod(out.shape[1:])
    if not out.flags.c_contiguous:
        raise ValueError("out must be C-contiguous: it is filled through reshaped views")
    if table.shape[1] < NOISE_ROWS * math.prod(out.shape[3:]) + span:
        raise ValueError(f"noise table rows of {table.shape[1]} bytes for samples of {span}")
    for i, (level, offset) in enumerate(noise.tolist()):
        np.add(table[level, offset : offset + span].reshape(views, frames, -1),
               background[i].reshape(views, 1, -1), out=out[i].reshape(views, frames, -1))
    return out
