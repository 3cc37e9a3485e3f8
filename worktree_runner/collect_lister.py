"""The host side of `collect`: one process that lists every candidate file of every worker of a
run on a host, with size, mtime and sha256, and says why anything else was left out.

This file is sent to the host and run as `python3 - SPEC_JSON`. It is stdlib only, Python 3.6+
(a remote box may run an old interpreter), so it must never import wt-run. It is a module of
the package only so that it can be read, linted and tested like the rest.

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
import stat
import sys
import time

CHUNK = 1 << 20
TEMP_SUFFIXES = (".tmp", ".temp", ".part", ".partial", ".swp", ".crdownload", "~")
# mkstemp-style hidden temp names such as `.ckpt.pt.Ab3xYz` (rsync, many atomic writers).
TEMP_NAME = re.compile(r"^\..+\.[A-Za-z0-9_]{6}$")
UNSAFE_CHAR = re.compile(r"[\x00-\x1f\x7f]")


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
    def __init__(self, now, running, settle_s, cache):
        self.now = now
        self.running = running
        self.settle_s = settle_s
        self.cache = cache
        self.used = {}
        self.files = []
        self.skipped = []
        self.seen = set()
        self.pending = []  # (key, path, rel, stat) of files to list, once hashed
        self.exclude = set()  # (st_dev, st_ino) of directories never entered

    def skip(self, key, rel, reason):
        if (key, rel) not in self.seen:
            self.seen.add((key, rel))
            self.skipped.append([key, ascii(rel)[1:-1] if unsafe_name(rel) else rel, reason])

    def walk_root(self, key, root, patterns, exclude=()):
        if not os.path.isdir(root) or os.path.islink(root):
            self.skip(key, ".", "directory is missing on the host")
            return
        self.exclude = set()
        for path in exclude:
            with contextlib.suppress(OSError):
                st = os.stat(path)
                self.exclude.add((st.st_dev, st.st_ino))
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
            if (st.st_dev, st.st_ino) in self.exclude:
                # wt-run's own results or state inside the tree (`generate` runs in the
                # repository itself): collecting them would copy results into results.
                self.skip(key, rel, "wt-run's own results or state directory, not collected")
                return
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
        self.seen.add((key, rel))
        self.pending.append((key, path, rel, st))

    @staticmethod
    def ident(item):
        key, _, rel, st = item
        return key + "\0" + rel, [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns,
                                  st.st_ctime_ns]

    def cached(self, item):
        """(sha256, None) of a pending file the cache knows unchanged, else None."""
        cache_key, ident = self.ident(item)
        hit = self.cache.get(cache_key)
        if hit and hit[:5] == ident:
            self.used[cache_key] = hit
            return hit[5], None
        return None

    def digest(self, item):
        """(sha256, None) of a pending file, read now; or (None, why)."""
        _, path, _, st = item
        cache_key, ident = self.ident(item)
        h = hashlib.sha256()
        try:
            with open(path, "rb") as fh:
                for chunk in iter(lambda: fh.read(CHUNK), b""):
                    h.update(chunk)
            after = os.lstat(path)
        except OSError as exc:
            return None, "unreadable: " + (exc.strerror or str(exc))
        if [after.st_size, after.st_mtime_ns] != [st.st_size, st.st_mtime_ns]:
            return None, "changed while being read (still being written?)"
        self.used[cache_key] = [*ident, h.hexdigest()]
        return h.hexdigest(), None

    def finish(self, digests):
        for (key, _, rel, st), (digest, problem) in zip(self.pending, digests):
            if problem:
                self.skipped.append([key, rel, problem])
            else:
                self.files.append([key, rel, st.st_size, st.st_mtime_ns, digest])


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


def list_workers(specs, now, settle_s):
    """List every worker, then hash what the caches do not know, several files at once
    (hashlib releases the GIL: a many-core host hashes checkpoints in parallel)."""
    listers = []
    for spec in specs:
        lister = Lister(now, bool(spec.get("running")), settle_s,
                        load_cache(spec.get("cache") or ""))
        for root in spec["roots"]:
            lister.walk_root(root["key"], root["path"], root["patterns"],
                             root.get("exclude") or ())
        listers.append(lister)
    jobs = [(lister, item) for lister in listers for item in lister.pending]
    digests = [lister.cached(item) for lister, item in jobs]
    misses = [i for i, d in enumerate(digests) if d is None]
    if misses:
        # Imported only here: an unchanged collect hashes nothing and starts faster.
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
            for i, d in zip(misses, pool.map(lambda i: jobs[i][0].digest(jobs[i][1]),
                                             misses)):
                digests[i] = d
    out = {}
    for spec, lister in zip(specs, listers):
        lister.finish([d for (owner, _), d in zip(jobs, digests) if owner is lister])
        save_cache(spec.get("cache") or "", lister.cache, lister.used)
        out[spec["id"]] = {"files": lister.files, "skipped": lister.skipped}
    return out


def main(argv):
    spec = json.loads(argv[1])
    now = time.time()
    workers = list_workers(spec["workers"], now, float(spec.get("settle_s", 2)))
    sys.stdout.write(json.dumps({"now": now, "workers": workers}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
