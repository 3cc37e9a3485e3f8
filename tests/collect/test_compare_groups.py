"""`compare` over groups of seeds, on a collected sweep with known values (tests/collect/
seeded.py): mean, sample std and 95% Student-t half-width checked exactly, the winner per metric
and whether its lead is significant, `baseline-*` references never ranked, failed and missing
seeds counted, confounders within and between groups, hostile var values escaped in every
format, and the grouping of runs recorded before sweeps."""

from __future__ import annotations

import csv
import io
import json
import math
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tests.collect.helpers import git, wt
from tests.collect.seeded import HOSTILE, RUN, T975_2, build
from worktree_runner.compare_groups import build_groups
from worktree_runner.compare_read import BranchResult
from worktree_runner.compare_stats import betainc, summarize, t_cdf, t_ppf


@pytest.mark.parametrize(("df", "expected"), [
    (1, 12.706204736174707), (2, 4.302652729749464), (3, 3.182446305284263),
    (4, 2.7764451051977987), (10, 2.2281388519649385), (30, 2.0422724563012373),
    (1000, 1.9623390808264078)])
def test_t_quantile_matches_tables(df: int, expected: float) -> None:
    assert t_ppf(0.975, df) == pytest.approx(expected, rel=1e-10)
    assert t_cdf(expected, df) == pytest.approx(0.975, abs=1e-12)
    assert t_ppf(0.025, df) == pytest.approx(-expected, rel=1e-10)


def test_incomplete_beta_known_values() -> None:
    assert betainc(1.0, 1.0, 0.3) == pytest.approx(0.3, abs=1e-14)  # uniform
    assert betainc(2.0, 3.0, 0.4) == pytest.approx(0.5248, abs=1e-12)
    assert t_ppf(0.995, 3) == pytest.approx(5.840909309733351, rel=1e-10)


def test_summary_is_exact() -> None:
    s = summarize([1.0, 2.0, 3.0])
    assert (s.mean, s.std) == (2.0, 1.0)
    assert s.ci95 == pytest.approx(T975_2 / math.sqrt(3), rel=1e-12)
    one = summarize([5.0])
    assert (one.mean, one.std, one.ci95, one.n) == (5.0, None, None, 1)
    assert summarize([]).mean is None


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(tmp_path_factory.mktemp("seeded"))


def _json(cfg: Path, *args: str) -> dict:
    return json.loads(wt(cfg, "compare", "--run", RUN, "--format", "json", *args).output)


def test_json_groups_have_exact_statistics(seeded: Path) -> None:
    doc = _json(seeded)
    groups = {g["name"]: g for g in doc["groups"]}
    assert list(groups) == ["a", "b", "c", "baseline-oracle"]
    a = groups["a"]
    assert (a["branch"], a["vars"], a["n"], a["failed"], a["missing"]) == (
        "exp/a", {"lr": "0.1"}, 3, 0, 0)
    assert a["seeds"] == [0, 1, 2] and a["workers"] == ["a-s0", "a-s1", "a-s2"]
    acc = a["metrics"]["accuracy"]
    assert acc["values"] == [0.5, 0.6, 0.7]
    assert acc["mean"] == pytest.approx(0.6, rel=1e-12)
    assert acc["std"] == pytest.approx(0.1, rel=1e-12)
    assert acc["ci95"] == pytest.approx(T975_2 * 0.1 / math.sqrt(3), rel=1e-10)
    b_loss = groups["b"]["metrics"]["loss"]
    assert b_loss["mean"] == pytest.approx(0.15) and b_loss["std"] == pytest.approx(0.05)
    assert b_loss["ci95"] == pytest.approx(T975_2 * 0.05 / math.sqrt(3), rel=1e-10)
    # c: one seed succeeded, one failed, one still running; only the first counts.
    c = groups["c"]
    assert (c["n"], c["failed"], c["missing"]) == (1, 1, 1)
    assert c["metrics"]["accuracy"] == {"mean": 0.4, "std": None, "ci95": None, "n": 1,
                                        "values": [0.4]}
    assert groups["baseline-oracle"]["reference"] is True
    by_worker = {w["name"]: w for w in doc["branches"]}
    assert by_worker["b-s2"]["group"] == "b" and by_worker["b-s2"]["seed"] == 2
    assert by_worker["b-s2"]["env"]["gpu"].startswith("NVIDIA A100")


def test_winner_and_significance(seeded: Path) -> None:
    w = _json(seeded)["winners"]
    # accuracy: b 0.91 ± 0.0248 against a 0.6 ± 0.248: lead 0.31 > both intervals.
    assert w["accuracy"]["best"] == "b" and w["accuracy"]["runner_up"] == "a"
    assert w["accuracy"]["lead"] == pytest.approx(0.31)
    assert w["accuracy"]["significant"] is True
    # loss (lower is better): b 0.15 ± 0.124 against a 0.2 ± 0.248: the intervals overlap.
    assert w["loss"]["best"] == "b" and w["loss"]["direction"] == "min"
    assert w["loss"]["significant"] is False
    # The reference has the best values of all, and is never the winner.
    assert all(x["best"] != "baseline-oracle" and x["runner_up"] != "baseline-oracle"
               for x in w.values())


def test_confounders_within_and_between_groups(seeded: Path) -> None:
    found = {(c["scope"], c["key"]) for c in _json(seeded)["confounders"]}
    assert ("b", "gpu") in found and ("b", "completed") in found
    assert ("c", "dirty") in found
    assert (None, "data_fingerprint") in found and (None, "dirty") in found
    # a is alike in everything; b's GPU mix is b's own problem, not a between-group one.
    assert not any(scope == "a" for scope, _ in found)
    assert (None, "gpu") not in found
    assert (None, "packages_hash") not in found and ("b", "packages_hash") not in found


def test_terminal_table_shows_mean_ci_and_shortfall(seeded: Path) -> None:
    out = wt(seeded, "compare", "--run", RUN).output
    assert re.search(r"0\.6 ± 0\.2484", out) and "0.91 ± 0.02484 ✓" in out
    assert "0.15 ± 0.1242 ≈" in out
    assert "1/3" in out and "1 failed, 1 missing" in out
    assert "significant: lead larger than both 95% intervals" in out
    assert "warning: c: ran uncommitted changes" in out
    per_worker = wt(seeded, "compare", "--run", RUN, "--per-worker").output
    for name in ("a-s0", "b-s2", "c-s1", "baseline-oracle"):
        assert name in per_worker
    assert "failed" in per_worker and "running" in per_worker


def test_csv_groups_and_per_worker(seeded: Path) -> None:
    rows = list(csv.DictReader(io.StringIO(
        wt(seeded, "compare", "--run", RUN, "--format", "csv").output)))
    by = {r["group"]: r for r in rows}
    assert float(by["a"]["accuracy_mean"]) == pytest.approx(0.6)
    assert float(by["a"]["accuracy_std"]) == pytest.approx(0.1)
    assert float(by["a"]["accuracy_ci95"]) == pytest.approx(T975_2 * 0.1 / math.sqrt(3))
    assert by["c"]["accuracy_ci95"] == "" and by["c"]["failed"] == "1"
    assert json.loads(by["c"]["vars"])["note"] == HOSTILE
    workers = list(csv.DictReader(io.StringIO(wt(
        seeded, "compare", "--run", RUN, "--format", "csv", "--per-worker").output)))
    assert len(workers) == 10 and {"name", "state", "accuracy"} <= set(workers[0])


def test_baseline_group_deltas(seeded: Path) -> None:
    doc = _json(seeded, "--baseline", "a")
    assert doc["baseline"] == "a"
    out = wt(seeded, "compare", "--run", RUN, "--baseline", "a").output
    assert "Δ+0.31" in out
    bad = wt(seeded, "compare", "--run", RUN, "--baseline", "zzz", ok=False)
    assert "neither a worker nor a group" in bad.output and "pick one of" in bad.output


def test_markdown_escapes_hostile_values(seeded: Path, tmp_path: Path) -> None:
    wt(seeded, "compare", "--run", RUN, "--format", "md", "--out", str(tmp_path))
    md = (tmp_path / "compare.md").read_text()
    assert "**0.91 ± 0.02484 ✓**" in md
    assert "<script>" not in md and "\\<script\\>" in md
    for block in md.split("\n\n"):
        table = [line for line in block.splitlines() if line.startswith("|")]
        widths = {len(re.findall(r"(?<!\\)\|", line)) for line in table}
        assert len(widths) <= 1  # no cell's `|` broke a row
    assert "| c | 0.1 | it's" in md
    for img in ("final_metrics.png", "curve_loss.png", "curve_val_accuracy.png"):
        assert (tmp_path / img).is_file() and f"]({img})" in md


class _Page(HTMLParser):
    """Texts by element, scripts and every src/href of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.scripts = 0
        self.urls: list[str] = []
        self.ids: dict[str, str] = {}
        self._stack: list[str | None] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.scripts += tag == "script"
        self.urls += [v for k, v in attrs if k in ("src", "href") and v]
        self._stack.append(a.get("id"))
        for ident in self._stack:
            if ident:
                self.ids.setdefault(ident, "")

    def handle_endtag(self, tag):
        if self._stack:
            self._stack.pop()

    def handle_data(self, data):
        self.text.append(data)
        for ident in {i for i in self._stack if i}:
            self.ids[ident] += data


def test_html_report_summary_folds_and_escapes(seeded: Path, tmp_path: Path) -> None:
    wt(seeded, "compare", "--run", RUN, "--format", "html", "--out", str(tmp_path))
    page = (tmp_path / "compare.html").read_text()
    p = _Page()
    p.feed(page)
    assert p.scripts == 0 and all(u.startswith("data:image/png;base64,") for u in p.urls)
    assert len(p.urls) >= 3
    # The summary comes first: winners, significance, warnings.
    assert page.index("id='summary'") < page.index("id='groups'") < page.index("id='plots'")
    assert "significant: lead larger than both 95% intervals" in p.ids["winners"]
    assert "not significant" in p.ids["winners"]
    warnings = p.ids["warnings"]
    assert "GPU model differs among its seeds" in warnings and "data differs between" in warnings
    assert "c: 1 failed, 1 missing of 3" in warnings
    # Wide families fold; every group is a row.
    assert "<details class='family'><summary>val/… (" in page
    assert [g in p.ids["groups"] for g in ("a", "b", "c", "baseline-oracle")] == [True] * 4
    # Hostile values are text, never markup.
    assert HOSTILE in "".join(p.text) and "<script>alert" not in page
    # Code differences per branch against base, and the snapshot of uncommitted code.
    code = p.ids["code"]
    assert "exp/a" in code and "NOTES-a.md" in code
    assert "uncommitted changes (snapshot" in code and "edited but not committed" in code


def test_snapshot_is_recoverable_and_diffed(seeded: Path) -> None:
    doc = _json(seeded)
    snap = next(w["env"]["snapshot"] for w in doc["branches"] if w["name"] == "c-s0")
    repo = seeded.parent
    assert "edited but not committed" in git(repo, "show", f"{snap}:NOTES-c.md")


def _result(name: str, branch: str, seed_var: str | None, value: float,
            state: str = "succeeded") -> BranchResult:
    vars_ = {"lr": "0.1", **({"seed": seed_var} if seed_var is not None else {})}
    return BranchResult(name, branch, "c0ffee", "local", state, True, final={"acc": value},
                        vars=vars_, seed=int(seed_var) if seed_var else None)


def test_runs_from_before_sweeps_group_by_branch_and_vars() -> None:
    old = [_result("old-s0", "exp/a", "0", 1.0), _result("old-s1", "exp/a", "1", 2.0),
           _result("old-s2", "exp/a", "2", 3.0), _result("other", "exp/b", None, 5.0),
           _result("baseline-zero", "main", None, 9.0)]
    groups = build_groups(old, ["acc"])
    assert [g.name for g in groups] == ["old", "other", "baseline-zero"]
    first = groups[0]
    assert first.vars == {"lr": "0.1"} and first.n == 3
    assert (first.metrics["acc"].mean, first.metrics["acc"].std) == (2.0, 1.0)
    assert groups[2].reference and not groups[1].reference


def test_reference_comes_from_the_entry_name_not_a_swept_worker_name() -> None:
    """An entry named `baseline` swept over lr gives workers `baseline-lr0.1-s0`: still a
    contender. An entry named `baseline-oracle` stays a reference, swept or not."""
    from dataclasses import replace

    swept = [replace(_result(f"baseline-lr0.1-s{i}", "exp/b", str(i), 1.0 + i),
                     group="baseline-lr0.1", entry="baseline") for i in range(2)]
    oracle = [replace(_result(f"baseline-oracle-s{i}", "main", str(i), 9.0),
                      group="baseline-oracle", entry="baseline-oracle") for i in range(2)]
    groups = {g.name: g for g in build_groups([*swept, *oracle], ["acc"])}
    assert not groups["baseline-lr0.1"].reference
    assert groups["baseline-oracle"].reference
    assert not swept[0].reference and oracle[0].reference


def test_a_failed_worker_is_never_the_best_of_a_column() -> None:
    from pathlib import Path

    from worktree_runner.compare import Comparison

    results = (_result("ok", "exp/a", None, 0.5),
               _result("crashed", "exp/b", None, 0.9, state="failed"),
               _result("live", "exp/c", None, 0.7, state="running"))
    cmp = Comparison("r", Path("."), results, ("acc",))
    assert cmp.best_name("acc") == set()  # only one succeeded: nothing to rank
    more = (*results, _result("ok2", "exp/d", None, 0.6))
    cmp = Comparison("r", Path("."), more, ("acc",))
    assert cmp.best_name("acc") == {"ok2"}
    running = tuple(replace_state(r, "running") if r.state == "succeeded" else r for r in more)
    cmp = Comparison("r", Path("."), running, ("acc",))
    assert cmp.best_name("acc") == {"live"}


def replace_state(result: BranchResult, state: str) -> BranchResult:
    from dataclasses import replace

    return replace(result, state=state)


def test_plot_file_names_stay_file_sized() -> None:
    """A metric name is the worker's to choose; its plot's file name must still be writable."""
    from worktree_runner.compare_plots import slug

    long_a, long_b = "m" * 400 + "a", "m" * 400 + "b"
    taken: dict[str, bytes] = {}
    a = slug(long_a, taken)
    taken[a] = b""
    b = slug(long_b, taken)
    assert len(a) < 200 and len(b) < 200 and a != b
    assert slug("train/loss") == "train-loss.png"


def test_a_diverged_group_is_named_not_dropped() -> None:
    """A NaN final value is a run that diverged: the statistics leave it out, and the table
    and the summary say so instead of showing nothing."""
    from dataclasses import replace
    from pathlib import Path

    from worktree_runner.compare import Comparison
    from worktree_runner.compare_groups import winners
    from worktree_runner.compare_tables import build_group_table, winner_lines

    ok = [replace(_result(f"ok-s{i}", "exp/a", str(i), 0.5 + i / 10), group="ok")
          for i in range(2)]
    nan = [replace(_result(f"wild-s{i}", "exp/a", str(i), float("nan")), group="wild")
           for i in range(2)]
    groups = build_groups([*ok, *nan], ["acc"])
    by = {g.name: g for g in groups}
    assert by["wild"].metrics["acc"].mean is None and by["wild"].metrics["acc"].diverged == 2
    cmp = Comparison("r", Path("."), (*ok, *nan), ("acc",), groups=groups,
                     winners=winners(groups, ["acc"]))
    assert any("NaN (diverged" in line and "wild" in line for line in winner_lines(cmp))
    table = build_group_table(cmp)
    texts = [c.text for row in table.rows for c in row]
    assert "NaN (diverged)" in texts


def test_a_shortfall_names_how_members_ended() -> None:
    from dataclasses import replace

    members = [replace(_result("g-s0", "exp/a", "0", 1.0), group="g"),
               replace(_result("g-s1", "exp/a", "1", 1.0, state="stopped"), group="g"),
               replace(_result("g-s2", "exp/a", "2", 1.0, state="failed"), group="g")]
    (group,) = build_groups(members, ["acc"])
    assert group.shortfall() == "1 failed, 1 stopped" and group.failed == 2
