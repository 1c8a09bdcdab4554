"""The clinician report opened in a real headless Chromium (the distribution's package,
tools/ensure-chromium.sh): no console errors, and every plot has drawn marks.

Two databases: one the gateway filled from a virtual patch (simulator → BLE → gateway), and
one holding three days of which the oldest were pruned into the 15-minute archive. Each
page's screenshot is kept next to the test's files (`--basetemp` to look at it).
"""

from __future__ import annotations

import asyncio
import csv
import json
import re
import sqlite3
import time
from pathlib import Path

import pytest
import report_data as rd
from gateway_harness import GatewayRig, wait_for
from headless_browser import PLOTS_DRAWN_JS, HeadlessChromium, find_chromium

from gateway import cli
from gateway import store as store_mod
from gateway.protocol.constants import Channel
from gateway.report.archive import archive_and_prune
from gateway.report.page import PLOTS

CHROMIUM = find_chromium()
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium binary: run tools/ensure-chromium.sh "
                             "(apt-get install chromium) to open the report in a real browser")
# Every channel each second, so a few seconds of streaming reach every plot.
ALL_CHANNELS_FAST = {1: 1, 2: 1, 3: 1, 4: 1, 5: 1, 6: 1}


@pytest.fixture(scope="module")
def browser():
    assert CHROMIUM is not None
    with HeadlessChromium(CHROMIUM) as chromium:
        yield chromium


def _open_report(browser: HeadlessChromium, html: Path) -> list[dict]:
    page = browser.open(html.as_uri(), PLOTS_DRAWN_JS)
    html.with_suffix(".png").write_bytes(page.screenshot)
    assert page.errors == [], page.errors
    assert page.screenshot.startswith(b"\x89PNG")
    plots = json.loads(page.value)
    assert [p["id"] for p in plots] == list(PLOTS)
    for plot in plots:
        assert plot["width"] > 300 and plot["drawn"] > 0, plot
        assert plot["drawn"] == plot["marks"], plot      # no mark laid out empty
    return plots


def test_the_driver_sees_console_errors_and_exceptions(browser, tmp_path):
    """The check above can fail: a page that logs an error and throws is caught."""
    bad = tmp_path / "bad.html"
    bad.write_text("<!DOCTYPE html><html><body><script>console.error('drawn wrong');"
                   "nosuchfunction();</script></body></html>")
    page = browser.open(bad.as_uri(), "document.body.children.length")
    assert page.value == 1
    assert any("drawn wrong" in e for e in page.errors), page.errors
    assert any("nosuchfunction" in e for e in page.errors), page.errors


def test_report_from_a_simulated_patch_opens_clean_with_every_plot_drawn(browser, tmp_path):
    async def stream() -> str:
        async with GatewayRig(tmp_path, patches=1, seed=5, patch_config=ALL_CHANNELS_FAST) as rig:
            gateway = await rig.start_gateway()
            device_id = rig.identities[0][0]

            def channels() -> set[int]:
                return {r[0] for r in gateway.store.conn.execute(
                    "SELECT DISTINCT channel FROM samples WHERE device_id=? AND utc_ms"
                    " IS NOT NULL", (device_id,))}
            await wait_for(lambda: channels() == {int(c) for c in Channel}
                           and gateway.store.sample_count(device_id) >= 40,
                           timeout_s=60, what="samples of every channel")
            await rig.stop_gateway()
            return rig.identities[0][2]

    started = time.time()
    subject = asyncio.run(stream())
    out = tmp_path / "simulated.html"
    assert cli.main(["report", subject, "--from", time.strftime(
        "%Y-%m-%dT%H:%M:%S", time.gmtime(started - 120)), "--db",
        str(tmp_path / "gateway.sqlite3"), "--out", str(out)]) == 0
    html = out.read_text()
    assert f"subject {subject}" in html
    assert int(re.search(r"<td>([\d,]+) samples", html).group(1).replace(",", "")) >= 40
    _open_report(browser, out)
    # the same range exported: every stored sample once, in SI units
    csv_out = tmp_path / "simulated.csv"
    assert cli.main(["export", subject, "--from", time.strftime(
        "%Y-%m-%dT%H:%M:%S", time.gmtime(started - 120)), "--db",
        str(tmp_path / "gateway.sqlite3"), "--out", str(csv_out)]) == 0
    with csv_out.open() as f:
        rows = list(csv.DictReader(f))
    stored = sqlite3.connect(tmp_path / "gateway.sqlite3").execute(
        "SELECT COUNT(*) FROM samples WHERE utc_ms IS NOT NULL").fetchone()[0]
    assert len(rows) == stored
    assert {r["property"] for r in rows} == {"skin_temp_c", "uv_index", "capacitance_pf",
                                             "battery_pct"}
    temps = [float(r["value"]) for r in rows if r["property"] == "skin_temp_c"]
    assert all(20 < t < 45 for t in temps)


def test_report_of_an_archived_range_opens_clean_with_every_plot_drawn(browser, tmp_path):
    db = tmp_path / "gateway.sqlite3"
    rd.fill(db, days=3)
    store = store_mod.Store(store_mod.connect(db))
    archive_and_prune(store, rd.DAY0_MS + 2 * rd.DAY_MS, rd.DAY0_MS - rd.DAY_MS)
    store.conn.close()
    out = tmp_path / "archived.html"
    assert cli.main(["report", rd.SUBJECT, "--from", "2026-12-01", "--to", "2026-12-03",
                     "--db", str(db), "--out", str(out)]) == 0
    plots = {p["id"]: p for p in _open_report(browser, out)}
    assert plots["uv-dose"]["drawn"] == 3
