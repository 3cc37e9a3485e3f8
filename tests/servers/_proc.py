"""Small process helpers shared by the test servers (no psutil on the test machines)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable
from pathlib import Path

# A process is identified by (pid, start time in clock ticks) so that a recycled pid is never
# signalled by mistake.
ProcId = tuple[int, int]


# Daemons live in sbin, which is not always on a non-login PATH.
_SBIN_DIRS = ("/usr/local/sbin", "/usr/sbin", "/sbin")


def which(name: str) -> str | None:
    """Absolute path of executable ``name`` (PATH, then the sbin dirs), or None."""
    found = shutil.which(name)
    if found:
        return found
    path = os.pathsep.join([os.environ.get("PATH", ""), *_SBIN_DIRS])
    return shutil.which(name, path=path)


def free_port() -> int:
    """A TCP port that is free right now on all interfaces (the usual small race applies)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        return int(sock.getsockname()[1])


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ")".
    return raw[raw.rfind(")") + 2 :].split()


def proc_id(pid: int) -> ProcId | None:
    """(pid, starttime) of a live process, or None if it is gone or a zombie."""
    fields = _stat_fields(pid)
    if fields is None or fields[0] == "Z":
        return None
    return (pid, int(fields[19]))


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields is None:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    return children


def process_tree(root: int) -> list[ProcId]:
    """The live process ``root`` and all its descendants, root first."""
    children = _children_map()
    found: list[ProcId] = []
    todo = [root]
    while todo:
        pid = todo.pop()
        ident = proc_id(pid)
        if ident is not None:
            found.append(ident)
        todo.extend(children.get(pid, []))
    return found


def signal_procs(procs: Iterable[ProcId], sig: int) -> None:
    """Send ``sig`` to each process that is still the same process (pid + start time)."""
    for pid, start in procs:
        if proc_id(pid) == (pid, start):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)


def kill_tree(root: int) -> list[ProcId]:
    """SIGKILL ``root`` and all its descendants, without letting any escape.

    Killing the root first would reparent its children to init before we could find them, and
    a live root could fork while we walk /proc; so the whole tree is frozen (SIGSTOP) until the
    set of descendants stops growing, then everything gets SIGKILL.
    """
    frozen: dict[int, ProcId] = {}
    for _ in range(20):
        new = [p for p in process_tree(root) if p[0] not in frozen]
        if not new:
            break
        signal_procs(new, signal.SIGSTOP)
        frozen.update({p[0]: p for p in new})
    victims = list(frozen.values())
    signal_procs(victims, signal.SIGKILL)
    return victims


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds have passed."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def wait_gone(procs: Iterable[ProcId], timeout: float) -> bool:
    procs = list(procs)
    return wait_until(lambda: all(proc_id(pid) != (pid, st) for pid, st in procs), timeout)


def reap(proc: subprocess.Popen[bytes] | None, timeout: float = 10.0) -> None:
    """Collect a child's exit status so it does not linger as a zombie."""
    if proc is None:
        return
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)


def stop_process(proc: subprocess.Popen[bytes] | None, grace: float = 5.0) -> None:
    """SIGTERM a daemon we started, SIGKILL it and its descendants if it does not exit."""
    if proc is None or proc.poll() is not None:
        reap(proc)
        return
    tree = process_tree(proc.pid)
    signal_procs(tree[:1], signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        kill_tree(proc.pid)
    reap(proc)
    # Descendants that outlived their parent (e.g. per-connection sshd processes) die too.
    signal_procs(tree[1:], signal.SIGKILL)
    wait_gone(tree, grace)


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"
    return "\n".join(text.splitlines()[-lines:])
