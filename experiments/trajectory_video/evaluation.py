"""Scoring a model on a split: classification, next-position RMSE in world units, and for a
tokenizer (MagVIT) reconstruction PSNR and codebook usage; forward FLOPs per clip."""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F
from torch.utils.flop_counter import FlopCounterMode

from experiments.trajectory_video import metrics
from experiments.trajectory_video.loader import Prefetcher, TrainingData
from experiments.trajectory_video.trajectories import NUM_CLASSES
from shared.unified_model import UnifiedModel


class _TokenizerScore:
    """Running reconstruction error and token histogram of a tokenizer extractor."""

    def __init__(self, codebook: int) -> None:
        self.sq_err = 0.0
        self.values = 0
        self.counts = np.zeros(codebook, dtype=np.int64)

    def add(self, model: UnifiedModel, videos: torch.Tensor) -> None:
        clips = model.clips(videos)
        recon, tokens, _ = model.extractor.tokenize(clips)  # type: ignore[operator]
        self.sq_err += float(((recon.float() - clips.float()) ** 2).sum())
        self.values += clips.numel()
        self.counts += np.bincount(tokens.flatten().cpu().numpy(), minlength=len(self.counts))

    def result(self, prefix: str) -> dict[str, float]:
        mse = self.sq_err / max(1, self.values)
        freq = self.counts / max(1, self.counts.sum())
        used = freq[freq > 0]
        return {
            f"{prefix}recon_psnr": 10.0 * math.log10(1.0 / mse) if mse > 0 else float("inf"),
            # Share of the 2^bits codes used at least once, and the perplexity of the code
            # histogram: the number of equally likely codes with the same entropy.
            f"{prefix}codebook_usage": float(len(used) / len(freq)),
            f"{prefix}codebook_effective_codes": float(np.exp(-(used * np.log(used)).sum())),
        }


@torch.no_grad()
def evaluate(model: UnifiedModel, data: TrainingData, indices: np.ndarray, *,
             batch_size: int, prefetch: int, device: torch.device, pos_loss_weight: float,
             autocast: Callable[[], AbstractContextManager[Any]],
             prefix: str) -> dict[str, Any]:
    """Metrics of ``model`` on the samples ``indices``, keys prefixed with ``prefix``:
    loss, accuracy, macro-F1, per-class F1, confusion matrix, next-position RMSE in world
    units (over samples and coordinates), and for a tokenizer PSNR and codebook usage."""
    was_training = model.training
    model.eval()
    loader = Prefetcher(data, indices, batch_size, prefetch, pin=device.type == "cuda")
    preds, labels, sq_err, loss_sum = [], [], 0.0, 0.0
    std = torch.as_tensor(data.position_std, device=device)
    codebook = getattr(getattr(model.extractor, "quantizer", None), "codebook", None)
    tokenizer = _TokenizerScore(len(codebook)) if model.extractor.pretrain_epochs else None
    try:
        for cpu_batch in loader:
            batch = cpu_batch.to(device)
            with autocast():
                logits, position = model(batch.videos, batch.cameras)
                if tokenizer is not None:
                    tokenizer.add(model, batch.videos)
            loss = (F.cross_entropy(logits.float(), batch.labels, reduction="sum")
                    + pos_loss_weight * F.mse_loss(position.float(), batch.next_position,
                                                   reduction="none").mean(1).sum())
            loss_sum += float(loss)
            preds.append(logits.argmax(1).cpu())
            labels.append(batch.labels.cpu())
            # Squared error in world units (undo the target normalisation).
            sq_err += float((((position.float() - batch.next_position) * std) ** 2).sum())
    finally:
        loader.close()
        model.train(was_training)
    result: dict[str, Any] = {
        f"{prefix}loss": loss_sum / len(indices),
        **metrics.classification(torch.cat(preds).numpy(), torch.cat(labels).numpy(),
                                 NUM_CLASSES, prefix),
        f"{prefix}next_pos_rmse": math.sqrt(sq_err / (3 * len(indices))),
    }
    if tokenizer is not None:
        result.update(tokenizer.result(prefix))
    return result


@torch.no_grad()
def flops_per_clip(model: UnifiedModel, data: TrainingData, index: int,
                   device: torch.device) -> dict[str, Any]:
    """Forward FLOPs of one clip (all camera views), counted by FlopCounterMode."""
    was_training = model.training
    model.eval()
    batch = data.batch(np.array([index]), pin=False).to(device)
    with FlopCounterMode(display=False) as counter:
        model(batch.videos, batch.cameras)
    model.train(was_training)
    return {
        "flops_per_clip": int(counter.get_total_flops()),
        "flops_method": "torch.utils.flop_counter.FlopCounterMode, one clip (all views), "
        "forward only; counts matmul/conv/attention as 2 FLOPs per multiply-add, "
        "ignores elementwise ops",
    }
