# wt-run environment record: python envinfo.py OUT_JSON
#
# Run by a worker's cmd.sh just before its command, in the worktree, with the worker's own
# python and environment: what else could make two results differ. Written by rename.
# Cheap on purpose: package versions come from installed metadata (nothing is imported).
import hashlib
import json
import os
import platform
import socket
import subprocess
import sys


def run(argv):
    try:
        out = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                             timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.decode("utf-8", "replace").strip() if out.returncode == 0 else None


def packages(info):
    """Installed distributions from their metadata folder names (`torch-2.13.0.dist-info`):
    a listing, no import, no metadata parsing."""
    import sysconfig

    paths = {sysconfig.get_paths()[k] for k in ("purelib", "platlib")}
    seen = set()
    for path in paths:
        try:
            names = os.listdir(path)
        except OSError:
            continue
        for entry in names:
            for suffix in (".dist-info", ".egg-info"):
                if entry.endswith(suffix):
                    stem = entry[:-len(suffix)]
                    name, _, version = stem.partition("-")
                    seen.add((name.lower().replace("_", "-"), version.split("-py")[0]))
    info["packages_hash"] = hashlib.sha256(
        "\n".join("%s==%s" % p for p in sorted(seen)).encode()).hexdigest()[:16]
    info["packages_count"] = len(seen)
    versions = dict(seen)
    for name in ("torch", "numpy"):
        info[name] = versions.get(name)


def gpus(info):
    out = run(["nvidia-smi", "--query-gpu=index,name,driver_version",
               "--format=csv,noheader"])
    info["gpu"] = info["driver"] = None
    if not out:
        return
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    wanted = None if visible is None else set(visible.split(","))
    names, drivers = [], set()
    for line in out.splitlines():
        cells = [c.strip() for c in line.split(",")]
        if len(cells) >= 3 and (wanted is None or cells[0] in wanted):
            names.append(cells[1])
            drivers.add(cells[2])
    info["gpu"] = ", ".join(sorted(set(names))) or None
    info["driver"] = ", ".join(sorted(drivers)) or None


def code(info):
    info["commit"] = run(["git", "rev-parse", "HEAD"])
    changes = run(["git", "status", "--porcelain", "--untracked-files=no"])
    info["dirty"] = bool(changes)
    info["snapshot"] = None
    if changes:
        # The uncommitted changes as a commit (like `git stash create`), kept under a ref so
        # the exact code can be recovered and diffed later.
        sha = run(["git", "stash", "create", "wt-run snapshot"])
        ref = "refs/wt-run/snapshots/%s/%s" % (os.environ.get("WT_RUN_RUN", "run"),
                                              os.environ.get("WT_RUN_NAME", "worker"))
        if sha and run(["git", "update-ref", ref, sha]) is not None:
            info["snapshot"] = sha
            info["snapshot_ref"] = ref


def data(info):
    path = os.environ.get("WT_RUN_DATA")
    info["data_fingerprint"] = None
    if not path or not os.path.isdir(path):
        return
    h = hashlib.sha256()
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


def main(out_path):
    info = {"host": socket.gethostname(), "python": platform.python_version()}
    for step in (packages, gpus, code, data):
        try:
            step(info)
        except Exception as exc:  # never keep the command from starting
            info.setdefault("errors", []).append("%s: %s" % (step.__name__, exc))
    tmp = out_path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(info, fh, sort_keys=True)
    os.replace(tmp, out_path)


if __name__ == "__main__":
    main(sys.argv[1])
