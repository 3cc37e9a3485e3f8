"""The HTML report in a real browser (headless Debian `chromium`): it renders with no console
error, every image loads, the page fits a 1280-px-wide window (folded sections opened too), and
a 1280×800 screenshot is taken. Skips off CI when Chromium is missing; fails under CI=true."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from tests.collect.helpers import wt
from tests.collect.seeded import RUN, build

WIDTH, HEIGHT = 1280, 800

# Injected first into <head>: records errors (script errors, failed resources, console.error)
# from the start, then after load writes what it found into <div id=report-check>.
CHECK = """<script>
window.__errors = [];
addEventListener('error', function (e) {
  var t = e.target;
  __errors.push(t && t.tagName ? 'failed to load ' + t.tagName : String(e.message));
}, true);
var __ce = console.error;
console.error = function () {
  __errors.push('console.error: ' + [].join.call(arguments, ' '));
  __ce.apply(console, arguments);
};
addEventListener('load', function () {
  var imgs = [].slice.call(document.images);
  var broken = imgs.filter(function (i) { return !i.complete || i.naturalWidth === 0; });
  var closedWidth = document.documentElement.scrollWidth;
  [].forEach.call(document.querySelectorAll('details'), function (d) { d.open = true; });
  var d = document.createElement('div');
  d.id = 'report-check';
  d.textContent = JSON.stringify({images: imgs.length, broken: broken.length,
    errors: __errors, closedWidth: closedWidth,
    openWidth: document.documentElement.scrollWidth, innerWidth: innerWidth});
  document.body.appendChild(d);
});
</script>"""


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None and Path("/usr/bin/chromium").exists():
        found = "/usr/bin/chromium"
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is not installed (apt-get install chromium)")
        pytest.skip("chromium is not installed")
    return found


def _run(chromium: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
           "--no-first-run", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", f"--user-data-dir={profile}", "--hide-scrollbars",
           f"--window-size={WIDTH},{HEIGHT}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", data[16:24])


def test_report_renders_in_chromium(tmp_path: Path) -> None:
    chromium = _chromium()
    cfg = build(tmp_path / "sweep")
    out = tmp_path / "report"
    wt(cfg, "compare", "--run", RUN, "--format", "html", "--out", str(out))
    page = (out / "compare.html").read_text(encoding="utf-8")
    checked = tmp_path / "checked.html"
    checked.write_text(page.replace("<head>", "<head>" + CHECK, 1), encoding="utf-8")

    dom = _run(chromium, tmp_path / "profile", "--enable-logging=stderr", "--v=0",
               "--virtual-time-budget=10000", "--dump-dom", checked.as_uri())
    match = re.search(r'<div id="report-check">(.*?)</div>', dom.stdout, re.S)
    assert match, f"no check result in the DOM; chromium said:\n{dom.stderr[-2000:]}"
    result = json.loads(html.unescape(match.group(1)))
    assert result["errors"] == []
    assert result["images"] >= 3 and result["broken"] == 0
    assert result["innerWidth"] == WIDTH
    assert result["closedWidth"] <= WIDTH and result["openWidth"] <= WIDTH
    console = [line for line in dom.stderr.splitlines() if ":CONSOLE" in line]
    assert not console, console

    shot = tmp_path / "report.png"
    _run(chromium, tmp_path / "profile", f"--screenshot={shot}", (out / "compare.html").as_uri())
    assert shot.is_file(), "chromium wrote no screenshot"
    assert _png_size(shot) == (WIDTH, HEIGHT)
