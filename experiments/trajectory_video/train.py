"""Training: one extractor in the unified model, with the wt-run worker contract.

    python -m experiments.trajectory_video.train --extractor {i3d|slowfast|transformer|magvit}
        --data DIR [--out DIR] [--config FILE] [--epochs N] [--resume] [--set key=value ...]

Outputs under ``--out`` (default ``$WT_RUN_OUT``): ``metrics.jsonl`` (one line per epoch),
``progress.json`` (kept current, atomic), ``checkpoints/`` (atomic, every
``checkpoint_every`` epochs and on a signal), ``config.json`` and, at the end,
``metrics.json``.

Signals: SIGTERM and SIGUSR1 finish the current step, save a checkpoint (mid-epoch
position included) and exit non-zero, since the training is not finished: code 143
(128 + SIGTERM, "stopped before the end") after SIGTERM; code 75 (EX_TEMPFAIL, "try
again") after SIGUSR1, which Slurm sends before the time limit or a pre-emption: wt-run
requeues a job whose command exits non-zero after USR1 (``requeue: true``), and the
requeued command, run with ``--resume``, continues from the checkpoint. ``--resume`` with
no checkpoint yet starts from scratch, so a job's command can always carry it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

import experiments.trajectory_video.extractors  # noqa: F401  (registers the extractors)
from experiments.trajectory_video import evaluation
from experiments.trajectory_video.checkpoints import (
    list_checkpoints,
    load_newest,
    save_checkpoint,
)
from experiments.trajectory_video.config import (
    CONFIG_DIR,
    ConfigError,
    TrainConfig,
    apply_overrides,
    build,
    load_yaml,
)
from experiments.trajectory_video.dataset import (
    DatasetError,
    TrajectoryVideoData,
    write_json_atomic,
)
from experiments.trajectory_video.loader import Batch, Prefetcher, TrainingData
from experiments.trajectory_video.runtime import StopRequest, select_amp, select_device
from experiments.trajectory_video.splits import split_indices
from experiments.trajectory_video.trajectories import CLASS_NAMES, NUM_CLASSES
from shared.base_extractor import (
    VideoSpec,
    build_extractor,
    registered_extractors,
    split_feature_dim,
)
from shared.unified_model import UnifiedModel

EXIT_TERM = 143  # 128 + SIGTERM: stopped, checkpoint saved
EXIT_TEMPFAIL = 75  # EX_TEMPFAIL after SIGUSR1: checkpoint saved, rerun with --resume
EXIT_CODES_HELP = (
    "exit codes: 0 trained to the end; 1 error; 75 (EX_TEMPFAIL) checkpoint saved after "
    "SIGUSR1 (Slurm time limit or pre-emption near), rerun with --resume; 143 checkpoint "
    "saved after SIGTERM."
)


def learning_rate(cfg: TrainConfig, step: int, total_steps: int, steps_per_epoch: int) -> float:
    """Linear warm-up, then cosine decay to ``min_lr_ratio * lr``; a pure function of step."""
    warmup = int(cfg.warmup_epochs * steps_per_epoch)
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total_steps - warmup)
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return cfg.lr * (cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * cosine)


@dataclass
class RunState:
    """What a checkpoint must restore besides the model and optimiser."""

    epoch: int = 0  # completed epochs
    batch_in_epoch: int = 0  # batches of the current epoch already trained
    global_step: int = 0
    loss_sum: float = 0.0  # running sums of the epoch in progress
    loss_count: int = 0
    train_seconds: float = 0.0
    data_wait_seconds: float = 0.0
    train_clips: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)


class Trainer:
    def __init__(self, args: argparse.Namespace, cfg: TrainConfig, out: Path) -> None:
        self.cfg = cfg
        self.out = out
        self.extractor_name = args.extractor
        if cfg.threads > 0:
            torch.set_num_threads(cfg.threads)
        self.device = select_device(cfg.device)
        self.amp = select_amp(cfg.amp, self.device)
        torch.manual_seed(cfg.seed)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed input shapes: pick fastest kernels
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.data = TrainingData(TrajectoryVideoData(args.data))
        splits = split_indices(len(self.data.data), cfg.val_fraction, cfg.test_fraction)
        self.train_idx, self.val_idx, self.test_idx = splits.train, splits.val, splits.test
        dcfg = self.data.data.config
        spec = VideoSpec(dcfg.channels, dcfg.frames, dcfg.size)
        options, feature_dim = split_feature_dim(cfg.extractors.get(args.extractor, {}))
        extractor = build_extractor(args.extractor, options, spec)
        self.model = UnifiedModel(extractor, dcfg.cameras, NUM_CLASSES, cfg.fusion_dim,
                                  cfg.dropout, feature_dim).to(self.device)
        self.pretrain_epochs = min(extractor.pretrain_epochs, cfg.epochs - 1)
        self.forward_model = torch.compile(self.model) if cfg.compile else self.model
        decay = [p for n, p in self.model.named_parameters() if p.ndim > 1]
        no_decay = [p for n, p in self.model.named_parameters() if p.ndim <= 1]
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": cfg.weight_decay},
             {"params": no_decay, "weight_decay": 0.0}],
            lr=cfg.lr, fused=self.device.type == "cuda",
        )
        self.scaler = torch.amp.GradScaler(enabled=self.amp is torch.float16)
        batches = math.ceil(len(self.train_idx) / cfg.batch_size)
        self.steps_per_epoch = min(batches, cfg.max_steps_per_epoch or batches)
        self.total_steps = self.steps_per_epoch * cfg.epochs
        self.state = RunState()
        self.stop = StopRequest()
        self._last_progress = 0.0

    # ----- persistence -------------------------------------------------------------------
    def checkpoint(self) -> Path:
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "run": self.state.__dict__,
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else None,
            "extractor": self.extractor_name,
            "config": self.cfg.to_dict(),
        }
        return save_checkpoint(self.out, state, self.state.global_step, self.cfg.keep_checkpoints)

    def restore(self) -> bool:
        saved = load_newest(self.out, self.device)
        previous = os.environ.get("WT_RUN_PREVIOUS_OUT")
        if saved is None and previous:
            # A wt-run retry or rerun starts with an empty --out; the attempt before it left
            # its checkpoints there. New checkpoints still go to --out.
            saved = load_newest(Path(previous), self.device)
            if saved is not None:
                print(f"--resume: continuing from the previous attempt's checkpoint in "
                      f"{previous}", flush=True)
        if saved is None:
            return False
        if saved["extractor"] != self.extractor_name:
            raise ConfigError(
                f"{self.out} holds a {saved['extractor']} run, not {self.extractor_name}; "
                "use another --out"
            )
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scaler.load_state_dict(saved["scaler"])
        self.state = RunState(**saved["run"])
        torch.set_rng_state(saved["torch_rng"].cpu())
        if saved["cuda_rng"] is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state_all([s.cpu() for s in saved["cuda_rng"]])
        # metrics.jsonl may hold epochs trained after this checkpoint: rewrite it from the
        # history the checkpoint carries, so every epoch appears exactly once.
        lines = "".join(json.dumps(row) + "\n" for row in self.state.history)
        tmp = self.out / ".metrics.jsonl.tmp"
        tmp.write_text(lines)
        os.replace(tmp, self.out / "metrics.jsonl")
        return True

    def write_progress(self, state: str, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_progress < 1.0:
            return
        self._last_progress = now
        epoch = min(self.state.epoch + (1 if state == "training" else 0), self.cfg.epochs)
        write_json_atomic(self.out / "progress.json", {
            "epoch": epoch, "epochs": self.cfg.epochs,
            "step": self.state.global_step, "steps": self.total_steps, "state": state,
        })

    # ----- steps -------------------------------------------------------------------------
    def _autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=self.amp or torch.float32,
                              enabled=self.amp is not None)

    def pretraining(self) -> bool:
        """Whether the epoch in progress trains the extractor's own objective (a
        tokenizer's reconstruction) rather than the heads."""
        return self.state.epoch < self.pretrain_epochs

    def losses(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if self.pretraining():
            with self._autocast():
                parts = self.model.pretrain_losses(batch.videos)
            return sum(parts.values()), parts  # type: ignore[return-value]
        with self._autocast():
            logits, position = self.forward_model(batch.videos, batch.cameras)
        parts = {
            "cls": F.cross_entropy(logits.float(), batch.labels),
            "pos": F.mse_loss(position.float(), batch.next_position),
        }
        aux = self.model.auxiliary_losses()
        total = parts["cls"] + self.cfg.pos_loss_weight * parts["pos"]
        if aux:
            total = total + self.cfg.aux_loss_weight * sum(aux.values())
        return total, parts

    def train_step(self, batch: Batch) -> float:
        lr = learning_rate(self.cfg, self.state.global_step, self.total_steps,
                           self.steps_per_epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        loss, _ = self.losses(batch)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return float(loss.detach())

    def evaluate(self, split: str = "val") -> dict[str, Any]:
        indices = self.val_idx if split == "val" else self.test_idx
        return evaluation.evaluate(
            self.model, self.data, indices, batch_size=self.cfg.batch_size,
            prefetch=self.cfg.prefetch, device=self.device,
            pos_loss_weight=self.cfg.pos_loss_weight, autocast=self._autocast,
            prefix="val_" if split == "val" else "")

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The epoch's shuffled training order: a function of (seed, epoch) only, so a
        resumed run sees exactly the batches the interrupted one would have."""
        rng = np.random.default_rng([self.cfg.seed, epoch])
        order = rng.permutation(self.train_idx)
        return order[: self.steps_per_epoch * self.cfg.batch_size]

    # ----- loop --------------------------------------------------------------------------
    def run(self) -> int:
        self.model.train()
        st = self.state
        while st.epoch < self.cfg.epochs:
            if self.pretrain_epochs:
                self.model.extractor.set_frozen(not self.pretraining())
            loader = Prefetcher(self.data, self.epoch_order(st.epoch), self.cfg.batch_size,
                                self.cfg.prefetch, pin=self.device.type == "cuda",
                                start_batch=st.batch_in_epoch)
            began = time.perf_counter()
            clips = 0
            try:
                for cpu_batch in loader:
                    batch = cpu_batch.to(self.device)
                    loss = self.train_step(batch)
                    st.loss_sum += loss * len(batch.labels)
                    st.loss_count += len(batch.labels)
                    clips += len(batch.labels)
                    st.batch_in_epoch += 1
                    st.global_step += 1
                    self.write_progress("training")
                    if self.stop.signum is not None:
                        break
            finally:
                loader.close()
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - began
            st.train_seconds += seconds
            st.data_wait_seconds += loader.wait_seconds
            st.train_clips += clips
            if self.stop.signum is not None:
                return self.interrupted()
            self.end_epoch(seconds, loader.wait_seconds, clips)
        return 0

    def end_epoch(self, seconds: float, wait: float, clips: int) -> None:
        st = self.state
        scores = self.evaluate()
        row = {
            "epoch": st.epoch + 1,
            "step": st.global_step,
            "phase": "tokenizer" if self.pretraining() else "heads",
            "train_loss": st.loss_sum / max(1, st.loss_count),
            **{k: v for k, v in scores.items() if isinstance(v, float)},
            "lr": self.optimizer.param_groups[0]["lr"],
            "time": seconds,
            "clips_per_s": clips / seconds if seconds > 0 else 0.0,
            "data_wait_fraction": wait / seconds if seconds > 0 else 0.0,
        }
        st.history.append(row)
        with open(self.out / "metrics.jsonl", "a") as handle:
            handle.write(json.dumps(row) + "\n")
        st.epoch += 1
        st.batch_in_epoch = 0
        st.loss_sum, st.loss_count = 0.0, 0
        print(
            f"epoch {st.epoch}/{self.cfg.epochs} train_loss {row['train_loss']:.4f} "
            f"val_acc {row['val_accuracy']:.3f} val_f1 {row['val_macro_f1']:.3f} "
            f"next_pos_rmse {row['val_next_pos_rmse']:.4f} "
            + (f"recon_psnr {row['val_recon_psnr']:.2f} " if "val_recon_psnr" in row else "")
            + f"{row['clips_per_s']:.1f} clips/s "
            f"data_wait {100 * row['data_wait_fraction']:.1f}%",
            flush=True,
        )
        if st.epoch % self.cfg.checkpoint_every == 0 or st.epoch == self.cfg.epochs:
            self.checkpoint()
        self.write_progress("training" if st.epoch < self.cfg.epochs else "evaluating",
                            force=True)

    def interrupted(self) -> int:
        signum = self.stop.signum
        assert signum is not None
        path = self.checkpoint()
        self.write_progress("interrupted", force=True)
        name = signal.Signals(signum).name
        print(f"{name}: saved {path} at step {self.state.global_step}; continue with --resume",
              flush=True)
        return EXIT_TEMPFAIL if signum == signal.SIGUSR1 else EXIT_TERM

    def finish(self) -> dict[str, Any]:
        if self.pretrain_epochs:
            self.model.extractor.set_frozen(True)
        val = self.evaluate("val")
        test = self.evaluate("test")
        st = self.state
        if self.device.type == "cuda":
            peak, peak_kind = torch.cuda.max_memory_allocated(self.device), "cuda_max_allocated"
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            peak_kind = "process_max_rss"
        test["per_class_f1"] = dict(zip(CLASS_NAMES, test["per_class_f1"], strict=True))
        val.pop("val_per_class_f1")
        val.pop("val_confusion_matrix")
        summary = {
            "extractor": self.extractor_name,
            **test,  # accuracy, macro_f1, next_pos_rmse, ...: the held-out test split
            "class_names": list(CLASS_NAMES),
            "confusion_matrix_axes": "rows: true class, columns: predicted; order "
            + ", ".join(CLASS_NAMES),
            **val,
            "feature_dim": self.model.feature_dim,
            "param_count": sum(p.numel() for p in self.model.parameters()),
            **evaluation.flops_per_clip(self.model, self.data, int(self.val_idx[0]),
                                        self.device),
            "train_time_s": st.train_seconds,
            "train_throughput_clips_per_s": st.train_clips / st.train_seconds
            if st.train_seconds > 0 else 0.0,
            "data_wait_fraction": st.data_wait_seconds / st.train_seconds
            if st.train_seconds > 0 else 0.0,
            "peak_memory_bytes": int(peak),
            "peak_memory_kind": peak_kind,
            "device": str(self.device) if self.device.type == "cpu"
            else torch.cuda.get_device_name(self.device),
            "amp": str(self.amp).replace("torch.", "") if self.amp else "off",
            "epochs": self.cfg.epochs,
            "tokenizer_epochs": self.pretrain_epochs,
            "steps": st.global_step,
            "train_samples": len(self.train_idx),
            "val_samples": len(self.val_idx),
            "test_samples": len(self.test_idx),
        }
        write_json_atomic(self.out / "metrics.json", summary)
        self.write_progress("done", force=True)
        return summary


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m experiments.trajectory_video.train",
                                     description=__doc__.split("\n")[0],
                                     epilog=EXIT_CODES_HELP)
    parser.add_argument("--extractor", required=True, choices=registered_extractors())
    parser.add_argument("--data", required=True, help="dataset directory (from generate)")
    parser.add_argument("--out", help="output directory (default: $WT_RUN_OUT)")
    parser.add_argument("--config", help="training YAML (default: configs/train_default.yaml)")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--resume", action="store_true",
                        help="continue from the newest complete checkpoint in --out "
                        "(none yet: start from scratch)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set lr=3e-4 "
                        "--set extractors.i3d.width=32")
    return parser.parse_args(argv)


def load_config(args: argparse.Namespace) -> TrainConfig:
    path = Path(args.config) if args.config else CONFIG_DIR / "train_default.yaml"
    raw = load_yaml(path) if args.config or path.is_file() else {}
    # `wt-run launch --seeds N` runs seeds 0..N-1 ($WT_RUN_SEED); an explicit --set wins.
    env_seed = os.environ.get("WT_RUN_SEED")
    overrides = ([f"seed={int(env_seed)}"] if env_seed and env_seed.isdigit() else [])
    overrides += list(args.set)
    if args.epochs is not None:
        overrides.append(f"epochs={args.epochs}")
    return build(TrainConfig, apply_overrides(raw, overrides), where=str(path))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out_text = args.out or os.environ.get("WT_RUN_OUT")
    if not out_text:
        print("Error: no output directory: pass --out DIR or set WT_RUN_OUT", file=sys.stderr)
        return 1
    out = Path(out_text)
    trainer: Trainer | None = None
    try:
        cfg = load_config(args)
        out.mkdir(parents=True, exist_ok=True)
        if list_checkpoints(out) and not args.resume:
            raise ConfigError(f"{out} already holds checkpoints; pass --resume to continue "
                              "that run, or use an empty --out")
        trainer = Trainer(args, cfg, out)
        resumed = args.resume and trainer.restore()
        if args.resume and not resumed:
            print(f"--resume: no checkpoint in {out} yet, starting from scratch", flush=True)
        if not resumed:
            (out / "metrics.jsonl").write_text("")
        write_json_atomic(out / "config.json", {"extractor": args.extractor, "data": args.data,
                                                **cfg.to_dict()})
        print(f"training {args.extractor} on {trainer.device} (amp: {trainer.amp or 'off'}), "
              f"{len(trainer.train_idx)} train / {len(trainer.val_idx)} val / "
              f"{len(trainer.test_idx)} test clips, "
              f"{trainer.steps_per_epoch} steps/epoch"
              + (f", resumed at step {trainer.state.global_step}" if resumed else ""),
              flush=True)
        trainer.write_progress("training", force=True)
        code = trainer.run()
        if code == 0 and trainer.stop.signum is not None:
            # The signal came during the last epoch's evaluation: every epoch is trained
            # and checkpointed but metrics.json is missing, so this is no success either.
            code = trainer.interrupted()
        if code != 0:
            return code
        summary = trainer.finish()
    except (ConfigError, DatasetError, ValueError) as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    finally:
        if trainer is not None:
            trainer.stop.restore()
    print(json.dumps({k: summary[k] for k in (
        "accuracy", "macro_f1", "next_pos_rmse", "param_count", "flops_per_clip",
        "train_throughput_clips_per_s", "data_wait_fraction")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
