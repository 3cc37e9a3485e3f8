"""Launch, status, stop and rerun of real detached workers on the local host."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import WtRun, basic_config, git, write_config

SLEEPER = "import time, sys\nprint('started', flush=True)\ntime.sleep(float(sys.argv[1]))\n"


def setup_repo(repo_factory, command: str, branches=("a", "b"), **extra) -> WtRun:
    repo = repo_factory(files={"sleeper.py": SLEEPER, "fail.py": "import sys\nsys.exit(3)\n"})
    cfg = write_config(repo, basic_config(branches, command, **extra))
    return WtRun(repo, cfg)


def run_id(wt: WtRun) -> str:
    return wt.status()["run"]


def test_launch_status_stop_rerun_keeps_old_log(repo_factory) -> None:
    wt = setup_repo(repo_factory, "python sleeper.py 300", stop_grace=2)
    out = wt("launch", "--branches", "a", "b").output
    assert "Launched a" in out and "Launched b" in out
    wt.wait_states({"a": "running", "b": "running"})
    status = wt.status()
    worker = {w["name"]: w for w in status["workers"]}["a"]
    assert worker["branch"] == "exp/a"
    assert worker["commit"] == git(wt.repo, "rev-parse", "exp/a")
    assert Path(worker["worktree"]).is_dir()
    assert status["hosts"][0]["reachable"] is True
    wt.wait_for(lambda s: "started" in Path(worker["log"]).read_text())

    wt("stop", "a")
    states = wt.wait_states({"a": "stopped"})
    assert states["b"] == "running"

    # rerun a into the same run: a new attempt, earlier log kept
    rid = run_id(wt)
    wt("launch", "--branches", "a", "--run", rid)
    wt.wait_states({"a": "running"}, run=rid)
    worker = {w["name"]: w for w in wt.status(rid)["workers"]}["a"]
    assert worker["attempt"] == 2
    old_log = Path(worker["log"]).parent / "attempts" / "1" / "log"
    assert "started" in old_log.read_text()
    wt("stop", "--all")
    wt.wait_states({"a": "stopped", "b": "stopped"})


def test_relaunch_of_running_worker_refused_without_force(repo_factory) -> None:
    wt = setup_repo(repo_factory, "python sleeper.py 300", branches=("a",), stop_grace=2)
    wt("launch", "--branches", "a")
    rid = run_id(wt)
    wt.wait_states({"a": "running"})
    refused = wt("launch", "--branches", "a", "--run", rid, ok=False)
    assert refused.exit_code == 1
    assert "still running" in refused.output and "wt-run stop a" in refused.output
    first_pid = wt.status()["workers"][0]["pid"]
    wt("launch", "--branches", "a", "--run", rid, "--force")
    wt.wait_states({"a": "running"})
    assert wt.status()["workers"][0]["pid"] != first_pid
    wt("stop", "--all")
    wt.wait_states({"a": "stopped"})


def test_exit_codes_and_wait(repo_factory) -> None:
    repo = repo_factory(files={"fail.py": "import sys\nsys.exit(3)\n", "ok.py": "print('ok')\n"})
    cfg = {"branches": {"good": {"branch": "exp/good", "vars": {"script": "ok.py"}},
                        "bad": {"branch": "exp/bad", "vars": {"script": "fail.py"}}},
           "commands": {"train": "python {script}"}}
    wt = WtRun(repo, write_config(repo, cfg))
    result = wt("launch", "--branches", "good", "bad", "--wait", ok=False)
    assert result.exit_code == 1
    assert "bad failed" in result.output
    workers = {w["name"]: w for w in wt.status()["workers"]}
    assert workers["good"]["state"] == "succeeded" and workers["good"]["exit_code"] == 0
    assert workers["bad"]["state"] == "failed" and workers["bad"]["exit_code"] == 3
    ok_only = wt("launch", "--branches", "good", "--wait")
    assert ok_only.exit_code == 0


def _command_pid(log: Path) -> int:
    return int(log.read_text().split("pid=")[1].split()[0])


def test_sigkill_of_command_reads_killed_and_wrapper_kill_reads_lost(repo_factory) -> None:
    script = "import os, time\nprint(f'pid={os.getpid()}', flush=True)\ntime.sleep(300)\n"
    repo = repo_factory(files={"w.py": script})
    wt = WtRun(repo, write_config(repo, basic_config(["k", "l"], "python w.py", stop_grace=1)))
    wt("launch", "--branches", "k", "l")
    wt.wait_states({"k": "running", "l": "running"})
    workers = {w["name"]: w for w in wt.status()["workers"]}
    wt.wait_for(lambda s: "pid=" in Path(workers["k"]["log"]).read_text())
    os.kill(_command_pid(Path(workers["k"]["log"])), signal.SIGKILL)
    states = wt.wait_states({"k": "killed"})
    assert {w["name"]: w for w in wt.status()["workers"]}["k"]["signal"] == 9
    # kill the wrapper itself: no exit record can be written -> lost
    os.kill(workers["l"]["pid"], signal.SIGKILL)
    states = wt.wait_states({"l": "lost"})
    assert states["k"] == "killed"  # terminal states never go back
    wt.wait_for(lambda s: "pid=" in Path(workers["l"]["log"]).read_text())
    os.kill(_command_pid(Path(workers["l"]["log"])), signal.SIGKILL)  # orphan clean-up


def test_reused_pid_reads_lost_and_stop_refuses_to_signal(repo_factory) -> None:
    wt = setup_repo(repo_factory, "python sleeper.py 300", branches=("a",), stop_grace=1)
    wt("launch", "--branches", "a")
    wt.wait_states({"a": "running"})
    worker = wt.status()["workers"][0]
    pid_file = Path(worker["log"]).parent / "pid"
    real = pid_file.read_text().split()
    # An innocent process now "holds" the recorded pid: same number, other start time.
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    try:
        pid_file.write_text(f"{stranger.pid} 1 {real[2]} {real[3]}\n")
        assert wt.states()["a"] == "lost"
        wt("stop", "a")
        time.sleep(0.5)
        assert stranger.poll() is None, "stop signalled a process that is not the worker"
    finally:
        stranger.kill()
        os.killpg(int(real[0]), signal.SIGKILL)


def test_stop_ends_whole_process_group(repo_factory, tmp_path: Path) -> None:
    marker = f"wtrun-child-{os.getpid()}-{time.time_ns()}"
    forker = (
        "import subprocess, sys, time\n"
        f"kids = [subprocess.Popen(['sleep', '300', '{marker}'[:0] or '300']) for _ in range(2)]\n"
        f"kids += [subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)',"
        f" '{marker}'])]\n"
        "print('forked', flush=True)\n"
        "time.sleep(300)\n"
    )
    repo = tmp_path / "r"
    from tests.conftest import make_repo

    make_repo(repo, {"fork.py": forker})
    wt = WtRun(repo, write_config(repo, basic_config(["f"], "python fork.py", stop_grace=2)))
    wt("launch", "--branches", "f")
    wt.wait_states({"f": "running"})
    log = Path(wt.status()["workers"][0]["log"])
    wt.wait_for(lambda s: "forked" in log.read_text())
    assert subprocess.run(["pgrep", "-f", marker], capture_output=True).returncode == 0
    wt("stop", "f")
    wt.wait_states({"f": "stopped"})
    deadline = time.monotonic() + 30
    while subprocess.run(["pgrep", "-f", marker], capture_output=True).returncode == 0:
        assert time.monotonic() < deadline, "children survived stop"
        time.sleep(0.1)


def test_worker_environment_and_survives_cli_exit(repo_factory) -> None:
    script = ("import json, os\n"
              "json.dump({k: os.environ.get(k) for k in ('WT_RUN_OUT', 'WT_RUN_NAME', "
              "'WT_RUN_BRANCH', 'SECRET_TOKEN')}, open(os.environ['WT_RUN_OUT'] + '/env.json',"
              " 'w'))\n")
    repo = repo_factory(files={"env.py": script})
    cfg = basic_config(["e"], "python env.py", env={"SECRET_TOKEN": "s3cr3t"})
    cfg["branches"]["e"]["branch"] = "team/exp/e-1"
    path = write_config(repo, cfg)
    # launch through a separate process that exits at once: the worker must outlive it
    subprocess.run(["wt-run", "--config", str(path), "launch", "--branches", "e"],
                   check=True, capture_output=True)
    wt = WtRun(repo, path)
    wt.wait_states({"e": "succeeded"})
    worker = wt.status()["workers"][0]
    env = json.loads((Path(worker["out"]) / "env.json").read_text())
    assert env == {"WT_RUN_OUT": worker["out"], "WT_RUN_NAME": "e",
                   "WT_RUN_BRANCH": "team/exp/e-1", "SECRET_TOKEN": "s3cr3t"}
    assert "s3cr3t" not in worker["command"]
    assert Path(worker["worktree"]).name == "e"


def test_two_concurrent_launches_keep_both_in_manifest(repo_factory) -> None:
    repo = repo_factory(files={"ok.py": "print('ok')\n"})
    path = write_config(repo, basic_config([f"w{i}" for i in range(6)], "python ok.py"))
    procs = [subprocess.Popen(["wt-run", "--config", str(path), "launch", "--run", "shared-run",
                               "--branches", *[f"w{i}" for i in range(j, 6, 2)]],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for j in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()
    wt = WtRun(repo, path)
    states = wt.wait_for(lambda s: len(s) == 6 and all(v == "succeeded" for v in s.values()),
                         run="shared-run")
    assert sorted(states) == [f"w{i}" for i in range(6)]
    manifest = json.loads((repo / ".wt-run/runs/shared-run/manifest.json").read_text())
    assert sorted(manifest["workers"]) == sorted(states)


def test_pending_worker_stopped_before_start_never_runs(repo_factory, tmp_path: Path) -> None:
    """A stop marker written before the wrapper records itself prevents the command."""
    from worktree_runner.observe import derive_state
    from worktree_runner.states import WorkerState

    obs = derive_state({"spawn": ["123", "0"], "stop": []}, "boot", None)
    assert obs.state == WorkerState.STOPPED
    obs = derive_state({"spawn": ["123", "1"]}, "boot", None)
    assert obs.state == WorkerState.PENDING
    obs = derive_state({"pid": ["1", "5", "other-boot", "0"]}, "boot", None)
    assert obs.state == WorkerState.LOST and "rebooted" in (obs.reason or "")


@pytest.mark.parametrize("status,state,code,sig", [
    ("0", "succeeded", 0, None), ("2", "failed", 2, None), ("137", "killed", None, 9),
    ("143", "killed", None, 15)])
def test_exit_record_maps_to_state(status, state, code, sig) -> None:
    from worktree_runner.observe import derive_state

    obs = derive_state({"exit": [status, "10"], "pid": ["5", "1", "b", "1"]}, "b", 20.0)
    assert (obs.state.value, obs.exit_code, obs.signal) == (state, code, sig)


def test_progress_and_eta_from_progress_json(repo_factory) -> None:
    script = ("import json, os, time\n"
              "p = os.path.join(os.environ['WT_RUN_OUT'], 'progress.json')\n"
              "json.dump({'epoch': 1, 'epochs': 4, 'step': 25, 'steps': 100}, open(p + '.t', 'w'),"
              " indent=2)\n"
              "os.replace(p + '.t', p)\n"
              "time.sleep(300)\n")
    repo = repo_factory(files={"p.py": script})
    wt = WtRun(repo, write_config(repo, basic_config(["p"], "python p.py", stop_grace=1)))
    wt("launch", "--branches", "p")
    wt.wait_for(lambda s: (wt.status()["workers"][0]["progress"] or {}).get("step") == 25)
    time.sleep(1.1)
    worker = wt.status()["workers"][0]
    assert worker["progress"]["fraction"] == 0.25
    assert worker["progress"]["eta_s"] > 0
    table = wt("status").output
    assert "25% (epoch 1/4)" in table
    wt("stop", "p")
    wt.wait_states({"p": "stopped"})


def test_usr1_to_wrapper_reaches_the_command_not_its_shell(repo_factory) -> None:
    script = ("import os, signal, time\n"
              "def on_usr1(*_):\n"
              "    open(os.path.join(os.environ['WT_RUN_OUT'], 'checkpoint'), 'w').write('x')\n"
              "    raise SystemExit(75)\n"
              "signal.signal(signal.SIGUSR1, on_usr1)\n"
              "print('ready', flush=True)\n"
              "time.sleep(300)\n")
    repo = repo_factory(files={"u.py": script})
    wt = WtRun(repo, write_config(repo, basic_config(["u"], "python u.py", stop_grace=1)))
    wt("launch", "--branches", "u")
    wt.wait_states({"u": "running"})
    worker = wt.status()["workers"][0]
    wt.wait_for(lambda s: "ready" in Path(worker["log"]).read_text())
    os.kill(worker["pid"], signal.SIGUSR1)
    wt.wait_states({"u": "failed"})
    assert wt.status()["workers"][0]["exit_code"] == 75
    assert (Path(worker["out"]) / "checkpoint").read_text() == "x"


def test_a_rerun_keeps_the_earlier_attempts_outputs(repo_factory) -> None:
    """A rerun starts with an empty out/: the earlier attempt's checkpoint and metrics move to
    attempts/1/out (nothing overwritten, nothing mixed), collect brings both back, and compare
    reads only the current attempt's metrics."""
    script = ("import json, os\n"
              "a = os.environ['WT_RUN_ATTEMPT']\n"
              "out = os.environ['WT_RUN_OUT']\n"
              "print('previous', os.environ.get('WT_RUN_PREVIOUS_OUT'), sorted(os.listdir(out)))\n"
              "open(os.path.join(out, 'ckpt.pt'), 'w').write('weights of attempt ' + a)\n"
              "with open(os.path.join(out, 'metrics.jsonl'), 'a') as fh:\n"
              "    fh.write(json.dumps({'step': 1, 'accuracy': 0.9 if a == '1' else 0.1}))\n"
              "    fh.write('\\n')\n")
    repo = repo_factory(files={"ck.py": script})
    wt = WtRun(repo, write_config(repo, basic_config(("a",), "python ck.py")))
    wt("launch", "--branches", "a", "--wait")
    rid = run_id(wt)
    wt("launch", "--branches", "a", "--run", rid, "--wait")
    (w,) = wt.status(rid)["workers"]
    first = Path(w["log"]).parent / "attempts" / "1"
    assert (first / "out" / "ckpt.pt").read_text() == "weights of attempt 1"
    assert (Path(w["out"]) / "ckpt.pt").read_text() == "weights of attempt 2"
    assert len((Path(w["out"]) / "metrics.jsonl").read_text().splitlines()) == 1
    assert f"previous {first / 'out'} []" in Path(w["log"]).read_text()
    wt("collect", "--run", rid)
    dest = repo / "results" / rid / "a"
    assert (dest / "attempts" / "1" / "out" / "ckpt.pt").read_text() == "weights of attempt 1"
    assert (dest / "out" / "ckpt.pt").read_text() == "weights of attempt 2"
    doc = json.loads(wt("compare", "--run", rid, "--format", "json").output)
    assert "0.1" in json.dumps(doc) and "0.9" not in json.dumps(doc)


def test_names_after_the_options_and_a_log_that_is_not_utf8(repo_factory) -> None:
    script = "import sys\nsys.stdout.buffer.write(b'ok \\xff\\xfe end\\n')\n"
    repo = repo_factory(files={"bin.py": script})
    wt = WtRun(repo, write_config(repo, basic_config(("a",), "python bin.py")))
    out = wt("launch", ok=False).output
    assert "name at least one entry" in out
    wt("launch", "a", "--wait")  # the usage line's [NAME]...
    log = wt("logs", "a").output
    assert log.startswith("ok ") and log.rstrip().endswith("end") and "\ufffd" in log
    # Following the log of a worker that has ended prints it and returns.
    followed = subprocess.run([sys.executable, "-m", "worktree_runner.cli", "--config",
                               str(wt.config), "logs", "a", "-f"], capture_output=True,
                              text=True, timeout=120, check=True)
    assert followed.stdout.startswith("ok ")
    # A log removed after the end: said so, not "wait for it to start".
    Path(wt.status()["workers"][0]["log"]).unlink()
    out = wt("logs", "a", ok=False).output
    assert "has ended (succeeded)" in out and "removed" in out
