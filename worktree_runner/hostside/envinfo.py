# wt-run environment record, written as env.json as a worker's command starts.
#
# Imported by wrapper.py's recorder process (one per launch, or one beside a queued or Slurm
# worker): what else could make two results differ. The
# worker's python is found as its cmd.sh finds it (the worktree's .venv, else `python` on
# PATH); package versions come from the metadata folder names in its site-packages (a
# listing: nothing is imported). Written by rename.
# It runs on every worker's start: only cheap modules (no subprocess, socket, glob, re).
import os

try:  # the built-in SHA-256, without loading OpenSSL (hashlib) for it
    from _sha2 import sha256
except ImportError:
    try:
        from _sha256 import sha256
    except ImportError:
        from hashlib import sha256


def which(name):
    for d in os.environ.get("PATH", "").split(os.pathsep):
        path = os.path.join(d or ".", name)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def run(argv, cwd=None):
    """stdout of a short command, or None when it fails (fork/exec, no subprocess module)."""
    exe = which(argv[0])
    if exe is None:
        return None
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.dup2(write_end, 1)
            null = os.open(os.devnull, os.O_RDWR)
            os.dup2(null, 0)
            os.dup2(null, 2)
            if cwd:
                os.chdir(cwd)
            os.execv(exe, argv)
        finally:
            os._exit(127)
    os.close(write_end)
    chunks = []
    while True:
        chunk = os.read(read_end, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(read_end)
    _, status = os.waitpid(pid, 0)
    if not os.WIFEXITED(status) or os.WEXITSTATUS(status) != 0:
        return None
    return b"".join(chunks).decode("utf-8", "replace").strip()


def site_dirs(prefix):
    lib = os.path.join(prefix, "lib")
    try:
        names = sorted(n for n in os.listdir(lib) if n.startswith("python3"))
    except OSError:
        return []
    return [os.path.join(lib, n, sub) for n in names for sub in ("site-packages", "dist-packages")
            if os.path.isdir(os.path.join(lib, n, sub))]


def worker_python(worktree):
    """(site-packages dirs, python version) of the interpreter the command will use."""
    venv = os.path.join(worktree, ".venv")
    if not os.path.isfile(os.path.join(venv, "bin", "python")):
        exe = which("python") or which("python3")
        if not exe:
            return [], None
        real = os.path.realpath(exe)
        venv = os.path.dirname(os.path.dirname(exe))
        if not os.path.isfile(os.path.join(venv, "pyvenv.cfg")):
            venv = os.path.dirname(os.path.dirname(real))
    version = None
    cfg = os.path.join(venv, "pyvenv.cfg")
    if os.path.isfile(cfg):
        with open(cfg) as fh:
            for line in fh:
                key, _, value = line.partition("=")
                if key.strip() in ("version", "version_info"):
                    version = value.strip()
    dirs = site_dirs(venv)
    if version is None and dirs:
        version = os.path.basename(os.path.dirname(dirs[0]))[len("python"):] or None
    return dirs, version


def packages(info, dirs):
    seen = set()
    for path in dirs:
        try:
            names = os.listdir(path)
        except OSError:
            continue
        for entry in names:
            for suffix in (".dist-info", ".egg-info"):
                if entry.endswith(suffix):
                    name, _, version = entry[:-len(suffix)].partition("-")
                    seen.add((name.lower().replace("_", "-"), version.split("-py")[0]))
    info["packages_hash"] = sha256(
        "\n".join("%s==%s" % p for p in sorted(seen)).encode()).hexdigest()[:16]
    info["packages_count"] = len(seen)
    versions = dict(seen)
    for name in ("torch", "numpy"):
        info[name] = versions.get(name)


def gpus(info, visible):
    info["gpu"] = info["driver"] = None
    out = run(["nvidia-smi", "--query-gpu=index,name,driver_version", "--format=csv,noheader"])
    if not out:
        return
    wanted = None if visible is None else set(visible.split(","))
    names, drivers = [], set()
    for line in out.splitlines():
        cells = [c.strip() for c in line.split(",")]
        if len(cells) >= 3 and (wanted is None or cells[0] in wanted):
            names.append(cells[1])
            drivers.add(cells[2])
    info["gpu"] = ", ".join(sorted(set(names))) or None
    info["driver"] = ", ".join(sorted(drivers)) or None


def code(info, worktree):
    # One git process for both the commit and the changes to tracked files.
    out = run(["git", "status", "--porcelain=v2", "--branch", "--untracked-files=no"],
              cwd=worktree)
    lines = (out or "").splitlines()
    oid = [line[len("# branch.oid "):] for line in lines if line.startswith("# branch.oid ")]
    info["commit"] = oid[0] if oid and oid[0] != "(initial)" else None
    changes = [line for line in lines if line and not line.startswith("#")]
    info["dirty"] = bool(changes)
    # The uncommitted changes as a commit (like `git stash create`), kept under a ref per
    # worker (below) so the exact code can be recovered and diffed later.
    info["stash"] = run(["git", "stash", "create", "wt-run snapshot"],
                        cwd=worktree) if changes else None


def snapshot(info, worktree, run_id, name):
    sha = info.pop("stash", None)
    info["snapshot"] = None
    if sha:
        ref = "refs/wt-run/snapshots/%s/%s" % (run_id, name)
        if run(["git", "update-ref", ref, sha], cwd=worktree) is not None:
            info["snapshot"] = sha
            info["snapshot_ref"] = ref


def data(info, path):
    info["data_fingerprint"] = None
    if not path or not os.path.isdir(path):
        return
    h = sha256()
    summary = os.path.join(path, "dataset.json")
    if os.path.isfile(summary):
        with open(summary, "rb") as fh:
            h.update(fh.read())
    else:
        count = 0
        for top, dirs, files in os.walk(path):
            dirs.sort()
            for f in sorted(files):
                try:
                    st = os.stat(os.path.join(top, f))
                except OSError:
                    continue
                rel = os.path.relpath(os.path.join(top, f), path)
                h.update(("%s\0%d\0%d\n" % (rel, st.st_size, int(st.st_mtime))).encode())
                count += 1
                if count >= 20000:
                    break
    info["data_fingerprint"] = h.hexdigest()[:16]


def unescape(text):
    """One line of env.ctx back to its value (`\\n` a newline, `\\\\` a backslash)."""
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text):
            out.append("\n" if text[i + 1] == "n" else text[i + 1])
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def record_worker(worker_dir, cache=None):
    """The record of one worker directory: what to look at comes from its env.ctx (worktree,
    data, run, name, GPUs; escaped lines), the GPU its queue chose from its `gpus` file."""
    try:
        with open(os.path.join(worker_dir, "env.ctx")) as fh:
            lines = fh.read().split("\n")
    except OSError:
        return
    values = [unescape(v) for v in lines[:5]]
    if len(values) < 5 or not values[0]:
        return
    meta = dict(zip(("worktree", "data", "run", "name", "gpus"), values))
    visible = meta.get("gpus") or None
    try:
        with open(os.path.join(worker_dir, "gpus")) as fh:
            visible = fh.read().split()[0]
    except (OSError, IndexError):
        pass
    record(os.path.join(worker_dir, "env.json"), meta, visible, cache)


def record(out_path, meta, visible_gpus, cache=None):
    """Write the environment record; never raises (a worker must start regardless).

    `cache` (a dict) lets one process record many workers of a launch: what depends only on
    the worktree, its interpreter, the visible GPUs or the dataset is looked at once."""
    worktree = meta.get("worktree") or os.getcwd()
    info = {"host": os.uname().nodename}
    memo = {} if cache is None else cache

    def once(key, step):
        if key not in memo:
            part = {}
            try:
                step(part)
            except Exception as exc:
                part.setdefault("errors", []).append("%s: %s" % (key[0], exc))
            memo[key] = part
        for k, v in memo[key].items():
            if k == "errors":
                info.setdefault("errors", []).extend(v)
            else:
                info[k] = v

    def python_and_packages(part):
        dirs, part["python"] = worker_python(worktree)
        packages(part, dirs)

    once(("python", worktree), python_and_packages)
    once(("gpus", visible_gpus), lambda part: gpus(part, visible_gpus))
    once(("code", worktree), lambda part: code(part, worktree))
    try:
        snapshot(info, worktree, meta.get("run", "run"), meta.get("name", "worker"))
    except Exception as exc:
        info.setdefault("errors", []).append("snapshot: %s" % exc)
    once(("data", meta.get("data")), lambda part: data(part, meta.get("data")))
    try:
        tmp = out_path + ".tmp"
        with open(tmp, "w") as fh:
            fh.write(to_json(info))
        os.replace(tmp, out_path)
    except OSError:
        pass


def to_json(value):
    """JSON for the record's plain values (the json module would cost more than the rest)."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        out = ['"']
        for ch in value:
            code = ord(ch)
            if ch in '"\\':
                out.append("\\" + ch)
            elif code < 0x20 or 0xD800 <= code < 0xE000:
                out.append("\\u%04x" % code)
            else:
                out.append(ch)
        out.append('"')
        return "".join(out)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(to_json(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join("%s: %s" % (to_json(str(k)), to_json(value[k]))
                               for k in sorted(value)) + "}"
    return to_json(str(value))
