"""Training end to end on the tiny dataset: outputs, resume, SIGTERM and SIGUSR1 in a real
subprocess and their exit codes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from experiments.trajectory_video import train
from experiments.trajectory_video.checkpoints import list_checkpoints

REPO = Path(__file__).resolve().parents[2]
TINY = str(REPO / "configs" / "train_tiny.yaml")


def run_train(data: Path, out: Path, *extra: str) -> int:
    return train.main(["--extractor", "i3d", "--data", str(data), "--out", str(out),
                       "--config", TINY, *extra])


def final_weights(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(list_checkpoints(out)[-1], weights_only=False)["model"]


def start_train(data: Path, out: Path, *extra: str) -> subprocess.Popen[str]:
    """Train in a real subprocess; returns once its signal handlers are installed."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "experiments.trajectory_video.train", "--extractor", "i3d",
         "--data", str(data), "--out", str(out), "--config", TINY, *extra],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    # progress.json first appears after the handlers are installed and before step 1.
    while not (out / "progress.json").exists() and proc.poll() is None:
        time.sleep(0.005)
    return proc


def assert_all_close(left: dict[str, torch.Tensor], right: dict[str, torch.Tensor]) -> None:
    for name, value in right.items():
        torch.testing.assert_close(left[name], value, rtol=0, atol=0, msg=name)


def test_train_checkpoint_resume_metrics(tmp_path: Path, tiny_dataset: Path) -> None:
    out = tmp_path / "run"
    assert run_train(tiny_dataset, out, "--epochs", "1") == 0
    assert len(list_checkpoints(out)) == 1
    assert run_train(tiny_dataset, out, "--epochs", "1") == 1  # refuses to clobber a run
    assert run_train(tiny_dataset, out, "--epochs", "2", "--resume") == 0

    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    for key in ("train_loss", "val_loss", "val_accuracy", "val_macro_f1",
                "val_next_pos_rmse", "lr", "time", "data_wait_fraction"):
        assert key in rows[-1]
    summary = json.loads((out / "metrics.json").read_text())
    for key in ("accuracy", "macro_f1", "confusion_matrix", "next_pos_rmse", "val_accuracy",
                "val_macro_f1", "val_next_pos_rmse", "param_count", "feature_dim",
                "flops_per_clip", "flops_method", "train_time_s",
                "train_throughput_clips_per_s", "peak_memory_bytes", "device"):
        assert key in summary
    # accuracy and the confusion matrix are the held-out test split's, apart from val.
    matrix = summary["confusion_matrix"]
    assert len(matrix) == 4 and sum(map(sum, matrix)) == summary["test_samples"]
    assert summary["train_samples"] + summary["val_samples"] + summary["test_samples"] == 24
    assert summary["flops_per_clip"] > 0 and summary["param_count"] > 0
    assert summary["device"] == "cpu"
    progress = json.loads((out / "progress.json").read_text())
    assert progress["epoch"] == progress["epochs"] == 2
    assert progress["step"] == progress["steps"] and progress["state"] == "done"


def test_missing_dataset_is_one_line_error(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("WT_RUN_OUT", str(tmp_path / "out"))  # --out defaults to it
    code = train.main(["--extractor", "magvit", "--data", str(tmp_path / "nope")])
    err = capsys.readouterr().err.strip()
    assert code == 1 and "\n" not in err
    assert "experiments.trajectory_video.generate" in err


def test_resume_continues_from_the_previous_attempt(tmp_path: Path, tiny_dataset: Path,
                                                    monkeypatch, capsys) -> None:
    """A wt-run retry starts with an empty --out; --resume finds the earlier attempt's
    checkpoint through WT_RUN_PREVIOUS_OUT and writes on in the new --out."""
    first, second = tmp_path / "attempts" / "1" / "out", tmp_path / "out"
    assert run_train(tiny_dataset, first, "--epochs", "1") == 0
    monkeypatch.setenv("WT_RUN_PREVIOUS_OUT", str(first))
    assert run_train(tiny_dataset, second, "--epochs", "2", "--resume") == 0
    assert "previous attempt's checkpoint" in capsys.readouterr().out
    rows = [json.loads(line) for line in (second / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert len(list_checkpoints(first)) == 1 and list_checkpoints(second)


def test_sigterm_checkpoints_and_resume_matches_uninterrupted(
    tmp_path: Path, tiny_dataset: Path
) -> None:
    epochs = ["--epochs", "4"]
    interrupted = tmp_path / "interrupted"
    proc = start_train(tiny_dataset, interrupted, *epochs)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == train.EXIT_TERM, output
    assert "SIGTERM: saved" in output
    assert len(list_checkpoints(interrupted)) == 1
    progress = json.loads((interrupted / "progress.json").read_text())
    assert progress["state"] == "interrupted" and progress["step"] < progress["steps"]
    assert not (interrupted / "metrics.json").exists()

    assert run_train(tiny_dataset, interrupted, *epochs, "--resume") == 0
    straight = tmp_path / "straight"
    assert run_train(tiny_dataset, straight, *epochs) == 0
    assert_all_close(final_weights(interrupted), final_weights(straight))
    lines = (interrupted / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2, 3, 4]


def test_sigusr1_checkpoints_and_exits_tempfail_then_resumes(
    tmp_path: Path, tiny_dataset: Path
) -> None:
    """Slurm's warning before the time limit: unfinished, so never exit 0 (wt-run would
    call it succeeded and not requeue it)."""
    out = tmp_path / "preempted"
    proc = start_train(tiny_dataset, out, "--epochs", "2")
    proc.send_signal(signal.SIGUSR1)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == train.EXIT_TEMPFAIL == 75, output
    assert "SIGUSR1: saved" in output and "--resume" in output
    assert len(list_checkpoints(out)) == 1
    progress = json.loads((out / "progress.json").read_text())
    assert progress["state"] == "interrupted" and progress["step"] < progress["steps"]
    assert not (out / "metrics.json").exists()

    assert run_train(tiny_dataset, out, "--epochs", "2", "--resume") == 0
    assert (out / "metrics.json").exists()
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2]


def test_signal_during_last_evaluation_is_not_success(
    tmp_path: Path, tiny_dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """All epochs trained, but metrics.json is not written yet: still exit 75, and the
    resumed run only evaluates and writes it."""
    evaluate = train.Trainer.evaluate

    def evaluate_then_usr1(self: train.Trainer) -> dict[str, object]:
        result = evaluate(self)
        if self.state.epoch + 1 == self.cfg.epochs:  # the last epoch's evaluation
            os.kill(os.getpid(), signal.SIGUSR1)
        return result

    monkeypatch.setattr(train.Trainer, "evaluate", evaluate_then_usr1)
    out = tmp_path / "late"
    assert run_train(tiny_dataset, out, "--epochs", "1") == train.EXIT_TEMPFAIL
    assert not (out / "metrics.json").exists()
    monkeypatch.setattr(train.Trainer, "evaluate", evaluate)
    assert run_train(tiny_dataset, out, "--epochs", "1", "--resume") == 0
    assert json.loads((out / "metrics.json").read_text())["steps"] > 0
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1


def test_resume_without_checkpoint_starts_from_scratch(
    tmp_path: Path, tiny_dataset: Path, capsys
) -> None:
    """A requeued job's command always carries --resume, also on its first run."""
    fresh = tmp_path / "fresh"
    assert run_train(tiny_dataset, fresh, "--epochs", "1", "--resume") == 0
    assert "no checkpoint in" in capsys.readouterr().out
    straight = tmp_path / "straight"
    assert run_train(tiny_dataset, straight, "--epochs", "1") == 0
    assert_all_close(final_weights(fresh), final_weights(straight))
    assert len((fresh / "metrics.jsonl").read_text().splitlines()) == 1


def test_help_documents_exit_codes(capsys) -> None:
    with pytest.raises(SystemExit):
        train.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "75 (EX_TEMPFAIL) checkpoint saved after SIGUSR1" in text
    assert "143 checkpoint saved after SIGTERM" in text
    assert "75 (EX_TEMPFAIL" in train.__doc__


@pytest.mark.parametrize("extractor", ["slowfast", "transformer", "magvit"])
def test_other_extractors_train_end_to_end(tmp_path: Path, tiny_dataset: Path,
                                           extractor: str) -> None:
    out = tmp_path / extractor
    code = train.main(["--extractor", extractor, "--data", str(tiny_dataset), "--out", str(out),
                       "--config", TINY, "--epochs", "1", "--set", "max_steps_per_epoch=2"])
    assert code == 0
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["extractor"] == extractor and summary["steps"] == 2


def test_magvit_trains_its_tokenizer_first_then_the_heads(tmp_path: Path,
                                                          tiny_dataset: Path) -> None:
    out = tmp_path / "magvit"
    assert train.main(["--extractor", "magvit", "--data", str(tiny_dataset), "--out", str(out),
                       "--config", TINY, "--epochs", "2"]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["phase"] for r in rows] == ["tokenizer", "heads"]
    weights = [torch.load(p, weights_only=False)["model"] for p in list_checkpoints(out)]
    # The heads epoch leaves the tokenizer (encoder, decoder) alone and trains the heads.
    for name in ("extractor.encoder.0.conv.weight", "extractor.decoder.body.0.conv.weight"):
        torch.testing.assert_close(weights[0][name], weights[1][name], rtol=0, atol=0)
    assert not torch.equal(weights[0]["class_head.weight"], weights[1]["class_head.weight"])
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["tokenizer_epochs"] == 1
    assert 5.0 < summary["val_recon_psnr"] < 60.0
    assert 0.0 < summary["val_codebook_usage"] <= 1.0
    assert 1.0 <= summary["val_codebook_effective_codes"] <= 16.0  # 4 bits: 16 codes


def test_feature_dim_projects_the_features(tmp_path: Path, tiny_dataset: Path) -> None:
    out = tmp_path / "projected"
    assert train.main(["--extractor", "i3d", "--data", str(tiny_dataset), "--out", str(out),
                       "--config", TINY, "--epochs", "1", "--set", "max_steps_per_epoch=1",
                       "--set", "extractors.i3d.feature_dim=24"]) == 0
    assert json.loads((out / "metrics.json").read_text())["feature_dim"] == 24


def test_wt_run_seed_sets_the_training_seed_unless_set_explicitly(monkeypatch) -> None:
    from experiments.trajectory_video.train import load_config, parse_args

    monkeypatch.setenv("WT_RUN_SEED", "2")
    assert load_config(parse_args(["--extractor", "i3d", "--data", "d"])).seed == 2
    explicit = parse_args(["--extractor", "i3d", "--data", "d", "--set", "seed=7"])
    assert load_config(explicit).seed == 7
    monkeypatch.delenv("WT_RUN_SEED")
    assert load_config(parse_args(["--extractor", "i3d", "--data", "d"])).seed == 0
