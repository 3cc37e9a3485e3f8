"""The MAGVIT-v2 tokenizer encoder (Yu et al. 2023) at small scale, used as a feature extractor.

Faithful parts: every convolution is *causal in time* (padding only on the past side,
so output frame k sees frames <= k and the first frame is encoded on its own), residual
blocks with (per-frame) GroupNorm + SiLU, strided causal convs for spatial (and, in chosen stages,
temporal) downsampling, and lookup-free quantisation (LFQ): each latent channel is
quantised to its sign, the token is the integer spelled by those bits (codebook size
2^bits, no embedding table), gradients pass straight through, and training adds a
commitment loss plus the entropy loss (low per-token entropy, high codebook usage).
A decoder mirrors the encoder (nearest upsampling + causal convs) and reconstructs the
clip from the quantised latents. As in the source plan, the tokenizer (encoder, LFQ,
decoder) is trained first on reconstruction plus the LFQ losses for ``tokenizer_epochs``
epochs; then it is frozen and the multi-task heads train on its codes. Features are the
quantised latents embedded by a 1x1x1 conv and pooled on a grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from shared.base_extractor import VideoExtractor, VideoSpec, grid_pool, register_extractor


class CausalConv3d(nn.Module):
    """Conv3d padded by ``kt - 1`` frames in front only: no frame sees the future."""

    def __init__(self, cin: int, cout: int, kernel: int = 3,
                 stride: tuple[int, int, int] = (1, 1, 1)) -> None:
        super().__init__()
        self.time_pad = kernel - 1
        self.space_pad = kernel // 2
        self.conv = nn.Conv3d(cin, cout, kernel, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.space_pad
        return self.conv(F.pad(x, (p, p, p, p, self.time_pad, 0)))


class FrameGroupNorm(nn.GroupNorm):
    """GroupNorm with statistics per frame: video-wide statistics would leak the future
    into every frame and break causality."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, t, h, w = x.shape
        frames = x.transpose(1, 2).reshape(n * t, c, h, w)
        return super().forward(frames).view(n, t, c, h, w).transpose(1, 2)


def _norm(channels: int) -> nn.GroupNorm:
    return FrameGroupNorm(min(8, channels), channels)


class CausalResBlock(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _norm(cin), nn.SiLU(), CausalConv3d(cin, cout),
            _norm(cout), nn.SiLU(), CausalConv3d(cout, cout),
        )
        self.skip = nn.Identity() if cin == cout else nn.Conv3d(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.body(x)


class LookupFreeQuantizer(nn.Module):
    """LFQ: ``sign(z)`` per channel, straight-through gradients, entropy regulariser."""

    def __init__(self, bits: int, temperature: float = 0.1) -> None:
        super().__init__()
        if bits > 14:
            raise ValueError(f"lfq bits {bits} too large for the exact entropy term (<= 14)")
        self.bits = bits
        self.temperature = temperature
        codes = torch.arange(2**bits)
        signs = ((codes[:, None] >> torch.arange(bits)) & 1).float() * 2 - 1
        self.register_buffer("codebook", signs, persistent=False)  # (2^bits, bits)
        self.register_buffer("powers", 2 ** torch.arange(bits), persistent=False)

    def forward(
        self, z: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """``z (N, bits, ...)`` -> quantised ``(N, bits, ...)``, token ids, loss terms."""
        z = z.float()
        quantised = torch.where(z > 0, 1.0, -1.0)
        tokens = ((quantised > 0).long().movedim(1, -1) * self.powers).sum(-1)
        flat = z.movedim(1, -1).reshape(-1, self.bits)
        # Entropies need full precision even when the rest of the model runs in bf16/fp16.
        with torch.autocast(device_type=z.device.type, enabled=False):
            # Distance to each code is -2 z.c + const, so softmax(2 z.c / T) is p(code | z).
            logits = 2.0 * flat @ self.codebook.t() / self.temperature
            probs = logits.softmax(-1)
            per_token = -(probs * logits.log_softmax(-1)).sum(-1).mean()
            mean_probs = probs.mean(0)
            codebook = -(mean_probs * torch.log(mean_probs + 1e-8)).sum()
        losses = {
            "commitment": F.mse_loss(z, quantised),
            "entropy": per_token - codebook,
        }
        straight_through = z + (quantised - z).detach()
        return straight_through, tokens, losses


@dataclass(frozen=True)
class MagVitConfig:
    width: int = 16
    stem_stride: int = 1  # spatial stride of the first conv; 2 makes CPU-scale runs cheap
    multipliers: tuple[int, ...] = (1, 2, 4)  # channels per stage; each stage halves H, W
    temporal_down: tuple[bool, ...] = (False, True, True)  # which stages halve time
    bits: int = 10  # LFQ code bits: codebook of 2^bits tokens
    embed_dim: int = 64
    commitment_weight: float = 0.25
    entropy_weight: float = 0.1
    grid: tuple[int, int, int] = (2, 2, 2)
    tokenizer_epochs: int = 2  # epochs of tokenizer training before the heads train


class MagVitDecoder(nn.Module):
    """Quantised latents ``(N, bits, T', H', W')`` -> clip ``(N, C, T, H, W)`` in [0, 1]."""

    def __init__(self, cfg: MagVitConfig, spec: VideoSpec) -> None:
        super().__init__()
        channels = cfg.width * cfg.multipliers[-1]
        layers: list[nn.Module] = [CausalConv3d(cfg.bits, channels),
                                   CausalResBlock(channels, channels)]
        for mult, down_t in reversed(list(zip(cfg.multipliers, cfg.temporal_down,
                                              strict=True))):
            out = cfg.width * mult
            layers += [nn.Upsample(scale_factor=(2 if down_t else 1, 2, 2), mode="nearest"),
                       CausalConv3d(channels, out), CausalResBlock(out, out)]
            channels = out
        if cfg.stem_stride > 1:
            layers.append(nn.Upsample(scale_factor=(1, cfg.stem_stride, cfg.stem_stride),
                                      mode="nearest"))
        layers += [_norm(channels), nn.SiLU(), CausalConv3d(channels, spec.channels)]
        self.body = nn.Sequential(*layers)
        self.shape = (spec.frames, spec.size, spec.size)

    def forward(self, quantised: torch.Tensor) -> torch.Tensor:
        x = self.body(quantised)
        if tuple(x.shape[2:]) != self.shape:  # odd sizes: strided convs rounded down
            x = F.interpolate(x, size=self.shape, mode="nearest")
        return torch.sigmoid(x)


@register_extractor("magvit")
class MagVitEncoder(VideoExtractor):
    config_class = MagVitConfig

    def __init__(self, cfg: MagVitConfig, spec: VideoSpec) -> None:
        super().__init__()
        if len(cfg.temporal_down) != len(cfg.multipliers):
            raise ValueError("magvit: temporal_down needs one entry per multiplier")
        stem = (1, cfg.stem_stride, cfg.stem_stride)
        layers: list[nn.Module] = [CausalConv3d(spec.channels, cfg.width, stride=stem)]
        channels = cfg.width
        for mult, down_t in zip(cfg.multipliers, cfg.temporal_down, strict=True):
            out = cfg.width * mult
            layers.append(CausalResBlock(channels, out))
            stride = (2 if down_t else 1, 2, 2)
            layers.append(CausalConv3d(out, out, stride=stride))
            channels = out
        layers += [CausalResBlock(channels, channels), _norm(channels), nn.SiLU(),
                   nn.Conv3d(channels, cfg.bits, 1)]
        self.encoder = nn.Sequential(*layers)
        self.quantizer = LookupFreeQuantizer(cfg.bits)
        self.decoder = MagVitDecoder(cfg, spec)
        self.pretrain_epochs = cfg.tokenizer_epochs
        self.frozen = False
        self.embed = nn.Sequential(nn.Conv3d(cfg.bits, cfg.embed_dim, 1), nn.GELU())
        self.cfg = cfg
        self.grid = tuple(cfg.grid)
        self.feature_dim = cfg.embed_dim * cfg.grid[0] * cfg.grid[1] * cfg.grid[2]
        self._losses: dict[str, torch.Tensor] = {}
        self.last_tokens: torch.Tensor | None = None

    def _lfq_losses(self, losses: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"lfq_commitment": self.cfg.commitment_weight * losses["commitment"],
                "lfq_entropy": self.cfg.entropy_weight * losses["entropy"]}

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        if self.frozen:
            with torch.no_grad():
                quantised, tokens, _ = self.quantizer(self.encoder(video))
            self._losses = {}
        else:
            quantised, tokens, losses = self.quantizer(self.encoder(video))
            self._losses = self._lfq_losses(losses)
        self.last_tokens = tokens.detach()
        return grid_pool(self.embed(quantised.to(video.dtype)), self.grid)

    def tokenize(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor,
                                                      dict[str, torch.Tensor]]:
        """``video`` -> (reconstruction, token ids, weighted LFQ losses)."""
        quantised, tokens, losses = self.quantizer(self.encoder(video))
        return self.decoder(quantised), tokens, self._lfq_losses(losses)

    def pretrain_losses(self, video: torch.Tensor) -> dict[str, torch.Tensor]:
        recon, tokens, losses = self.tokenize(video)
        self.last_tokens = tokens.detach()
        return {"reconstruction": F.mse_loss(recon.float(), video.float()), **losses}

    def set_frozen(self, frozen: bool) -> None:
        self.frozen = frozen
        for module in (self.encoder, self.quantizer, self.decoder):
            module.requires_grad_(not frozen)

    def auxiliary_losses(self) -> dict[str, torch.Tensor]:
        return dict(self._losses) if self.training else {}
