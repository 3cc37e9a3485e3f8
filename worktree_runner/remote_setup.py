"""`wt-run setup`: bootstrap a remote host (root, repository, virtualenv, requirements,
shared paths, the host's own `setup:` lines), idempotently, through the code sync of sync.py."""

from __future__ import annotations

import hashlib
import shlex

from .config import Config, HostConfig
from .hosts import Host
from .repo_refs import head_commit
from .runs import HostLayout
from .sync import SETUP_TIMEOUT_S, apply_with_bundle, inventory_of
from .worktrees import raise_for

q = shlex.quote


def setup_host(config: Config, hc: HostConfig, host: Host, *, dry_run: bool) -> list[str]:
    """Prepare a host: root (mode 700), repository at this checkout's HEAD, a virtualenv at
    `<root>/repo/.venv` (system site packages visible, so an installed torch is reused) with
    the project's requirements, the shared paths, and the host's `setup:` lines. Idempotent:
    a second run changes nothing and says so."""
    head = head_commit(config)
    paths = HostLayout.remote(host.root, config.data)
    inventory = inventory_of(host, paths, [head.commit])
    script = _setup_script(config, hc, paths, head.commit, dry_run)
    if dry_run:
        result = host.run_script(script, timeout=SETUP_TIMEOUT_S)
        raise_for(result, hc.name, paths)
        bundle_note = None if head.commit in inventory.present else "would fetch"
    else:
        result = apply_with_bundle(config, host, paths, inventory, [head], script,
                                    timeout=SETUP_TIMEOUT_S)
        bundle_note = result.bundle_note
    return _setup_report(hc.name, paths, result.stdout, head.commit, bundle_note, dry_run)


_SETUP_FNS = r"""
act() { if [ -n "$DRY" ]; then echo "would $1"; return 1; fi; return 0; }
"""


def _setup_script(config: Config, hc: HostConfig, paths: HostLayout, commit: str,
                  dry_run: bool) -> str:
    """The host bootstrap after the commit is there; with DRY set it only reports."""
    setup_text = "\n".join(hc.setup)
    setup_stamp = hashlib.sha256(setup_text.encode()).hexdigest() if setup_text else ""
    shared = [s.strip("/") for s in config.shared]
    if paths.data_rel is not None and paths.data_rel not in shared:
        shared.append(paths.data_rel)
    parts = [
        f"DRY={'1' if dry_run else ''}", f"PY={q(hc.python)}", f"C={q(commit)}",
        f"SETUP={q(setup_text)}", f"STAMP={q(setup_stamp)}", _SETUP_FNS,
    ]
    if dry_run:
        # Nothing may change: report what is missing instead of the preamble's mkdir/init.
        parts.append(f"R={q(paths.root)}\nG={q(paths.repo)}\n"
                     '[ -d "$R" ] || echo "would create-root"\n'
                     '[ -d "$G/.git" ] || echo "would create-repo"\n'
                     "refuse() { printf 'refuse %s\\n' \"$*\"; exit 3; }\n"
                     "failed() { printf 'failed %s\\n' \"$1\"; exit 5; }\n"
                     # No error file: in a dry run nothing that would write one runs.
                     "E=\n")
    parts.append(
        # The repository's checkout follows this machine's HEAD (requirements come from it).
        'cur=$(git -C "$G" rev-parse -q --verify HEAD 2>/dev/null)\n'
        'if [ "$cur" != "$C" ]; then\n'
        '  if [ -n "$cur" ] && [ -n "$(git -C "$G" status --porcelain --untracked-files=no)" ];'
        " then refuse repo-dirty; fi\n"
        '  if act checkout; then\n'
        '    git -C "$G" checkout -q --detach "$C" </dev/null >"$E" 2>&1 || failed checkout\n'
        "    echo repo-updated\n"
        "  fi\n"
        "fi\n"
        'V="$G/.venv"\n'
        'if [ -x "$V/bin/python" ]; then echo venv-ok\n'
        "elif act venv; then\n"
        '  "$PY" -m venv --system-site-packages "$V" </dev/null >"$E" 2>&1 || failed venv\n'
        "  echo venv-created\n"
        "fi\n"
        'if [ -f "$G/requirements.txt" ]; then src=requirements.txt\n'
        'elif [ -f "$G/pyproject.toml" ] || [ -f "$G/setup.py" ]; then src=project\n'
        "else src=none; fi\n"
        'want=$(cd "$G" && cat requirements.txt pyproject.toml setup.py setup.cfg 2>/dev/null '
        "| cksum)\n"
        'have=$(cat "$V/.wt-run-requirements" 2>/dev/null)\n'
        'if [ "$src" = none ]; then echo req-none\n'
        'elif [ "$want" = "$have" ]; then echo "req-ok $src"\n'
        'elif act "install $src"; then\n'
        '  if [ "$src" = requirements.txt ]; then\n'
        "    if grep -q '^[[:space:]]*[^#[:space:]]' \"$G/requirements.txt\"; then\n"
        '      (cd "$G" && PIP_DISABLE_PIP_VERSION_CHECK=1 "$V/bin/python" -m pip install '
        "--no-input -q -r requirements.txt) </dev/null >\"$E\" 2>&1 || failed pip\n"
        "    fi\n"
        "  else\n"
        '    (cd "$G" && PIP_DISABLE_PIP_VERSION_CHECK=1 "$V/bin/python" -m pip install '
        "--no-input -q -e .) </dev/null >\"$E\" 2>&1 || failed pip\n"
        "  fi\n"
        '  printf \'%s\\n\' "$want" > "$V/.wt-run-requirements"\n'
        '  echo "req-installed $src"\n'
        "fi\n"
    )
    for rel in shared:
        if rel == ".venv":
            continue
        parts.append(f"if [ -e \"$G\"/{q(rel)} ]; then echo shared-ok {q(rel)}\n"
                     f"elif act {q('create ' + rel)}; then mkdir -p \"$G\"/{q(rel)} "
                     f"|| failed mkdir; echo shared-created {q(rel)}; fi\n")
    parts.append(
        'if [ -n "$SETUP" ]; then\n'
        '  if [ "$(cat "$R/.setup-stamp" 2>/dev/null)" = "$STAMP" ]; then echo setup-ok\n'
        '  elif act "run setup"; then\n'
        # eval, not `sh -c`: the lines never appear on a process command line.
        '    (cd "$G" && PATH="$V/bin:$PATH" && VIRTUAL_ENV="$V" && export PATH VIRTUAL_ENV '
        '&& set -e && eval "$SETUP") </dev/null >"$E" 2>&1 || failed setup\n'
        '    printf \'%s\\n\' "$STAMP" > "$R/.setup-stamp"\n'
        "    echo setup-ran\n"
        "  fi\n"
        "fi\n"
        'if [ -n "$E" ] && [ -f "$E" ]; then rm -f "$E"; fi\n'
    )
    return "\n".join(parts)


def _setup_report(host_name: str, paths: HostLayout, stdout: str, commit: str,
                  bundle_note: str | None, dry_run: bool) -> list[str]:
    out: list[str] = []
    changed = bool(bundle_note)
    short = commit[:12]
    seen = stdout.splitlines()
    words = {line.split(" ", 1)[0] for line in seen}
    if dry_run:
        if bundle_note:
            out.append(f"Would send commit {short} to {host_name} (git bundle)")
        for line in seen:
            if line.startswith("would "):
                out.append(_would(line[6:], host_name, paths, short))
        if not out:
            out.append(f"host {host_name}: up to date (nothing would change)")
        return out
    if "created-root" in words:
        out.append(f"root {paths.root}: created (mode 700)")
        changed = True
    if "created-repo" in words:
        out.append(f"repository {paths.repo}: created")
        changed = True
    if bundle_note:
        out.append(f"repository: {bundle_note}")
    if "repo-updated" in words:
        out.append(f"repository: checked out {short}")
        changed = True
    else:
        out.append(f"repository: up to date at {short}")
    if "venv-created" in words:
        out.append(f"virtualenv {paths.repo}/.venv: created (--system-site-packages)")
        changed = True
    else:
        out.append("virtualenv: up to date")
    for line in seen:
        kind, _, rest = line.partition(" ")
        if kind == "req-installed":
            what = "requirements.txt" if rest == "requirements.txt" else "pip install -e ."
            out.append(f"requirements: installed ({what})")
            changed = True
        elif kind == "req-ok":
            out.append("requirements: up to date")
        elif kind == "req-none":
            out.append("requirements: none (no requirements.txt or pyproject.toml)")
        elif kind == "shared-created":
            out.append(f"shared {rest}: created")
            changed = True
        elif kind == "shared-ok":
            out.append(f"shared {rest}: up to date")
        elif kind == "setup-ran":
            out.append("setup commands: ran")
            changed = True
        elif kind == "setup-ok":
            out.append("setup commands: up to date")
    out.append(f"host {host_name}: {'ready' if changed else 'up to date'}")
    return out


def _would(action: str, host_name: str, paths: HostLayout, short: str) -> str:
    verb, _, rest = action.partition(" ")
    texts = {
        "create-root": f"Would create root {paths.root} (mode 700)",
        "create-repo": f"Would create repository {paths.repo}",
        "checkout": f"Would check out {short} in {paths.repo}",
        "venv": f"Would create virtualenv {paths.repo}/.venv (--system-site-packages)",
        "install": f"Would install requirements ({rest})",
        "create": f"Would create shared path {rest}",
        "run": "Would run the setup: lines",
    }
    return f"{texts.get(verb, 'Would ' + action)} on {host_name}"
