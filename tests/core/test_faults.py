"""Fault handling and safety: corrupt state, interrupted launches, races between wt-run
processes, hand-deleted worktrees. Real git repositories, real detached workers, real
wt-run processes killed at the worst moment."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, WtRun, basic_config, write_config

SLEEPER = "import time, sys\nprint('started', flush=True)\ntime.sleep(float(sys.argv[1]))\n"


@pytest.fixture(autouse=True)
def _reap_workers(tmp_path: Path):
    """A failing test must not leave workers behind: end every process group that a worker
    dir under tmp_path records, when its identity (pid + start time) still matches."""
    yield
    for pid_file in tmp_path.glob("**/.wt-run/runs/*/workers/*/pid"):
        try:
            pid, start = pid_file.read_text().split()[:2]
            stat = Path(f"/proc/{pid}/stat").read_text()
        except (OSError, ValueError):
            continue
        if stat.rsplit(")", 1)[1].split()[19] == start:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(int(pid), signal.SIGKILL)


def _wt(repo_factory, command: str, branches=("a", "b"), **extra) -> WtRun:
    repo = repo_factory(files={"sleeper.py": SLEEPER})
    return WtRun(repo, write_config(repo, basic_config(branches, command, stop_grace=1,
                                                         **extra)))


def _manifest(wt: WtRun, run: str) -> dict:
    return json.loads((wt.repo / ".wt-run/runs" / run / "manifest.json").read_text())


def _wait(predicate, timeout: float = 60.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _one_error_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), output
    return lines[0]


# ---------------------------------------------------------------- corrupt manifests

@pytest.mark.parametrize("content", [
    "[]",
    '{"run": "r1", "created_at": 1, "workers": []}',
    '{"run": "r1", "created_at": 1, "workers": {"a": []}}',
])
def test_manifest_of_the_wrong_shape_is_one_error_line(repo_factory, content) -> None:
    wt = _wt(repo_factory, "true")
    run_dir = wt.repo / ".wt-run/runs/r1"
    run_dir.mkdir(parents=True)
    (run_dir / "manifest.json").write_text(content)
    for args in (["status"], ["status", "--run", "r1"], ["logs", "a"], ["stop", "--all"],
                 ["clean", "--worktrees", "--dry-run"]):
        result = wt(*args, ok=False)  # catch_exceptions=False: a traceback fails the test
        assert result.exit_code == 1, (args, result.output)
        assert "unreadable" in _one_error_line(result.output), args


# ---------------------------------------------------------------- hand-deleted worktree

def test_launch_remakes_a_worktree_deleted_by_hand(repo_factory) -> None:
    wt = _wt(repo_factory, "python sleeper.py 0", branches=("a",))
    wt("launch", "--branches", "a")
    wt.wait_states({"a": "succeeded"})
    worktree = Path(wt.status()["workers"][0]["worktree"])
    subprocess.run(["rm", "-rf", str(worktree)], check=True)
    wt("launch", "--branches", "a")
    wt.wait_states({"a": "succeeded"})
    assert (worktree / "sleeper.py").is_file()


# ---------------------------------------------------------------- wt-run killed mid-launch

def _launch_killed(wt: WtRun, when: str, *names: str,
                   command: tuple[str, ...] = ("launch", "--branches")
                   ) -> subprocess.CompletedProcess:
    """Run `wt-run launch` (or `command`) in a real process that dies (os._exit, like
    SIGKILL: no cleanup) right before or right after the workers are started."""
    code = textwrap.dedent(f"""
        import os, sys
        from worktree_runner import backend, cli
        real = backend.start_workers
        def start_workers(host, specs, *rest):
            if {when!r} == "before":
                os._exit(9)
            real(host, specs, *rest)
            os._exit(9)
        backend.start_workers = start_workers
        sys.argv = ["wt-run", "--config", {str(wt.config)!r}, *{list(command)!r},
                    *{list(names)!r}]
        cli.main()
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 9, proc.stderr
    return proc


def test_workers_started_by_a_killed_launch_are_tracked_and_stoppable(repo_factory) -> None:
    wt = _wt(repo_factory, "python sleeper.py 300")
    _launch_killed(wt, "after", "a", "b")
    # Nothing orphaned: status finds both workers, stop reaches them.
    states = wt.wait_states({"a": "running", "b": "running"})
    assert sorted(states) == ["a", "b"]
    wt("stop", "--all")
    wt.wait_states({"a": "stopped", "b": "stopped"})


def test_generation_started_by_a_killed_generate_is_tracked(repo_factory) -> None:
    wt = _wt(repo_factory, "true", branches=())
    cfg = yaml_load(wt.config)
    cfg["commands"]["generate"] = "python sleeper.py 0"
    write_config(wt.repo, cfg)
    _launch_killed(wt, "after", command=("generate",))
    assert wt.wait_states({"generate": "succeeded"}) == {"generate": "succeeded"}


def test_slurm_worker_never_submitted_reads_lost() -> None:
    from worktree_runner.slurm import combine
    from worktree_runner.states import Observation, WorkerState

    # Recorded by a launch killed before sbatch: no job id, and no worker dir (made before
    # sbatch). Not `unknown` forever, which would block `clean --run`.
    obs = combine({"nodir": []}, None, None, None, 1.0, Observation(WorkerState.LOST))
    assert obs.state == WorkerState.LOST and "launch was interrupted" in (obs.reason or "")


def test_workers_a_killed_launch_never_started_read_lost_not_pending(repo_factory) -> None:
    from worktree_runner import api
    from worktree_runner.config import load_config
    from worktree_runner.runs import RunStore

    wt = _wt(repo_factory, "python sleeper.py 0", branches=("a",))
    _launch_killed(wt, "before", "a")
    config = load_config(wt.config)
    store = RunStore(config.state_dir)
    # While a launch is in progress, a recorded worker without a directory is about to start.
    with store.launching():
        assert api.status(config).workers[0].state.value == "pending"
    worker = wt.status()["workers"][0]
    assert worker["state"] == "lost" and "launch was interrupted" in worker["reason"]
    run = wt.status()["run"]
    # Lost is terminal: a plain relaunch is allowed, and the run can be cleaned.
    wt("launch", "--branches", "a", "--run", run)
    wt.wait_states({"a": "succeeded"}, run=run)
    wt("clean", "--run", run, "--force")
    assert not (wt.repo / ".wt-run/runs" / run).exists()


def test_clean_worktrees_waits_for_a_launch_in_progress(repo_factory) -> None:
    from worktree_runner.config import load_config
    from worktree_runner.runs import RunStore

    wt = _wt(repo_factory, "python sleeper.py 0", branches=("a",))
    wt("launch", "--branches", "a", "--wait")
    worktree = Path(wt.status()["workers"][0]["worktree"])
    store = RunStore(load_config(wt.config).state_dir)
    box: dict[str, object] = {}
    # A launch holds the planning lock until its workers have started: a clean meanwhile
    # could remove the worktree a worker is about to start in.
    with store.planning():
        thread = threading.Thread(target=lambda: box.setdefault(
            "out", wt("clean", "--worktrees").output))
        thread.start()
        thread.join(timeout=1.0)
        assert thread.is_alive() and worktree.is_dir(), box
    thread.join(timeout=60)
    assert "remove worktree" in str(box["out"]) and not worktree.exists()


# ---------------------------------------------------------------- races with a relaunch

def test_status_racing_a_relaunch_does_not_overwrite_the_new_attempt(repo_factory,
                                                                      monkeypatch) -> None:
    from worktree_runner import api, launching
    from worktree_runner.config import load_config

    wt = _wt(repo_factory, "python sleeper.py {secs}", branches=("a",))
    cfg = yaml_load(wt.config)
    cfg["branches"]["a"]["vars"] = {"secs": "0"}
    write_config(wt.repo, cfg)
    wt("launch", "--branches", "a")
    run = next(p.name for p in (wt.repo / ".wt-run/runs").iterdir() if p.is_dir())
    exit_file = wt.repo / ".wt-run/runs" / run / "workers/a/exit"
    _wait(exit_file.exists, what="attempt 1 to end")
    config = load_config(wt.config)
    real_observe = api.observe_host
    relaunched: list[bool] = []

    def observe_then_relaunch(*args, **kwargs):
        seen = real_observe(*args, **kwargs)
        if not relaunched:
            # Another wt-run relaunches the worker after this status read its files.
            relaunched.append(True)
            cfg["branches"]["a"]["vars"] = {"secs": "300"}
            write_config(wt.repo, cfg)
            launching.launch(load_config(wt.config), ["a"], run=run)
        return seen

    monkeypatch.setattr(api, "observe_host", observe_then_relaunch)
    report = api.status(config, run)
    assert report.workers[0].state.value == "succeeded"  # what it saw: attempt 1
    monkeypatch.setattr(api, "observe_host", real_observe)
    record = _manifest(wt, run)["workers"]["a"]
    assert record["attempt"] == 2 and record["state"] is None and record["launched_at"]
    states = wt.wait_states({"a": "running"}, run=run)
    assert states["a"] == "running"
    wt("stop", "a", "--run", run)
    wt.wait_states({"a": "stopped"}, run=run)


def test_collect_racing_a_relaunch_does_not_mark_the_new_attempt_collected(
        repo_factory) -> None:
    from worktree_runner import launching
    from worktree_runner.collect import CollectObserver, collect
    from worktree_runner.config import load_config

    wt = _wt(repo_factory, "python sleeper.py {secs}", branches=("a",))
    cfg = yaml_load(wt.config)
    cfg["branches"]["a"]["vars"] = {"secs": "0"}
    write_config(wt.repo, cfg)
    wt("launch", "--branches", "a", "--wait")
    run = wt.status()["run"]

    class RelaunchAfterCopy(CollectObserver):
        def file_done(self):
            if _manifest(wt, run)["workers"]["a"]["attempt"] == 1:
                cfg["branches"]["a"]["vars"] = {"secs": "300"}
                write_config(wt.repo, cfg)
                launching.launch(load_config(wt.config), ["a"], run=run)

    report = collect(load_config(wt.config), run=run, observer=RelaunchAfterCopy())
    assert report.ok and report.workers[0].files == 1  # attempt 1's log
    record = _manifest(wt, run)["workers"]["a"]
    # What was collected is attempt 1's: attempt 2 is not collected, so clean --run keeps
    # refusing to delete its results.
    assert record["attempt"] == 2 and record["collected_at"] is None
    wt("stop", "a", "--run", run)
    wt.wait_states({"a": "stopped"}, run=run)
    refused = wt("clean", "--run", run, ok=False)
    assert refused.exit_code == 1 and "not collected" in refused.output


def test_collect_copies_empty_files_and_skips_one_removed_after_listing(repo_factory) -> None:
    from worktree_runner.collect import CollectObserver, collect
    from worktree_runner.config import load_config

    writer = ("import os\nout = os.environ['WT_RUN_OUT']\n"
              "for name in ('empty.txt', 'ckpt-1.pt', 'ckpt-2.pt'):\n"
              "    open(os.path.join(out, name), 'w').write('' if 'empty' in name else name)\n")
    repo = repo_factory(files={"w.py": writer})
    wt = WtRun(repo, write_config(repo, basic_config(["a"], "python w.py")))
    wt("launch", "--branches", "a", "--wait")  # prints nothing: its log is empty too
    run = wt.status()["run"]
    out = wt.repo / ".wt-run/runs" / run / "workers/a/out"

    class RotateCheckpoint(CollectObserver):
        def listed(self, name, host, listing):
            (out / "ckpt-1.pt").unlink()  # the training keeps only its last checkpoint

    report = collect(load_config(wt.config), run=run, observer=RotateCheckpoint())
    (worker,) = report.workers
    dest = worker.dest
    assert (dest / "log").read_text() == "" and (dest / "out/empty.txt").read_text() == ""
    assert (dest / "out/ckpt-2.pt").read_text() == "ckpt-2.pt"
    assert [s.path for s in worker.skipped] == ["out/ckpt-1.pt"] and not worker.marked
    # The next collect finds it gone from the listing and completes the worker.
    again = collect(load_config(wt.config), run=run)
    assert again.ok and again.workers[0].marked


def yaml_load(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text())


# ---------------------------------------------------------------- status script races

def test_worker_ending_between_status_reads_is_not_seen_lost(tmp_path: Path) -> None:
    """The wrapper records itself, runs and exits while a status probe reads its files: here
    it happens exactly when the probe checks whether the spawned wrapper is alive (the probe's
    liveness check is replaced by one that does the wrapper's writes, then says 'gone')."""
    from worktree_runner.observe import parse_status, status_script
    from worktree_runner.states import WorkerState

    d = tmp_path / "w"
    d.mkdir()
    (d / "spawn").write_text("4242\n")
    finish = (
        "import runpy, sys\n"
        "def alive(pid):\n"
        f"    open({str(d / 'pid')!r}, 'w').write('4242 1 boot 100\\n')\n"
        f"    open({str(d / 'exit')!r}, 'w').write('0 101 exit\\n')\n"
        "    return False\n"
        "g = runpy.run_path(sys.argv[1], run_name='probe')\n"
        "g['main'].__globals__['alive'] = alive\n"
        "g['main'](sys.argv[1:])\n")
    from worktree_runner.hostside import source

    probe = tmp_path / "probe.py"
    probe.write_text(source("probe"))
    script = status_script(str(tmp_path), [str(d)])
    assert "wtjson" in script  # the real status script runs this same probe
    out = subprocess.run([sys.executable, "-c", finish, str(probe), str(tmp_path), str(d)],
                         capture_output=True, text=True, check=True).stdout
    _, (obs,) = parse_status(out, "local", 1)
    assert obs.state == WorkerState.SUCCEEDED


# ---------------------------------------------------------------- messages and guards

def test_compare_of_an_unknown_run_names_a_fix_that_exists(repo_factory) -> None:
    wt = _wt(repo_factory, "true")
    line = _one_error_line(wt("compare", "--run", "nope", ok=False).output)
    assert "--all-runs" not in line and "--run" in line


def test_clean_worktrees_never_follows_a_link_into_the_dataset(repo_factory) -> None:
    repo = repo_factory(files={"sleeper.py": SLEEPER, ".gitignore": "data/\n"})
    (repo / "data").mkdir()
    (repo / "data/shard.bin").write_text("precious")
    wt = WtRun(repo, write_config(repo, basic_config(["a"], "python sleeper.py 0",
                                                     shared=["data"])))
    wt("launch", "--branches", "a", "--wait")
    worktree = Path(wt.status()["workers"][0]["worktree"])
    # A link the config no longer names (shared: changed since), and one deeper down.
    (worktree / "sub").mkdir()
    os.symlink(repo / "data", worktree / "sub/data-link")
    cfg = yaml_load(wt.config)
    cfg["shared"] = []
    write_config(repo, cfg)
    wt("clean", "--worktrees", "--force")
    assert not worktree.exists()
    assert (repo / "data/shard.bin").read_text() == "precious"
