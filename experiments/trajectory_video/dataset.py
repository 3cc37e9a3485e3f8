"""The on-disk dataset: layout, atomic shard writes, completeness checks and reading.

Layout of a dataset directory::

    dataset.json             settings it was generated with (DataConfig + format)
    shards/shard_00000/      one directory per shard, published by an atomic rename
        video.npy            (n, cameras, frames, channels, size, size) uint8
        positions.npy        (n, frames + 1, 3) float32; the last row is the target
        labels.npy           (n,) int64
        intrinsics.npy       (n, cameras, 3, 3) float32
        extrinsics.npy       (n, cameras, 3, 4) float32 (world -> camera)
        colours.npy          (n, channels) float32
        meta.json            written last: sample range and file sizes
    stats.json               position mean/std per axis, class counts
    COMPLETE                 written last of all
    .locks/shard_00000.lock  flock held by whoever writes or cleans up that shard

A shard directory exists only once all its files are written (tmp dir + rename) and is
also checked against the sizes in its meta.json, so a torn shard is never read.
Concurrent writers (Slurm array tasks, a pool) coordinate per shard: a shard's tmp dir
or torn copy is removed only by the holder of that shard's lock.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import shutil
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from experiments.trajectory_video.config import DataConfig

# Bumped whenever the same settings would give other bytes (2: Philox per-sample blocks
# instead of one SeedSequence per sample; 3: backgrounds, distractors, occluders, noise,
# per-sample camera poses; 4: integer blob blending, contiguous runs of sensor noise),
# so a run never resumes another version's shards.
FORMAT = "trajectory-video/4"
ARRAYS = ("video", "positions", "labels", "intrinsics", "extrinsics", "colours")
GENERATE_HINT = "python -m experiments.trajectory_video.generate --out {dir}"


class DatasetError(RuntimeError):
    """The dataset directory is missing, incomplete, or generated with other settings."""


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def shard_name(index: int) -> str:
    return f"shard_{index:05d}"


def settings_dict(cfg: DataConfig) -> dict[str, Any]:
    return {"format": FORMAT, **asdict(cfg)}


def read_format(root: Path) -> str | None:
    """The generator format a dataset directory was started with (None: no dataset.json)."""
    path = root / "dataset.json"
    return str(json.loads(path.read_text()).get("format")) if path.is_file() else None


def read_settings(root: Path) -> DataConfig | None:
    path = root / "dataset.json"
    if not path.is_file():
        return None
    raw = json.loads(path.read_text())
    raw.pop("format", None)
    return DataConfig(**raw)


@dataclass(frozen=True)
class StreamedArray:
    """An array written chunk by chunk, never whole in memory: its ``shape`` and ``dtype``
    and an iterable of its consecutive slices along axis 0 (each may reuse one buffer)."""

    shape: tuple[int, ...]
    dtype: np.dtype
    chunks: Iterable[np.ndarray]

    def __len__(self) -> int:
        return self.shape[0]


def save_streamed(path: Path, array: StreamedArray) -> None:
    """Write ``array`` as the same ``.npy`` bytes ``np.save`` would write for it whole."""
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(array.dtype)),
              "fortran_order": False, "shape": tuple(array.shape)}
    rows = 0
    with open(path, "wb") as handle:
        np.lib.format.write_array_header_1_0(handle, header)
        for chunk in array.chunks:
            if chunk.shape[1:] != array.shape[1:] or chunk.dtype != array.dtype:
                raise ValueError(f"{path.name}: chunk {chunk.dtype} {chunk.shape} does not "
                                 f"fit {array.dtype} {array.shape}")
            handle.write(np.ascontiguousarray(chunk).data)
            rows += len(chunk)
    if rows != array.shape[0]:
        raise ValueError(f"{path.name}: chunks hold {rows} rows, expected {array.shape[0]}")


def write_shard(root: Path, index: int, start: int,
                arrays: Mapping[str, np.ndarray | StreamedArray]) -> None:
    """Write one shard into a private tmp dir, then publish it with one atomic rename."""
    shards = root / "shards"
    final = shards / shard_name(index)
    tmp = shards / f".tmp-{shard_name(index)}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    sizes = {}
    for name in ARRAYS:
        path = tmp / f"{name}.npy"
        array = arrays[name]
        if isinstance(array, StreamedArray):
            save_streamed(path, array)
        else:
            np.save(path, array)
        sizes[name] = path.stat().st_size
    meta = {"shard": index, "start": start, "count": len(arrays["labels"]), "sizes": sizes}
    write_json_atomic(tmp / "meta.json", meta)
    try:
        os.rename(tmp, final)
    except OSError:
        # Another writer published the same (bit-identical) shard first.
        shutil.rmtree(tmp, ignore_errors=True)


def shard_is_complete(root: Path, index: int) -> bool:
    directory = root / "shards" / shard_name(index)
    meta_path = directory / "meta.json"
    if not meta_path.is_file():
        return False
    try:
        meta = json.loads(meta_path.read_text())
        return all(
            (directory / f"{name}.npy").stat().st_size == size
            for name, size in meta["sizes"].items()
        )
    except (OSError, ValueError, KeyError):
        return False


_TMP_NAME = re.compile(r"^\.tmp-shard_(\d+)-")
# flock is not supported by every shared filesystem (Lustre without -o flock): there the
# lock is a no-op, which stays correct for Slurm array tasks because they own disjoint shards.
_NO_FLOCK = frozenset({errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP})


@contextmanager
def shard_lock(root: Path, index: int, blocking: bool = True) -> Iterator[bool]:
    """Hold shard ``index``'s lock; yields False (not waiting) when another process holds
    it and ``blocking`` is off. Lock files are never deleted: unlinking one would let two
    processes lock different files of the same name."""
    locks = root / ".locks"
    locks.mkdir(exist_ok=True)
    with open(locks / f"{shard_name(index)}.lock", "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        except OSError as exc:
            if exc.errno not in _NO_FLOCK:
                raise
        yield True


def remove_shard_tmp(root: Path, index: int) -> None:
    """Remove shard ``index``'s unpublished tmp dirs; call it holding that shard's lock."""
    for entry in (root / "shards").glob(f".tmp-{shard_name(index)}-*"):
        shutil.rmtree(entry, ignore_errors=True)


def remove_stale_tmp(root: Path, shards: Iterable[int]) -> None:
    """Remove tmp dirs of ``shards`` left by writers that died; a shard whose lock is
    held is being written and is left alone."""
    wanted = set(shards)
    directory = root / "shards"
    stale = {int(m.group(1)) for p in directory.glob(".tmp-*")
             if (m := _TMP_NAME.match(p.name))} if directory.is_dir() else set()
    for index in sorted(stale & wanted):
        with shard_lock(root, index, blocking=False) as locked:
            if locked:
                remove_shard_tmp(root, index)


@dataclass(frozen=True)
class Stats:
    position_mean: tuple[float, float, float]
    position_std: tuple[float, float, float]
    class_counts: tuple[int, ...]


def read_stats(root: Path) -> Stats:
    raw = json.loads((root / "stats.json").read_text())
    return Stats(
        tuple(raw["position_mean"]), tuple(raw["position_std"]), tuple(raw["class_counts"])
    )


class TrajectoryVideoData:
    """Read access to a complete dataset; video arrays are memory-mapped, the rest loaded."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        hint = GENERATE_HINT.format(dir=self.root)
        if not (self.root / "COMPLETE").is_file():
            state = "does not exist" if not self.root.exists() else "is incomplete"
            raise DatasetError(f"dataset {self.root} {state}; generate it first: {hint}")
        config = read_settings(self.root)
        if config is None:
            raise DatasetError(f"dataset {self.root} has no dataset.json; regenerate: {hint}")
        self.config = config
        self.stats = read_stats(self.root)
        self._videos: list[np.ndarray] = []
        small: dict[str, list[np.ndarray]] = {n: [] for n in ARRAYS if n != "video"}
        for index in range(config.shards):
            if not shard_is_complete(self.root, index):
                raise DatasetError(f"dataset {self.root}: shard {index} is torn; rerun: {hint}")
            directory = self.root / "shards" / shard_name(index)
            self._videos.append(np.load(directory / "video.npy", mmap_mode="r"))
            for name in small:
                small[name].append(np.load(directory / f"{name}.npy"))
        self.positions = np.concatenate(small["positions"])
        self.labels = np.concatenate(small["labels"])
        self.intrinsics = np.concatenate(small["intrinsics"])
        self.extrinsics = np.concatenate(small["extrinsics"])
        self.colours = np.concatenate(small["colours"])
        self._offsets = np.cumsum([0] + [len(v) for v in self._videos])

    def __len__(self) -> int:
        return int(self._offsets[-1])

    @property
    def video_shape(self) -> tuple[int, ...]:
        return tuple(self._videos[0].shape[1:])

    def gather_videos(self, indices: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Copy the videos of ``indices`` (any order) into ``out`` ``(len, *video_shape)``."""
        indices = np.asarray(indices, dtype=np.int64)
        if out is None:
            out = np.empty((len(indices), *self.video_shape), dtype=np.uint8)
        shard_of = np.searchsorted(self._offsets, indices, side="right") - 1
        for shard in np.unique(shard_of):
            rows = np.nonzero(shard_of == shard)[0]
            local = indices[rows] - self._offsets[shard]
            # Reading rows in increasing file order keeps the mmap access sequential.
            order = np.argsort(local, kind="stable")
            out[rows[order]] = self._videos[shard][local[order]]
        return out
