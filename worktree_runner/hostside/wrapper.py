# wt-run worker wrapper: python3 wrapper.py WORKER_DIR [GRACE_SECONDS]
#
# Records its own identity (pid, start time, boot id) in `pid`, runs `sh cmd.sh`, and when the
# command has ended, for whatever reason, ends what is left of its process group (TERM, grace,
# KILL) before writing `exit` as "<value> <epoch> <how>": how is `exit` (value = exit code),
# `signal` (value = signal number, from the wait status) or `never` (stopped before starting).
# Every file is written by rename, so a reader never sees a torn one.
import os
import signal
import subprocess
import sys
import time

WORKER_DIR = sys.argv[1]
GRACE = float(sys.argv[2]) if len(sys.argv) > 2 else 10.0
ME = os.getpid()


def write(name, text):
    tmp = os.path.join(WORKER_DIR, name + ".tmp")
    with open(tmp, "w") as fh:
        fh.write(text)
    os.replace(tmp, os.path.join(WORKER_DIR, name))


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


def is_cmd_shell(pid):
    """True while the child is still the `sh cmd.sh` (it did not exec the command)."""
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as fh:
            argv = fh.read().split(b"\0")
    except OSError:
        return False
    return len(argv) > 1 and argv[1] == os.path.join(WORKER_DIR, "cmd.sh").encode()


def main():
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
        # A signal for the wrapper alone (Slurm, a user's kill) ends the whole group once.
        if not state["forwarded"]:
            state["forwarded"] = True
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
        targets = children_of(child.pid) if is_cmd_shell(child.pid) else [child.pid]
        for pid in targets:
            try:
                os.kill(pid, signal.SIGUSR1)
            except OSError:
                pass

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward_term)
    signal.signal(signal.SIGUSR1, forward_usr1)

    if os.path.exists(os.path.join(WORKER_DIR, "stop")) or state["forwarded"]:
        write("exit", "0 %d never\n" % int(time.time()))
        return 143
    child = subprocess.Popen(["sh", os.path.join(WORKER_DIR, "cmd.sh")])
    state["child"] = child
    if state["forwarded"]:
        child.terminate()
    rc = child.wait()
    how, value = ("signal", -rc) if rc < 0 else ("exit", rc)

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
    write("exit", "%d %d %s\n" % (value, int(time.time()), how))
    return 128 + value if how == "signal" else value


if __name__ == "__main__":
    sys.exit(main())
