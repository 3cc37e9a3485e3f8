"""`collect` from an SSH host (a real sshd on 127.0.0.1; the worker was launched there with
`wt-run launch --host gpu --wait`), over OpenSSH's sftp client (the default) and wt-run's own
SFTP: verified copies, an
unchanged collect that moves no data and opens one connection, corruption caught, interrupted
transfers that resume, and a lost host checksum cache that costs no transfer."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tests.collect.helpers import latest_run, make_training_repo, tree, wt
from tests.collect.test_collect import _Tamper
from tests.servers.fixtures import sshd_server  # noqa: F401
from tests.servers.sshd import SSHServer
from worktree_runner import collect_openssh
from worktree_runner import ssh as wt_ssh
from worktree_runner.backends import open_host
from worktree_runner.collect import CollectObserver, collect
from worktree_runner.config import load_config
from worktree_runner.runs import RunStore

pytestmark = pytest.mark.ssh


def _remote_run(tmp_path: Path, server: SSHServer, monkeypatch: pytest.MonkeyPatch,
                names: tuple[str, ...] = ("a",), **vars_: object) -> tuple[Path, str]:
    ssh_config = tmp_path / "ssh_config"
    ssh_config.write_text(server.ssh_config_entry("gpu"))
    monkeypatch.setenv("WT_RUN_SSH_CONFIG", str(ssh_config))
    cfg = make_training_repo(tmp_path / "repo", {n: {"quality": 0.7, **vars_} for n in names},
                             hosts={
        "local": {"type": "local"},
        "gpu": {"type": "ssh", "address": "gpu", "root": str(tmp_path / "remote"),
                "connect_timeout": 5, "command_timeout": 60}})
    wt(cfg, "launch", "--branches", *names, "--host", "gpu", "--wait")
    wt_ssh.close_all()
    return cfg, latest_run(cfg)


def _remote_files(cfg: Path, run: str, name: str = "a") -> dict[str, bytes]:
    rec = RunStore(cfg.parent / ".wt-run").load(run).workers[name]
    files = {f"out/{k}": v for k, v in tree(Path(rec.out)).items()}
    files["log"] = Path(rec.log).read_bytes()
    files["worktree/results/summary.txt"] = Path(
        rec.worktree, "results", "summary.txt").read_bytes()
    return files


@pytest.mark.parametrize("transport", ["openssh", "sftp"])
def test_ssh_collect_verified_then_unchanged_collect_moves_nothing(
        tmp_path: Path, sshd_server: SSHServer, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
        transport: str) -> None:
    cfg, run = _remote_run(tmp_path, sshd_server, monkeypatch)
    config = load_config(cfg)
    dest = tmp_path / "repo" / "results" / run / "a"
    before = sshd_server.connection_count()
    report = collect(config, run=run, transport=transport)
    w = report.workers[0]
    assert w.ok and w.marked and w.transport == transport
    remote = _remote_files(cfg, run)
    assert tree(dest) | {"worker.json": b""} == remote | {"worker.json": b""}
    assert w.transferred_files == len(remote)
    # openssh: the listing connection plus one shared OpenSSH connection; SFTP: one.
    expected = before + (1 if transport == "sftp" else 2)
    assert sshd_server.wait_connection_count(expected) == expected

    wt_ssh.close_all()
    report = collect(config, run=run, transport=transport)
    w = report.workers[0]
    assert (w.transferred_files, w.transferred_bytes, w.transport) == (0, 0, "none")
    assert w.ok and w.files == len(remote)
    # The unchanged collect is one round trip on one connection: no file transfer.
    assert sshd_server.wait_connection_count(expected + 1) == expected + 1


def test_ssh_corruption_is_detected(tmp_path: Path, sshd_server: SSHServer,  # noqa: F811
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    cfg, run = _remote_run(tmp_path, sshd_server, monkeypatch)
    rec = RunStore(cfg.parent / ".wt-run").load(run).workers["a"]
    ckpt = Path(rec.out) / "checkpoints" / "last.pt"
    report = collect(load_config(cfg), run=run, transport="openssh", observer=_Tamper(ckpt))
    w = report.workers[0]
    assert not w.ok and not w.marked
    assert any("checksum mismatch" in e for e in w.errors)
    assert not (tmp_path / "repo" / "results" / run / "a" / "out" / "checkpoints"
                / "last.pt").exists()
    assert RunStore(cfg.parent / ".wt-run").load(run).workers["a"].collected_at is None


class _StopAfterFirstFile(CollectObserver):
    def file_done(self) -> None:
        raise KeyboardInterrupt


def test_ssh_interrupted_transfer_resumes(tmp_path: Path, sshd_server: SSHServer,  # noqa: F811
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    cfg, run = _remote_run(tmp_path, sshd_server, monkeypatch, ckpts=6, ckpt_kib=4096)
    config = load_config(cfg)
    remote = _remote_files(cfg, run)
    with pytest.raises(KeyboardInterrupt):
        collect(config, run=run, transport="openssh", observer=_StopAfterFirstFile())
    dest = tmp_path / "repo" / "results" / run / "a"
    # Nothing reached a final path; what sftp finished waits in staging.
    assert not (dest / "out").exists() and not (dest / "log").exists()
    staging = dest / ".collect" / "incoming"
    staged = {f"{p.relative_to(staging / 'worker').as_posix()}" for p in
              (staging / "worker").rglob("*") if p.is_file() and not p.name.startswith(".")}
    complete = {k for k in staged if k in remote and (staging / "worker" / k).read_bytes()
                == remote[k]}
    assert complete and len(complete) < len(remote)  # the worktree root was never reached

    wt_ssh.close_all()
    report = collect(config, run=run, transport="openssh")
    w = report.workers[0]
    assert w.ok and w.marked
    assert tree(dest) | {"worker.json": b""} == remote | {"worker.json": b""}
    # Resumed: the files completed before the interrupt were not sent again.
    assert w.transferred_files == len(remote) - len(complete)


class _FlipInTransit:
    """Wraps the OpenSSH transport's fetch so that one byte in the middle of `name` arrives
    flipped (size and mtime as on the host): what corruption in transit looks like. The
    damaged bytes are on disk before verification reads them, so the check it exercises is
    deterministic."""

    def __init__(self, fetch: Any, name: str) -> None:
        self.fetch = fetch
        self.name = name
        self.times = 0

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        def fetch(transport: Any, root: str, rels: Any, staging: Path, *rest: Any) -> Any:
            result = self.fetch(transport, root, rels, staging, *rest)
            for rel in rels:
                copy = staging / rel
                if copy.name == self.name and copy.stat().st_size >= 2:
                    self.times += 1
                    st = copy.stat()
                    data = bytearray(copy.read_bytes())
                    data[len(data) // 2] ^= 0xFF
                    copy.write_bytes(bytes(data))
                    os.utime(copy, ns=(st.st_atime_ns, st.st_mtime_ns))
            return result

        monkeypatch.setattr(collect_openssh.OpenSSHTransport, "fetch", fetch)


def test_ssh_corrupted_copy_is_caught_and_never_placed(
        tmp_path: Path, sshd_server: SSHServer,  # noqa: F811
        monkeypatch: pytest.MonkeyPatch) -> None:
    cfg, run = _remote_run(tmp_path, sshd_server, monkeypatch, ckpt_kib=2048)
    rec = RunStore(cfg.parent / ".wt-run").load(run).workers["a"]
    dest = tmp_path / "repo" / "results" / run / "a"
    flip = _FlipInTransit(collect_openssh.OpenSSHTransport.fetch, "last.pt")
    flip.install(monkeypatch)
    report = collect(load_config(cfg), run=run, transport="openssh")
    w = report.workers[0]
    assert flip.times == 2  # the first attempt and its retry
    assert not w.ok and not w.marked and w.transport == "openssh"
    assert any("checksum mismatch" in e and "last.pt" in e for e in w.errors)
    assert not (dest / "out" / "checkpoints" / "last.pt").exists()
    assert (dest / "log").exists()  # the other files were fine

    monkeypatch.setattr(collect_openssh.OpenSSHTransport, "fetch", flip.fetch)
    wt_ssh.close_all()
    report = collect(load_config(cfg), run=run)
    assert report.ok and report.workers[0].marked
    assert (dest / "out" / "checkpoints" / "last.pt").read_bytes() == (
        Path(rec.out) / "checkpoints" / "last.pt").read_bytes()


class _InterruptAfter(CollectObserver):
    def __init__(self, nbytes: int) -> None:
        self.nbytes = nbytes
        self.seen = 0

    def advance(self, nbytes: int) -> None:
        self.seen += nbytes
        if self.seen >= self.nbytes:
            raise KeyboardInterrupt


def test_ssh_interrupted_collect_resumes_from_the_partial_file(
        tmp_path: Path, sshd_server: SSHServer,  # noqa: F811
        monkeypatch: pytest.MonkeyPatch) -> None:
    cfg, run = _remote_run(tmp_path, sshd_server, monkeypatch, ckpt_kib=6 * 1024)
    config = load_config(cfg)
    remote = _remote_files(cfg, run)
    # Slowed to 2 MiB/s, so that the interrupt lands inside the checkpoint (progress is read
    # every 0.1 s; over loopback the file would arrive whole before).
    argv = collect_openssh.OpenSSHTransport.argv
    monkeypatch.setattr(collect_openssh.OpenSSHTransport, "argv",
                        lambda self: [*argv(self)[:1], "-l", "16384", *argv(self)[1:]])
    with pytest.raises(KeyboardInterrupt):
        collect(config, run=run, observer=_InterruptAfter(2 << 20))
    monkeypatch.setattr(collect_openssh.OpenSSHTransport, "argv", argv)
    dest = tmp_path / "repo" / "results" / run / "a"
    partial = dest / ".collect" / "incoming" / "worker" / "out" / "checkpoints" / "last.pt"
    assert 0 < partial.stat().st_size < len(remote["out/checkpoints/last.pt"])
    assert not (dest / "out" / "checkpoints" / "last.pt").exists()

    wt_ssh.close_all()
    report = collect(config, run=run)
    w = report.workers[0]
    assert w.ok and w.marked and w.transport == "openssh"
    assert tree(dest) | {"worker.json": b""} == remote | {"worker.json": b""}
    # Resumed: the staged part of the checkpoint was not sent again.
    assert w.transferred_bytes <= sum(len(v) for v in remote.values()) - (1 << 20)
    assert not (dest / ".collect" / "incoming").exists()


def test_ssh_lost_host_checksums_cost_no_transfer(tmp_path: Path,
                                                  sshd_server: SSHServer,  # noqa: F811
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    cfg, run = _remote_run(tmp_path, sshd_server, monkeypatch)
    config = load_config(cfg)
    assert collect(config, run=run).workers[0].marked
    rec = RunStore(cfg.parent / ".wt-run").load(run).workers["a"]
    sums = Path(rec.worker_dir) / ".collect-sums.json"
    assert sums.exists()  # the sender cached what it hashed

    # Without the host's cache the listing knows no sha256: the host hashes the files whose
    # local copy has the same size, and equal ones are not sent.
    sums.unlink()
    wt_ssh.close_all()
    w = collect(config, run=run).workers[0]
    assert w.ok and (w.transferred_files, w.transferred_bytes) == (0, 0)

    # Same size, new content: found by its sha256 and fetched.
    ckpt = Path(rec.out) / "checkpoints" / "last.pt"
    ckpt.write_bytes(bytes(b ^ 0x5A for b in ckpt.read_bytes()))
    sums.unlink()
    wt_ssh.close_all()
    w = collect(config, run=run).workers[0]
    assert w.ok and w.transferred_files == 1
    dest = tmp_path / "repo" / "results" / run / "a"
    assert (dest / "out" / "checkpoints" / "last.pt").read_bytes() == ckpt.read_bytes()


class _RemoveAfterListing(CollectObserver):
    def __init__(self, path: Path) -> None:
        self.path = path

    def listed(self, name: str, host: Any, listing: Any) -> None:
        self.path.unlink()


@pytest.mark.parametrize("transport", ["openssh", "sftp"])
def test_ssh_file_removed_after_listing_is_skipped_not_an_error(
        tmp_path: Path, sshd_server: SSHServer, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
        transport: str) -> None:
    cfg, run = _remote_run(tmp_path, sshd_server, monkeypatch, ckpts=2)
    rec = RunStore(cfg.parent / ".wt-run").load(run).workers["a"]
    rotated = Path(rec.out) / "checkpoints" / "epoch-0.pt"
    config = load_config(cfg)
    w = collect(config, run=run, transport=transport,
                observer=_RemoveAfterListing(rotated)).workers[0]
    assert w.ok and not w.marked
    assert "unreadable" in {s.path: s.reason for s in w.skipped}["out/checkpoints/epoch-0.pt"]
    # The next collect no longer lists it: complete, marked.
    wt_ssh.close_all()
    w = collect(config, run=run, transport=transport).workers[0]
    assert w.ok and w.marked
    assert tree(tmp_path / "repo" / "results" / run / "a") | {"worker.json": b""} == (
        _remote_files(cfg, run) | {"worker.json": b""})


class _Sftps:
    """Records every sftp collect starts, and which one each `fetch` (or `close`) found
    started ahead by `prepare`."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.started: list[Any] = []
        self.claims: list[tuple[str, Any]] = []
        init, claim = collect_openssh._Sftp.__init__, collect_openssh.OpenSSHTransport._claim

        def record_init(sftp: Any, argv: list[str]) -> None:
            init(sftp, argv)
            self.started.append(sftp)

        def record_claim(transport: Any, key: tuple[str, Path]) -> Any:
            got = claim(transport, key)
            self.claims.append((Path(key[1]).name, got))
            return got

        monkeypatch.setattr(collect_openssh._Sftp, "__init__", record_init)
        monkeypatch.setattr(collect_openssh.OpenSSHTransport, "_claim", record_claim)


def test_ssh_collect_starts_each_sftp_ahead(
        tmp_path: Path, sshd_server: SSHServer,  # noqa: F811
        monkeypatch: pytest.MonkeyPatch) -> None:
    cfg, run = _remote_run(tmp_path, sshd_server, monkeypatch, names=("a", "b"))
    sftps = _Sftps(monkeypatch)
    before = sshd_server.connection_count()
    report = collect(load_config(cfg), run=run)
    assert report.ok and all(w.marked and w.transport == "openssh" for w in report.workers)
    for name in ("a", "b"):
        assert tree(tmp_path / "repo" / "results" / run / name) | {"worker.json": b""} == (
            _remote_files(cfg, run, name) | {"worker.json": b""})
    # Two workers, two roots each: every sftp was started ahead (the first one while the
    # host listed), none cold, and each one ended.
    assert [got is not None for _, got in sftps.claims] == [True] * 4
    assert sorted(root for root, _ in sftps.claims) == ["worker"] * 2 + ["worktree"] * 2
    assert len(sftps.started) == 4
    assert all(r.proc.returncode == 0 for r in sftps.started)
    # Still the listing connection plus one shared OpenSSH connection.
    assert sshd_server.wait_connection_count(before + 2) == before + 2


def test_ssh_sftp_started_ahead_but_unused_is_stopped(
        tmp_path: Path, sshd_server: SSHServer,  # noqa: F811
        monkeypatch: pytest.MonkeyPatch) -> None:
    cfg, run = _remote_run(tmp_path, sshd_server, monkeypatch)
    rec = RunStore(cfg.parent / ".wt-run").load(run).workers["a"]
    sftps = _Sftps(monkeypatch)
    staging = tmp_path / "staging"
    with open_host(load_config(cfg), "gpu") as host:
        transport = collect_openssh.OpenSSHTransport(host)
        transport.connect_early()
        transport.prepare(rec.worker_dir, staging / "unused")
        transport.prepare(rec.worker_dir, staging / "used")
        moved = transport.fetch(rec.worker_dir, ["log"], staging / "used", {"log": 0},
                                CollectObserver())
        transport.close()
    assert moved.files == 1
    assert (staging / "used" / "log").read_bytes() == Path(rec.log).read_bytes()
    assert sftps.claims[0][0] == "used" and sftps.claims[0][1] is not None
    assert len(sftps.started) == 2
    # The one never used waited for its batch and was stopped, having copied nothing.
    unused = next(got for name, got in sftps.claims if name == "unused")
    assert unused is not None and unused is not sftps.claims[0][1]
    assert unused.proc.returncode is not None
    assert not any(p.is_file() for p in (staging / "unused").rglob("*"))


HOSTILE_NAMES = ('a b', 'q"uote', "s'ingle", "st*r", "qu?", "br[a]", "$HOME", "#hash",
                 "-dash", "ünï", "semi;colon", "back`tick", " lead", "trail ", "{a,b}", "~t")


def test_ssh_hostile_and_very_long_names_arrive_intact(
        tmp_path: Path, sshd_server: SSHServer,  # noqa: F811
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Every name a shell or sftp's batch parser could misread arrives byte for byte; a path
    too long for one sftp batch line comes over wt-run's own SFTP session instead."""
    cfg, run = _remote_run(tmp_path, sshd_server, monkeypatch)
    rec = RunStore(cfg.parent / ".wt-run").load(run).workers["a"]
    out = Path(rec.out)
    for i, name in enumerate(HOSTILE_NAMES):
        (out / "odd").mkdir(exist_ok=True)
        (out / "odd" / name).write_bytes(f"{i}: {name}\n".encode() * 100)
    (out / "odd" / "a b").chmod(0o4444)  # setuid, read-only: collected as plain rw
    deep = out.joinpath(*[f"{c}" * 200 for c in "abcdefghij"])
    deep.mkdir(parents=True)
    (deep / "deep.txt").write_bytes(b"deep\n" * 1000)
    assert len(str(deep / "deep.txt")) > 2000
    w = collect(load_config(cfg), run=run, transport="openssh").workers[0]
    assert w.ok and w.marked and w.transport == "openssh", (w.errors, w.skipped)
    dest = tmp_path / "repo" / "results" / run / "a"
    assert tree(dest) | {"worker.json": b""} == _remote_files(cfg, run) | {"worker.json": b""}
    assert w.transferred_files == len(_remote_files(cfg, run))
    assert (dest / "out" / "odd" / "a b").stat().st_mode & 0o7777 == 0o644


def test_sftp_batch_quotes_and_sets_aside_overlong_lines() -> None:
    batch, too_long = collect_openssh.sftp_batch(
        "/h/w", Path("/s"), ['x"y', "-d", "z" * 2100])
    assert batch.decode().splitlines() == [
        'cd "/h/w"', 'lcd "/s"', '-reget -p -- "x\\"y" "x\\"y"', '-reget -p -- "-d" "-d"']
    assert too_long == ["z" * 2100]


def test_ssh_collect_into_a_symlinked_results_dir_is_refused(
        tmp_path: Path, sshd_server: SSHServer, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """The OpenSSH transport starts its first sftp before planning: a worker results directory
    that is a symlink is still refused, with nothing written, not a crash."""
    cfg, run = _remote_run(tmp_path, sshd_server, monkeypatch)
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "repo" / "results" / run).mkdir(parents=True)
    (tmp_path / "repo" / "results" / run / "a").symlink_to(outside, target_is_directory=True)
    report = collect(load_config(cfg), run=run, transport="openssh")
    w = report.workers[0]
    assert not report.ok and not w.marked and any("is a symlink" in e for e in w.errors)
    assert list(outside.rglob("*")) == []
