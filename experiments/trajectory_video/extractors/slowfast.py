"""SlowFast (Feichtenhofer et al. 2019) at small scale.

Faithful parts: a Slow pathway on every ``alpha``-th frame with many channels and
temporal kernels only in later stages ("non-degenerate" temporal convs), a Fast
pathway on all frames with ``1/beta_inv`` the channels and temporal kernels everywhere,
no temporal downsampling in either, and lateral Fast->Slow connections after the stem
and each stage (time-strided 5x1x1 conv, stride ``alpha``, 2x the fast channels,
concatenated into Slow). Both pathways are pooled and concatenated at the end.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from shared.base_extractor import VideoExtractor, VideoSpec, grid_pool, register_extractor


class ResBlock3d(nn.Module):
    """Residual block: (kt x 1 x 1) conv then (1 x 3 x 3) conv, as in SlowFast's ResNet."""

    def __init__(self, cin: int, cout: int, temporal_kernel: int, spatial_stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv3d(cin, cout, (temporal_kernel, 1, 1), padding=(temporal_kernel // 2, 0, 0),
                      bias=False),
            nn.BatchNorm3d(cout),
            nn.ReLU(inplace=True),
            nn.Conv3d(cout, cout, (1, 3, 3), stride=(1, spatial_stride, spatial_stride),
                      padding=(0, 1, 1), bias=False),
            nn.BatchNorm3d(cout),
        )
        self.shortcut: nn.Module = nn.Identity()
        if cin != cout or spatial_stride != 1:
            self.shortcut = nn.Sequential(
                nn.Conv3d(cin, cout, 1, stride=(1, spatial_stride, spatial_stride), bias=False),
                nn.BatchNorm3d(cout),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


class Lateral(nn.Module):
    """Fast -> Slow fusion: a 5x1x1 conv with temporal stride alpha, 2x the fast channels."""

    def __init__(self, fast_channels: int, alpha: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(fast_channels, 2 * fast_channels, (5, 1, 1), stride=(alpha, 1, 1),
                              padding=(2, 0, 0), bias=False)
        self.out_channels = 2 * fast_channels

    def forward(self, slow: torch.Tensor, fast: torch.Tensor) -> torch.Tensor:
        return torch.cat([slow, self.conv(fast)], dim=1)


@dataclass(frozen=True)
class SlowFastConfig:
    alpha: int = 4  # frame-rate ratio fast/slow
    beta_inv: int = 4  # channel ratio slow/fast (the paper's beta = 1/8)
    width: int = 16  # slow stem channels; stages double it
    stages: int = 3
    grid: tuple[int, int, int] = (2, 2, 2)


@register_extractor("slowfast")
class SlowFast(VideoExtractor):
    config_class = SlowFastConfig

    def __init__(self, cfg: SlowFastConfig, spec: VideoSpec) -> None:
        super().__init__()
        if spec.frames < cfg.alpha:
            raise ValueError(f"slowfast needs frames >= alpha ({cfg.alpha}), got {spec.frames}")
        self.alpha = cfg.alpha
        slow_c, fast_c = cfg.width, max(cfg.width // cfg.beta_inv, 2)

        def stem(cout: int, temporal: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv3d(spec.channels, cout, (temporal, 5, 5), stride=(1, 2, 2),
                          padding=(temporal // 2, 2, 2), bias=False),
                nn.BatchNorm3d(cout),
                nn.ReLU(inplace=True),
                nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
            )

        self.slow_stem = stem(slow_c, temporal=1)
        self.fast_stem = stem(fast_c, temporal=5)
        self.laterals = nn.ModuleList([Lateral(fast_c, cfg.alpha)])
        self.slow_stages = nn.ModuleList()
        self.fast_stages = nn.ModuleList()
        slow_in = slow_c + self.laterals[0].out_channels
        for stage in range(cfg.stages):
            stride = 1 if stage == 0 else 2
            slow_out, fast_out = slow_c * 2 ** (stage + 1), fast_c * 2 ** (stage + 1)
            # Slow uses temporal kernels only from the second stage on (res4/res5 in the
            # paper); Fast uses them everywhere.
            self.slow_stages.append(ResBlock3d(slow_in, slow_out, 1 if stage == 0 else 3, stride))
            self.fast_stages.append(ResBlock3d(fast_c * 2**stage, fast_out, 3, stride))
            lateral_out = 0
            if stage < cfg.stages - 1:
                self.laterals.append(Lateral(fast_out, cfg.alpha))
                lateral_out = self.laterals[-1].out_channels
            slow_in = slow_out + lateral_out
        self.grid = tuple(cfg.grid)
        cells = cfg.grid[0] * cfg.grid[1] * cfg.grid[2]
        self.feature_dim = (slow_out + fast_out) * cells

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        slow = self.slow_stem(video[:, :, :: self.alpha])
        fast = self.fast_stem(video)
        slow = self.laterals[0](slow, fast)
        for stage, (slow_block, fast_block) in enumerate(
            zip(self.slow_stages, self.fast_stages, strict=True)
        ):
            slow, fast = slow_block(slow), fast_block(fast)
            if stage + 1 < len(self.laterals):
                slow = self.laterals[stage + 1](slow, fast)
        return torch.cat([grid_pool(slow, self.grid), grid_pool(fast, self.grid)], dim=1)
