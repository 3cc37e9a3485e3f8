"""Batches for training and evaluation, assembled ahead of time on a background thread.

The thread gathers videos from the memory-mapped shards (numpy copies release the GIL),
wraps them as tensors (pinned when the model is on CUDA) and queues up to ``prefetch``
batches, so loading overlaps compute. The consumer's blocking time is accumulated in
``wait_seconds`` so the trainer can report the data-wait fraction.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from experiments.trajectory_video.cameras import DISTANCE
from experiments.trajectory_video.dataset import TrajectoryVideoData
from shared.unified_model import camera_features


@dataclass(frozen=True)
class Batch:
    videos: torch.Tensor  # (B, V, T, C, H, W) uint8
    cameras: torch.Tensor  # (B, V, 16) float32
    labels: torch.Tensor  # (B,) int64
    next_position: torch.Tensor  # (B, 3) float32, normalised with the dataset stats

    def to(self, device: torch.device) -> Batch:
        non_blocking = device.type == "cuda"
        return Batch(*(t.to(device, non_blocking=non_blocking) for t in (
            self.videos, self.cameras, self.labels, self.next_position)))


class TrainingData:
    """The dataset plus everything per-sample the model needs besides pixels, as tensors."""

    def __init__(self, data: TrajectoryVideoData) -> None:
        self.data = data
        cfg = data.config
        self.position_mean = np.asarray(data.stats.position_mean, dtype=np.float32)
        self.position_std = np.asarray(data.stats.position_std, dtype=np.float32)
        self.cameras = camera_features(
            torch.from_numpy(data.intrinsics), torch.from_numpy(data.extrinsics), cfg.size,
            DISTANCE,
        ).float()
        target = (data.positions[:, cfg.frames] - self.position_mean) / self.position_std
        self.next_position = torch.from_numpy(target.astype(np.float32))
        self.labels = torch.from_numpy(data.labels.astype(np.int64))

    def batch(self, indices: np.ndarray, pin: bool) -> Batch:
        shape = (len(indices), *self.data.video_shape)
        videos = torch.empty(shape, dtype=torch.uint8, pin_memory=pin)
        self.data.gather_videos(indices, out=videos.numpy())
        idx = torch.from_numpy(indices)
        return Batch(videos, self.cameras[idx], self.labels[idx], self.next_position[idx])


class Prefetcher:
    """Iterates the batches of ``order`` from ``start_batch`` on, ``prefetch`` ahead."""

    def __init__(self, data: TrainingData, order: np.ndarray, batch_size: int,
                 prefetch: int, pin: bool, start_batch: int = 0) -> None:
        self._data = data
        self._chunks = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        self._chunks = self._chunks[start_batch:]
        self._queue: queue.Queue[Batch | BaseException | None] = queue.Queue(max(1, prefetch))
        self._stop = threading.Event()
        self._pin = pin
        self.wait_seconds = 0.0
        self._thread = threading.Thread(target=self._produce, daemon=True)
        self._thread.start()

    def __len__(self) -> int:
        return len(self._chunks)

    def _put(self, item: Batch | BaseException | None) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self) -> None:
        try:
            for chunk in self._chunks:
                if not self._put(self._data.batch(chunk, self._pin)):
                    return
            self._put(None)
        except BaseException as exc:  # surfaced in the consumer thread
            self._put(exc)

    def __iter__(self) -> Iterator[Batch]:
        while True:
            began = time.perf_counter()
            item = self._queue.get()
            self.wait_seconds += time.perf_counter() - began
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
