"""Slurm hosts end to end against a real single-node Slurm (tests/servers/slurm.py): the CLI
submits, watches, stops and reads logs of workers through a `via: local` login node."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers.slurm import SlurmCluster
from tests.slurm.helpers import WtRun, make_project, wait_file

pytestmark = pytest.mark.slurm


@pytest.fixture
def cluster(slurm_cluster: SlurmCluster, monkeypatch: pytest.MonkeyPatch
            ) -> Iterator[SlurmCluster]:
    """The session's cluster, selected for every Slurm client wt-run runs (via: local)."""
    for key in list(os.environ):
        if key.startswith(("SLURM_", "SBATCH_", "SQUEUE_")):
            monkeypatch.delenv(key)
    monkeypatch.setenv("SLURM_CONF", str(slurm_cluster.conf_path))
    yield slurm_cluster
    slurm_cluster.cancel_all()


def test_success_failure_logs_and_layout(cluster: SlurmCluster, tmp_path: Path) -> None:
    root = tmp_path / "shared"
    wt = WtRun(make_project(tmp_path, {"good": {"branch": "exp/good", "vars": {"mode": "ok"}},
                                       "bad": {"branch": "exp/bad", "vars": {"mode": "fail"}}},
                            root=root))
    wt("launch", "--branches", "good", "bad")
    ws = wt.wait(lambda ws: all(w["state"] in ("succeeded", "failed") for w in ws.values()))
    # Slurm's word when the exit file appeared: the job may still be in its epilogue.
    assert ws["good"]["state"] == "succeeded"
    assert ws["good"]["scheduler_state"] in ("COMPLETING", "COMPLETED")
    assert ws["bad"]["state"] == "failed" and ws["bad"]["exit_code"] == 3
    assert ws["bad"]["scheduler_state"] in ("COMPLETING", "FAILED")
    assert ws["good"]["job_id"] and ws["good"]["job_id"] != ws["bad"]["job_id"]
    # Worktrees and worker files live under the host's root on the shared filesystem.
    assert ws["good"]["worktree"] == str(root / "worktrees" / "good")
    assert (root / "worktrees" / "good" / "worker.py").is_file()
    assert ws["good"]["log"].startswith(str(root / "runs"))
    # Slurm wrote the job's output to the worker's own log: `logs` reads it like elsewhere.
    assert "hello from good" in wt("logs", "good")
    assert "failing on purpose" in wt("logs", "bad")
    info = cluster.job_info(ws["good"]["job_id"])
    assert info is None or info["StdOut"] == ws["good"]["log"]


def test_pending_reason_and_stop(cluster: SlurmCluster, tmp_path: Path) -> None:
    root = tmp_path / "shared"
    wt = WtRun(make_project(tmp_path, {
        "sleeper": {"branch": "exp/sleeper", "vars": {"mode": "sleep"}},
        "held": {"branch": "exp/held", "vars": {"mode": "ok"},
                 "slurm": {"sbatch_args": ["--hold"]}},
    }, root=root))
    wt("launch", "--branches", "sleeper", "held")
    ws = wt.wait_states({"sleeper": "running", "held": "pending"})
    assert ws["held"]["reason"] == "JobHeldUser"
    assert ws["held"]["scheduler_state"] == "PENDING"
    wait_file(Path(ws["sleeper"]["out"]) / "started")
    out = wt("stop", "--all")
    assert "sleeper" in out and "held" in out
    ws = wt.wait_states({"sleeper": "stopped", "held": "stopped"})
    assert ws["sleeper"]["scheduler_state"] == "CANCELLED"
    assert cluster.job_state(ws["held"]["job_id"]) in (None, "CANCELLED")
    # Terminal states stay.
    assert {n: w["state"] for n, w in wt.workers().items()} == {"sleeper": "stopped",
                                                                "held": "stopped"}


def test_status_after_slurm_forgot_the_jobs(cluster: SlurmCluster, tmp_path: Path) -> None:
    """MinJobAge is 5 s in the fixture: once Slurm purged a job, the exit file decides; a job
    whose wrapper died without one reads lost."""
    wt = WtRun(make_project(tmp_path, {
        "good": {"branch": "exp/good", "vars": {"mode": "ok"}},
        "gone": {"branch": "exp/gone", "vars": {"mode": "killwrapper"}},
    }, root=tmp_path / "shared"))
    wt("launch", "--branches", "good", "gone")
    manifest = json.loads(next((tmp_path / "repo/.wt-run/runs").glob("*/manifest.json"))
                          .read_text())
    jobs = {n: w["job_id"] for n, w in manifest["workers"].items()}
    # No `status` before the purge: it would cache the terminal state seen then.
    cluster.wait_job_state(jobs["good"], {"COMPLETED"})
    cluster.wait_job_state(jobs["gone"], {"FAILED"})
    from tests.servers import _proc

    assert _proc.wait_until(lambda: all(cluster.job_info(j) is None for j in jobs.values()),
                            120, interval=1.0), "Slurm never purged the jobs"
    ws = wt.workers()
    assert ws["good"]["state"] == "succeeded" and ws["good"]["exit_code"] == 0
    assert ws["good"]["scheduler_state"] is None
    assert ws["gone"]["state"] == "lost"
    assert "no longer knows" in ws["gone"]["reason"]


@pytest.mark.parametrize("requeue", [True, False])
def test_usr1_checkpoint(cluster: SlurmCluster, tmp_path: Path, requeue: bool) -> None:
    """The warning signal reaches the command (not its shell): it checkpoints; with
    requeue: true the job goes back to the queue and the next run resumes."""
    wt = WtRun(make_project(tmp_path, {"train": {"branch": "exp/t", "vars": {"mode": "ckpt"}}},
                            root=tmp_path / "shared", host={"requeue": requeue,
                                                             "signal": "USR1@50"}))
    wt("launch", "--branches", "train")
    ws = wt.wait_states({"train": "running"})
    out = Path(ws["train"]["out"])
    wait_file(out / "started")
    job = ws["train"]["job_id"]
    # What Slurm does at --signal=B:USR1@50 before the time limit, delivered now.
    cluster.run("scancel", "--signal=USR1", "--batch", job)
    wait_file(out / "checkpoint")
    assert (out / "checkpoint").read_text() == "step-7"
    if not requeue:
        ws = wt.wait_states({"train": "failed"})
        assert ws["train"]["exit_code"] == 3
        return
    # Requeued: Slurm holds it for the credential lifetime (BeginTime; 10 s in the test
    # cluster, 120 s by default); it must never read as ended meanwhile.
    seen: list[str] = []

    def held(ws: dict) -> bool:
        seen.append(ws["train"]["state"])
        # Right after the requeue Slurm may say PENDING with no reason yet; then BeginTime.
        return (ws["train"]["scheduler_state"] == "PENDING"
                and ws["train"]["reason"] == "BeginTime")

    ws = wt.wait(held)
    assert ws["train"]["state"] == "pending"
    assert not {"succeeded", "failed", "killed", "lost", "stopped"} & set(seen), seen
    ws = wt.wait_states({"train": "succeeded"}, timeout=180)
    log = wt("logs", "train", "-n", "100")
    assert "checkpoint saved on USR1" in log
    assert "requeueing job" in log
    assert "resumed from step-7 restart 1" in log
    # The first run's pid/exit files are kept aside, not mistaken for the second run's.
    assert (out.parent / "requeues" / "1").is_dir()


def test_job_array(cluster: SlurmCluster, tmp_path: Path) -> None:
    names = {"a0": "ok", "a1": "fail", "a2": "ok"}
    wt = WtRun(make_project(tmp_path, {n: {"branch": f"exp/{n}", "vars": {"mode": m}}
                                       for n, m in names.items()},
                            root=tmp_path / "shared", host={"array": True}))
    wt("launch", "--branches", *names)
    ws = wt.wait(lambda ws: all(w["state"] in ("succeeded", "failed") for w in ws.values()))
    assert {n: w["state"] for n, w in ws.items()} == {"a0": "succeeded", "a1": "failed",
                                                      "a2": "succeeded"}
    array_ids = {w["job_id"].split("_")[0] for w in ws.values()}
    assert len(array_ids) == 1
    assert sorted(w["job_id"].split("_")[1] for w in ws.values()) == ["0", "1", "2"]
    assert "hello from a2" in wt("logs", "a2")
    assert "hello from a0" not in wt("logs", "a2")


def test_hostile_names_and_values(cluster: SlurmCluster, tmp_path: Path) -> None:
    hostile = "it's $(touch pwned) `touch pwned` ; rm -rf ~ #\n\"%j%%\\"
    root = tmp_path / "sh ared 'q' %j $HOME"
    config = make_project(tmp_path, {
        "we.ird-1": {"branch": "exp/we+ird.v1", "vars": {"mode": "args", "extra": hostile},
                     "env": {"HOSTILE": hostile},
                     "slurm": {"sbatch_args": [f"--comment={hostile.splitlines()[0]}"]}},
    }, root=root, command=f"{sys.executable} worker.py {{mode}} {{extra}}")
    wt = WtRun(config)
    wt("launch", "--branches", "we.ird-1")
    ws = wt.wait_states({"we.ird-1": "succeeded"})
    got = json.loads((Path(ws["we.ird-1"]["out"]) / "args.json").read_text())
    assert got == {"argv": ["args", hostile], "env": hostile}
    assert not list(tmp_path.rglob("pwned"))
    assert ws["we.ird-1"]["branch"] == "exp/we+ird.v1"
    assert Path(ws["we.ird-1"]["log"]).is_file()


def test_generate_split_over_array_tasks(cluster: SlurmCluster, tmp_path: Path) -> None:
    """generate_tasks: 3 runs the generate command as 3 array tasks (WT_RUN_TASK_INDEX and
    WT_RUN_TASK_COUNT set), then once more without them after all tasks ended."""
    root = tmp_path / "shared"
    wt = WtRun(make_project(tmp_path, {}, root=root, host={"generate_tasks": 3}))
    wt("generate", "--host", "hpc")
    ws = wt.wait_states({"generate": "succeeded"})
    data = root / "repo" / "data"
    assert (data / "COMPLETE").read_text() == "shard-0-of-3 shard-1-of-3 shard-2-of-3"
    arrays = {(data / f"shard-{i}-of-3").read_text() for i in range(3)}
    assert len(arrays) == 1 and arrays != {""}
    assert "final run saw 3 shards" in wt("logs", "generate")
    for i in range(3):
        assert f"task {i} of 3" in (Path(ws["generate"]["log"]).parent / "tasks" / str(i)
                                    / "log").read_text()


def test_clean_worktrees_on_a_slurm_host(cluster: SlurmCluster, tmp_path: Path) -> None:
    """`clean --worktrees --host hpc` removes the worktrees under the host's root, but never
    one whose worker still runs."""
    root = tmp_path / "shared"
    wt = WtRun(make_project(tmp_path, {"done": {"branch": "exp/done", "vars": {"mode": "ok"}},
                                       "live": {"branch": "exp/live",
                                                "vars": {"mode": "sleep"}}}, root=root))
    wt("launch", "--branches", "done", "live")
    ws = wt.wait_states({"done": "succeeded", "live": "running"})
    wait_file(Path(ws["live"]["out"]) / "started")
    out = wt("clean", "--worktrees", "--host", "hpc", "--force")
    assert f"remove worktree: {root / 'worktrees' / 'done'}" in out
    assert f"kept (keep worktree): {root / 'worktrees' / 'live'}" in out
    assert "a worker is still running" in out
    assert not (root / "worktrees" / "done").exists()
    assert (root / "worktrees" / "live" / "worker.py").is_file()
    wt("stop", "live")
    wt.wait_states({"live": "stopped"})
    wt("clean", "--worktrees", "--host", "hpc", "--force")
    assert not (root / "worktrees" / "live").exists()
    # The worker files (logs, outputs) stay where they are.
    assert "hello from done" in wt("logs", "done")
