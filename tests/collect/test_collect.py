"""`collect` from the local host, on real runs launched with `wt-run launch --wait`: layout,
incremental (nothing moves the second time), verified (corruption caught), resumable, safe
(hostile symlinks, names and patterns refused), and careful with live workers."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from tests.collect.helpers import latest_run, make_training_repo, tree, worker_json, wt
from worktree_runner.collect import CollectObserver, collect
from worktree_runner.config import load_config
from worktree_runner.runs import RunStore


def _source(config_path: Path, run: str, name: str) -> tuple[Path, Path]:
    """(worker dir, worktree) of a local worker."""
    rec = RunStore(config_path.parent / ".wt-run").load(run).workers[name]
    return Path(rec.worker_dir), Path(rec.worktree)


def _collected_at(config_path: Path, run: str) -> dict[str, float | None]:
    manifest = RunStore(config_path.parent / ".wt-run").load(run)
    return {n: w.collected_at for n, w in manifest.workers.items()}


def test_collect_layout_attempts_and_second_collect_moves_nothing(tmp_path: Path) -> None:
    cfg = make_training_repo(tmp_path / "repo", {
        "good": {"quality": 0.7}, "tb": {"mode": "tensorboard"}, "bad": {"mode": "fail"}})
    wt(cfg, "launch", "--branches", "good", "tb", "bad", "--wait", ok=False)  # bad fails
    run = latest_run(cfg)
    # Relaunch one worker in the same run: its first log moves to attempts/1/.
    wt(cfg, "launch", "--branches", "good", "--run", run, "--wait", ok=False)  # bad still failed

    result = wt(cfg, "collect")
    assert "collected" in result.output
    results = tmp_path / "repo" / "results" / run
    for name in ("good", "tb", "bad"):
        wdir, worktree = _source(cfg, run, name)
        got = tree(results / name)
        # Every output file, the log and the worktree's results/ arrived byte for byte.
        for p in (wdir / "out").rglob("*"):
            if p.is_file():
                assert got[f"out/{p.relative_to(wdir / 'out').as_posix()}"] == p.read_bytes()
        assert got["log"] == (wdir / "log").read_bytes()
        meta = worker_json(tmp_path / "repo" / "results", run, name)
        assert meta["name"] == name and meta["branch"] == f"exp/{name}"
        assert meta["commit"] and meta["collected_at"]
        if name != "bad":
            assert got["worktree/results/summary.txt"] == (
                worktree / "results" / "summary.txt").read_bytes()
    assert worker_json(tmp_path / "repo" / "results", run, "bad")["observed_state"] == "failed"
    good = tree(results / "good")
    assert b"done" in good["attempts/1/log"] and "attempts/1/log" in good
    assert all(_collected_at(cfg, run).values())

    # Second collect: every file is already here and verified; no file data moves, no file
    # is rewritten.
    before = {p: p.stat().st_ino for p in results.rglob("*") if p.is_file()
              and ".collect" not in p.parts and p.name != "worker.json"}
    report = collect(load_config(cfg), run=run)
    assert report.ok
    assert [(w.transferred_files, w.transferred_bytes) for w in report.workers] == [(0, 0)] * 3
    assert all(w.files > 0 and w.marked for w in report.workers)
    after = {p: p.stat().st_ino for p in before}
    assert before == after


def test_hostile_symlinks_names_and_patterns_are_refused(tmp_path: Path) -> None:
    outside = tmp_path / "secret"
    outside.mkdir()
    (outside / "key").write_text("do not copy")
    cfg = make_training_repo(
        tmp_path / "repo", {"a": {}},
        collect=["results/**", "data/**", "../secret/**", "/etc/host*", "**/*.cfg"],
        shared=["data"])
    (tmp_path / "repo" / "data").mkdir()
    (tmp_path / "repo" / "data" / "big.bin").write_bytes(b"dataset")
    wt(cfg, "launch", "--branches", "a", "--wait")
    run = latest_run(cfg)
    wdir, worktree = _source(cfg, run, "a")
    res = worktree / "results"
    (res / "passwd").symlink_to("/etc/passwd")
    (res / "inner-link").symlink_to("summary.txt")
    (res / "escape").symlink_to(outside)
    (res / "bad\nname.txt").write_text("newline in name")
    (res / "ok.cfg").write_text("fine")
    (wdir / "out" / "evil").symlink_to(outside / "key")

    report = collect(load_config(cfg), run=run)
    w = report.workers[0]
    assert w.ok and w.marked
    reasons = {s.path: s.reason for s in w.skipped}
    assert "refused" in reasons["worktree:results/passwd"]
    assert "refused" in reasons["worktree:results/escape"]
    assert "not followed" in reasons["worktree:results/inner-link"]
    assert "control characters" in reasons["worktree:results/bad\\nname.txt"]
    assert "refused" in reasons["out/evil"]
    assert "symlink" in reasons["worktree:data"]  # the shared: link is never followed
    assert "refused" in reasons["worktree:../secret/**"]
    assert "refused" in reasons["worktree:/etc/host*"]
    dest = tmp_path / "repo" / "results" / run / "a"
    got = tree(dest)
    assert "worktree/results/ok.cfg" in got and "worktree/results/summary.txt" in got
    assert not any("secret" in k or "passwd" in k or "data/" in k or "\n" in k for k in got)
    assert not any(p.is_symlink() for p in dest.rglob("*"))
    assert b"do not copy" not in b"".join(got.values())
    # Nothing was written outside results/<run>/<name>/.
    assert sorted(p.name for p in (tmp_path / "repo" / "results" / run).iterdir()) == ["a"]


class _Tamper(CollectObserver):
    """Changes a file on the host after it was listed, keeping its size and mtime: the copy
    then differs from the listed sha256 (what corruption in transit looks like)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def listed(self, name, host, listing) -> None:
        st = self.path.stat()
        data = bytearray(self.path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        self.path.write_bytes(bytes(data))
        os.utime(self.path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_corruption_is_detected_and_the_worker_not_marked(tmp_path: Path) -> None:
    cfg = make_training_repo(tmp_path / "repo", {"a": {"ckpt_kib": 256}})
    wt(cfg, "launch", "--branches", "a", "--wait")
    run = latest_run(cfg)
    wdir, _ = _source(cfg, run, "a")
    ckpt = wdir / "out" / "checkpoints" / "last.pt"
    config = load_config(cfg)

    report = collect(config, run=run, observer=_Tamper(ckpt))
    w = report.workers[0]
    assert not report.ok and not w.marked
    assert any("checksum mismatch" in e and "last.pt" in e for e in w.errors)
    final = tmp_path / "repo" / "results" / run / "a" / "out" / "checkpoints" / "last.pt"
    assert not final.exists()  # a bad copy never reaches its final path
    assert _collected_at(cfg, run)["a"] is None

    # Next collect lists the file again (its ctime changed, so it is re-hashed): consistent.
    report = collect(config, run=run)
    assert report.ok and report.workers[0].marked
    assert final.read_bytes() == ckpt.read_bytes()

    # A local copy damaged later (same size and mtime) is noticed and fetched again.
    st = final.stat()
    data = bytearray(final.read_bytes())
    data[0] ^= 0xFF
    final.write_bytes(bytes(data))
    os.utime(final, ns=(st.st_atime_ns, st.st_mtime_ns))
    report = collect(config, run=run)
    assert report.ok and report.workers[0].transferred_files == 1
    assert final.read_bytes() == ckpt.read_bytes()


def test_cli_exit_code_is_1_on_checksum_mismatch(tmp_path: Path, monkeypatch) -> None:
    cfg = make_training_repo(tmp_path / "repo", {"a": {}})
    wt(cfg, "launch", "--branches", "a", "--wait")
    wdir, _ = _source(cfg, latest_run(cfg), "a")
    from worktree_runner import collect as collect_mod

    original = collect_mod.CollectObserver.listed
    monkeypatch.setattr(collect_mod.CollectObserver, "listed",
                        lambda self, n, h, lst: _Tamper(wdir / "out" / "metrics.json")
                        .listed(n, h, lst))
    result = wt(cfg, "collect", ok=False)
    assert result.exit_code == 1 and "checksum mismatch" in result.output
    monkeypatch.setattr(collect_mod.CollectObserver, "listed", original)
    assert wt(cfg, "collect").exit_code == 0


class _Interrupt(CollectObserver):
    def __init__(self, after: int) -> None:
        self.after = after
        self.seen = 0

    def advance(self, nbytes: int) -> None:
        self.seen += nbytes
        if self.seen >= self.after:
            raise KeyboardInterrupt


def test_interrupted_collect_resumes_without_partial_files(tmp_path: Path) -> None:
    cfg = make_training_repo(tmp_path / "repo", {"a": {"ckpt_kib": 6 * 1024}})
    wt(cfg, "launch", "--branches", "a", "--wait")
    run = latest_run(cfg)
    wdir, _ = _source(cfg, run, "a")
    ckpt = wdir / "out" / "checkpoints" / "last.pt"
    config = load_config(cfg)
    with pytest.raises(KeyboardInterrupt):
        collect(config, run=run, observer=_Interrupt(after=2 << 20))
    dest = tmp_path / "repo" / "results" / run / "a"
    assert not (dest / "out" / "checkpoints" / "last.pt").exists()
    partial = dest / ".collect" / "incoming" / "worker" / "out" / "checkpoints" / "last.pt"
    assert 0 < partial.stat().st_size < ckpt.stat().st_size

    report = collect(config, run=run)
    w = report.workers[0]
    assert w.ok and w.marked
    assert (dest / "out" / "checkpoints" / "last.pt").read_bytes() == ckpt.read_bytes()
    # Resumed: what was already staged was not copied again.
    total = sum(p.stat().st_size for p in (dest / "out").rglob("*") if p.is_file())
    assert w.transferred_bytes <= total - (1 << 20)
    assert not (dest / ".collect" / "incoming").exists()


def test_live_worker_only_complete_files_then_marked_after_stop(tmp_path: Path) -> None:
    cfg = make_training_repo(tmp_path / "repo", {"live": {"mode": "slow"}})
    wt(cfg, "launch", "--branches", "live")
    run = latest_run(cfg)
    wdir, _ = _source(cfg, run, "live")
    config = load_config(cfg)
    (wdir / "out").mkdir(exist_ok=True)
    (wdir / "out" / "model.pt.tmp").write_bytes(b"half a checkpoint")
    (wdir / "out" / "old.txt").write_text("finished long ago")
    os.utime(wdir / "out" / "old.txt", (1, 1))
    for _ in range(400):  # bounded wait for the worker's first metrics line
        if (wdir / "out" / "metrics.jsonl").exists():
            break
        time.sleep(0.05)
    report = collect(config, run=run)
    w = report.workers[0]
    assert w.state == "running" and w.ok and not w.marked
    reasons = {s.path: s.reason for s in w.skipped}
    assert reasons["out/model.pt.tmp"] == "temporary file"
    assert "being written" in reasons["out/metrics.jsonl"]
    dest = tmp_path / "repo" / "results" / run / "live"
    assert (dest / "out" / "old.txt").read_text() == "finished long ago"
    assert not (dest / "out" / "metrics.jsonl").exists()
    # compare shows the running, partly collected worker.
    doc = json.loads(wt(cfg, "compare", "--format", "json").output)
    assert doc["branches"][0]["state"] == "running"
    assert "partly collected" in doc["branches"][0]["note"]

    wt(cfg, "stop", "live")
    wt(cfg, "status")
    report = collect(config, run=run)
    w = report.workers[0]
    assert w.state == "stopped" and w.ok and w.marked
    assert (dest / "out" / "metrics.jsonl").read_bytes() == (
        wdir / "out" / "metrics.jsonl").read_bytes()


def test_a_generate_run_never_collects_wt_runs_own_results(tmp_path: Path) -> None:
    """`generate` runs in the repository itself, where `results/` (every collect so far) and
    `.wt-run/` lie: its collect takes what the globs match there, but never those, so results
    do not end up inside results, doubling with every collect."""
    import sys

    import yaml

    cfg = make_training_repo(tmp_path / "repo", {"a": {}}, collect=("results/**", "**/*.pt"))
    doc = yaml.safe_load(cfg.read_text())
    doc["commands"]["generate"] = f"{sys.executable} -c \"open('made.pt', 'w').write('m')\""
    cfg.write_text(yaml.safe_dump(doc))
    wt(cfg, "launch", "--branches", "a", "--wait")
    wt(cfg, "collect")
    wt(cfg, "generate", "--wait")
    gen_run = latest_run(cfg)
    report = collect(load_config(cfg), run=gen_run)
    assert report.ok
    got = tree(tmp_path / "repo" / "results" / gen_run / "generate" / "worktree")
    assert got == {"made.pt": b"m"}, sorted(got)[:5]
    w = report.workers[0]
    assert any("wt-run's own" in s.reason for s in w.skipped), w.skipped


@pytest.mark.parametrize("planted", [".collect/incoming/worker/out", ".collect/incoming",
                                     ".collect"])
def test_a_symlink_planted_in_staging_is_never_written_through(tmp_path: Path,
                                                               planted: str) -> None:
    """A local worker can write into results/: a symlink it plants in wt-run's staging area
    is removed before any transfer, so nothing lands outside the destination."""
    cfg = make_training_repo(tmp_path / "repo", {"a": {}})
    wt(cfg, "launch", "--branches", "a", "--wait")
    run = latest_run(cfg)
    outside = tmp_path / "outside"
    outside.mkdir()
    link = tmp_path / "repo" / "results" / run / "a" / planted
    link.parent.mkdir(parents=True)
    link.symlink_to(outside, target_is_directory=True)
    report = collect(load_config(cfg), run=run)
    assert report.ok and report.workers[0].marked
    assert list(outside.rglob("*")) == []
    assert (tmp_path / "repo" / "results" / run / "a" / "out" / "checkpoints"
            / "last.pt").is_file()


def test_a_worker_results_directory_that_is_a_symlink_is_refused(tmp_path: Path) -> None:
    cfg = make_training_repo(tmp_path / "repo", {"a": {}})
    wt(cfg, "launch", "--branches", "a", "--wait")
    run = latest_run(cfg)
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "repo" / "results" / run).mkdir(parents=True)
    (tmp_path / "repo" / "results" / run / "a").symlink_to(outside, target_is_directory=True)
    report = collect(load_config(cfg), run=run)
    w = report.workers[0]
    assert not report.ok and not w.marked and any("is a symlink" in e for e in w.errors)
    assert list(outside.rglob("*")) == []


def test_the_collect_table_never_cuts_a_worker_name_short() -> None:
    """Sweep names differ at their ends: at 80 columns each still reads in full (folded)."""
    import re
    from io import StringIO

    from rich.console import Console

    from worktree_runner.collect_model import CollectReport, WorkerCollect
    from worktree_runner.display_collect import print_collect

    names = [f"baseline-lr0.01-wd0.05-s{i}" for i in range(2)]
    workers = tuple(WorkerCollect(n, "local", "succeeded", Path("/tmp/x"), "copy", 12, 123456,
                                  3, 12345, (), (), True) for n in names)
    buf = StringIO()
    print_collect(CollectReport("r1", Path("/tmp/results/r1"), workers),
                  Console(file=buf, width=80))
    cells = "".join(line.split("│")[1].strip() for line in buf.getvalue().splitlines()
                    if line.startswith("│"))
    assert all(n in cells for n in names) and "…" not in re.sub(r"\s", "", cells)
