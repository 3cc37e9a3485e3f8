"""The multi-task model: one extractor over every camera view, view fusion, two heads.

Input: videos ``(B, V, T, C, H, W)`` (uint8 or float in [0, 1]) and per-view camera
features ``(B, V, CAMERA_FEATURES)``. The same extractor (shared weights) encodes each
view; each view's features are projected, combined with an embedding of that view's
camera, concatenated across views (view order is the camera rig order) and mixed by an
MLP. Heads: trajectory-class logits ``(B, classes)`` and the next 3D position ``(B, 3)``
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
    ) -> None:
        super().__init__()
        self.extractor = extractor
        self.views = views
        self.view_proj = nn.Sequential(
            nn.LayerNorm(extractor.feature_dim), nn.Linear(extractor.feature_dim, fusion_dim)
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
        batch, views = videos.shape[:2]
        if views != self.views:
            raise ValueError(f"model built for {self.views} views, got {views}")
        x = videos.float() / 255.0 if videos.dtype == torch.uint8 else videos
        # (B, V, T, C, H, W) -> (B*V, C, T, H, W): the layout every 3D-conv stack expects.
        x = x.flatten(0, 1).permute(0, 2, 1, 3, 4)
        features = self.extractor(x).view(batch, views, -1)
        fused = self.view_proj(features.float()) + self.camera_proj(cameras)
        fused = self.fusion(fused.flatten(1))
        return self.class_head(fused), self.position_head(fused)

    def auxiliary_losses(self) -> dict[str, torch.Tensor]:
        return self.extractor.auxiliary_losses()
