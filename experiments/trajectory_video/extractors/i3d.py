"""I3D (Carreira & Zisserman 2017) at small scale: a 2D Inception net inflated to 3D.

Faithful parts: the stem is a 2D conv *inflated* to 3D (:func:`inflate_conv2d`, which
is how I3D bootstraps from ImageNet weights), max-pools that keep time early and pool it
later, and Inception blocks with the four 3D branches (1x1x1; 1x1x1->3x3x3;
1x1x1->3x3x3; 3x3x3 max-pool->1x1x1) concatenated on channels. Scaled down: fewer
blocks and channels (``width``), a 3x5x5 stem instead of 7x7x7.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from shared.base_extractor import VideoExtractor, VideoSpec, grid_pool, register_extractor


def inflate_conv2d(conv: nn.Conv2d, time_kernel: int, time_stride: int = 1) -> nn.Conv3d:
    """A Conv3d whose weights are ``conv``'s repeated over ``time_kernel`` frames / T.

    Dividing by ``time_kernel`` makes the inflated filter answer a static video (every
    frame the same) exactly like the 2D filter answers one frame ("boring video" check).
    """
    conv3d = nn.Conv3d(
        conv.in_channels,
        conv.out_channels,
        kernel_size=(time_kernel, *conv.kernel_size),
        stride=(time_stride, *conv.stride),
        padding=(time_kernel // 2, *conv.padding),
        dilation=(1, *conv.dilation),
        groups=conv.groups,
        bias=conv.bias is not None,
    )
    with torch.no_grad():
        weight = conv.weight.unsqueeze(2).repeat(1, 1, time_kernel, 1, 1) / time_kernel
        conv3d.weight.copy_(weight)
        if conv.bias is not None:
            conv3d.bias.copy_(conv.bias)
    return conv3d


def _unit(cin: int, cout: int, kernel: tuple[int, int, int], stride=(1, 1, 1)) -> nn.Sequential:
    padding = tuple(k // 2 for k in kernel)
    return nn.Sequential(
        nn.Conv3d(cin, cout, kernel, stride, padding, bias=False),
        nn.BatchNorm3d(cout),
        nn.ReLU(inplace=True),
    )


class InceptionBlock3d(nn.Module):
    """Four parallel branches with I3D's channel split (1/4, 1/2, 1/8, 1/8 of the output)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        b0, b1, b2 = cout // 4, cout // 2, cout // 8
        b3 = cout - b0 - b1 - b2
        self.branch0 = _unit(cin, b0, (1, 1, 1))
        self.branch1 = nn.Sequential(_unit(cin, b1 // 2, (1, 1, 1)), _unit(b1 // 2, b1, (3, 3, 3)))
        self.branch2 = nn.Sequential(
            _unit(cin, max(b2 // 2, 4), (1, 1, 1)), _unit(max(b2 // 2, 4), b2, (3, 3, 3))
        )
        self.branch3 = nn.Sequential(
            nn.MaxPool3d(3, stride=1, padding=1), _unit(cin, b3, (1, 1, 1))
        )
        self.out_channels = cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch0(x), self.branch1(x), self.branch2(x), self.branch3(x)], 1)


@dataclass(frozen=True)
class I3DConfig:
    width: int = 16  # stem channels; Inception stages use 2x, 4x, 8x this
    blocks: tuple[int, ...] = (1, 1)  # Inception blocks per stage (I3D: 2, 5, 2)
    grid: tuple[int, int, int] = (2, 2, 2)


@register_extractor("i3d")
class I3D(VideoExtractor):
    config_class = I3DConfig

    def __init__(self, cfg: I3DConfig, spec: VideoSpec) -> None:
        super().__init__()
        stem2d = nn.Conv2d(spec.channels, cfg.width, 5, stride=2, padding=2, bias=False)
        layers: list[nn.Module] = [
            inflate_conv2d(stem2d, time_kernel=3),
            nn.BatchNorm3d(cfg.width),
            nn.ReLU(inplace=True),
            # Like I3D: no temporal pooling in the first pools, so early motion is kept.
            nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
            _unit(cfg.width, 2 * cfg.width, (3, 3, 3)),
        ]
        channels = 2 * cfg.width
        for stage, count in enumerate(cfg.blocks):
            if stage > 0:
                layers.append(nn.MaxPool3d(3, stride=2, padding=1))
            out = channels * 2
            for _ in range(count):
                layers.append(InceptionBlock3d(channels, out))
                channels = out
        self.features = nn.Sequential(*layers)
        self.grid = tuple(cfg.grid)
        self.feature_dim = channels * cfg.grid[0] * cfg.grid[1] * cfg.grid[2]

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return grid_pool(self.features(video), self.grid)
