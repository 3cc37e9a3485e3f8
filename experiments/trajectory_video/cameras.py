"""Pinhole cameras: each sample's own rig around the scene, and projection.

Conventions (OpenCV): camera x right, y down, z forward; pixel (col, row) has its centre
at integer coordinates, so a point projecting to ``(u, v)`` lands on pixel
``(round(u), round(v))``. World z points up. Extrinsics map world to camera:
``X_cam = R @ X_world + t``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Rig slots: camera v's azimuth is drawn around slot v's, so views stay spread around the
# scene.
_BASE_AZIMUTH_DEG = (45.0, 135.0, 225.0, 315.0, 0.0, 90.0, 180.0, 270.0)
MAX_CAMERAS = len(_BASE_AZIMUTH_DEG)
DISTANCE = 4.0  # typical camera distance (camera features are scaled by it)
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


CAMERA_WORDS = 8  # uniforms per camera (7 used)
AZIMUTH_SPREAD_DEG = 40.0  # each camera's azimuth: its rig slot +- this
ELEVATION_RANGE_DEG = (5.0, 60.0)
DISTANCE_RANGE = (3.0, 4.2)
FOCAL_RANGE = (0.85, 1.2)  # times the base focal length
TARGET_RANGE = 0.3  # the point looked at: the origin +- this on each axis


def _between(u: np.ndarray, low: float, high: float) -> np.ndarray:
    return low + (high - low) * u


def pose_from_uniforms(uniforms: np.ndarray, cameras: int) -> np.ndarray:
    """Each sample's own rig: uniforms ``(n, >= CAMERA_WORDS * cameras)`` in [0, 1) ->
    ``(n, cameras, CAMERA_WORDS)``, one row of uniforms per camera."""
    if not 1 <= cameras <= MAX_CAMERAS:
        raise ValueError(f"cameras must be in 1..{MAX_CAMERAS}, got {cameras}")
    return uniforms[:, : CAMERA_WORDS * cameras].reshape(-1, cameras, CAMERA_WORDS)


def rig_from_pose(pose: np.ndarray, size: int) -> CameraSet:
    """Cameras for per-camera uniforms ``(..., V, CAMERA_WORDS)``: azimuth within
    +-40 degrees of the camera's rig slot (so the views stay spread around the scene),
    elevation 5-60 degrees, distance 3-4.2, focal length 0.85-1.2x, looking at a point
    within +-0.3 of the origin. Vectorised over samples."""
    cameras = pose.shape[-2]
    az = np.deg2rad(np.asarray(_BASE_AZIMUTH_DEG[:cameras])
                    + AZIMUTH_SPREAD_DEG * (2.0 * pose[..., 0] - 1.0))
    el = np.deg2rad(_between(pose[..., 1], *ELEVATION_RANGE_DEG))
    dist = _between(pose[..., 2], *DISTANCE_RANGE)
    target = _between(pose[..., 4:7], -TARGET_RANGE, TARGET_RANGE)
    eye = target + dist[..., None] * np.stack(
        [np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)], axis=-1
    )
    extrinsics = look_at(eye, target, np.array([0.0, 0.0, 1.0]))
    intrinsics = intrinsics_matrix(base_focal(size) * _between(pose[..., 3], *FOCAL_RANGE),
                                   size)
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
