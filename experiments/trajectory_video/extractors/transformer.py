"""A video transformer with divided space-time attention (TimeSformer, Bertasius et al. 2021).

Faithful parts: tubelet embedding (a Conv3d with kernel = stride = ``tubelet x patch x
patch``, as in ViViT), learned separate spatial and temporal position embeddings, and
pre-norm blocks that apply *temporal* attention (each patch location across time), then
*spatial* attention (all patches of one time step), then an MLP. Attention uses
``scaled_dot_product_attention`` (flash / memory-efficient kernels on GPU). Features are
the final LayerNorm'd tokens pooled on a coarse grid instead of a CLS token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from shared.base_extractor import VideoExtractor, VideoSpec, grid_pool, register_extractor


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"transformer dim {dim} must be divisible by heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, length, dim = x.shape
        q, k, v = self.qkv(x).view(n, length, 3, self.heads, dim // self.heads).unbind(2)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                             v.transpose(1, 2))
        return self.proj(out.transpose(1, 2).reshape(n, length, dim))


class DividedBlock(nn.Module):
    """Temporal attention -> spatial attention -> MLP, each pre-norm with a residual."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm_t, self.attn_t = nn.LayerNorm(dim), Attention(dim, heads)
        self.norm_s, self.attn_s = nn.LayerNorm(dim), Attention(dim, heads)
        self.norm_m = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, s, d = x.shape
        xt = x.transpose(1, 2).reshape(n * s, t, d)
        xt = xt + self.attn_t(self.norm_t(xt))
        x = xt.view(n, s, t, d).transpose(1, 2).reshape(n * t, s, d)
        x = x + self.attn_s(self.norm_s(x))
        x = x + self.mlp(self.norm_m(x))
        return x.view(n, t, s, d)


@dataclass(frozen=True)
class TransformerConfig:
    dim: int = 64
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    patch: int = 4  # pixels per side of a tubelet
    tubelet: int = 2  # frames per tubelet
    grid: tuple[int, int, int] = (2, 2, 2)


@register_extractor("transformer")
class VideoTransformer(VideoExtractor):
    config_class = TransformerConfig

    def __init__(self, cfg: TransformerConfig, spec: VideoSpec) -> None:
        super().__init__()
        if spec.size % cfg.patch or spec.frames % cfg.tubelet:
            raise ValueError(
                f"transformer: size {spec.size} must be divisible by patch {cfg.patch} and "
                f"frames {spec.frames} by tubelet {cfg.tubelet}"
            )
        self.side = spec.size // cfg.patch
        steps = spec.frames // cfg.tubelet
        kernel = (cfg.tubelet, cfg.patch, cfg.patch)
        self.embed = nn.Conv3d(spec.channels, cfg.dim, kernel, stride=kernel)
        self.pos_space = nn.Parameter(torch.zeros(1, 1, self.side * self.side, cfg.dim))
        self.pos_time = nn.Parameter(torch.zeros(1, steps, 1, cfg.dim))
        nn.init.trunc_normal_(self.pos_space, std=0.02)
        nn.init.trunc_normal_(self.pos_time, std=0.02)
        self.blocks = nn.ModuleList(
            DividedBlock(cfg.dim, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth)
        )
        self.norm = nn.LayerNorm(cfg.dim)
        self.grid = tuple(cfg.grid)
        self.feature_dim = cfg.dim * cfg.grid[0] * cfg.grid[1] * cfg.grid[2]

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(video)  # (N, D, T', H', W')
        n, d, t = tokens.shape[:3]
        x = tokens.flatten(3).permute(0, 2, 3, 1) + self.pos_space + self.pos_time
        for block in self.blocks:
            x = block(x)
        x = self.norm(x).permute(0, 3, 1, 2).reshape(n, d, t, self.side, self.side)
        return grid_pool(x, self.grid)
