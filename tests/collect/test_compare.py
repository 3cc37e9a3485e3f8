"""`compare` on a real run (launched, one branch failed, collected): every format produced and
parsed back, TensorBoard scalars read, best and baseline deltas right, the HTML report
self-contained with its table, plots, differing vars and code differences."""

from __future__ import annotations

import base64
import csv
import json
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tests.collect.helpers import latest_run, make_training_repo, wt
from worktree_runner.compare import direction, read_tensorboard

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def collected(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """good (metrics.jsonl + metrics.json), better (same, higher quality), tb (TensorBoard
    only), bad (fails at epoch 2); launched, waited for, collected."""
    repo = tmp_path_factory.mktemp("cmp") / "repo"
    cfg = make_training_repo(repo, {
        "good": {"quality": 0.6}, "better": {"quality": 0.9},
        "tb": {"quality": 0.8, "mode": "tensorboard"}, "bad": {"mode": "fail"}})
    wt(cfg, "launch", "--branches", "good", "better", "tb", "bad", "--wait", ok=False)
    wt(cfg, "collect")
    return cfg, latest_run(cfg)


def test_table_has_every_branch_with_its_state(collected: tuple[Path, str]) -> None:
    cfg, _ = collected
    out = wt(cfg, "compare").output
    for name in ("good", "better", "tb", "bad"):
        assert name in out
    assert "failed" in out and "succeeded" in out


def test_csv_and_json_load_back_with_best_and_delta(collected: tuple[Path, str],
                                                    tmp_path: Path) -> None:
    cfg, run = collected
    wt(cfg, "compare", "--format", "csv", "--out", str(tmp_path), "--baseline", "good")
    rows = {r["name"]: r for r in csv.DictReader((tmp_path / "compare.csv").open())}
    assert set(rows) == {"good", "better", "tb", "bad"}
    assert rows["bad"]["state"] == "failed" and rows["bad"]["accuracy"] == ""
    assert float(rows["better"]["accuracy"]) == pytest.approx(0.9)
    assert float(rows["better"]["accuracy_delta"]) == pytest.approx(0.3)
    assert float(rows["better"]["params"]) == 900000
    assert int(rows["good"]["checkpoint_bytes"]) == 64 * 1024
    # The failed branch still has its learning curve up to epoch 2.
    assert float(rows["bad"]["val_accuracy"]) == pytest.approx(0.5 * 2 / 3)

    doc = json.loads(wt(cfg, "compare", "--format", "json", "--baseline", "good").output)
    by = {b["name"]: b for b in doc["branches"]}
    assert doc["run"] == run and doc["baseline"] == "good"
    assert doc["directions"]["next_pos_mse"] == "min" and doc["directions"]["accuracy"] == "max"
    assert "accuracy" in by["better"]["best_in"] and "next_pos_mse" in by["better"]["best_in"]
    assert by["better"]["delta"]["next_pos_mse"] == pytest.approx(-0.3)
    assert by["good"]["confusion_matrix"] == [[5, 1], [2, 4]]
    # TensorBoard scalars of the tb branch, read with TensorBoard's own reader.
    assert by["tb"]["curves"]["val/accuracy"]["steps"] == [1, 2, 3]
    assert by["tb"]["curves"]["val/accuracy"]["values"][-1] == pytest.approx(0.8)
    assert by["tb"]["final"]["train/loss"] == pytest.approx(0.2)
    assert by["bad"]["state"] == "failed" and by["bad"]["collected"]
    # A run without seeds: each worker is a group of one (no interval); the failed one
    # counts as failed, and its partial curve is no statistic.
    groups = {g["name"]: g for g in doc["groups"]}
    assert set(groups) == {"good", "better", "tb", "bad"}
    assert groups["better"]["n"] == 1 and groups["better"]["vars"]["quality"] == "0.9"
    assert groups["better"]["metrics"]["accuracy"] == {
        "mean": pytest.approx(0.9), "std": None, "ci95": None, "n": 1,
        "values": [pytest.approx(0.9)]}
    assert (groups["bad"]["n"], groups["bad"]["failed"], groups["bad"]["metrics"]) == (0, 1, {})
    assert doc["winners"]["accuracy"]["best"] == "better"
    assert doc["winners"]["accuracy"]["significant"] is None  # one seed each: not testable


def test_tensorboard_reader_on_event_files(tmp_path: Path) -> None:
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    for sub, scale in (("train", 1.0), ("eval", 2.0)):
        writer = EventFileWriter(str(tmp_path / "out" / sub))
        for step in range(5):
            writer.add_event(Event(wall_time=1000.0 + step, step=step * 10, summary=Summary(
                value=[Summary.Value(tag="loss", simple_value=scale / (step + 1))])))
        writer.close()
    curves, span = read_tensorboard(tmp_path)
    assert set(curves) == {"train/loss", "eval/loss"}
    assert curves["eval/loss"].steps == (0, 10, 20, 30, 40)
    assert curves["eval/loss"].values[0] == pytest.approx(2.0)
    assert curves["train/loss"].best("min") == pytest.approx(0.2)
    assert span == pytest.approx(4.0)
    assert direction("eval/loss") == "min" and direction("val_macro_f1") == "max"


class _Html(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.images: list[str] = []
        self.pre: list[str] = []
        self._table: str | None = None
        self._cell: list[str] | None = None
        self._in_pre = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self._table = a.get("id") or f"t{len(self.tables)}"
            self.tables[self._table] = []
        elif tag == "tr" and self._table:
            self.tables[self._table].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "img":
            self.images.append(a["src"])
        elif tag == "pre":
            self._in_pre = True
            self.pre.append("")

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None and self._table:
            self.tables[self._table][-1].append("".join(self._cell))
            self._cell = None
        elif tag == "table":
            self._table = None
        elif tag == "pre":
            self._in_pre = False

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        if self._in_pre:
            self.pre[-1] += data


def test_html_report_is_self_contained(collected: tuple[Path, str]) -> None:
    cfg, run = collected
    wt(cfg, "compare", "--format", "html", "--baseline", "good")
    page = cfg.parent / "results" / run / "report" / "compare.html"
    parser = _Html()
    parser.feed(page.read_text())
    table = parser.tables["comparison"]
    assert [r[0] for r in table[1:]] == ["bad", "better", "good (baseline)", "tb"]
    assert table[0][:3] == ["branch", "state", "commit"]
    # Images are embedded PNGs: curves, final bars, confusion matrices.
    assert len(parser.images) >= 4
    for src in parser.images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert "src='http" not in page.read_text() and 'src="http' not in page.read_text()
    # Differing vars (quality, mode) and code differences against base.
    vars_table = parser.tables["vars"]
    assert "quality" in vars_table[0] and "mode" in vars_table[0]
    assert any("NOTES-better.md" in p for p in parser.pre)


def test_markdown_with_plots_and_the_script(collected: tuple[Path, str], tmp_path: Path) -> None:
    cfg, run = collected
    wt(cfg, "compare", "--format", "md", "--out", str(tmp_path / "md"))
    md = (tmp_path / "md" / "compare.md").read_text()
    assert "| branch | state | commit |" in md and "| bad | failed |" in md
    assert "**0.9**" in md  # the best accuracy is bold
    pngs = sorted(p.name for p in (tmp_path / "md").glob("*.png"))
    assert "final_metrics.png" in pngs and "confusion_good.png" in pngs
    assert "curve_val-accuracy.png" in pngs and "curve_val_accuracy.png" in pngs
    for name in pngs:
        assert f"]({name})" in md
    script = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "compare_results.py"), "--config", str(cfg),
         "--format", "json", "--run", run], capture_output=True, text=True, check=False)
    assert script.returncode == 0, script.stderr
    assert json.loads(script.stdout) == json.loads(
        wt(cfg, "compare", "--format", "json", "--run", run).output)


def test_unknown_baseline_is_a_one_line_error(collected: tuple[Path, str]) -> None:
    cfg, _ = collected
    result = wt(cfg, "compare", "--baseline", "nope", ok=False)
    assert result.exit_code == 1
    assert "nope" in result.output and "pick one of" in result.output


def test_compare_reads_results_collected_elsewhere(tmp_path: Path) -> None:
    cfg = make_training_repo(tmp_path / "repo", {"good": {"quality": 0.6}})
    wt(cfg, "launch", "--branches", "good", "--wait")
    elsewhere = tmp_path / "elsewhere"
    wt(cfg, "collect", "--dest", str(elsewhere))
    doc = json.loads(wt(cfg, "compare", "--format", "json").output)
    assert doc["branches"][0]["collected"] is False
    doc = json.loads(wt(cfg, "compare", "--format", "json", "--results", str(elsewhere)).output)
    (good,) = doc["branches"]
    assert good["collected"] and good["final"]["accuracy"] == pytest.approx(0.6)


def test_a_worker_without_metrics_says_where_compare_looks(repo_factory) -> None:
    from tests.conftest import WtRun, basic_config, write_config

    repo = repo_factory(files={"quiet.py": "print('done')\n"})
    w = WtRun(repo, write_config(repo, basic_config(("a",), "python quiet.py")))
    w("launch", "--branches", "a", "--wait")
    w("collect")
    doc = json.loads(w("compare", "--format", "json").output)
    assert "no metrics found" in doc["branches"][0]["note"]
    assert "metrics.jsonl" in doc["branches"][0]["note"]
