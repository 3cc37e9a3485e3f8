"""Dataset generation: determinism, resume, balance, idempotence, projection geometry,
and concurrent task processes (Slurm array tasks) filling one directory."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from experiments.trajectory_video import cameras, generate, render
from experiments.trajectory_video.config import DataConfig
from experiments.trajectory_video.dataset import (
    DatasetError,
    StreamedArray,
    TrajectoryVideoData,
    read_settings,
    save_streamed,
    shard_is_complete,
    shard_lock,
    shard_name,
)

REPO = Path(__file__).resolve().parents[2]
TINY_YAML = str(REPO / "configs" / "data_tiny.yaml")
TASK_ENV = ("WT_RUN_TASK_INDEX", "WT_RUN_TASK_COUNT")


def dataset_bytes(root: Path) -> dict[str, bytes]:
    """Every data file of a dataset (shards and stats) by relative path."""
    files = [*sorted(root.glob("shards/*/*.npy")), root / "stats.json"]
    return {str(p.relative_to(root)): p.read_bytes() for p in files}


def published_files(root: Path) -> dict[str, bytes]:
    """Every file a reader sees: settings, each shard's arrays and meta.json, stats."""
    files = [root / "dataset.json", *sorted(root.glob("shards/*/*")), root / "stats.json"]
    return {str(p.relative_to(root)): p.read_bytes() for p in files}


def generate_command(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "experiments.trajectory_video.generate", "--out", str(out),
            "--config", TINY_YAML, "--quiet", *extra]


def plain_env() -> dict[str, str]:
    """This environment without task variables (the final pass of a Slurm generate)."""
    env = {k: v for k, v in os.environ.items() if k not in TASK_ENV}
    return {**env, "PYTHONPATH": str(REPO)}


def lock_waiters(pid: int) -> bool:
    """Whether ``pid`` is blocked waiting for an flock (the "->" rows of /proc/locks)."""
    rows = Path("/proc/locks").read_text().splitlines()
    return any(row.split()[1] == "->" and row.split()[5] == str(pid) for row in rows)


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


def all_arrays(root: Path) -> dict[str, np.ndarray]:
    """Every per-sample array of a dataset, concatenated over its shards."""
    data = TrajectoryVideoData(root)
    arrays = {name: getattr(data, name) for name in
              ("positions", "labels", "intrinsics", "extrinsics", "colours")}
    return {**arrays, "video": data.gather_videos(np.arange(len(data)))}


def test_any_sample_range_equals_slice_of_full_run(
    tmp_path: Path, tiny_data_config: DataConfig, tiny_dataset: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    full = all_arrays(tiny_dataset)  # shard size 8
    # Another shard size (5: shards straddle the first run's), splat geometry for 6
    # samples at a time and drawing 3 at a time instead of a whole shard: the same
    # samples, bit for bit.
    monkeypatch.setattr(generate, "RENDER_CHUNK_BYTES", 3 * tiny_data_config.bytes_per_sample)
    monkeypatch.setattr(generate, "SPLAT_BATCH", 7)
    other = generate.generate(replace(tiny_data_config, shard_size=5), tmp_path / "k5",
                              workers=0, quiet=True)
    assert other["generated"] == tiny_data_config.samples
    resharded = all_arrays(tmp_path / "k5")
    for name, array in full.items():
        np.testing.assert_array_equal(resharded[name], array, err_msg=name)
    for start, stop in ((3, 17), (13, 14), (0, 24)):
        alone = generate.render_samples(tiny_data_config, start, stop)
        for name, array in full.items():
            np.testing.assert_array_equal(alone[name], array[start:stop],
                                          err_msg=f"{name} [{start}, {stop})")


def test_sample_uniforms_are_fixed_blocks_of_one_stream() -> None:
    whole = generate.sample_uniforms(0, 0, 10)
    assert whole.shape == (10, generate.WORDS_PER_SAMPLE)
    np.testing.assert_array_equal(generate.sample_uniforms(0, 5, 7), whole[5:7])
    assert whole.min() >= 0.0 and whole.max() < 1.0
    # Pinned: the stream is raw Philox4x64 words, so these never change with numpy's
    # distribution code; a change here changes every dataset (bump dataset.FORMAT).
    assert whole[5, :3].tolist() == [0.933810432563599, 0.23591881313708962,
                                     0.26044352005641813]
    assert generate.sample_uniforms(7, 10**6, 10**6 + 1)[0, -1] == 0.48490898158221063
    assert not np.array_equal(generate.sample_uniforms(1, 0, 10), whole)


def test_streamed_array_file_is_byte_identical_to_np_save(tmp_path: Path) -> None:
    array = np.arange(7 * 3 * 5, dtype=np.uint8).reshape(7, 3, 5)
    np.save(tmp_path / "whole.npy", array)
    chunks = (array[a : a + 3] for a in range(0, 7, 3))
    save_streamed(tmp_path / "streamed.npy", StreamedArray(array.shape, array.dtype, chunks))
    assert (tmp_path / "streamed.npy").read_bytes() == (tmp_path / "whole.npy").read_bytes()
    with pytest.raises(ValueError, match="chunks hold 6 rows, expected 7"):
        save_streamed(tmp_path / "short.npy", StreamedArray(array.shape, array.dtype,
                                                            [array[:3], array[3:6]]))


def test_render_is_batch_independent(tiny_data_config: DataConfig) -> None:
    params = generate.sample_params(tiny_data_config, 0, 8)
    video = np.concatenate([c.copy() for c in generate.video_chunks(tiny_data_config, params)])
    for i in (0, 3):
        alone = {k: v[i : i + 1] for k, v in params.items()}
        single = next(generate.video_chunks(tiny_data_config, alone))
        np.testing.assert_array_equal(single[0], video[i])
    # Backgrounds, blobs and noise are all drawn: no flat frames, and the target is brighter
    # than any background.
    assert video.std(axis=(-1, -2)).min() > 1.0
    assert video.max() > render.MAX_LEVEL - render.NOISE_MAX


def test_scene_varies_like_a_real_recording(tiny_data_config: DataConfig) -> None:
    """Per-sample cameras over a real range, varied target sizes, some occluded views."""
    cfg = replace(tiny_data_config, samples=400)
    params = generate.sample_params(cfg, 0, cfg.samples)
    eye = -np.einsum("nvij,nvi->nvj", params["extrinsics"][..., :3],
                     params["extrinsics"][..., 3])  # camera centres in world coordinates
    elevation = np.degrees(np.arcsin(eye[..., 2] / np.linalg.norm(eye, axis=-1)))
    azimuth = np.degrees(np.arctan2(eye[..., 1], eye[..., 0]))
    assert elevation.min() < 15 and elevation.max() > 45
    first_view = (azimuth[:, 0] - 45 + 180) % 360 - 180  # around its rig slot at 45 degrees
    assert first_view.min() < -30 and first_view.max() > 30
    assert params["sigma"].max() > 1.6 * params["sigma"].min()
    _, occluders = render.backgrounds(params["background"], cfg.channels, cfg.size)
    occluded = occluders[..., 1] > occluders[..., 0]
    assert 0.2 < occluded.mean() < 0.6


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

    blob = render.splats(point[None, None].astype(np.float32), batch(intrinsics),
                         batch(extrinsics), np.ones((1, 1), np.float32), np.array([0.1]),
                         np.array([1.0]), np.zeros((1, 1, 4)), size, 3)
    video = blob.draw(np.zeros((1, *blob.shape), dtype=np.uint8))
    frame = video[0, 0, 0, 0]
    row, col = np.unravel_index(frame.argmax(), frame.shape)
    assert (row, col) == (round(expected_v), round(expected_u))


def test_concurrent_array_tasks_then_final_pass_match_one_process(
    tmp_path: Path, tiny_data_config: DataConfig
) -> None:
    cfg = replace(tiny_data_config, samples=40)  # 5 shards: the 3 tasks own 2, 2 and 1
    reference = tmp_path / "one-process"
    generate.generate(cfg, reference, workers=0, quiet=True)
    out = tmp_path / "tasks"
    procs = []
    for i in range(3):  # started together: they race to create the directory
        # Task 0 gets flags; the others the variables wt-run sets on Slurm array tasks.
        flags = ["--task-index", "0", "--task-count", "3"] if i == 0 else []
        env = {**plain_env(), **({} if i == 0 else dict(zip(TASK_ENV, (str(i), "3"),
                                                             strict=True)))}
        procs.append(subprocess.Popen(generate_command(out, "--samples", "40", *flags), env=env,
                                      cwd=REPO, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    outputs = [proc.communicate(timeout=120)[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0, 0], outputs
    assert "task 1/3 wrote 16 samples" in outputs[1]
    assert all(shard_is_complete(out, k) for k in range(cfg.shards))
    assert not (out / "stats.json").exists() and not (out / "COMPLETE").exists()
    with pytest.raises(DatasetError, match="incomplete"):
        TrajectoryVideoData(out)

    final = subprocess.run(generate_command(out, "--samples", "40"), env=plain_env(), cwd=REPO,
                           capture_output=True, text=True, timeout=120)
    assert final.returncode == 0, final.stderr
    assert "wrote 0 samples" in final.stdout  # the tasks left nothing to render
    assert published_files(out) == published_files(reference)
    assert len(TrajectoryVideoData(out)) == 40


def test_lone_task_renders_its_shards_and_plain_run_finishes(
    tmp_path: Path, tiny_data_config: DataConfig, tiny_dataset: Path
) -> None:
    root = tmp_path / "partial"
    task = generate.TaskSlice(1, 3)
    summary = generate.generate(tiny_data_config, root, workers=0, quiet=True, task=task)
    assert summary["status"] == "task done"
    assert summary["generated"] == tiny_data_config.shard_size
    assert [shard_is_complete(root, k) for k in range(3)] == [False, True, False]
    assert not (root / "stats.json").exists() and not (root / "COMPLETE").exists()
    again = generate.generate(tiny_data_config, root, workers=0, quiet=True, task=task)
    assert again["generated"] == 0  # a requeued task resumes

    # Tasks 0 and 2 "failed": the plain run renders their shards and writes the summary.
    final = generate.generate(tiny_data_config, root, workers=2, quiet=True)
    assert final["status"] == "complete"
    assert final["generated"] == 2 * tiny_data_config.shard_size
    assert published_files(root) == published_files(tiny_dataset)


def test_task_flags_override_environment(tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("WT_RUN_TASK_INDEX", "0")
    monkeypatch.setenv("WT_RUN_TASK_COUNT", "3")
    root = tmp_path / "d"
    assert generate.main(["--out", str(root), "--config", TINY_YAML, "--quiet",
                          "--task-index", "2"]) == 0
    assert [shard_is_complete(root, k) for k in range(3)] == [False, False, True]
    assert not (root / "COMPLETE").exists()


@pytest.mark.parametrize(("flags", "env", "message"), [
    (["--task-index", "3", "--task-count", "3"], {}, "task index 3 of 3 tasks is out of range"),
    (["--task-index", "0", "--task-count", "0"], {}, "out of range"),
    (["--task-index", "1"], {}, "pass both --task-index and --task-count"),
    ([], {"WT_RUN_TASK_COUNT": "2"}, "pass both --task-index and --task-count"),
    ([], {"WT_RUN_TASK_INDEX": "0", "WT_RUN_TASK_COUNT": "two"}, "must be a whole number"),
])
def test_bad_task_options_are_one_line_errors(
    tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch,
    flags: list[str], env: dict[str, str], message: str,
) -> None:
    for name in TASK_ENV:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    root = tmp_path / "d"
    assert generate.main(["--out", str(root), "--config", TINY_YAML, "--quiet", *flags]) == 1
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
    assert not root.exists()


def test_prepare_dir_accepts_empty_linked_dir_and_rejects_others(
    tmp_path: Path, tiny_data_config: DataConfig
) -> None:
    # wt-run shares `data` into worktrees as a symlink, possibly to an empty directory.
    target = tmp_path / "target"
    target.mkdir()
    link = tmp_path / "data"
    link.symlink_to(target)
    # Left by a process that is publishing dataset.json at this moment: not foreign.
    (target / ".dataset.json.999.tmp").write_text("{}")
    assert generate.prepare_dir(link, tiny_data_config) is False
    assert link.is_symlink() and read_settings(target) == tiny_data_config
    # A second task starting on it finds identical settings and goes on.
    assert generate.prepare_dir(link, tiny_data_config) is False
    with pytest.raises(DatasetError, match="other settings \\(samples: 24 -> 32\\)"):
        generate.prepare_dir(link, replace(tiny_data_config, samples=32))
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(DatasetError, match="not a dataset"):
        generate.prepare_dir(foreign, tiny_data_config)


def test_incomplete_dataset_of_another_format_is_refused(
    tmp_path: Path, tiny_data_config: DataConfig, tiny_dataset: Path
) -> None:
    root = tmp_path / "old"
    shutil.copytree(tiny_dataset, root)
    settings = json.loads((root / "dataset.json").read_text())
    (root / "dataset.json").write_text(json.dumps({**settings, "format": "trajectory-video/1"}))
    # Complete: still a dataset (nothing is rendered, so nothing is mixed).
    assert generate.generate(tiny_data_config, root, quiet=True)["status"] == "already complete"
    (root / "COMPLETE").unlink()
    shutil.rmtree(root / "shards" / shard_name(1))
    with pytest.raises(DatasetError, match=r"format trajectory-video/1 .* delete it"):
        generate.generate(tiny_data_config, root, quiet=True)
    assert not shard_is_complete(root, 1)


def test_run_waits_for_a_shard_another_process_holds(tmp_path: Path, tiny_dataset: Path) -> None:
    root = tmp_path / "held"
    shutil.copytree(tiny_dataset, root)
    (root / "COMPLETE").unlink()
    (root / "stats.json").unlink()
    shutil.rmtree(root / "shards" / shard_name(1))
    # The tmp dir of a writer still holding shard 1's lock: it must not be swept away.
    live_tmp = root / "shards" / f".tmp-{shard_name(1)}-777"
    live_tmp.mkdir()
    with shard_lock(root, 1) as locked:
        assert locked
        proc = subprocess.Popen(generate_command(root), env=plain_env(), cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 60
        while not lock_waiters(proc.pid) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert proc.poll() is None, proc.communicate()[0]
        assert lock_waiters(proc.pid), "generate never waited for shard 1's lock"
        assert live_tmp.is_dir() and not (root / "COMPLETE").exists()
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, output
    assert not live_tmp.exists()  # stale once the lock was free: removed under the lock
    assert published_files(root) == published_files(tiny_dataset)
