# wt-run host queue: python3 drainer.py ROOT [--enqueue DIR GRACE NEEDS_GPU ...]
#
# Queued workers wait as files in ROOT/queue/entries/<seq> (FIFO by name). This program,
# started detached by a launch (or by a worker that ended, or by `wt-run resume`), starts
# them as slots and GPUs free up, and exits as soon as the queue is empty: nothing of wt-run
# keeps running on the host. Only one drainer runs per host root (a lock), and every change
# to the queue happens under ROOT/queue/lock, so two clients never double-book a slot.
#
# ROOT/queue/config.json  {"slots": N or null, "gpus": [...], "gpu_free_mib": MiB}
# ROOT/queue/running/<seq> entries that were started, until their worker has ended
import fcntl
import json
import os
import select
import signal
import subprocess
import sys
import time

ROOT = sys.argv[1]
Q = os.path.join(ROOT, "queue")
ENTRIES = os.path.join(Q, "entries")
RUNNING = os.path.join(Q, "running")
POLL = 0.25  # a worker that ends wakes the drainer at once (SIGUSR1); this catches the rest


def ensure_dirs():
    for d in (Q, ENTRIES, RUNNING):
        os.makedirs(d, mode=0o700, exist_ok=True)


class Lock:
    def __init__(self, name, blocking=True):
        self.fh = open(os.path.join(Q, name), "a+")
        flags = fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB)
        fcntl.flock(self.fh, flags)

    def release(self):
        fcntl.flock(self.fh, fcntl.LOCK_UN)
        self.fh.close()


def read(path, limit=65536):
    try:
        with open(path, "rb") as fh:
            return fh.read(limit).decode("utf-8", "replace")
    except OSError:
        return None


def write(path, text):
    tmp = path + ".tmp%d" % os.getpid()
    with open(tmp, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def boot_id():
    return (read("/proc/sys/kernel/random/boot_id") or "").strip()


def start_ticks(pid):
    raw = read("/proc/%d/stat" % pid, 4096)
    try:
        fields = raw[raw.rindex(")") + 2:].split()
        # A zombie (dead, not yet reaped by its parent) is not alive.
        return None if fields[0] in ("Z", "X") else fields[19]
    except (AttributeError, ValueError, IndexError):
        return None


def new_seq():
    return "%020d-%06d" % (time.time() * 1e9, os.getpid() % 1000000)


def enqueue(items, locked=False):
    """items: [(worker_dir, grace, needs_gpu)]; in order, one sequence number each."""
    ensure_dirs()
    lock = None if locked else Lock("lock")
    try:
        for d, grace, gpu in items:
            seq = new_seq()
            while os.path.exists(os.path.join(ENTRIES, seq)):
                time.sleep(0.000001)
                seq = new_seq()
            entry = {"dir": d, "grace": float(grace), "gpu": gpu == "1"}
            write(os.path.join(d, "queued"), seq + "\n")
            write(os.path.join(ENTRIES, seq), json.dumps(entry))
            print("queued %s %s" % (seq, d))
    finally:
        if lock is not None:
            lock.release()


SHELVED = ("pid", "exit", "spawn", "log", "queued", "gpus", "env.json", "out")


def requeue(d, locked=False):
    """Put a worker that ended (or was lost) back into the queue as its next attempt; what
    the last attempt left moves to attempts/<n>/."""
    n = 1
    while os.path.exists(os.path.join(d, "attempts", str(n))):
        n += 1
    shelf = os.path.join(d, "attempts", str(n))
    os.makedirs(shelf)
    for name in SHELVED:
        if os.path.lexists(os.path.join(d, name)):
            os.replace(os.path.join(d, name), os.path.join(shelf, name))
    os.makedirs(os.path.join(d, "out"), exist_ok=True)
    write(os.path.join(d, "attempt"), "%d\n" % (n + 1))
    print("shelf " + shelf, flush=True)
    meta = read_meta(d)
    enqueue([(d, meta.get("grace", 10.0), "1" if meta.get("gpu") else "0")], locked=locked)


def read_meta(d):
    try:
        meta = json.loads(read(os.path.join(d, "meta.json")) or "{}")
    except ValueError:
        return {}
    return meta if isinstance(meta, dict) else {}


def may_retry(d, reason):
    """Whether the worker's retry policy (meta.json) reruns it after `reason`."""
    retry = read_meta(d).get("retry") or {}
    try:
        attempt = int((read(os.path.join(d, "attempt")) or "1").split()[0])
    except (ValueError, IndexError):
        return False
    return (reason in (retry.get("on") or []) and attempt <= int(retry.get("max") or 0)
            and not os.path.exists(os.path.join(d, "stop")))


def worker_ended(entry):
    """True once a started worker no longer holds its slot."""
    d = entry["dir"]
    if os.path.exists(os.path.join(d, "exit")):
        return True
    pid_text = read(os.path.join(d, "pid"))
    if pid_text:
        fields = pid_text.split()
        try:
            pid = int(fields[0])
        except (ValueError, IndexError):
            return True
        return len(fields) < 3 or fields[2] != boot_id() or start_ticks(pid) != fields[1]
    spawn = entry.get("spawn")
    if spawn is None:
        return False
    try:
        os.kill(spawn, 0)
    except ProcessLookupError:
        # The wrapper may have ended quickly (exit written just above) or died unrecorded.
        return True
    except PermissionError:
        pass
    return start_ticks(spawn) != entry.get("spawn_ticks")


def our_groups(running):
    groups = set()
    for entry in running.values():
        fields = (read(os.path.join(entry["dir"], "pid")) or "").split()
        if fields and fields[0].isdigit():
            groups.add(int(fields[0]))
    return groups


def foreign_gpu_use(running):
    """GPU index -> MiB used by processes that are not wt-run workers of this host."""
    def query(args):
        try:
            out = subprocess.run(["nvidia-smi", "--format=csv,noheader,nounits"] + args,
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                 timeout=20, check=False)
        except (OSError, subprocess.SubprocessError):
            return None
        if out.returncode != 0:
            return None
        return [[c.strip() for c in line.split(",")]
                for line in out.stdout.decode("utf-8", "replace").splitlines() if line.strip()]

    gpus = query(["--query-gpu=index,uuid,memory.used"])
    if gpus is None:
        return {}
    apps = query(["--query-compute-apps=gpu_uuid,pid,used_memory"]) or []
    ours = our_groups(running)
    mine = {}
    for row in apps:
        if len(row) < 3 or not row[1].isdigit():
            continue
        try:
            in_ours = os.getpgid(int(row[1])) in ours
        except OSError:
            in_ours = False
        if in_ours:
            try:
                mine[row[0]] = mine.get(row[0], 0.0) + float(row[2])
            except ValueError:
                pass
    use = {}
    for row in gpus:
        if len(row) >= 3:
            try:
                use[row[0]] = float(row[2]) - mine.get(row[1], 0.0)
            except ValueError:
                use[row[0]] = float("inf")
    return use


def start(entry, gpus):
    d = entry["dir"]
    if gpus:
        write(os.path.join(d, "gpus"), ",".join(gpus) + "\n")
    log = open(os.path.join(d, "log"), "ab")
    proc = subprocess.Popen(
        [sys.executable, "-S", os.path.join(ROOT, "wrapper.py"), d,
         str(entry.get("grace", 10.0))],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, close_fds=True,
        start_new_session=True)
    log.close()
    write(os.path.join(d, "spawn"), "%d\n" % proc.pid)
    entry["spawn"] = proc.pid
    entry["spawn_ticks"] = start_ticks(proc.pid)
    entry["gpus"] = list(gpus)


def load(directory):
    out = {}
    for name in sorted(os.listdir(directory)):
        if ".tmp" in name:
            continue
        try:
            out[name] = json.loads(read(os.path.join(directory, name)) or "")
        except ValueError:
            continue
    return out


def schedule_once(config, gpu_cache):
    """One pass under the queue lock; returns the number of entries still waiting."""
    lock = Lock("lock")
    try:
        running = load(RUNNING)
        for seq, entry in list(running.items()):
            if worker_ended(entry):
                os.unlink(os.path.join(RUNNING, seq))
                del running[seq]
                d = entry["dir"]
                # A wrapper gone without an exit record: its worker is lost.
                if not os.path.exists(os.path.join(d, "exit")) and may_retry(d, "lost"):
                    requeue(d, locked=True)
        waiting = load(ENTRIES)
        slots = config.get("slots")
        all_gpus = [str(g) for g in config.get("gpus") or []]
        held = {g for e in running.values() for g in e.get("gpus") or []}
        for seq, entry in waiting.items():
            if slots is not None and len(running) >= slots:
                break
            chosen = []
            if entry.get("gpu") and all_gpus:
                free = [g for g in all_gpus if g not in held]
                if free:
                    now = time.time()
                    if now - gpu_cache.get("at", 0) > 2.0:
                        gpu_cache["use"] = foreign_gpu_use(running)
                        gpu_cache["at"] = now
                    limit = float(config.get("gpu_free_mib", 1024))
                    free = [g for g in free if gpu_cache["use"].get(g, 0.0) < limit]
                if not free:
                    break  # FIFO: the head waits for a GPU, nobody overtakes it
                chosen = [free[0]]
                held.add(free[0])
            src = os.path.join(ENTRIES, seq)
            try:
                os.rename(src, os.path.join(RUNNING, seq))
            except OSError:
                continue  # taken out of the queue meanwhile (stopped)
            # Started even when a stop marker is there: the wrapper is the one place that
            # turns a stop before the start into its exit record (dropping the entry here
            # would leave the worker pending forever).
            start(entry, chosen)
            write(os.path.join(RUNNING, seq), json.dumps(entry))
            running[seq] = entry
            gpu_cache["at"] = 0  # placements changed: look again before the next GPU
        return len(os.listdir(ENTRIES))
    finally:
        lock.release()


def drain():
    ensure_dirs()
    try:
        single = Lock("drainer.lock", blocking=False)
    except OSError:
        return 0  # another drainer already works on this queue
    write(os.path.join(Q, "drainer.pid"),
          "%d %s %s\n" % (os.getpid(), start_ticks(os.getpid()), boot_id()))
    gpu_cache = {}
    # Any signal (a wrapper's SIGUSR1 when its worker ended) writes to this pipe and ends the
    # wait below at once.
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGUSR1, lambda signum, frame: None)
    try:
        while True:
            config = {}
            try:
                config = json.loads(read(os.path.join(Q, "config.json")) or "{}")
            except ValueError:
                pass
            left = schedule_once(config, gpu_cache)
            while True:  # reap the wrappers this drainer started
                try:
                    pid, _ = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    break
                if pid == 0:
                    break
            if left == 0:
                return 0
            ready, _, _ = select.select([wake_r], [], [], POLL)
            if ready:
                os.read(wake_r, 4096)
    finally:
        single.release()


if __name__ == "__main__":
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    if len(sys.argv) > 2 and sys.argv[2] == "--enqueue":
        rest = sys.argv[3:]
        enqueue([tuple(rest[i:i + 3]) for i in range(0, len(rest), 3)])
    elif len(sys.argv) > 3 and sys.argv[2] == "--requeue":
        ensure_dirs()
        lock = Lock("lock")
        try:
            requeue(sys.argv[3], locked=True)
        finally:
            lock.release()
    else:
        sys.exit(drain())
