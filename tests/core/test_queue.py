"""The host queue on the local host: slots, FIFO, stop, retries, GPUs taken by strangers,
concurrent launches, hostile values and a drainer lost to a reboot. Real processes; the only
stand-in is `nvidia-smi`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import WtRun, write_config

TIMED = ("import json, os, sys, time\n"
         "start = time.time()\n"
         "print('start', os.environ.get('WT_RUN_ATTEMPT'), flush=True)\n"
         "time.sleep(float(sys.argv[1]))\n"
         "json.dump({'start': start, 'end': time.time(), 'argv': sys.argv[2:],\n"
         "           'gpu': os.environ.get('CUDA_VISIBLE_DEVICES')},\n"
         "          open(os.path.join(os.environ['WT_RUN_OUT'], 'times.json'), 'w'))\n")


def _wt(repo_factory, command: str, *, host: dict, **cfg) -> WtRun:
    repo = repo_factory(files={"timed.py": TIMED})
    doc = {"hosts": {"local": {"type": "local", **host}},
           "branches": {"a": {"branch": "exp/a", "vars": {"secs": "0.5", "x": "-"}}},
           "commands": {"train": command}, "stop_grace": 1}
    doc.update(cfg)
    return WtRun(repo, write_config(repo, doc))


def _times(wt: WtRun, run: str | None = None) -> dict[str, dict]:
    return {w["name"]: json.loads(Path(w["out"], "times.json").read_text())
            for w in wt.status(run)["workers"] if Path(w["out"], "times.json").exists()}


def _max_overlap(spans: list[tuple[float, float]]) -> int:
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    most = now = 0
    for _, step in events:
        now += step
        most = max(most, now)
    return most


def _drainer_running(wt: WtRun) -> bool:
    out = subprocess.run(["pgrep", "-f", str(wt.repo / ".wt-run/drainer.py")],
                         capture_output=True, text=True, check=False).stdout
    return bool(out.strip())


def test_queue_drains_fifo_within_slots_after_the_client_is_gone(repo_factory) -> None:
    wt = _wt(repo_factory, "python timed.py {secs}", host={"slots": 2})
    # The launching wt-run is a separate process, killed as soon as it has queued them.
    proc = subprocess.Popen([sys.executable, "-m", "worktree_runner", "--config",
                             str(wt.config), "launch", "--branches", "a", "--seeds", "6"],
                            cwd=wt.repo, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if "run " in line:
            break
    proc.kill()
    proc.wait()
    states = wt.wait_for(lambda s: set(s.values()) == {"succeeded"} and len(s) == 6,
                         timeout=120)
    assert len(states) == 6
    times = _times(wt)
    spans = [(t["start"], t["end"]) for t in times.values()]
    assert _max_overlap(spans) <= 2
    # FIFO: the queue started them in launch order (the spawn record is written right after
    # each start, one at a time).
    spawned = {w["name"]: (Path(w["log"]).parent / "spawn").stat().st_mtime_ns
               for w in wt.status()["workers"]}
    assert sorted(spawned, key=spawned.__getitem__) == [f"a-s{i}" for i in range(6)]
    # Nothing of wt-run keeps running once the queue is empty.
    wt.wait_for(lambda s: not _drainer_running(wt), timeout=30)


def test_stop_takes_queued_workers_out_of_the_queue(repo_factory) -> None:
    wt = _wt(repo_factory, "python timed.py 300", host={"slots": 1})
    wt("launch", "--branches", "a", "--seeds", "4")
    wt.wait_states({"a-s0": "running", "a-s1": "pending"})
    pending = {w["name"]: w for w in wt.status()["workers"]}["a-s2"]
    assert pending["queue_position"] == 1 and "queued on local, 1 ahead" in pending["reason"]
    out = wt("stop", "a-s1").output
    assert "a-s1" in out
    states = wt.wait_states({"a-s1": "stopped"})
    assert states["a-s0"] == "running" and states["a-s2"] == "pending"
    assert wt.status()["workers"][2]["queue_position"] == 0
    wt("stop", "--all")
    states = wt.wait_states({"a-s0": "stopped", "a-s2": "stopped", "a-s3": "stopped"})
    for w in wt.status()["workers"]:
        if w["name"] != "a-s0":  # never started: no log line from the command
            assert not Path(w["log"]).exists() or "start" not in Path(w["log"]).read_text()
    wt.wait_for(lambda s: not _drainer_running(wt), timeout=30)


def test_cuda_oom_on_the_first_attempt_is_retried_to_success(repo_factory) -> None:
    script = ("import os, sys\n"
              "a = int(os.environ['WT_RUN_ATTEMPT'])\n"
              "print('attempt', a, flush=True)\n"
              "open(os.path.join(os.environ['WT_RUN_OUT'], 'ckpt.pt'), 'w').write(str(a))\n"
              "print('previous', os.environ.get('WT_RUN_PREVIOUS_OUT'), flush=True)\n"
              "if a == 1:\n"
              "    print('torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2 GiB')\n"
              "    sys.exit(1)\n")
    repo = repo_factory(files={"oom.py": script})
    notified = repo.parent / "notified"
    doc = {"hosts": {"local": {"type": "local", "slots": 1}},
           "retry": {"max": 2, "on": ["oom"]},
           "notify": f"echo \"$WT_RUN_NAME $WT_RUN_STATE $WT_RUN_EXIT_CODE\" >> {notified}",
           "branches": {"a": {"branch": "exp/a"}, "f": {"branch": "exp/f"}},
           "commands": {"train": "python oom.py"}}
    wt = WtRun(repo, write_config(repo, doc))
    wt("launch", "--branches", "a", "--wait")
    (w,) = wt.status()["workers"]
    assert (w["state"], w["attempt"], w["max_attempts"]) == ("succeeded", 2, 3)
    first = Path(w["log"]).parent / "attempts/1"
    assert "CUDA out of memory" in (first / "log").read_text()
    assert (first / "exit").read_text().split()[0] == "1"
    # The failed attempt's outputs are kept, not overwritten by the retry's.
    assert (first / "out" / "ckpt.pt").read_text() == "1"
    assert (Path(w["out"]) / "ckpt.pt").read_text() == "2"
    assert f"previous {first / 'out'}" in Path(w["log"]).read_text()
    assert "attempt 2" in Path(w["log"]).read_text()
    assert notified.read_text() == "a succeeded 0\n"  # once, when it ended for good


def test_a_gpu_used_by_a_stranger_is_never_handed_out(repo_factory, tmp_path: Path,
                                                      monkeypatch) -> None:
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "nvidia-smi").write_text(
        "#!/bin/sh\n"
        "case \"$*\" in\n"
        "  *query-gpu=index,uuid*) printf '0, GPU-0, 6000\\n1, GPU-1, 0\\n' ;;\n"
        "  *query-compute-apps*) printf 'GPU-0, 999999, 6000\\n' ;;\n"
        "  *query-gpu=index,name*) printf '0, Fake H200, 1.0\\n1, Fake H200, 1.0\\n' ;;\n"
        "  *) printf '0, 0, 6000, 143000, Fake H200\\n'\n"
        "     printf '1, 0, 0, 143000, Fake H200\\n' ;;\n"
        "esac\n")
    (fake / "nvidia-smi").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    wt = _wt(repo_factory, "python timed.py 0.3", host={"gpus": [0, 1], "gpu_free_mib": 2048})
    wt("launch", "--branches", "a", "--seeds", "3", "--wait")
    times = _times(wt)
    assert {t["gpu"] for t in times.values()} == {"1"}
    assert _max_overlap([(t["start"], t["end"]) for t in times.values()]) == 1
    health = wt.status()["hosts"][0]
    assert [g["memory_used_mib"] for g in health["gpus"]] == [6000.0, 0.0]
    assert {w["env"]["gpu"] for w in wt.status()["workers"]} == {"Fake H200"}


def test_two_concurrent_launches_never_double_book_a_slot(repo_factory) -> None:
    wt = _wt(repo_factory, "python timed.py 0.4", host={"slots": 2})
    procs = [subprocess.Popen([sys.executable, "-m", "worktree_runner", "--config",
                               str(wt.config), "launch", "--branches", "a", "--seeds", "4",
                               "--run", f"r{i}"], cwd=wt.repo, stdout=subprocess.DEVNULL)
             for i in range(2)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    for run in ("r0", "r1"):
        wt.wait_for(lambda s: set(s.values()) == {"succeeded"}, run=run, timeout=120)
    spans = [(t["start"], t["end"]) for run in ("r0", "r1") for t in _times(wt, run).values()]
    assert len(spans) == 8 and _max_overlap(spans) <= 2


def test_hostile_values_in_queued_commands_stay_data(repo_factory) -> None:
    wt = _wt(repo_factory, "python timed.py {secs} {x}", host={"slots": 1})
    hostile = "a'b;$(touch PWNED)`touch PWNED`"
    wt("launch", "--branches", "a", "--set", f"x={hostile},plain", "--wait")
    times = _times(wt)
    assert sorted(t["argv"][0] for t in times.values()) == sorted([hostile, "plain"])
    assert not list(wt.repo.rglob("PWNED"))


def test_reboot_leaves_queued_workers_visible_and_resume_restarts_them(repo_factory) -> None:
    wt = _wt(repo_factory, "python timed.py {secs}", host={"slots": 1},
             branches={"a": {"branch": "exp/a", "vars": {"secs": "300", "x": "-"}},
                       "b": {"branch": "exp/b", "vars": {"secs": "0.2", "x": "-"}}})
    wt("launch", "--branches", "a", "b")
    wt.wait_states({"a": "running", "b": "pending"})
    a = {w["name"]: w for w in wt.status()["workers"]}["a"]
    # The reboot: every process of wt-run on the host is gone, and the boot id changed.
    drainer = (wt.repo / ".wt-run/queue/drainer.pid").read_text().split()
    os.kill(int(drainer[0]), signal.SIGKILL)
    os.killpg(a["pid"], signal.SIGKILL)
    pid_file = Path(a["log"]).parent / "pid"
    fields = pid_file.read_text().split()
    pid_file.write_text(" ".join([fields[0], fields[1], "0ther-boot-id", fields[3]]) + "\n")
    time.sleep(0.5)
    workers = {w["name"]: w for w in wt.status()["workers"]}
    assert workers["a"]["state"] == "lost" and "rebooted" in workers["a"]["reason"]
    assert workers["b"]["state"] == "pending"
    reason = workers["b"]["reason"]
    assert "wt-run resume" in reason and "queued on local" in reason
    out = wt("resume").output
    assert "local: queue drainer started (1 waiting)" in out
    assert wt.wait_states({"b": "succeeded"})["a"] == "lost"


def test_a_queued_worker_stopped_as_the_drainer_takes_it_still_ends(tmp_path: Path) -> None:
    """The stop marker lands after the entry left the queue (the drainer took it): the
    worker must still get its exit record, never stay pending forever."""
    from worktree_runner.hostside import source

    root = tmp_path / "root"
    d = root / "runs/r/workers/w"
    (d / "out").mkdir(parents=True)
    for name in ("wrapper", "drainer", "envinfo"):
        (root / f"{name}.py").write_text(source(name))
    (d / "cmd.sh").write_text("echo ran > \"$0.ran\"\n")
    drainer = [sys.executable, "-S", str(root / "drainer.py"), str(root)]
    subprocess.run([*drainer, "--enqueue", str(d), "1", "0"], check=True,
                   stdout=subprocess.DEVNULL)
    (d / "stop").write_text("")
    subprocess.run(drainer, check=True, timeout=60)
    deadline = time.time() + 30
    while not (d / "exit").exists() and time.time() < deadline:
        time.sleep(0.05)
    assert (d / "exit").read_text().split()[2] == "never"
    assert not (d / "cmd.sh.ran").exists()
