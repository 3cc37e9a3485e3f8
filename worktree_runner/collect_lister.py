"""The host side of `collect`: one process that lists every candidate file of every worker of a
run on a host, with size, mtime and sha256, and says why anything else was left out; and the
sender that streams files to the collecting machine, hashing each one as it is read.

This file is sent to the host and run as `python3 - SPEC_JSON` (listing) or
`python3 -c SOURCE --send` (sending; the requests come on stdin). It is stdlib only, Python
3.6+ (a remote box may run an old interpreter), so it must never import wt-run. It is a module
of the package only so that it can be read, linted and tested like the rest.

A listing with `"hash": false` only stats: it gives the sha256 of files the cache knows and
leaves the others empty, so the transfer can start at once; the sender then hashes each file
in the same read that sends it (one read on the host, not two) and caches the result.

Safety rules, applied here and again on the collecting side: symlinks are reported and never
followed (worktrees hold `shared:` links to the dataset and the virtualenv), names with control
characters or bytes that are not UTF-8 are refused, patterns that are absolute or contain `..`
are refused, only regular files are listed. Files that look like temporary files, or that a
running worker modified in the last `settle_s` seconds, are skipped until they are whole.

Checksums are cached in `cache` (a JSON file in the worker directory, which wt-run owns) keyed
by (device, inode, size, mtime, ctime): ctime cannot be set from user space, so a file that
changed in any way is hashed again, and an unchanged multi-GB checkpoint is not.
"""

import contextlib
import hashlib
import json
import os
import re
import shutil
import stat
import sys
import time

try:
    import fcntl
except ImportError:  # not POSIX: no pipe resizing
    fcntl = None

CHUNK = 1 << 20
TEMP_SUFFIXES = (".tmp", ".temp", ".part", ".partial", ".swp", ".crdownload", "~")
# mkstemp-style hidden temp names such as `.ckpt.pt.Ab3xYz` (rsync, many atomic writers).
TEMP_NAME = re.compile(r"^\..+\.[A-Za-z0-9_]{6}$")
UNSAFE_CHAR = re.compile(r"[\x00-\x1f\x7f]")
F_SETPIPE_SZ = 1031  # Linux: a 1 MiB pipe moves bulk data in 16x fewer wakeups than 64 KiB


def is_temp_name(name):
    return name.endswith(TEMP_SUFFIXES) or bool(TEMP_NAME.match(name))


def unsafe_name(rel):
    """Why a relative path cannot be collected as is, or None."""
    if UNSAFE_CHAR.search(rel):
        return "name has control characters"
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:
        return "name is not valid UTF-8"
    return None


def component_regex(comp):
    """One path component of a glob: `*` and `?` never match `/`; `[...]` is a class."""
    out, i = [], 0
    while i < len(comp):
        c = comp[i]
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[" and "]" in comp[i + 2:]:
            end = comp.index("]", i + 2)
            body = comp[i + 1:end]
            if body.startswith("!"):
                body = "^" + body[1:]
            out.append("[" + body.replace("\\", "\\\\") + "]")
            i = end
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


def pattern_regex(pattern):
    """A regex for a collect glob: `**` spans any number of directories, other wildcards stay
    inside one component; a pattern that names a directory also matches everything below it."""
    regex = ""
    for comp in pattern.strip("/").split("/"):
        regex += "(?:[^/]+/)*" if comp == "**" else component_regex(comp) + "/"
    if regex.endswith("/"):
        regex = regex[:-1]
    else:  # ends with **: at least one more component
        regex += "[^/]+"
    return re.compile("(?:" + regex + ")(?:/.*)?\\Z", re.DOTALL)


def static_prefix(pattern):
    """The leading components without wildcards: where the walk can start."""
    prefix = []
    for comp in pattern.strip("/").split("/"):
        if any(c in comp for c in "*?["):
            break
        prefix.append(comp)
    return prefix


def pattern_problem(pattern):
    if not pattern or pattern.startswith("/") or pattern.startswith("~"):
        return "pattern must be relative to the worktree"
    if ".." in pattern.split("/"):
        return "pattern must not contain .."
    return None


class Lister:
    def __init__(self, now, running, settle_s, cache, hash_files=True):
        self.now = now
        self.running = running
        self.settle_s = settle_s
        self.cache = cache
        self.hash_files = hash_files
        self.used = {}
        self.files = []
        self.skipped = []
        self.seen = set()

    def skip(self, key, rel, reason):
        if (key, rel) not in self.seen:
            self.seen.add((key, rel))
            self.skipped.append([key, ascii(rel)[1:-1] if unsafe_name(rel) else rel, reason])

    def walk_root(self, key, root, patterns):
        if not os.path.isdir(root) or os.path.islink(root):
            self.skip(key, ".", "directory is missing on the host")
            return
        real_root = os.path.realpath(root)
        for pattern in patterns:
            problem = pattern_problem(pattern)
            if problem:
                self.skip(key, pattern, "refused: " + problem)
                continue
            regex = pattern_regex(pattern)
            prefix = static_prefix(pattern)
            start = self.descend(key, root, real_root, prefix)
            if start is not None:
                self.visit(key, root, real_root, start, regex)

    def descend(self, key, root, real_root, prefix):
        """Follow the pattern's literal prefix, refusing symlinks on the way."""
        rel = ""
        for comp in prefix:
            rel = comp if not rel else rel + "/" + comp
            path = os.path.join(root, rel)
            try:
                st = os.lstat(path)
            except OSError:
                return None
            if stat.S_ISLNK(st.st_mode):
                self.symlink(key, root, real_root, rel)
                return None
            if not stat.S_ISDIR(st.st_mode):
                return rel
        return rel

    def symlink(self, key, root, real_root, rel):
        target = os.path.realpath(os.path.join(root, rel))
        inside = target == real_root or target.startswith(real_root + os.sep)
        self.skip(key, rel, "symlink, not followed" if inside
                  else "refused: symlink pointing outside (not followed)")

    def visit(self, key, root, real_root, rel, regex):
        path = os.path.join(root, rel) if rel else root
        try:
            st = os.lstat(path)
        except OSError:
            return
        if stat.S_ISLNK(st.st_mode):
            if regex.match(rel):
                self.symlink(key, root, real_root, rel)
            return
        if stat.S_ISDIR(st.st_mode):
            try:
                names = sorted(os.listdir(path))
            except OSError as exc:
                self.skip(key, rel or ".", "unreadable directory: " + exc.strerror)
                return
            for name in names:
                self.visit(key, root, real_root, name if not rel else rel + "/" + name, regex)
            return
        if regex.match(rel):
            self.consider(key, path, rel, st)

    def consider(self, key, path, rel, st):
        if (key, rel) in self.seen:
            return
        problem = unsafe_name(rel)
        if problem:
            self.skip(key, rel, "refused: " + problem)
            return
        if not stat.S_ISREG(st.st_mode):
            self.skip(key, rel, "not a regular file")
            return
        if is_temp_name(os.path.basename(rel)):
            self.skip(key, rel, "temporary file")
            return
        if self.running and self.now - st.st_mtime < self.settle_s:
            self.skip(key, rel, f"being written (modified in the last {self.settle_s:g}s)")
            return
        digest = self.digest(key, path, rel, st)
        if digest is None:
            return
        self.seen.add((key, rel))
        self.files.append([key, rel, st.st_size, st.st_mtime_ns, digest])

    def digest(self, key, path, rel, st):
        ident = [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]
        cache_key = key + "\0" + rel
        hit = self.cache.get(cache_key)
        if hit and hit[:5] == ident:
            self.used[cache_key] = hit
            return hit[5]
        if not self.hash_files:
            return ""  # unknown yet: the sender hashes it while sending it
        h = hashlib.sha256()
        try:
            with open(path, "rb") as fh:
                for chunk in iter(lambda: fh.read(CHUNK), b""):
                    h.update(chunk)
            after = os.lstat(path)
        except OSError as exc:
            self.skip(key, rel, "unreadable: " + (exc.strerror or str(exc)))
            return None
        if [after.st_size, after.st_mtime_ns] != [st.st_size, st.st_mtime_ns]:
            self.skip(key, rel, "changed while being read (still being written?)")
            return None
        self.used[cache_key] = [*ident, h.hexdigest()]
        return h.hexdigest()


def load_cache(path):
    try:
        with open(path) as fh:
            data = json.load(fh)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def save_cache(path, old, new):
    if not path or new == old:
        return
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w") as fh:
            json.dump(new, fh)
        os.replace(tmp, path)
    except OSError:
        # A read-only worker dir only costs re-hashing next time.
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def list_worker(spec, now, settle_s, hash_files=True):
    cache = load_cache(spec.get("cache") or "")
    lister = Lister(now, bool(spec.get("running")), settle_s, cache, hash_files)
    for root in spec["roots"]:
        lister.walk_root(root["key"], root["path"], root["patterns"])
    save_cache(spec.get("cache") or "", cache, lister.used)
    return {"files": lister.files, "skipped": lister.skipped}


def write_json_line(out, obj):
    out.write((json.dumps(obj) + "\n").encode("utf-8"))


def hash_range(fd, h, start, end, view):
    """Feed bytes [start, end) of fd to h; False when the file ended early."""
    os.lseek(fd, start, os.SEEK_SET)
    left = end - start
    while left:
        n = os.readv(fd, [view[:min(left, len(view))]])
        if not n:
            return False
        h.update(view[:n])
        left -= n
    return True


def send_range(fd, h, length, view, out):
    """Hash and write the next `length` bytes of fd; a file that shrank meanwhile is padded
    with zeros (the reader was promised `length` bytes) and reported as changed."""
    left = length
    short = False
    while left:
        n = os.readv(fd, [view[:min(left, len(view))]])
        if not n:
            short = True
            n = min(left, len(view))
            view[:n] = bytes(n)
        else:
            h.update(view[:n])
        out.write(view[:n])
        left -= n
    return not short


def send_file(req, out, view, fresh):
    """One request: a header line (what fstat says, how many bytes follow), the bytes from
    `offset` when `data` (all of them hashed from byte 0), then a trailer with the sha256 and
    whether the file changed while it was read."""
    try:
        fd = os.open(req["path"], os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as exc:
        write_json_line(out, {"error": "unreadable: " + (exc.strerror or str(exc))})
        return
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            write_json_line(out, {"error": "not a regular file"})
            return
        offset = min(max(int(req.get("offset", 0)), 0), st.st_size) if req["data"] else 0
        length = st.st_size - offset if req["data"] else 0
        write_json_line(out, {"size": st.st_size, "mtime_ns": st.st_mtime_ns,
                              "offset": offset, "length": length})
        h = hashlib.sha256()
        whole = hash_range(fd, h, 0, offset if req["data"] else st.st_size, view)
        whole = send_range(fd, h, length, view, out) and whole
        after = os.fstat(fd)
        changed = not whole or [after.st_size, after.st_mtime_ns, after.st_ctime_ns] != [
            st.st_size, st.st_mtime_ns, st.st_ctime_ns]
        write_json_line(out, {"sha256": h.hexdigest(), "changed": changed})
        out.flush()
        if not changed and req.get("key"):
            fresh[req["key"]] = [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns,
                                 st.st_ctime_ns, h.hexdigest()]
    finally:
        os.close(fd)


def send(requests, out):
    """Serve {"cache": path, "files": [{"path", "offset", "data", "key"}]} in order. What was
    hashed goes into the worker's checksum cache, so the next listing needs no reading."""
    if fcntl is not None:
        with contextlib.suppress(OSError):
            fcntl.fcntl(out.fileno(), F_SETPIPE_SZ, 1 << 20)
    view = memoryview(bytearray(CHUNK))
    fresh = {}
    try:
        for req in requests["files"]:
            send_file(req, out, view, fresh)
        out.flush()
    finally:
        # Also after an interrupted collect: what was hashed need not be hashed again.
        if fresh and requests.get("cache"):
            old = load_cache(requests["cache"])
            save_cache(requests["cache"], old, dict(old, **fresh))


def main(argv):
    if argv[1:] == ["--send"]:
        send(json.load(sys.stdin), sys.stdout.buffer)
        return 0
    spec = json.loads(argv[1])
    now = time.time()
    hash_files = bool(spec.get("hash", True))
    out = {"now": now, "rsync": shutil.which("rsync") is not None, "workers": {}}
    for worker in spec["workers"]:
        out["workers"][worker["id"]] = list_worker(worker, now, float(spec.get("settle_s", 2)),
                                                   hash_files)
    sys.stdout.write(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
