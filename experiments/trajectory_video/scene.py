"""A sample's scene from its random words: trajectory, cameras, backgrounds, the target's
look, sensor noise and distractors; and the blobs to draw for a batch of samples.

Sample ``i`` depends only on the root seed and ``i``: its random numbers are its own
fixed block of a counter-based (Philox) stream keyed by the seed, and every later step is
elementwise per sample, so any range of samples can be drawn in one vectorised call and
gives the same values in any batch.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from experiments.trajectory_video import cameras, render, trajectories
from experiments.trajectory_video.config import DataConfig

# Random words per sample (a fixed block, so sample i's words start at i * WORDS_PER_SAMPLE):
# trajectory parameters, the cameras' poses (up to 8), their backgrounds, then the target's
# look and the sensor noise, then the distractors.
WORDS_PER_SAMPLE = 256
PHILOX_WORDS = 4  # 64-bit outputs per Philox4x64 counter step
DISTRACTORS = 2
_DISTRACTOR_WORDS = 8
_TRAJECTORY_WORDS = slice(0, trajectories.PARAMETER_WORDS)
_CAMERA_WORDS = slice(_TRAJECTORY_WORDS.stop,
                      _TRAJECTORY_WORDS.stop + cameras.CAMERA_WORDS * cameras.MAX_CAMERAS)
_BACKGROUND_WORDS = slice(_CAMERA_WORDS.stop,
                          _CAMERA_WORDS.stop + render.BACKGROUND_WORDS * cameras.MAX_CAMERAS)
_LOOK_WORDS = slice(_BACKGROUND_WORDS.stop, _BACKGROUND_WORDS.stop + 8)
_DISTRACTOR_SLICE = slice(_LOOK_WORDS.stop, _LOOK_WORDS.stop + DISTRACTORS * _DISTRACTOR_WORDS)
assert _DISTRACTOR_SLICE.stop <= WORDS_PER_SAMPLE


def sample_uniforms(seed: int, start: int, stop: int) -> np.ndarray:
    """Uniforms in [0, 1) of samples ``start..stop``, one row of ``WORDS_PER_SAMPLE`` each.

    Sample ``i`` owns words ``[i * K, (i + 1) * K)`` of one Philox4x64 counter-based stream
    keyed by the seed, so any range is a single contiguous draw that starts by setting the
    counter, and is the same words whatever range it is drawn in. Raw 64-bit outputs keep
    the stream independent of numpy's distribution code; the top 53 bits make the double.
    """
    key = np.random.SeedSequence(seed).generate_state(2, dtype=np.uint64)
    philox = np.random.Philox(key=key, counter=start * (WORDS_PER_SAMPLE // PHILOX_WORDS))
    raw = philox.random_raw((stop - start) * WORDS_PER_SAMPLE)
    uniforms = (raw >> np.uint64(11)).astype(np.float64) * 2.0**-53
    return uniforms.reshape(stop - start, WORDS_PER_SAMPLE)


def sample_params(cfg: DataConfig, start: int, stop: int) -> dict[str, np.ndarray]:
    """Everything about samples ``start..stop`` except pixels, vectorised over samples;
    every value is elementwise in its sample's uniforms, so identical in any batch. The
    keys of ``dataset.ARRAYS`` are stored; the others only describe how to draw."""
    uniforms = sample_uniforms(cfg.seed, start, stop)
    n = stop - start
    labels = trajectories.label_for_index(np.arange(start, stop, dtype=np.int64))
    pose = cameras.pose_from_uniforms(uniforms[:, _CAMERA_WORDS], cfg.cameras)
    rig = cameras.rig_from_pose(pose, cfg.size)
    look = uniforms[:, _LOOK_WORDS]
    background = uniforms[:, _BACKGROUND_WORDS].reshape(n, cameras.MAX_CAMERAS, -1)
    d = uniforms[:, _DISTRACTOR_SLICE].reshape(n, DISTRACTORS, _DISTRACTOR_WORDS)
    s = np.arange(cfg.frames, dtype=np.float64) / cfg.frames
    d_start = _between(d[..., 0:3], -1.2, 1.2)
    d_move = _between(d[..., 3:6], -0.8, 0.8)
    return {
        "positions": trajectories.sample_trajectories(uniforms[:, _TRAJECTORY_WORDS], labels,
                                                      cfg.frames),
        "labels": labels,
        "intrinsics": rig.intrinsics,
        "extrinsics": rig.extrinsics,
        # Bright (each channel 0.6-1 of the brightest level): above every background.
        "colours": _between(look[:, : cfg.channels], 0.6, 1.0).astype(np.float32),
        "sigma": _between(look[:, 3], *render.TARGET_SIGMA),
        "noise": render.noise_choice(look[:, 4], look[:, 5],
                                     cfg.channels * cfg.size * cfg.size),
        "background": background[:, : cfg.cameras],
        # (n, DISTRACTORS, frames, 3): straight drifts, grey, 20-45% opaque.
        "distractors": (d_start[:, :, None] + d_move[:, :, None] * s[None, None, :, None])
        .astype(np.float32),
        "distractor_grey": d[..., 6],
        "distractor_peak": _between(d[..., 7], 0.2, 0.45),
    }


def _between(u: np.ndarray, low: float, high: float) -> np.ndarray:
    return low + (high - low) * u


def scene_splats(cfg: DataConfig, params: Mapping[str, np.ndarray], g: int, h: int,
                 occluders: np.ndarray) -> list[render.Splats]:
    """The blobs of samples ``g..h`` in drawing order: the distractors, then the target."""
    sl = slice(g, h)
    cams = (params["intrinsics"][sl], params["extrinsics"][sl])
    n = h - g
    layers = []
    for k in range(DISTRACTORS):
        grey = np.repeat(params["distractor_grey"][sl, k, None], cfg.channels, axis=1)
        layers.append(render.splats(
            params["distractors"][sl, k], *cams, grey, np.full(n, render.DISTRACTOR_SIGMA),
            params["distractor_peak"][sl, k], occluders, cfg.size,
            render.splat_radius(cfg.size, render.DISTRACTOR_SIGMA)))
    layers.append(render.splats(
        params["positions"][sl, : cfg.frames], *cams, params["colours"][sl], params["sigma"][sl],
        np.full(n, render.TARGET_PEAK), occluders, cfg.size,
        render.splat_radius(cfg.size, render.TARGET_SIGMA[1])))
    return layers
