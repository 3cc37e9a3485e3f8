"""Worktrees on the local repository: creation, reuse, refusals, shared links, clean."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import WtRun, basic_config, git, make_repo, write_config


def test_branch_with_slashes_is_created_from_base_and_reused(repo_factory) -> None:
    repo = repo_factory(files={"ok.py": "print('ok')\n", "data/x": "1"})
    cfg = basic_config(["a"], "python ok.py", shared=["data"])
    cfg["branches"]["a"]["branch"] = "team/video/a"
    wt = WtRun(repo, write_config(repo, cfg))
    git(repo, "rm", "-rq", "--cached", "data")
    git(repo, "commit", "-qm", "untrack data")
    wt("launch", "--branches", "a", "--wait")
    path = repo / ".wt-run/worktrees/a"
    assert git(path, "branch", "--show-current") == "team/video/a"
    assert (path / "data").is_symlink() and (path / "data" / "x").read_text() == "1"
    assert git(path, "status", "--porcelain") == ""  # the link is invisible to git
    assert git(repo, "status", "--porcelain", "--untracked-files=all") == "?? wt-run.yaml"
    wt("launch", "--branches", "a", "--wait")  # reuse
    assert len(git(repo, "worktree", "list").splitlines()) == 2


HOSTILE = ["$(touch {m})", "`touch {m}`", "x; touch {m}", "a'b\"c", "line1\nline2; touch {m}",
           "-rf", "--help"]


def test_hostile_values_never_reach_a_shell_unquoted(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    repo = make_repo(tmp_path / "we ird 'dir\" $x",
                     {"echo.py": "import json, sys\nprint(json.dumps(sys.argv[1:]))\n"})
    values = [h.format(m=marker) for h in HOSTILE]
    cfg = {"branches": {f"h{i}": {"branch": f"exp/h{i}", "vars": {"v": v}}
                        for i, v in enumerate(values)},
           "commands": {"train": "python echo.py {v} {name}"},
           "env": {"HOSTILE_ENV": f"$(touch {marker})"}}
    wt = WtRun(repo, write_config(repo, cfg))
    wt("launch", "--branches", *cfg["branches"], "--wait")
    for i, v in enumerate(values):
        worker = {w["name"]: w for w in wt.status()["workers"]}[f"h{i}"]
        assert json.loads(Path(worker["log"]).read_text().strip()) == [v, f"h{i}"]
    assert not marker.exists()


def test_refusals_are_clear(repo_factory) -> None:
    repo = repo_factory(files={"ok.py": "print('ok')\n"}, branches={"exp/a": {"ok.py": "1\n"}})
    cfg = basic_config(["a", "b", "c"], "python ok.py")
    cfg["branches"]["c"]["branch"] = "main"  # checked out in the main checkout
    wt = WtRun(repo, write_config(repo, cfg))
    out = wt("launch", "--branches", "c", ok=False).output
    # The holder is the user's own checkout, which `git worktree remove` refuses: the fix
    # says to switch it, or to give the entry a branch of its own.
    assert "already checked out at" in out and "git switch" in out
    assert "git worktree remove" not in out

    (repo / ".wt-run/worktrees/b").mkdir(parents=True)
    out = wt("launch", "--branches", "b", ok=False).output
    assert "exists but is not a git worktree" in out

    wt("launch", "--branches", "a", "--wait")
    worktree = repo / ".wt-run/worktrees/a"
    (worktree / "ok.py").write_text("print('edited')\n")
    out = wt("launch", "--branches", "a", ok=False).output
    assert "uncommitted changes" in out and "--force" in out
    wt("launch", "--branches", "a", "--force", "--wait")

    git(repo, "worktree", "lock", str(worktree))
    out = wt("launch", "--branches", "a", ok=False).output
    assert "is locked" in out and "git worktree unlock" in out
    git(repo, "worktree", "unlock", str(worktree))


def test_missing_shared_path_is_an_error(repo_factory) -> None:
    repo = repo_factory()
    wt = WtRun(repo, write_config(repo, basic_config(["a"], "true", shared=["data"])))
    out = wt("launch", "--branches", "a", ok=False).output
    assert "shared path 'data' does not exist" in out and "wt-run generate" in out
    assert not (repo / ".wt-run/worktrees/a").exists()  # nothing half-made


def test_dry_run_changes_nothing(repo_factory) -> None:
    repo = repo_factory()
    wt = WtRun(repo, write_config(repo, basic_config(["a", "b"], "echo {name}")))
    out = wt("launch", "--branches", "a", "b", "--dry-run").output
    assert "Would launch a (exp/a)" in out and "echo a" in out
    assert not (repo / ".wt-run/worktrees").exists()
    assert "exp/a" not in git(repo, "branch")
    assert not (repo / ".wt-run/runs").exists()


def test_clean_worktrees_keeps_unmerged_branches(repo_factory) -> None:
    repo = repo_factory(files={"ok.py": "print('ok')\n"},
                        branches={"exp/unmerged": {"new.py": "x\n"}})
    cfg = basic_config(["merged", "unmerged"], "python ok.py")
    cfg["branches"]["unmerged"]["branch"] = "exp/unmerged"
    wt = WtRun(repo, write_config(repo, cfg))
    wt("launch", "--branches", "merged", "unmerged", "--wait")
    dry = wt("clean", "--worktrees", "--delete-branches", "--dry-run").output
    assert "Would remove worktree" in dry and (repo / ".wt-run/worktrees/merged").exists()
    out = wt("clean", "--worktrees", "--delete-branches").output
    assert not (repo / ".wt-run/worktrees/merged").exists()
    assert not (repo / ".wt-run/worktrees/unmerged").exists()
    branches = git(repo, "branch", "--format=%(refname:short)").split()
    assert "exp/merged" not in branches and "exp/unmerged" in branches
    assert "not fully merged" in out
    assert git(repo, "worktree", "list").count("\n") == 0
    # results survive worktree removal
    worker = wt.status()["workers"][0]
    assert Path(worker["log"]).read_text().strip() == "ok"


def test_clean_run_refuses_uncollected_then_removes(repo_factory) -> None:
    repo = repo_factory(files={"ok.py": "print('ok')\n"})
    wt = WtRun(repo, write_config(repo, basic_config(["a"], "python ok.py")))
    wt("launch", "--branches", "a", "--run", "r1", "--wait")
    out = wt("clean", "--run", "r1", ok=False).output
    assert "not collected" in out and "wt-run collect --run r1" in out
    wt("clean", "--run", "r1", "--force")
    assert not (repo / ".wt-run/runs/r1").exists()


PKG_INIT = "VALUE = 'main'\n"


def test_each_worker_runs_its_own_worktree_code_despite_editable_install(tmp_path: Path) -> None:
    """A shared virtualenv with the project installed in editable mode from the main checkout
    must not make the `b` worker import main's code."""
    repo = make_repo(tmp_path / "proj", {
        "pyproject.toml": "[build-system]\nrequires=['setuptools>=64']\n"
                          "build-backend='setuptools.build_meta'\n"
                          "[project]\nname='mypkg'\nversion='0'\n",
        "mypkg/__init__.py": PKG_INIT,
        "show.py": "import mypkg\nprint(mypkg.VALUE, mypkg.__file__)\n",
    }, branches={"exp/b": {"mypkg/__init__.py": "VALUE = 'branch-b'\n"}})
    git(repo, "rm", "-q", "--cached", "-r", "--ignore-unmatch", ".venv")
    venv = repo / ".venv"
    # The venv gets what an editable build needs installed into it (a nested venv sees only
    # the base interpreter's packages, which may lack wheel or a recent setuptools).
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin/python"), "-m", "pip", "install", "-q",
                    "setuptools>=64", "wheel"], check=True, capture_output=True)
    subprocess.run([str(venv / "bin/pip"), "install", "-q", "--no-deps", "--no-build-isolation",
                    "-e", str(repo)], check=True, capture_output=True)
    check = subprocess.run([str(venv / "bin/python"), "-c", "import mypkg; print(mypkg.VALUE)"],
                           capture_output=True, text=True, cwd=tmp_path, check=True)
    assert check.stdout.strip() == "main"  # the editable install points at main
    cfg = {"shared": [".venv"],
           "branches": {"a": {"branch": "exp/a"}, "b": {"branch": "exp/b"}},
           "commands": {"train": "python -c 'import mypkg, sys; print(mypkg.VALUE, "
                                 "mypkg.__file__, sys.executable)'"}}
    wt = WtRun(repo, write_config(repo, cfg))
    wt("launch", "--branches", "a", "b", "--wait")
    logs = {w["name"]: Path(w["log"]).read_text().split() for w in wt.status()["workers"]}
    assert logs["b"][0] == "branch-b"
    assert logs["b"][1].startswith(str(repo / ".wt-run/worktrees/b"))
    assert logs["a"][0] == "main"
    assert logs["a"][1].startswith(str(repo / ".wt-run/worktrees/a"))
    assert logs["b"][2].startswith(str(repo / ".wt-run/worktrees/b/.venv"))


def test_generate_is_a_tracked_worker(repo_factory) -> None:
    repo = repo_factory(files={"gen.py": "import sys, pathlib\n"
                                         "pathlib.Path(sys.argv[1], 'ds.txt').write_text('x')\n"})
    cfg = {"branches": {}, "commands": {"generate": "python gen.py {data}"}, "data": "dataset"}
    wt = WtRun(repo, write_config(repo, cfg))
    wt("generate", "--wait")
    worker = wt.status()["workers"][0]
    assert worker["name"] == "generate" and worker["kind"] == "generate"
    assert worker["state"] == "succeeded"
    assert (repo / "dataset/ds.txt").read_text() == "x"


@pytest.mark.parametrize("command", ["status", "--help", "launch"])
def test_cli_start_up_imports_no_heavy_modules(repo_factory, command: str) -> None:
    repo = repo_factory(files={"ok.py": "print(1)\n"})
    path = write_config(repo, basic_config(["a"], "python ok.py"))
    args = {"status": ["status", "--json"], "--help": ["--help"],
            "launch": ["launch", "--branches", "a", "--wait"]}[command]
    code = ("import sys\nfrom worktree_runner.cli import cli\n"
            f"try:\n    cli({['--config', str(path), *args]!r}, standalone_mode=False)\n"
            "except SystemExit:\n    pass\n"
            "heavy = [m for m in ('torch', 'matplotlib', 'fabric', 'paramiko', 'numpy') "
            "if m in sys.modules]\nprint('HEAVY', heavy)\n")
    if command == "status":
        WtRun(repo, path)("launch", "--branches", "a", "--wait")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=repo, check=True).stdout
    assert "HEAVY []" in out


def test_local_worktrees_use_the_remote_hosts_script(repo_factory) -> None:
    """The local host runs the same worktree script as remote hosts: a branch held by a
    worktree whose directory was deleted by hand is re-made in place, and an untracked file
    where a shared link belongs is refused rather than linked into or clobbered."""
    repo = repo_factory(files={"ok.py": "print('ok')\n", "data/x": "1"})
    git(repo, "rm", "-rq", "--cached", "data")
    git(repo, "commit", "-qm", "untrack data")
    wt = WtRun(repo, write_config(repo, basic_config(["a", "b"], "python ok.py",
                                                      shared=["data"])))
    wt("launch", "--branches", "a", "b", "--wait")
    shutil.rmtree(repo / ".wt-run/worktrees/a")  # registered, directory gone
    wt("launch", "--branches", "a", "--wait")
    assert (repo / ".wt-run/worktrees/a/data").is_symlink()
    assert git(repo / ".wt-run/worktrees/a", "branch", "--show-current") == "exp/a"

    link = repo / ".wt-run/worktrees/b/data"
    link.unlink()
    link.mkdir()
    (link / "mine").write_text("keep")
    out = wt("launch", "--branches", "b", ok=False).output
    assert "shared path 'data' exists in worktree" in out
    assert (link / "mine").read_text() == "keep" and not (link / "data").exists()


def test_removal_script_never_runs_a_hostile_branch_or_worktree_name(tmp_path: Path) -> None:
    """Branch names may hold `$(...)` and backticks (git allows them): the removal script
    quotes every name, and reports each back on a line of its own."""
    from worktree_runner.clean_worktrees import removal_script
    from worktree_runner.runs import HostLayout

    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "f").write_text("x\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "init")
    hostile = "x$(touch${IFS}PWNED)`touch${IFS}PWNED2`"
    git(repo, "branch", hostile)
    (tmp_path / "wt").mkdir()
    git(repo, "worktree", "add", "-q", str(tmp_path / "wt" / "a b"), hostile)
    paths = HostLayout(str(tmp_path), str(repo), str(tmp_path / "wt"), str(tmp_path / "data"))
    script = removal_script(paths, [], ["a b"], [hostile], force=True)
    out = subprocess.run(["sh", "-s"], input=script, cwd=tmp_path, capture_output=True,
                         text=True, check=True).stdout
    assert out.splitlines() == ["removed\ta b", f"deleted\t{hostile}"]
    assert not (tmp_path / "wt" / "a b").exists()
    assert not list(tmp_path.rglob("PWNED*"))
    assert hostile not in git(repo, "branch", "--format=%(refname:short)")


def test_clean_worktrees_prunes_a_worktree_deleted_by_hand(repo_factory) -> None:
    repo = repo_factory(files={"ok.py": "print('ok')\n"})
    wt = WtRun(repo, write_config(repo, basic_config(["a"], "python ok.py")))
    wt("launch", "--branches", "a", "--wait")
    shutil.rmtree(repo / ".wt-run/worktrees/a")
    assert "/worktrees/a" in git(repo, "worktree", "list")
    out = wt("clean", "--worktrees").output
    assert "prune stale worktree entries" in out
    assert "/worktrees/a" not in git(repo, "worktree", "list")


def test_two_entries_on_one_branch_are_refused_before_anything_changes(repo_factory) -> None:
    repo = repo_factory(files={"ok.py": "print('ok')\n"})
    cfg = basic_config(["small", "big"], "python ok.py")
    for name in ("small", "big"):
        cfg["branches"][name]["branch"] = "exp/shared"
    wt = WtRun(repo, write_config(repo, cfg))
    before = git(repo, "worktree", "list")
    for extra in (["--dry-run"], []):
        out = wt("launch", "--branches", "small", "big", *extra, ok=False).output
        assert "both use git branch 'exp/shared'" in out and "matrix:" in out, out
    assert git(repo, "worktree", "list") == before
    assert not (repo / ".wt-run" / "worktrees" / "small").exists()
    assert git(repo, "branch", "--list", "exp/shared") == ""


def test_a_new_branch_notes_the_uncommitted_edits_it_leaves_behind(repo_factory) -> None:
    repo = repo_factory(files={"ok.py": "print('ok')\n"})
    wt = WtRun(repo, write_config(repo, basic_config(["a"], "python ok.py")))
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "config")
    out = wt("launch", "--branches", "a", "--dry-run").output
    assert "uncommitted" not in out and "would create branch(es) exp/a from base" in out
    (repo / "ok.py").write_text("print('edited')\n")
    for extra in (["--dry-run"], ["--wait"]):
        out = wt("launch", "--branches", "a", *extra).output
        assert "uncommitted changes" in out and "exp/a" in out, out
    out = wt("launch", "--branches", "a", "--run", "x", "--dry-run").output
    assert "uncommitted" not in out and "would create" not in out  # it exists now
