"""Pinhole cameras: the rig around the scene, per-sample jitter, and projection.

Conventions (OpenCV): camera x right, y down, z forward; pixel (col, row) has its centre
at integer coordinates, so a point projecting to ``(u, v)`` lands on pixel
``(round(u), round(v))``. World z points up. Extrinsics map world to camera:
``X_cam = R @ X_world + t``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# The base rig: cameras spread in azimuth at two elevations, all looking at the origin.
_BASE_AZIMUTH_DEG = (45.0, 135.0, 225.0, 315.0, 0.0, 90.0, 180.0, 270.0)
_BASE_ELEVATION_DEG = (20.0, 35.0, 20.0, 35.0, 50.0, 10.0, 50.0, 10.0)
MAX_CAMERAS = len(_BASE_AZIMUTH_DEG)
DISTANCE = 4.0
FOV_DEG = 50.0


@dataclass(frozen=True)
class CameraSet:
    """Cameras of one or many samples: ``intrinsics (..., 3, 3)``, ``extrinsics (..., 3, 4)``."""

    intrinsics: np.ndarray
    extrinsics: np.ndarray


def cross(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cross product over the last axis."""
    # np.cross spends most of its time in axis bookkeeping for these tiny arrays.
    ax, ay, az = a[..., 0], a[..., 1], a[..., 2]
    bx, by, bz = b[..., 0], b[..., 1], b[..., 2]
    return np.stack([ay * bz - az * by, az * bx - ax * bz, ax * by - ay * bx], axis=-1)


def look_at(eye: np.ndarray, target: np.ndarray, up: np.ndarray) -> np.ndarray:
    """World-to-camera ``[R | t]`` (``(..., 3, 4)``) for cameras at ``eye (..., 3)``."""
    eye, target, up = np.broadcast_arrays(eye, target, up)
    forward = target - eye
    forward = forward / np.sqrt((forward**2).sum(-1, keepdims=True))
    right = cross(forward, up)
    right = right / np.sqrt((right**2).sum(-1, keepdims=True))
    down = cross(forward, right)
    rot = np.stack([right, down, forward], axis=-2)
    trans = -(rot * eye[..., None, :]).sum(-1)
    return np.concatenate([rot, trans[..., None]], axis=-1)


def intrinsics_matrix(focal: np.ndarray | float, size: int) -> np.ndarray:
    """``(..., 3, 3)`` pinhole intrinsics with the principal point at the image centre."""
    focal = np.asarray(focal, dtype=np.float64)
    k = np.zeros((*focal.shape, 3, 3))
    k[..., 0, 0] = focal
    k[..., 1, 1] = focal
    k[..., 0, 2] = k[..., 1, 2] = (size - 1) / 2.0
    k[..., 2, 2] = 1.0
    return k


def base_focal(size: int) -> float:
    return (size / 2.0) / np.tan(np.deg2rad(FOV_DEG) / 2.0)


def jitter_from_uniforms(uniforms: np.ndarray, cameras: int) -> np.ndarray:
    """The random part of each sample's rig: uniforms ``(n, >= 4 * cameras)`` in [0, 1)
    -> ``(n, cameras, 4)`` values in [-1, 1)."""
    if not 1 <= cameras <= MAX_CAMERAS:
        raise ValueError(f"cameras must be in 1..{MAX_CAMERAS}, got {cameras}")
    return 2.0 * uniforms[:, : 4 * cameras].reshape(-1, cameras, 4) - 1.0


def rig_from_jitter(jitter: np.ndarray, size: int) -> CameraSet:
    """Cameras for jitter ``(..., V, 4)``: the base rig moved by a few degrees in azimuth
    and elevation, +-0.2 in distance and +-5% in focal length. Vectorised over samples."""
    cameras = jitter.shape[-2]
    az = np.deg2rad(np.asarray(_BASE_AZIMUTH_DEG[:cameras]) + 5.0 * jitter[..., 0])
    el = np.deg2rad(np.asarray(_BASE_ELEVATION_DEG[:cameras]) + 3.0 * jitter[..., 1])
    dist = DISTANCE + 0.2 * jitter[..., 2]
    eye = dist[..., None] * np.stack(
        [np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)], axis=-1
    )
    extrinsics = look_at(eye, np.zeros(3), np.array([0.0, 0.0, 1.0]))
    intrinsics = intrinsics_matrix(base_focal(size) * (1.0 + 0.05 * jitter[..., 3]), size)
    return CameraSet(intrinsics.astype(np.float32), extrinsics.astype(np.float32))


def project(
    points: np.ndarray, intrinsics: np.ndarray, extrinsics: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Project points ``(B, P, 3)`` into cameras ``(B, V, ...)`` -> ``u, v, depth (B, V, P)``.

    Written as explicit broadcast products instead of a matmul so each output element
    is computed the same way whatever the batch size (BLAS blocking would not be).
    """
    x = points[:, None, :, 0]
    y = points[:, None, :, 1]
    z = points[:, None, :, 2]
    e = extrinsics[..., None]  # (B, V, 3, 4, 1) broadcasts over points
    cam = [e[:, :, r, 0] * x + e[:, :, r, 1] * y + e[:, :, r, 2] * z + e[:, :, r, 3]
           for r in range(3)]
    k = intrinsics[..., None]
    depth = cam[2]
    safe = np.where(depth > 1e-6, depth, np.float32(1e-6))
    u = k[:, :, 0, 0] * cam[0] / safe + k[:, :, 0, 2]
    v = k[:, :, 1, 1] * cam[1] / safe + k[:, :, 1, 2]
    return u, v, depth
