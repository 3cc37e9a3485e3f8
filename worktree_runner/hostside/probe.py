# wt-run status probe: python3 probe.py ROOT WORKER_DIR...
#
# Prints one line, "wtjson " + a JSON document: the host's health and, for each worker
# directory, what its files hold. Every byte a worker wrote travels as a JSON string (invalid
# UTF-8 replaced), so nothing in a worker file can ever read as part of the protocol.
import os
import sys
import time

try:  # the C string encoder alone: importing json (its decoder imports re and enum) would
    # cost a status call about 20 ms; subprocess, only needed with nvidia-smi, another 14 ms.
    from _json import encode_basestring_ascii as quote
except ImportError:  # not CPython
    from json import dumps as quote

SMALL = 4096  # pid, exit, spawn: one short line each
PROGRESS = 65536  # progress.json larger than this is not read


def read_text(path, limit):
    """(text or None when absent, problem or None). Opened without blocking and read only
    when it is a plain file: a FIFO a worker made in its place must not hang the probe."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        return None, None
    except OSError as exc:
        return None, "unreadable (%s)" % exc.strerror
    try:
        if os.fstat(fd).st_mode & 0o170000 != 0o100000:
            return None, "not a plain file"
        data = os.read(fd, limit + 1)
    except OSError as exc:
        return None, "unreadable (%s)" % exc.strerror
    finally:
        os.close(fd)
    if len(data) > limit:
        return None, "larger than %d bytes" % limit
    return data.decode("utf-8", "replace"), None


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def start_ticks(pid):
    try:
        with open("/proc/%d/stat" % pid, "rb") as fh:
            raw = fh.read()
        fields = raw[raw.rindex(b")") + 2:].split()
        # A zombie (dead, not yet reaped by its parent) is not alive.
        return None if fields[0] in (b"Z", b"X") else fields[19].decode()
    except (OSError, ValueError, IndexError):
        return None


def at_home(pid, d):
    """Whether process `pid` works in directory `d`, as a worker's wrapper does until it writes
    its exit record; None when that cannot be seen (another user's process)."""
    try:
        return os.readlink("/proc/%d/cwd" % pid) == os.path.realpath(d)
    except OSError:
        return None


def leading_int(text):
    try:
        value = int(text.split()[0])
    except (ValueError, IndexError, AttributeError):
        return None
    return value if value > 0 else None


def worker(d):
    if not os.path.isdir(d):
        return {"nodir": True}
    files = {}
    problems = {}
    # The spawned wrapper's liveness first: once it is seen dead, the pid and exit files read
    # next are final (read after them, a quick worker could finish in between and look lost).
    spawn, problems["spawn"] = read_text(os.path.join(d, "spawn"), SMALL)
    if spawn is not None:
        files["spawn"] = spawn
        pid = leading_int(spawn)
        files["spawn_alive"] = alive(pid) if pid else None
    text, problems["pid"] = read_text(os.path.join(d, "pid"), SMALL)
    if text is not None:
        files["pid"] = text
        pid = leading_int(text)
        files["now"] = start_ticks(pid) if pid else None
        files["home"] = at_home(pid, d) if files["now"] else None
    files["exit"], problems["exit"] = read_text(os.path.join(d, "exit"), SMALL)
    files["stop"] = os.path.lexists(os.path.join(d, "stop"))
    files["progress"], problems["progress"] = read_text(
        os.path.join(d, "out", "progress.json"), PROGRESS)
    files["env"], _ = read_text(os.path.join(d, "env.json"), PROGRESS)
    for name in ("queued", "attempt", "gpus"):
        files[name], _ = read_text(os.path.join(d, name), SMALL)
    files["problems"] = {k: v for k, v in problems.items() if v}
    return files


def dumps(value):
    """JSON text of plain data: dict, list, str, int, float, bool, None."""
    if isinstance(value, str):
        return quote(value)
    if value is None or value is True or value is False:
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, int):
        return int.__repr__(value)
    if isinstance(value, float):
        return float.__repr__(value) if value - value == 0 else "null"  # nan, inf: null
    if isinstance(value, dict):
        return "{" + ",".join(quote(str(k)) + ":" + dumps(v) for k, v in value.items()) + "}"
    return "[" + ",".join(dumps(v) for v in value) + "]"


def on_path(name):
    for d in os.environ.get("PATH", os.defpath).split(os.pathsep):
        path = os.path.join(d or ".", name)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return True
    return False


def gpus():
    if not on_path("nvidia-smi"):
        return []
    import subprocess

    try:
        out = subprocess.run(
            ["nvidia-smi", "--format=csv,noheader,nounits",
             "--query-gpu=index,utilization.gpu,memory.used,memory.total,name"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, timeout=20, check=False)
    except (OSError, subprocess.SubprocessError):
        return []
    found = []
    for line in out.stdout.decode("utf-8", "replace").splitlines():
        cells = [c.strip() for c in line.split(",")]
        if len(cells) >= 4:
            found.append({"index": cells[0], "utilization": cells[1], "memory_used": cells[2],
                          "memory_total": cells[3], "name": ", ".join(cells[4:]) or None})
    return found


def health(root):
    doc = {"time": time.time()}
    try:
        with open("/proc/sys/kernel/random/boot_id") as fh:
            doc["boot"] = fh.read().strip()
    except OSError:
        doc["boot"] = ""
    try:
        doc["load"] = list(os.getloadavg())
    except OSError:
        doc["load"] = None
    try:
        st = os.statvfs(root)
        doc["disk_free_bytes"] = st.f_bavail * st.f_frsize
    except OSError:
        doc["disk_free_bytes"] = None
    doc["gpus"] = gpus()
    return doc


def queue(root):
    """The host's queue: waiting entries in order, and whether a drainer works on them."""
    qdir = os.path.join(root, "queue")
    try:
        waiting = sorted(n for n in os.listdir(os.path.join(qdir, "entries"))
                         if not n.startswith(".") and ".tmp" not in n)
    except OSError:
        waiting = []
    text, _ = read_text(os.path.join(qdir, "drainer.pid"), SMALL)
    fields = (text or "").split()
    pid = leading_int(text or "")
    running = bool(pid and len(fields) > 1 and start_ticks(pid) == fields[1])
    return {"waiting": waiting, "drainer": running}


def main(argv):
    doc = health(argv[1])
    doc["queue"] = queue(argv[1])
    doc["workers"] = [worker(d) for d in argv[2:]]
    sys.stdout.write("wtjson " + dumps(doc) + "\n")


if __name__ == "__main__":
    main(sys.argv)
