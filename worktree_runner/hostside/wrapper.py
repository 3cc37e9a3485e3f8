# wt-run worker wrapper: python3 wrapper.py WORKER_DIR [GRACE_SECONDS]
#
# Records its own identity (pid, start time, boot id) in `pid`, runs `sh cmd.sh`, and when the
# command has ended, for whatever reason, ends what is left of its process group (TERM, grace,
# KILL) before writing `exit` as "<value> <epoch> <how>": how is `exit` (value = exit code),
# `signal` (value = signal number, from the wait status) or `never` (stopped before starting).
# Every file is written by rename, so a reader never sees a torn one.
# Start-up is on every worker's critical path: only cheap built-in modules are imported up
# front (`_signal`, not `signal`, which pulls in enum; os.fork/exec, not subprocess).
import _signal as signal
import os
import sys
import time

WORKER_DIR = sys.argv[1] if len(sys.argv) > 1 else ""
HERE = os.path.dirname(os.path.abspath(__file__))
GRACE = float(sys.argv[2]) if len(sys.argv) > 2 else 10.0
ME = os.getpid()


def write(name, text):
    write_in(WORKER_DIR, name, text)


def stat_fields(pid):
    """/proc/PID/stat fields after the command name: [state, ppid, pgrp, ...]."""
    with open("/proc/%d/stat" % pid, "rb") as fh:
        raw = fh.read()
    return raw[raw.rindex(b")") + 2:].split()


def others_in_group(pgrp):
    """Live processes of the group other than this wrapper."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == ME:
            continue
        try:
            fields = stat_fields(int(entry))
        except (OSError, ValueError):
            continue
        if len(fields) > 2 and fields[0] != b"Z" and fields[2] == str(pgrp).encode():
            found.append(int(entry))
    return found


def children_of(pid):
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if stat_fields(int(entry))[1] == str(pid).encode():
                    kids.append(int(entry))
            except (OSError, ValueError, IndexError):
                continue
    return kids


def spawn(argv):
    """fork + exec with the signal dispositions a command expects (Python ignores SIGPIPE
    and SIGXFSZ; exec keeps ignored signals ignored)."""
    pid = os.fork()
    if pid == 0:
        try:
            for name in ("SIGPIPE", "SIGXFSZ"):
                if hasattr(signal, name):
                    signal.signal(getattr(signal, name), signal.SIG_DFL)
            os.execvp(argv[0], argv)
        finally:
            os._exit(127)
    return pid


def is_cmd_shell(pid):
    """True while the child is still the `sh cmd.sh` (it did not exec the command)."""
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as fh:
            argv = fh.read().split(b"\0")
    except OSError:
        return False
    return len(argv) > 1 and argv[1] == os.path.join(WORKER_DIR, "cmd.sh").encode()


def main(recorder=None):
    """Run the worker of WORKER_DIR. `recorder`: (pid, start ticks) of the launch's process
    that writes this worker's environment record; None: record it here, in a child.

    The wrapper's working directory is its worker directory for as long as the command's
    outcome is open, and `/` once it writes the exit record: readers take a process for this
    worker's wrapper only when pid, start time, boot id *and* that directory agree, so a `pid`
    file a worker rewrote can never point a stop at a stranger, nor an `exit` file it wrote
    end a wrapper that still runs."""
    global WORKER_DIR
    WORKER_DIR = os.path.abspath(WORKER_DIR)
    os.chdir(WORKER_DIR)
    try:
        os.setsid()  # a group of our own (already ours when started by setsid)
    except OSError:
        pass
    pgrp = os.getpgid(0)
    with open("/proc/sys/kernel/random/boot_id") as fh:
        boot = fh.read().strip()
    start_ticks = stat_fields(ME)[19].decode()
    write("pid", "%d %s %s %d\n" % (ME, start_ticks, boot, int(time.time())))

    state = {"forwarded": False, "child": None}

    def forward_term(signum, frame):
        # A signal for the wrapper alone (a user's kill) ends the whole group once. After
        # `wt-run stop` (its marker is written first) the whole group had it already: a
        # second TERM could land while the command saves its checkpoint.
        if not state["forwarded"]:
            state["forwarded"] = True
            if os.path.exists(os.path.join(WORKER_DIR, "stop")):
                return
            try:
                os.killpg(pgrp, signal.SIGTERM)
            except OSError:
                pass

    def forward_usr1(signum, frame):
        # Checkpoint-now goes to the command: the child itself once cmd.sh has exec'd it, else
        # the processes of the `sh cmd.sh` between them, which has no handler and would die of
        # it. Helper processes (data loaders) never see it.
        child = state["child"]
        if child is None:
            return
        targets = children_of(child) if is_cmd_shell(child) else [child]
        for pid in targets:
            try:
                os.kill(pid, signal.SIGUSR1)
            except OSError:
                pass

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward_term)
    signal.signal(signal.SIGUSR1, forward_usr1)

    if os.path.exists(os.path.join(WORKER_DIR, "stop")) or state["forwarded"]:
        os.chdir("/")
        write("exit", "0 %d never\n" % int(time.time()))
        return 143
    ooms_before = oom_kills()
    child = spawn(["sh", os.path.join(WORKER_DIR, "cmd.sh")])
    state["child"] = child
    if state["forwarded"]:
        os.kill(child, signal.SIGTERM)
    if recorder is None:
        pid = os.fork()
        if pid == 0:
            # The environment record, beside the command at the lowest CPU priority within
            # the worker's session: it yields to the command, and once the command has ended
            # it has the session's share to itself (the wrapper waits for it).
            try:
                os.nice(19)
                record_env()
            finally:
                os._exit(0)
        recorder = (pid, None)
    _, status = os.waitpid(child, 0)  # retried after a signal handler ran (PEP 475)
    if os.WIFSIGNALED(status):
        how, value = "signal", os.WTERMSIG(status)
    else:
        how, value = "exit", os.WEXITSTATUS(status)
    # The record is there before the exit record (bounded: 10 s at most).
    await_record(*recorder)

    # Whatever the command left in the group (data loader workers, `sh -c` children) would
    # keep memory and GPUs busy: end it, as Slurm does at the end of a step.
    state["forwarded"] = True
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    left = others_in_group(pgrp)
    if left:
        try:
            os.killpg(pgrp, signal.SIGTERM)
        except OSError:
            pass
        deadline = time.time() + GRACE
        while left and time.time() < deadline:
            time.sleep(0.1)
            left = others_in_group(pgrp)
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
    record = "%d %d %s\n" % (value, int(time.time()), how)
    if not retried(how, value, ooms_before, record):
        os.chdir("/")  # the outcome is final: no longer this worker's running wrapper
        write("exit", record)
        wake_queue()
        notify(how, value, ooms_before)
    return 128 + value if how == "signal" else value


def await_record(pid, ticks):
    """Wait until the recorder has ended (its pid gone, reaped, a zombie or reused) or
    written env.json, 10 s at most."""
    path = os.path.join(WORKER_DIR, "env.json")
    deadline, step = time.time() + 10, 0.005
    while time.time() < deadline and not os.path.exists(path):
        if ticks is None:
            try:
                if os.waitpid(pid, os.WNOHANG)[0]:
                    return
            except ChildProcessError:
                return
        else:
            try:
                fields = stat_fields(pid)
            except OSError:
                return
            if fields[0] == b"Z" or fields[19] != ticks:
                return
        # Backing off: many quick workers of one launch may be waiting at once.
        time.sleep(step)
        step = min(step * 1.5, 0.1)
    if ticks is None:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass


def background_priority():
    """A low CPU priority for the launch's recorder. Where the kernel groups processes by
    session (autogroup), nice only ranks a session's own processes: take a session of our own
    and give that session the least weight (nice 19), so it never slows the launch down."""
    try:
        os.setsid()
    except OSError:
        pass
    try:
        with open("/proc/self/autogroup", "w") as fh:
            fh.write("19")
    except OSError:
        pass
    os.nice(19)


def wake_queue():
    """A slot is free: wake this host's queue drainer now rather than at its next poll."""
    path = os.path.join(HERE, "queue", "drainer.pid")
    try:
        with open(path) as fh:
            fields = fh.read().split()
        pid = int(fields[0])
        if stat_fields(pid)[19].decode() == fields[1]:
            os.kill(pid, signal.SIGUSR1)
    except (OSError, ValueError, IndexError):
        pass


def oom_kills():
    """The kernel's count of OOM kills so far (/proc/vmstat), or None."""
    try:
        with open("/proc/vmstat") as fh:
            for line in fh:
                if line.startswith("oom_kill "):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


OOM_MARKS = (b"CUDA out of memory", b"OutOfMemoryError", b"CUBLAS_STATUS_ALLOC_FAILED")


def end_reason(how, value, ooms_before):
    """Why the command ended, in retry words: oom, killed, failed (None: it succeeded)."""
    try:
        with open(os.path.join(WORKER_DIR, "log"), "rb") as fh:
            fh.seek(0, 2)
            fh.seek(max(0, fh.tell() - 65536))
            tail = fh.read()
    except OSError:
        tail = b""
    if how == "exit" and value == 0:
        return None
    if any(mark in tail for mark in OOM_MARKS):
        return "oom"
    if how == "signal" and value == signal.SIGKILL:
        now = oom_kills()
        if ooms_before is not None and now is not None and now > ooms_before:
            return "oom"
    return "killed" if how == "signal" else "failed"


def may_retry(meta, reason):
    """Whether meta.json's retry policy reruns this worker after `reason`."""
    retry = meta.get("retry") or {}
    try:
        with open(os.path.join(WORKER_DIR, "attempt")) as fh:
            attempt = int(fh.read().split()[0])
    except (OSError, ValueError, IndexError):
        attempt = 1
    return reason in (retry.get("on") or []) and attempt <= int(retry.get("max") or 0)


def record_env(cache=None):
    """env.json: what the worker runs with (envinfo.py beside this file, from env.ctx), as
    its command starts; skipped when the host program is missing (an older install)."""
    sys.path.insert(0, HERE)
    try:
        import envinfo
    except ImportError:
        return
    envinfo.record_worker(WORKER_DIR, cache)


def read_meta(key):
    """meta.json, when it holds a value for `key` ({} otherwise): launch writes every key,
    mostly as null, and the json module is only imported when there is something to read."""
    try:
        with open(os.path.join(WORKER_DIR, "meta.json")) as fh:
            text = fh.read()
    except OSError:
        return {}
    if '"%s": null' % key in text or '"%s"' % key not in text:
        return {}
    import json

    try:
        meta = json.loads(text)
    except ValueError:
        return {}
    return meta if isinstance(meta, dict) else {}


def retried(how, value, ooms_before, record):
    """Back into the host's queue as the next attempt when the retry policy says so. The
    ended attempt's exit record goes straight to its shelf (attempts/<n>/), so no status
    ever sees this worker in a terminal state it is about to leave."""
    drainer = os.path.join(HERE, "drainer.py")
    if os.path.exists(os.path.join(WORKER_DIR, "stop")) or not os.path.exists(drainer):
        return False
    reason = end_reason(how, value, ooms_before)
    if reason is None or not may_retry(read_meta("retry"), reason):
        return False
    import subprocess

    print("wt-run: attempt ended (%s); retrying" % reason, flush=True)
    out = subprocess.run([sys.executable, "-S", drainer, HERE, "--requeue", WORKER_DIR],
                         stdout=subprocess.PIPE, check=False)
    shelf = None
    for line in out.stdout.decode("utf-8", "replace").splitlines():
        if line.startswith("shelf "):
            shelf = line[6:]
    if out.returncode != 0 or shelf is None:
        return False
    with open(os.path.join(shelf, "exit"), "w") as fh:
        fh.write(record)
    subprocess.Popen([sys.executable, "-S", drainer, HERE], stdin=subprocess.DEVNULL,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                     start_new_session=True, close_fds=True)
    return True


def notify(how, value, ooms_before):
    """Run the config's `notify` command on the host once the worker has ended for good; a
    failing notify never changes the worker's state."""
    meta = read_meta("notify")
    command = meta.get("notify")
    if not command:
        return
    stopped = os.path.exists(os.path.join(WORKER_DIR, "stop"))
    state = ("stopped" if stopped else "succeeded" if how == "exit" and value == 0 else
             "killed" if how == "signal" else "failed")
    import subprocess

    env = dict(os.environ, WT_RUN_NAME=str(meta.get("name", "")),
               WT_RUN_RUN=str(meta.get("run", "")), WT_RUN_STATE=state,
               WT_RUN_EXIT_CODE="" if how == "signal" else str(value))
    try:
        subprocess.run(["sh", "-c", command], env=env, stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120,
                       check=False)
    except (OSError, subprocess.SubprocessError):
        pass


def spawn_all(grace, pairs):
    """`wrapper.py --spawn GRACE INDEX DIR ...`: start one detached wrapper per worker
    directory, each a fork of this process in a session of its own (a fork costs far less than
    starting an interpreter per worker). Prints `started INDEX PID` and writes each `spawn`
    file by rename, as the shell launcher did."""
    global WORKER_DIR, GRACE, ME
    sys.stdout.flush()
    # One process records every worker's environment, one after the other at a low
    # priority, looking at what they share (worktree, interpreter, dataset) once.
    recorder = os.fork()
    if recorder == 0:
        try:
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)
            background_priority()
            cache = {}
            for directory in pairs[1::2]:
                WORKER_DIR = directory
                try:
                    record_env(cache)
                except Exception:
                    pass
        finally:
            os._exit(0)
    try:
        handle = (recorder, stat_fields(recorder)[19])
    except (OSError, IndexError):
        handle = (recorder, b"gone")
    for index, directory in zip(pairs[::2], pairs[1::2]):
        sys.stdout.flush()
        try:
            log = os.open(os.path.join(directory, "log"),
                          os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        except OSError as exc:
            print("error %s cannot open the log: %s" % (index, exc.strerror), flush=True)
            continue
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.setsid()
                null = os.open(os.devnull, os.O_RDONLY)
                os.dup2(null, 0)
                os.dup2(log, 1)
                os.dup2(log, 2)
                os.close(null)
                os.close(log)
                WORKER_DIR, GRACE, ME = directory, float(grace), os.getpid()
                sys.stdout = os.fdopen(1, "w")
                sys.stderr = os.fdopen(2, "w")
                code = main(handle)
            except BaseException as exc:
                print("wt-run wrapper: %r" % (exc,), file=sys.stderr, flush=True)
            finally:
                os._exit(code)
        os.close(log)
        write_in(directory, "spawn", "%d\n" % pid)
        print("started %s %d" % (index, pid))
    sys.stdout.flush()
    return 0


def write_in(directory, name, text):
    tmp = os.path.join(directory, name + ".tmp")
    with open(tmp, "w") as fh:
        fh.write(text)
    os.replace(tmp, os.path.join(directory, name))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--spawn"]:
        sys.exit(spawn_all(sys.argv[2], sys.argv[3:]))
    sys.exit(main())
