"""``clusterkit report`` end to end: two real tiny-model runs on the local executor (the prompts as
written, and refined by the template refiner), one of their videos then cut short, the report built
by the CLI and opened from file:// in headless Chromium (tests/integration/headless_chromium.py).

What is checked in the browser: no console error, exception or failed load; nothing requested but
the report's own files; the DOM has one playable <video> per complete video (metadata loaded, the
duration and width of the run) and one "incomplete" tile for the cut one; and a full-page screenshot
PNG of the page's size that is not blank, in which the tiles are counted by their border colours.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from headless_chromium import count_tiles, load_page, require_chromium

pytestmark = pytest.mark.integration

HOSTILE = 'a cat <script>alert("x")</script> & "quotes" \'too\''
RUN = ["submit", "infer", "--model", "tiny", "--frames", "17", "--res", "144p", "--aspect-ratio", "9:16",
       "--steps", "2", "--executor", "local", "--wait"]
WIDTH = 1400

#: Runs in the page: every <video> with its state once its metadata loaded (or failed), the tiles,
#: and the page's size (for the screenshot's).
PROBE = """(async () => {
  const videos = [...document.querySelectorAll("video")];
  await Promise.all(videos.map(v => v.readyState >= 1 ? null : new Promise(done => {
    v.addEventListener("loadedmetadata", done); v.addEventListener("error", done); setTimeout(done, 10000);
  })));
  return {
    videos: videos.map(v => ({readyState: v.readyState, duration: v.duration, width: v.videoWidth,
                              error: v.error && v.error.message, src: v.getAttribute("src")})),
    media_tiles: document.querySelectorAll(".tile.media").length,
    incomplete_tiles: document.querySelectorAll(".tile.incomplete").length,
    scripts: document.querySelectorAll("script").length,
    text: document.body.innerText,
    height: document.documentElement.scrollHeight,
  };
})()"""


def test_report_of_refined_vs_unrefined_runs_in_headless_chromium(cli, tmp_path):
    from PIL import Image

    from clusterkit.report.page import MISSING_RGB, TILE_RGB

    chromium = require_chromium()
    code, plain, err = cli(*RUN, "--prompt", HOSTILE, "--prompt", "a beautiful waterfall", timeout=600)
    assert code == 0, (plain, err)
    code, refined, err = cli(*RUN, "--prompt", HOSTILE, "--prompt", "a beautiful waterfall", "--prompt",
                             "a red car at night", "--refine", "template", timeout=600)
    assert code == 0, (refined, err)
    plain, refined = plain["result"], refined["result"]
    cut = Path(refined["outputs"][2])
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])  # a copy cut short

    code, out, err = cli("report", plain["run_id"], refined["run_id"], timeout=300)
    assert code == 0, (out, err)
    report = out["result"]
    assert report["videos"] == 4 and [s["file"] for s in report["skipped"]] == [str(cut)]
    page = Path(report["page"])
    assert page.parent == Path(plain["run_dir"]) / f"report-vs-{refined['run_id']}"

    loaded = load_page(chromium, page.as_uri(), width=WIDTH, evaluate=PROBE)
    assert loaded.errors == []
    assert all(url.startswith(("file://", "data:")) for url in loaded.requests), loaded.requests
    assert {url for url in loaded.requests if url.startswith("file://")} >= {page.as_uri()}
    dom = loaded.value
    assert dom["scripts"] == 0 and HOSTILE in dom["text"]
    assert (dom["media_tiles"], dom["incomplete_tiles"]) == (4, 1)
    assert len(dom["videos"]) == 4
    for video in dom["videos"]:
        assert video["error"] is None and video["readyState"] >= 1, video
        assert video["width"] == 256 and video["duration"] == pytest.approx(17 / 24, abs=0.05), video
    index = json.loads((Path(refined["run_dir"]) / "outputs" / f"{refined['run_id']}_index.json").read_text())
    assert index["videos"][0]["refined_prompt"] in dom["text"]  # the refined prompt beside the original

    shot = tmp_path / "report.png"
    shot.write_bytes(loaded.screenshot)
    image = Image.open(io.BytesIO(loaded.screenshot))
    assert image.format == "PNG" and image.size == (WIDTH, dom["height"])
    pixels = np.asarray(image.convert("RGB"))
    assert pixels.std() > 20  # not blank: text, posters and tiles
    assert count_tiles(loaded.screenshot, TILE_RGB) == 4
    assert count_tiles(loaded.screenshot, MISSING_RGB) == 1


def test_the_browser_harness_sees_errors_failed_loads_and_tiles(tmp_path):
    """The checks above can fail: a console error, an exception and a missing file are reported,
    and bordered boxes are counted by colour (a filled box of the same colour is not a tile)."""
    from clusterkit.report.page import TILE_RGB

    chromium = require_chromium()
    green = "#%02x%02x%02x" % TILE_RGB
    box = f'<div style="width:100px;height:80px;border:4px solid {green}"></div>'
    page = tmp_path / "bad.html"
    page.write_text(f"""<!DOCTYPE html><html><body>
<script>console.error("boom"); null.x;</script><img src="missing.png" alt="">
<div style="display:flex;gap:20px">{box * 3}
<div style="width:100px;height:80px;background:{green}"></div></div></body></html>""", encoding="utf-8")
    loaded = load_page(chromium, page.as_uri(), evaluate="document.querySelectorAll('div div').length")
    assert loaded.value == 4
    assert any("boom" in e for e in loaded.errors), loaded.errors
    assert any(e.startswith("exception:") for e in loaded.errors), loaded.errors
    assert any("missing.png" in e for e in loaded.errors), loaded.errors
    assert count_tiles(loaded.screenshot, TILE_RGB) == 3
