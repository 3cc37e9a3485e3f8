"""The multi-task model: one extractor over every camera view, view fusion, two heads.

Input: videos ``(B, V, T, C, H, W)`` (uint8 or float in [0, 1]) and per-view camera
features ``(B, V, CAMERA_FEATURES)``. The same extractor (shared weights) encodes each
view; each view's features are projected, combined with an embedding of that view's
camera, concatenated across views (view order is the camera rig order) and mixed by an
MLP. With ``feature_dim`` set, each view's extractor features first go through a linear
projection to that size (the per-view feature size the model reports). Heads:
trajectory-class logits ``(B, classes)`` and the next 3D position ``(B, 3)``
(in the normalised coordinates the trainer uses).
"""

from __future__ import annotations

import torch
from torch import nn

from shared.base_extractor import VideoExtractor

CAMERA_FEATURES = 16


def camera_features(
    intrinsics: torch.Tensor, extrinsics: torch.Tensor, size: int, distance: float
) -> torch.Tensor:
    """``(..., 3, 3)`` and ``(..., 3, 4)`` -> ``(..., 16)`` scale-free camera description."""
    k = intrinsics / size
    focal_centre = torch.stack([k[..., 0, 0], k[..., 1, 1], k[..., 0, 2], k[..., 1, 2]], dim=-1)
    rotation = extrinsics[..., :3].flatten(-2)
    translation = extrinsics[..., 3] / distance
    return torch.cat([focal_centre, rotation, translation], dim=-1)


class UnifiedModel(nn.Module):
    def __init__(
        self,
        extractor: VideoExtractor,
        views: int,
        num_classes: int,
        fusion_dim: int = 128,
        dropout: float = 0.1,
        feature_dim: int = 0,
    ) -> None:
        super().__init__()
        self.extractor = extractor
        self.views = views
        self.feature_dim = feature_dim or extractor.feature_dim
        self.feature_proj: nn.Module = (
            nn.Linear(extractor.feature_dim, feature_dim) if feature_dim else nn.Identity())
        self.view_proj = nn.Sequential(
            nn.LayerNorm(self.feature_dim), nn.Linear(self.feature_dim, fusion_dim)
        )
        self.camera_proj = nn.Linear(CAMERA_FEATURES, fusion_dim)
        self.fusion = nn.Sequential(
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(views * fusion_dim, fusion_dim),
            nn.GELU(),
            nn.LayerNorm(fusion_dim),
        )
        self.class_head = nn.Linear(fusion_dim, num_classes)
        self.position_head = nn.Linear(fusion_dim, 3)

    def forward(
        self, videos: torch.Tensor, cameras: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        batch = videos.shape[0]
        features = self.features(videos).view(batch, self.views, -1)
        fused = self.view_proj(features.float()) + self.camera_proj(cameras)
        fused = self.fusion(fused.flatten(1))
        return self.class_head(fused), self.position_head(fused)

    def clips(self, videos: torch.Tensor) -> torch.Tensor:
        """``(B, V, T, C, H, W)`` -> ``(B*V, C, T, H, W)`` floats in [0, 1], the layout every
        3D-conv stack expects."""
        if videos.shape[1] != self.views:
            raise ValueError(f"model built for {self.views} views, got {videos.shape[1]}")
        x = videos.float() / 255.0 if videos.dtype == torch.uint8 else videos
        return x.flatten(0, 1).permute(0, 2, 1, 3, 4)

    def features(self, videos: torch.Tensor) -> torch.Tensor:
        """Per-view features ``(B*V, feature_dim)``."""
        return self.feature_proj(self.extractor(self.clips(videos)))

    def pretrain_losses(self, videos: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.extractor.pretrain_losses(self.clips(videos))

    def auxiliary_losses(self) -> dict[str, torch.Tensor]:
        return self.extractor.auxiliary_losses()
