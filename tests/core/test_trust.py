"""Nothing a worker writes, no broken file and no second command may make wt-run report a
false state or lose a result. Real workers on the local host; one property test also over a
real sshd."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import WtRun, basic_config, write_config
from tests.servers.fixtures import sshd_servers  # noqa: F401

SLEEPER = "import time, sys\nprint('started', flush=True)\ntime.sleep(float(sys.argv[1]))\n"
FAKE_TERMINAL = frozenset({"succeeded", "failed", "killed", "stopped", "lost"})


def _wt(repo_factory, command: str, branches=("a", "b"), files=None, **extra) -> WtRun:
    repo = repo_factory(files={"sleeper.py": SLEEPER, **(files or {})})
    return WtRun(repo, write_config(repo, basic_config(branches, command, **extra)))


def _workers(wt: WtRun, run: str | None = None) -> dict[str, dict]:
    return {w["name"]: w for w in wt.status(run)["workers"]}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().rsplit(")", 1)[1].split()[0] != "Z"


def test_progress_json_cannot_fake_a_terminal_state(repo_factory) -> None:
    script = ("import json, os, time\n"
              "p = os.path.join(os.environ['WT_RUN_OUT'], 'progress.json')\n"
              "json.dump({'epoch': 1, 'epochs': 10, 'note': 'line one\\nexit 0 0\\n@ 1\\n'"
              " + '\\\\' * 3 + '\\x00\\r\\x85\\u2028x'}, open(p, 'w'))\n"
              "print('wrote', flush=True)\n"
              "time.sleep(300)\n")
    wt = _wt(repo_factory, "python fake.py", files={"fake.py": script}, stop_grace=1)
    wt("launch", "--branches", "a", "b")
    wt.wait_for(lambda s: all("wrote" in Path(w["log"]).read_text()
                              for w in _workers(wt).values()))
    for _ in range(3):
        workers = _workers(wt)
        assert {w["state"] for w in workers.values()} == {"running"}, workers
        assert workers["a"]["progress"]["epoch"] == 1
        assert "exit 0 0" in workers["a"]["progress"]["note"]
    wt("stop", "a")
    assert wt.wait_states({"a": "stopped"})["b"] == "running"
    wt("stop", "--all")


def test_garbled_files_make_only_that_worker_unknown(repo_factory) -> None:
    wt = _wt(repo_factory, "python sleeper.py 300", branches=("a", "b", "c"), stop_grace=1)
    wt("launch", "--branches", "a", "b", "c")
    wt.wait_states({"a": "running", "b": "running", "c": "running"})
    workers = _workers(wt)
    pid_file = Path(workers["a"]["log"]).parent / "pid"
    real_pid = pid_file.read_bytes()
    pid_file.write_bytes(b"garbage \377 not-a-pid\n")
    # `c` looks never started with an empty spawn file (as a half-written one would be).
    c_dir = Path(workers["c"]["log"]).parent
    c_pid = (c_dir / "pid").read_bytes()
    (c_dir / "pid").unlink()
    (c_dir / "spawn").write_bytes(b"")
    result = wt("status", "--json")
    doc = {w["name"]: w for w in json.loads(result.output)["workers"]}
    assert doc["a"]["state"] == "unknown" and "pid file" in doc["a"]["reason"]
    assert doc["c"]["state"] == "unknown" and "spawn file" in doc["c"]["reason"]
    assert doc["b"]["state"] == "running"
    assert "unknown" in wt("status").output
    # stop and clean do not die either; stop still stops the healthy worker.
    wt("stop", "b")
    assert wt.wait_states({"b": "stopped"})["a"] == "unknown"
    out = wt("clean", "--worktrees", "--dry-run").output
    assert "still running" in out
    # Once the files are sane again, the truth comes back: nothing was cached as terminal.
    pid_file.write_bytes(real_pid)
    (c_dir / "pid").write_bytes(c_pid)
    assert wt.wait_states({"a": "running", "c": "running"})
    wt("stop", "--all")
    wt.wait_states({"a": "stopped", "c": "stopped"})


def test_launch_writes_spawn_by_rename() -> None:
    from worktree_runner.workers import WRAPPER, LaunchSpec, launch_script

    script = launch_script("/r", [LaunchSpec("a", "/r/w", "/wt", "true", {})])
    # The launcher forks the wrappers and writes each spawn file through a temporary + rename.
    assert '--spawn "$G"' in script and '> "$d/spawn"' not in script
    assert 'write_in(directory, "spawn", ' in WRAPPER
    writer = WRAPPER[WRAPPER.index("def write_in("):]
    assert 'name + ".tmp"' in writer and "os.replace(tmp," in writer


def test_looking_at_an_old_run_never_makes_it_newest(repo_factory) -> None:
    wt = _wt(repo_factory, "python sleeper.py 300", branches=("a",), stop_grace=1)
    wt("launch", "--branches", "a")
    old = wt.status()["run"]
    time.sleep(1.1)  # run ids have one-second resolution
    wt("launch", "--branches", "a", "--force", "--run", "newer-run")
    assert wt.status()["run"] == "newer-run"
    wt("stop", "--all", "--run", old)
    wt("status", "--run", old)
    wt("logs", "a", "--run", old)
    assert wt.status()["run"] == "newer-run"
    wt("stop", "--all")


def test_clean_worktrees_refuses_uncollected_results(repo_factory) -> None:
    script = ("import os\nos.makedirs('results', exist_ok=True)\n"
              "open('results/x.txt', 'w').write('precious')\n")
    wt = _wt(repo_factory, "python res.py", branches=("a",), files={"res.py": script})
    wt("launch", "--branches", "a", "--wait")
    run = wt.status()["run"]
    worktree = Path(wt.status()["workers"][0]["worktree"])
    out = wt("clean", "--worktrees", ok=False).output
    assert f"run {run} not collected" in out and f"wt-run collect --run {run}" in out
    assert (worktree / "results/x.txt").read_text() == "precious"
    # A dry run lists the refusal with what it would keep, and changes nothing.
    out = wt("clean", "--worktrees", "--dry-run").output
    assert "keep" in out and f"run {run} not collected" in out, out
    assert (worktree / "results/x.txt").read_text() == "precious"
    wt("collect")
    wt("clean", "--worktrees")
    assert not worktree.exists()
    collected = list((wt.repo / "results").rglob("x.txt"))
    assert collected and collected[0].read_text() == "precious"
    # --force takes the user's word for it.
    wt("launch", "--branches", "a", "--wait")
    worktree = Path(wt.status()["workers"][0]["worktree"])
    wt("clean", "--worktrees", ok=False)
    wt("clean", "--worktrees", "--force")
    assert not worktree.exists()


def test_clean_worktrees_keeps_files_git_ignores_and_collect_does_not_take(repo_factory
                                                                          ) -> None:
    """A checkpoint under an ignored name (`*.pt` in .gitignore) is invisible to `git status`
    and not matched by `collect:`: removing the worktree would lose it for good."""
    script = ("import os\nos.makedirs('results', exist_ok=True)\n"
              "open('results/x.txt', 'w').write('r')\n"
              "open('model.pt', 'w').write('weights')\n"
              "os.makedirs('__pycache__', exist_ok=True)\n"
              "open('__pycache__/m.cpython-311.pyc', 'w').write('')\n")
    wt = _wt(repo_factory, "python res.py", branches=("a",),
             files={"res.py": script, ".gitignore": "*.pt\n"})
    wt("launch", "--branches", "a", "--wait")
    wt("collect")
    worktree = Path(wt.status()["workers"][0]["worktree"])
    out = wt("clean", "--worktrees", ok=False).output
    assert "does not track" in out and "model.pt" in out and "--force" in out, out
    assert "results/x.txt" not in out and "__pycache__" not in out
    assert (worktree / "model.pt").read_text() == "weights"
    (worktree / "model.pt").unlink()
    wt("clean", "--worktrees")  # collected results and caches do not hold it back
    assert not worktree.exists()


@pytest.mark.parametrize("how", ["sigkill", "exit"])
def test_children_never_outlive_their_worker(repo_factory, how: str) -> None:
    """A data-loader-like child keeps running after its parent dies or returns; the wrapper
    ends it, whatever way the command ended."""
    script = ("import os, subprocess, sys, time\n"
              "child = subprocess.Popen([sys.executable, '-c', "
              "'import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
              "time.sleep(300)'])\n"
              "print(f'child={child.pid} me={os.getpid()}', flush=True)\n"
              "time.sleep(300 if sys.argv[1] == 'sigkill' else 1)\n")
    wt = _wt(repo_factory, f"python spawner.py {how}", branches=("a",),
             files={"spawner.py": script}, stop_grace=1)
    wt("launch", "--branches", "a")
    log = Path(_workers(wt)["a"]["log"])
    wt.wait_for(lambda s: "child=" in log.read_text())
    fields = dict(kv.split("=") for kv in log.read_text().split("\n")[0].split())
    child = int(fields["child"])
    if how == "sigkill":
        os.kill(int(fields["me"]), 9)
        expected = "killed"
    else:
        expected = "succeeded"
    wt.wait_states({"a": expected})
    assert not _alive(child)


@pytest.mark.parametrize("code,state,exit_code,sig", [
    ("sys.exit(130)", "failed", 130, None),
    ("sys.exit(143)", "failed", 143, None),
    ("os.kill(os.getpid(), signal.SIGTERM)", "killed", None, 15),
    ("os.kill(os.getpid(), signal.SIGKILL)", "killed", None, 9)])
def test_killed_means_a_signal(repo_factory, code, state, exit_code, sig) -> None:
    script = f"import os, signal, sys\n{code}\n"
    wt = _wt(repo_factory, "python end.py", branches=("a",), files={"end.py": script})
    wt("launch", "--branches", "a", "--wait", ok=False)
    worker = _workers(wt)["a"]
    assert (worker["state"], worker["exit_code"], worker["signal"]) == (state, exit_code, sig)


def test_status_is_not_frozen_while_a_launch_prepares_worktrees(repo_factory) -> None:
    """A slow worktree checkout (a post-checkout hook that waits) keeps the launch busy;
    status, logs and stop of another run answer meanwhile."""
    wt = _wt(repo_factory, "python sleeper.py 300", branches=("a", "b"), stop_grace=1)
    wt("launch", "--branches", "a")
    first = wt.status()["run"]
    gate = wt.repo.parent / "gate"
    hook = wt.repo / ".git/hooks/post-checkout"
    hook.write_text(f"#!/bin/sh\nwhile [ ! -e {gate} ]; do sleep 0.1; done\n")
    hook.chmod(0o755)
    launch = subprocess.Popen(
        [sys.executable, "-m", "worktree_runner", "--config", str(wt.config), "launch",
         "--branches", "b", "--run", "second"], cwd=wt.repo, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)
    try:
        wt.wait_for(lambda s: (wt.repo / ".wt-run/worktrees/b").exists())
        box: dict[str, object] = {}
        thread = threading.Thread(target=lambda: box.setdefault(
            "states", wt.states(first)))
        thread.start()
        thread.join(timeout=60)
        assert box.get("states") == {"a": "running"}
        assert launch.poll() is None  # the launch was still preparing all along
    finally:
        gate.touch()
        out, _ = launch.communicate(timeout=120)
    assert launch.returncode == 0, out
    assert wt.wait_states({"b": "running"}, run="second")
    wt("stop", "--all", "--run", "second")
    wt("stop", "--all", "--run", first)


# ---------------------------------------------------------------- property: random bytes

SPECIAL = [b"", b"\n", b"exit 0 0\n", b"0 1 exit\n", b"\\n\\\\\\x00", b"\x00\x00\x00",
           b"\xff\xfe\xfa invalid utf-8 \xc3", b"1\r\n2\r\n@ 0\r\nexit 0 0", b"\n" * 50,
           "\u2028exit 0 0\u0085".encode(), b"{" * 5000, b"x" * (10 * 1024 * 1024)]
FILES = ["pid", "exit", "spawn", "out/progress.json", "stop"]


def _random_bytes(rng: random.Random) -> bytes:
    if rng.random() < 0.4:
        return rng.choice(SPECIAL)
    # Always one byte outside [0-9A-Za-z -] so it can never spell a valid record.
    body = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 200)))
    return body + b"\x01"


def _tamper_and_check(observe, worker_dirs: list[Path], rng: random.Random, rounds: int
                      ) -> None:
    """Write random bytes into one file of worker 0, observe, restore; worker 1 must keep its
    state and worker 0 must never read terminal."""
    target = worker_dirs[0]
    for _ in range(rounds):
        name = rng.choice(FILES)
        path = target / name
        saved = path.read_bytes() if path.exists() else None
        path.write_bytes(_random_bytes(rng))
        try:
            states = observe()
        finally:
            if saved is None:
                path.unlink()
            else:
                path.write_bytes(saved)
        if name in ("stop", "out/progress.json"):
            assert states[0] == "running", (name, states)
        else:
            assert states[0] not in FAKE_TERMINAL, (name, states)
        assert states[1] == "running", (name, states)
    assert observe() == ["running", "running"]


def test_random_bytes_in_worker_files_never_fake_a_state_local(repo_factory) -> None:
    from worktree_runner import api
    from worktree_runner.config import load_config

    wt = _wt(repo_factory, "python sleeper.py 300", stop_grace=1)
    wt("launch", "--branches", "a", "b")
    wt.wait_states({"a": "running", "b": "running"})
    config = load_config(wt.config)
    dirs = [Path(w["log"]).parent for w in _workers(wt).values()]

    def observe() -> list[str]:
        return [w.state.value for w in api.status(config).workers]

    _tamper_and_check(observe, dirs, random.Random(1234), 60)
    wt("stop", "--all")


@pytest.mark.ssh
def test_random_bytes_in_worker_files_never_fake_a_state_ssh(
        tmp_path, sshd_servers, monkeypatch) -> None:  # noqa: F811
    from tests.ssh.helpers import (
        make_repo,
        run_cli,
        ssh_host,
        status_json,
        wait_states,
        write_ssh_config,
    )
    from tests.ssh.helpers import write_config as write_ssh_wt_config

    (srv,) = sshd_servers(1)
    monkeypatch.setenv("WT_RUN_SSH_CONFIG",
                       str(write_ssh_config(tmp_path / "ssh_config", {"h1": srv})))
    repo = make_repo(tmp_path / "repo", ["v1", "v2"])
    config = write_ssh_wt_config(tmp_path / "wt-run.yaml", repo,
                                 {"h1": ssh_host("h1", tmp_path / "root")}, ["v1", "v2"],
                                 secs=300, default_host="h1")
    assert run_cli(config, "launch", "--branches", "v1", "v2").exit_code == 0
    doc = wait_states(config, {"v1": "running", "v2": "running"})
    dirs = [Path(w["log"]).parent for w in doc["workers"]]

    def observe() -> list[str]:
        return [w["state"] for w in status_json(config)["workers"]]

    _tamper_and_check(observe, dirs, random.Random(99), 25)
    run_cli(config, "stop", "--all")


FORGER = ("import os, sys, time\n"
          "d = os.path.dirname(os.environ['WT_RUN_OUT'])\n"
          "what = sys.argv[1]\n"
          "if what == 'pid':\n"
          "    victim = int(sys.argv[2])\n"
          "    ticks = open(f'/proc/{victim}/stat').read().rsplit(')', 1)[1].split()[19]\n"
          "    boot = open('/proc/sys/kernel/random/boot_id').read().strip()\n"
          "    open(os.path.join(d, 'pid'), 'w').write(f'{victim} {ticks} {boot} 1\\n')\n"
          "elif what == 'exit':\n"
          "    open(os.path.join(d, 'exit'), 'w').write(f'0 {int(time.time())} exit\\n')\n"
          "else:\n"
          "    os.mkfifo(os.path.join(os.environ['WT_RUN_OUT'], 'progress.json'))\n"
          "print('forged', flush=True)\n"
          "time.sleep(300)\n")


def _forging(repo_factory, *args: str) -> tuple[WtRun, Path]:
    wt = _wt(repo_factory, "python forge.py " + " ".join(args), branches=("a",),
             files={"forge.py": FORGER}, stop_grace=1)
    wt("launch", "--branches", "a")
    log = Path(_workers(wt)["a"]["log"])
    wt.wait_for(lambda s: "forged" in log.read_text())
    return wt, log


def test_a_pid_file_the_worker_rewrote_never_signals_a_stranger(repo_factory) -> None:
    """The pid file is in the worker's reach: pointed at another process (right pid, start
    time and boot id), stop must not signal it, and status must not call the worker running
    on that process's account."""
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"],
                                start_new_session=True)
    try:
        wt, _ = _forging(repo_factory, "pid", str(stranger.pid))
        assert _workers(wt)["a"]["state"] != "running"
        wt("stop", "a")
        assert stranger.poll() is None and _alive(stranger.pid)
    finally:
        stranger.kill()
        stranger.wait()


def test_stop_never_signals_pid_0_or_1(tmp_path: Path) -> None:
    """A pid file naming process 1 (the identity of pid 1 is easy to copy) or garbage: the stop
    script's `kill` is never reached for it. `kill` is shadowed to record what it was asked."""
    from worktree_runner.workers import stop_script

    ticks = Path("/proc/1/stat").read_text().rsplit(")", 1)[1].split()[19]
    boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    calls = tmp_path / "kill-calls"
    dirs = []
    for i, pid in enumerate(["1", "0", "-1", "1x"]):
        d = tmp_path / f"w{i}"
        d.mkdir()
        (d / "pid").write_text(f"{pid} {ticks} {boot} 1\n")
        dirs.append(str(d))
    script = f'kill() {{ echo "$*" >> {calls}; }}\n' + stop_script(dirs, 0.2)
    out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True,
                         cwd="/")
    assert out.stdout.split() == ["mismatch", "0", "mismatch", "1", "mismatch", "2",
                                  "mismatch", "3"]
    assert not calls.exists()


def test_an_exit_file_the_worker_wrote_does_not_end_it(repo_factory) -> None:
    """A running worker that writes `exit 0` into its own exit file still reads running,
    and stop still stops it."""
    wt, _ = _forging(repo_factory, "exit")
    for _ in range(3):
        assert _workers(wt)["a"]["state"] == "running"
    wt("stop", "a")
    worker = wt.status()["workers"][0]
    wt.wait_states({"a": "stopped"})
    assert not _alive(worker["pid"])


def test_a_fifo_in_place_of_progress_json_does_not_hang_status(repo_factory) -> None:
    wt, _ = _forging(repo_factory, "fifo")
    assert _workers(wt)["a"]["state"] == "running"
    wt("stop", "a")
    wt.wait_states({"a": "stopped"})


def test_stop_ends_what_a_killed_wrapper_left_running(repo_factory) -> None:
    """A user kills the pid status shows (the wrapper) with -9: the command runs on in its
    process group. It reads lost, and `stop` still ends it (only processes whose environment
    names this worker's output directory)."""
    script = ("import os, time\nprint(f'me={os.getpid()}', flush=True)\ntime.sleep(300)\n")
    wt = _wt(repo_factory, "python orphan.py", branches=("a",), files={"orphan.py": script},
             stop_grace=1)
    wt("launch", "--branches", "a")
    worker = _workers(wt)["a"]
    log = Path(worker["log"])
    wt.wait_for(lambda s: "me=" in log.read_text())
    command = int(log.read_text().split("me=")[1].split()[0])
    os.kill(worker["pid"], 9)
    wt.wait_states({"a": "lost"})
    assert "wt-run stop" in _workers(wt)["a"]["reason"]
    assert _alive(command)
    out = wt("stop", "a").output
    assert "stopping" in out, out
    wt.wait_for(lambda s: not _alive(command), timeout=30)
    assert wt.states()["a"] == "lost"  # no exit record was ever written: it stays lost


def test_stop_keeps_the_exit_record_when_a_child_ignores_term(repo_factory) -> None:
    """The command saves and exits on TERM, a helper it started ignores TERM. Past the grace
    stop KILLs the helper but lets the wrapper write the exit record: the exit code and end
    time are not lost, and nothing of the worker is left."""
    script = ("import os, signal, subprocess, sys, time\n"
              "child = subprocess.Popen([sys.executable, '-c', 'import signal, time; "
              "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)'])\n"
              "def bye(*_):\n"
              "    print('saved', flush=True)\n"
              "    sys.exit(143)\n"
              "signal.signal(signal.SIGTERM, bye)\n"
              "print(f'child={child.pid}', flush=True)\n"
              "time.sleep(300)\n")
    wt = _wt(repo_factory, "python stubborn.py", branches=("a",),
             files={"stubborn.py": script}, stop_grace=1)
    wt("launch", "--branches", "a")
    log = Path(_workers(wt)["a"]["log"])
    wt.wait_for(lambda s: "child=" in log.read_text())
    child = int(log.read_text().split("child=")[1].split()[0])
    wt("stop", "a")
    wt.wait_states({"a": "stopped"})
    worker = _workers(wt)["a"]
    assert "saved" in log.read_text()
    files = {f.name: f.read_text()[:200] for f in log.parent.iterdir() if f.is_file()}
    assert worker["exit_code"] == 143 and worker["ended_at"] is not None, (worker, files)
    assert not _alive(child)
