"""The report of a small sweep opened in headless Chromium: it loads with no console error,
every figure is there and decodes, and a screenshot is taken."""

import os
import shutil
import subprocess

import pytest

from raydistill.report.html import write_report
from tests.report_fixture import make_sweep_dir

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]

if CHROMIUM is None and os.environ.get("CI"):
    pytest.fail("CI must have Debian's chromium (.ci/run installs it)", pytrace=False)
pytestmark = [pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed "
                                 "(apt-get install chromium)"),
              pytest.mark.shares_ray]  # needs no Ray: the session's stays up across it


def chromium(tmp_path, *args):
    return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *args],
                          capture_output=True, text=True, timeout=120)


def test_report_renders_in_chromium(tmp_path):
    page = write_report(make_sweep_dir(tmp_path), tmp_path / "report")
    url = page.resolve().as_uri()
    # a script that counts the images that decoded, run by the page itself
    probe = tmp_path / "report" / "probe.html"
    probe.write_text(page.read_text().replace(
        "</body>", "<script>window.onload=()=>{const n=[...document.images].filter("
        "i=>i.complete&&i.naturalWidth>0).length;document.title='decoded:'+n;"
        "console.log('decoded images '+n)}</script></body>"))
    dom = chromium(tmp_path, "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000",
                   "--dump-dom", probe.resolve().as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "<title>decoded:4</title>" in dom.stdout
    console = [ln for ln in dom.stderr.splitlines() if "CONSOLE" in ln]
    assert not [ln for ln in console if "Uncaught" in ln or ":ERROR:CONSOLE" in ln], console
    shot = tmp_path / "report.png"
    run = chromium(tmp_path, "--window-size=1200,3000", f"--screenshot={shot}", url)
    assert run.returncode == 0, run.stderr[-2000:]
    assert shot.stat().st_size > 50_000  # four figures and tables, not a blank page
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
