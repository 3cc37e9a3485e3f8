"""Dataset generation: determinism, resume, balance, idempotence, projection geometry."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from experiments.trajectory_video import cameras, generate, render
from experiments.trajectory_video.config import DataConfig
from experiments.trajectory_video.dataset import (
    DatasetError,
    TrajectoryVideoData,
    shard_is_complete,
    shard_name,
)


def dataset_bytes(root: Path) -> dict[str, bytes]:
    """Every data file of a dataset (shards and stats) by relative path."""
    files = [*sorted(root.glob("shards/*/*.npy")), root / "stats.json"]
    return {str(p.relative_to(root)): p.read_bytes() for p in files}


def test_bit_identical_for_any_worker_count(tmp_path: Path, tiny_data_config: DataConfig,
                                            tiny_dataset: Path) -> None:
    reference = dataset_bytes(tiny_dataset)
    assert len(reference) == 6 * tiny_data_config.shards + 1
    for workers in (1, 2, 4):
        root = tmp_path / f"w{workers}"
        summary = generate.generate(tiny_data_config, root, workers=workers, quiet=True)
        assert summary["workers"] == min(workers, tiny_data_config.shards)
        assert dataset_bytes(root) == reference, f"{workers} workers differ from sequential"


def test_sample_depends_only_on_seed_and_index(tiny_data_config: DataConfig) -> None:
    a = generate.render_shard(tiny_data_config, 1)
    a = {k: v.copy() for k, v in a.items()}
    generate.render_shard(replace(tiny_data_config, shard_size=4), 0)  # dirty nothing shared
    b = generate.render_shard(tiny_data_config, 1)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
    other_seed = generate.render_shard(replace(tiny_data_config, seed=1), 1)
    assert not np.array_equal(a["positions"], other_seed["positions"])


def test_render_is_batch_independent(tiny_data_config: DataConfig) -> None:
    arrays = generate.render_shard(tiny_data_config, 0)
    video = arrays["video"].copy()
    frames = tiny_data_config.frames
    for i in (0, 3):
        single = render.render_batch(
            arrays["positions"][i : i + 1, :frames], arrays["intrinsics"][i : i + 1],
            arrays["extrinsics"][i : i + 1], arrays["colours"][i : i + 1],
            tiny_data_config.size,
        )
        np.testing.assert_array_equal(single[0], video[i])
    assert video.max() > 100  # the splats are actually drawn


def test_resume_after_interruption(tmp_path: Path, tiny_data_config: DataConfig,
                                   tiny_dataset: Path) -> None:
    root = tmp_path / "resume"
    shutil.copytree(tiny_dataset, root)
    # Simulate a run killed mid-way: no COMPLETE/stats, one shard never published (its
    # tmp dir left behind), one shard torn (published dir, truncated file).
    (root / "COMPLETE").unlink()
    (root / "stats.json").unlink()
    missing = root / "shards" / shard_name(0)
    missing.rename(root / "shards" / f".tmp-{shard_name(0)}-999")
    torn = root / "shards" / shard_name(2) / "video.npy"
    torn.write_bytes(torn.read_bytes()[:100])
    assert not shard_is_complete(root, 0) and not shard_is_complete(root, 2)
    assert shard_is_complete(root, 1)
    with pytest.raises(DatasetError, match="generate"):
        TrajectoryVideoData(root)

    summary = generate.generate(tiny_data_config, root, workers=0, quiet=True)
    assert summary["generated"] == 2 * tiny_data_config.shard_size  # shard 1 was skipped
    assert dataset_bytes(root) == dataset_bytes(tiny_dataset)
    assert not list((root / "shards").glob(".tmp-*"))


def test_classes_balanced_and_stats(tiny_dataset: Path, tiny_data_config: DataConfig) -> None:
    data = TrajectoryVideoData(tiny_dataset)
    counts = np.bincount(data.labels, minlength=4)
    assert counts.tolist() == [tiny_data_config.samples // 4] * 4
    stats = json.loads((tiny_dataset / "stats.json").read_text())
    assert stats["class_counts"] == counts.tolist()
    positions = data.positions.reshape(-1, 3).astype(np.float64)
    np.testing.assert_allclose(stats["position_mean"], positions.mean(0), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(stats["position_std"], positions.std(0), rtol=1e-6)
    assert data.positions.shape == (tiny_data_config.samples, tiny_data_config.frames + 1, 3)
    assert len(data) == tiny_data_config.samples
    assert data.video_shape == (4, tiny_data_config.frames, 3, 16, 16)


def test_cli_idempotent_and_rejects_other_settings(tmp_path: Path, capsys,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    args = ["--config", "configs/data_tiny.yaml", "--samples", "8", "--quiet"]
    monkeypatch.chdir(Path(__file__).resolve().parents[2])
    monkeypatch.setenv("WT_RUN_DATA", str(tmp_path / "d"))
    assert generate.main(args) == 0  # --out from $WT_RUN_DATA
    marker = (tmp_path / "d" / "COMPLETE").stat().st_mtime_ns
    assert generate.main(args) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert (tmp_path / "d" / "COMPLETE").stat().st_mtime_ns == marker
    assert generate.main([*args, "--size", "24"]) == 1
    assert "other settings (size: 16 -> 24)" in capsys.readouterr().err
    monkeypatch.delenv("WT_RUN_DATA")
    assert generate.main(args) == 1
    assert "--out" in capsys.readouterr().err


def test_auto_workers_sequential_for_small_jobs(tiny_data_config: DataConfig) -> None:
    assert generate.resolve_workers("auto", tiny_data_config, tiny_data_config.shards) == 0
    big = DataConfig(samples=100_000, size=64, frames=32, shard_size=128)
    cpus = len(os.sched_getaffinity(0))
    assert generate.resolve_workers("auto", big, big.shards) == (cpus if cpus > 1 else 0)
    assert generate.resolve_workers("3", big, 2) == 2
    assert generate.resolve_workers("0", big, 5) == 0


def test_known_point_projects_to_expected_pixel() -> None:
    size = 64
    extrinsics = cameras.look_at(np.array([4.0, 0.0, 0.0]), np.zeros(3), np.array([0, 0, 1.0]))
    focal = cameras.base_focal(size)
    intrinsics = cameras.intrinsics_matrix(focal, size)
    point = np.array([0.0, 0.5, 0.25])
    # Camera on +x looking at the origin: world +y is image right, world +z is image up.
    expected_u = focal * 0.5 / 4.0 + (size - 1) / 2
    expected_v = -focal * 0.25 / 4.0 + (size - 1) / 2
    batch = lambda a: a[None, None].astype(np.float32)  # noqa: E731
    u, v, depth = cameras.project(point[None, None].astype(np.float32), batch(intrinsics),
                                  batch(extrinsics))
    assert u.item() == pytest.approx(expected_u, abs=1e-4)
    assert v.item() == pytest.approx(expected_v, abs=1e-4)
    assert depth.item() == pytest.approx(4.0)
    centre_u, centre_v, _ = cameras.project(np.zeros((1, 1, 3), np.float32), batch(intrinsics),
                                            batch(extrinsics))
    assert (centre_u.item(), centre_v.item()) == pytest.approx(((size - 1) / 2,) * 2)

    video = render.render_batch(point[None, None].astype(np.float32), batch(intrinsics),
                                batch(extrinsics), np.ones((1, 1), np.float32), size)
    frame = video[0, 0, 0, 0]
    row, col = np.unravel_index(frame.argmax(), frame.shape)
    assert (row, col) == (round(expected_v), round(expected_u))
