"""``clusterkit report``: run folders as the jobs write them (request, result, JSON index, real h264
files from PyAV), read into a gallery; escaping, partial files, errors and the atomic folder swap.
The page in a real browser: tests/integration/test_report_chromium.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from clusterkit.errors import InvalidChoice, NotFound, UserError
from clusterkit.launch.records import Registry, RunRecord, atomic_write_json
from clusterkit.project import Project
from clusterkit.report.build import MARKER, build_report, default_output
from clusterkit.report.gallery import INCOMPLETE, MISSING, OK, match_rows
from clusterkit.report.sources import load_columns
from opensora_core.inference import records

ROOT = Path(__file__).resolve().parents[2]
HOSTILE = "</td><script>alert(\"x\")</script> & 'single' \"double\" <img src=x onerror=alert(1)> $(rm -rf /)\nnext line ✓"
FRAMES, HEIGHT, WIDTH = 9, 32, 48
LAYOUT = {"world_size": 2, "replicas": 1, "cfg": 1, "sp": 2, "sp_scheme": "dsp", "num_heads": 4}


def frames_of(prompt_index: int, count: int = FRAMES) -> np.ndarray:
    """A video whose frames differ from each other and per prompt (so posters can be told apart)."""
    t = np.arange(count, dtype=np.int32)[:, None, None, None]
    y = np.arange(HEIGHT, dtype=np.int32)[None, :, None, None]
    x = np.arange(WIDTH, dtype=np.int32)[None, None, :, None]
    c = np.array([0, 1, 2], dtype=np.int32)[None, None, None, :]
    return ((t * 25 + y * 3 + x * 2 + c * 60 + prompt_index * 70) % 256).astype(np.uint8)


def make_run(runs_dir: Path, run_id: str, prompts: list[str], *, refined: list[str] | None = None,
             node: str = "worker-4", written: int | None = None, register: bool = True) -> Path:
    """A finished inference run as ``clusterkit submit infer`` and the job leave it: request.json,
    prompts.json, result.json, outputs/<run>_index.json and one h264 mp4 per prompt (the first
    ``written`` of them when given)."""
    from opensora_core.inference.video_io import frames_sha256, write_video

    folder = runs_dir / run_id
    outputs = folder / "outputs"
    outputs.mkdir(parents=True)
    refiner = "template" if refined else None
    header = {"run": run_id, "model": "tiny", "random_weights": True, "seed": 42, "steps": 2, "cfg_scale": 7.0,
              "fps": 24, "frames": FRAMES, "height": HEIGHT, "width": WIDTH, "layout": LAYOUT, "node": node,
              "sweep": None, "refiner": refiner}
    entries = []
    for index, prompt in enumerate(prompts[:written if written is not None else len(prompts)]):
        pixels = frames_of(index)
        path = write_video(outputs / f"{run_id}_{index:04d}.mp4", pixels, fps=24)
        entries.append({"file": path.name, "path": str(path), "prompt_index": index, "sample": 0, "prompt": prompt,
                        "refined_prompt": refined[index] if refined else None, "encoder_text": prompt,
                        "tokens": 12, "truncated": False, "seed": 1000 + index, "frames": FRAMES, "height": HEIGHT,
                        "width": WIDTH, "fps": 24, "pixels_sha256": frames_sha256(pixels), "seconds": 1.25 + index,
                        "node": node, "layout": LAYOUT, "replica": 0, "run": run_id, "refiner": refiner})
    atomic_write_json(outputs / f"{run_id}_index.json", {**header, "videos": entries})
    atomic_write_json(folder / "request.json", {"name": run_id, "run_id": None, "output_dir": str(outputs),
                                                "items": None, "num_samples": 1, "refiner": refiner})
    atomic_write_json(folder / "prompts.json", [{"prompt": p, "refined_prompt": refined[i] if refined else None}
                                                for i, p in enumerate(prompts)])
    done = written is None or written == len(prompts)
    atomic_write_json(folder / "result.json", {
        **header, "ok": True, "device": "cpu", "dtype": "fp32", "output_dir": str(outputs),
        "outputs": [e["path"] for e in entries],
        "timings": {"load_s": 1.0, "text_encoding_s": 0.5, "denoising_s": 3.0, "decode_s": 2.0, "write_s": 0.1,
                    "total_s": 6.6, "denoising_step_mean_s": 0.75},
        "peak_memory": {"peak_bytes": 3 * 2**29}} if done else {})
    if register:
        now = time.time()
        Registry(runs_dir).add(RunRecord(run_id, "infer", "local", (node,), ("local-1",), "COMPLETED" if done
                                         else "RUNNING", folder, now, now))
    return folder


@pytest.fixture
def project(tmp_path):
    return Project.from_options(str(ROOT / "nodes.yaml"), {"CLUSTERKIT_RUNS_DIR": str(tmp_path / "runs")})


@pytest.fixture
def two_runs(project):
    """The seed's experiment: the same prompts, as written and refined."""
    prompts = ["a beautiful waterfall", HOSTILE]
    plain = make_run(project.runs_dir, "20260101-000000-infer-aaaa", prompts)
    refined = make_run(project.runs_dir, "20260101-000100-infer-bbbb", prompts,
                       refined=["A beautiful waterfall, soft light, steady camera.", "Refined: " + HOSTILE])
    return plain, refined


class Page(HTMLParser):
    """Every start tag with its attributes, and the page's text."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)

    def all(self, tag: str) -> list[dict]:
        return [attrs for name, attrs in self.tags if name == tag]


def test_refined_and_unrefined_runs_side_by_side(project, two_runs, tmp_path):
    from opensora_core.inference.video_io import read_video

    plain, refined = two_runs
    columns = load_columns(project, ["20260101-000000", str(refined)])  # a run id prefix and a run folder
    summary = build_report(columns, tmp_path / "gallery")
    assert summary["videos"] == 4 and summary["skipped"] == []
    assert [c["label"] for c in summary["columns"]] == [plain.name, refined.name]
    # rows by original prompt: each row holds the same prompt's plain and refined videos
    assert [row["title"] for row in summary["rows"]] == ["a beautiful waterfall", HOSTILE]
    for row in summary["rows"]:
        assert [cell["status"] for cell in row["cells"]] == [OK, OK]
    tiles = summary["tiles"]
    assert [t["refined_prompt"] for t in tiles[:2]] == [None, None]
    assert tiles[3]["refined_prompt"] == "Refined: " + HOSTILE and tiles[3]["seed"] == 1001
    page = Page((tmp_path / "gallery" / "index.html").read_text(encoding="utf-8"))
    videos = page.all("video")
    assert len(videos) == 4
    for video, tile in zip(videos, (tiles[0], tiles[2], tiles[1], tiles[3])):  # row by row
        assert video["src"] == tile["href"] and video["poster"] == tile["poster"]
        copy = tmp_path / "gallery" / video["src"]
        source = (plain if tile["run"] == plain.name else refined) / "outputs" / tile["file"]
        assert os.path.samefile(copy, source)  # hard-linked: same filesystem
        # the poster is the middle frame, exactly as PyAV decodes it
        poster = read_video(tmp_path / "gallery" / video["poster"])
        assert poster.shape == (1, HEIGHT, WIDTH, 3)
        assert np.array_equal(poster[0], read_video(source)[FRAMES // 2])
    text = "".join(page.text)
    for expected in ("as written (not refined)", "refined (template)", "refined prompt (template)",
                     "1 replica × cfg 1 × sp 2 (dsp)", "worker-4", "1.2 s per video", "denoising 3.0 s",
                     "per step0.750 s", "1.50 GiB"):
        assert expected in text, expected
    marker = json.loads((tmp_path / "gallery" / MARKER).read_text())
    assert marker == json.loads(json.dumps(summary))


def test_every_text_is_escaped_and_every_link_is_relative(project, tmp_path):
    run = make_run(project.runs_dir, "20260101-000000-infer-cccc", [HOSTILE], node="worker-4")
    index_file = run / "outputs" / f"{run.name}_index.json"
    index = json.loads(index_file.read_text())
    index["videos"][0]["mask_strategy"] = "0,0,0,0,1\"><script>x</script>"  # an unknown field: shown as text
    atomic_write_json(index_file, index)
    build_report(load_columns(project, [run.name]), tmp_path / "out", title="<b>title</b> & \"q\"")
    html = (tmp_path / "out" / "index.html").read_text(encoding="utf-8")
    page = Page(html)
    tags = {name for name, _ in page.tags}
    assert "script" not in tags and "b" not in tags
    assert [a["src"] for a in page.all("img")] == []  # the prompt's <img> is text, not an element
    text = "".join(page.text)
    assert HOSTILE in text and "<b>title</b> & \"q\"" in text and "0,0,0,0,1\"><script>x</script>" in text
    for attrs in (*page.all("video"), *page.all("link")):
        for key in ("src", "poster"):
            if key in attrs:
                assert "://" not in attrs[key] and not attrs[key].startswith("/"), attrs
    [csp] = [a["content"] for a in page.all("meta") if a.get("http-equiv") == "Content-Security-Policy"]
    assert "default-src 'none'" in csp and "script-src 'none'" in csp
    assert "http://" not in html and "https://" not in html  # nothing from the network


def test_partial_and_missing_files_are_skipped_with_a_note(project, tmp_path):
    from opensora_core.inference.video_io import write_video

    run = make_run(project.runs_dir, "20260101-000000-infer-dddd", ["cut short", "too few frames", "gone", "fine"])
    outputs = run / "outputs"
    truncated = outputs / f"{run.name}_0000.mp4"
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    write_video(outputs / f"{run.name}_0001.mp4", frames_of(1, count=4))  # a valid file, but 4 of 9 frames
    (outputs / f"{run.name}_0002.mp4").unlink()
    (outputs / f".{run.name}_0004.mp4.tmp").write_bytes(b"being written")
    summary = build_report(load_columns(project, [run.name]), tmp_path / "out")
    assert summary["videos"] == 1
    assert [(s["file"].rsplit("_", 1)[1], s["status"]) for s in summary["skipped"]] == [
        ("0000.mp4", INCOMPLETE), ("0001.mp4", INCOMPLETE), ("0002.mp4", MISSING)]
    assert "cannot decode" in summary["skipped"][0]["detail"]
    assert "4 of its 9 frames" in summary["skipped"][1]["detail"]
    assert summary["columns"][0]["notes"] == ["1 video file(s) still being written, not shown"]
    media = {p.name for p in (tmp_path / "out" / "media").rglob("*.mp4")}
    assert media == {f"{run.name}_0003.mp4"}  # nothing partial was copied
    page = Page((tmp_path / "out" / "index.html").read_text(encoding="utf-8"))
    assert len(page.all("video")) == 1
    text = "".join(page.text)
    assert text.count("incomplete file, not shown") == 2 and text.count("file missing on disk") == 1


def test_a_sweep_folder_checks_each_record_size(project, tmp_path):
    from opensora_core.inference.video_io import write_video

    folder = tmp_path / "sweep"
    folder.mkdir()
    videos = []
    for index, prompt in enumerate(["one", "two"]):
        path = write_video(folder / f"sw_{index:04d}.mp4", frames_of(index))
        entry = {"file": path.name, "prompt_index": index, "sample": 0, "prompt": prompt, "seed": index,
                 "node": f"worker-{index + 1}", "layout": LAYOUT, "seconds": 2.0, "frames": FRAMES,
                 "height": HEIGHT, "width": WIDTH, "fps": 24}
        records.write_record(folder / records.RECORDS, entry)
        videos.append({"file": path.name})
    atomic_write_json(folder / records.MANIFEST, {"schema": "clusterkit/sweep/v1", "sweep": "sw", "runs": [],
                                                  "settings": {"model": "tiny"}, "videos": videos})
    with open(folder / "sw_0001.mp4", "ab") as handle:  # replaced after its record: sizes differ
        handle.write(b"\0" * 10)
    summary = build_report(load_columns(project, [str(folder)]), tmp_path / "out")
    assert summary["columns"][0]["label"] == "sweep sw" and summary["videos"] == 1
    [skipped] = summary["skipped"]
    assert skipped["status"] == INCOMPLETE and "its record says" in skipped["detail"]
    assert "worker-1" in (tmp_path / "out" / "index.html").read_text()


def test_unknown_runs_and_runs_without_videos_are_clear_errors(project, two_runs, tmp_path):
    plain, refined = two_runs
    with pytest.raises(NotFound) as err:
        load_columns(project, ["20269999"])
    assert "'20269999'" in err.value.message and plain.name in err.value.message and refined.name in err.value.message
    empty = make_run(project.runs_dir, "20260101-000200-infer-eeee", ["a", "b"], written=0)
    with pytest.raises(UserError, match="nothing to show: no RUN has a video yet .*no videos yet \\(state RUNNING\\)"):
        load_columns(project, [empty.name])
    columns = load_columns(project, [plain.name, empty.name])  # beside a run that has videos: a note
    assert columns[1].notes == ("no videos yet (state RUNNING)",)
    with pytest.raises(UserError, match="is the same run as"):
        load_columns(project, [plain.name, str(plain)])
    with pytest.raises(UserError, match="neither a run folder"):
        load_columns(project, [str(tmp_path)])
    with pytest.raises(InvalidChoice, match="--match 'time' is not valid; valid choices: prompt, index"):
        match_rows([], "time")


def test_report_folder_is_replaced_atomically_and_never_a_foreign_one(project, two_runs, tmp_path, monkeypatch):
    from clusterkit.report import build

    plain, refined = two_runs
    columns = load_columns(project, [plain.name, refined.name])
    out = default_output(columns)
    assert out == plain / f"report-vs-{refined.name}"
    assert default_output(columns[:1]) == plain / "report"
    build_report(columns, out)
    first = (out / "index.html").read_text()
    monkeypatch.setattr(build, "render_page", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("disk full")))
    with pytest.raises(RuntimeError, match="disk full"):
        build_report(columns, out)
    assert (out / "index.html").read_text() == first  # the old report is untouched
    assert sorted(p.name for p in plain.iterdir() if p.name.startswith(".")) == []  # no temp folder left
    monkeypatch.undo()
    build_report(columns, out, title="again")
    assert "again" in (out / "index.html").read_text()
    assert sorted(p.name for p in plain.iterdir() if p.name.startswith(".")) == []
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "mine.txt").write_text("keep me")
    with pytest.raises(UserError, match="holds something other than a report"):
        build_report(columns, foreign)
    assert (foreign / "mine.txt").read_text() == "keep me"


def test_rows_match_by_prompt_text_or_by_index(project, tmp_path):
    a = make_run(project.runs_dir, "20260101-000000-infer-ffff", ["cat", "dog"])
    b = make_run(project.runs_dir, "20260101-000100-infer-gggg", ["dog", "bird"])
    by_prompt = build_report(load_columns(project, [a.name, b.name]), tmp_path / "p")
    assert [(r["title"], [c and c["status"] for c in r["cells"]]) for r in by_prompt["rows"]] == [
        ("cat", [OK, None]), ("dog", [OK, OK]), ("bird", [None, OK])]
    by_index = build_report(load_columns(project, [a.name, b.name]), tmp_path / "i", match="index")
    assert [r["title"] for r in by_index["rows"]] == ["prompt 0", "prompt 1"]


def test_cli_report_json_and_errors(project, two_runs, tmp_path):
    plain, refined = two_runs
    env = {**os.environ, "CLUSTERKIT_RUNS_DIR": str(project.runs_dir), "CLUSTERKIT_INVENTORY": str(ROOT / "nodes.yaml")}

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "clusterkit", *args], capture_output=True, text=True, env=env,
                              cwd=tmp_path, timeout=120)

    proc = cli("report", plain.name, refined.name, "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["ok"] and data["command"] == "report"
    result = data["result"]
    assert result["page"] == str(plain / f"report-vs-{refined.name}" / "index.html") and Path(result["page"]).is_file()
    assert len(result["tiles"]) == 4 and all(t["status"] == OK for t in result["tiles"])
    proc = cli("report", refined.name, "--out", str(tmp_path / "mine"))
    assert proc.returncode == 0, proc.stderr
    assert "report: 2 video(s) from 1 run(s) in 2 row(s)" in proc.stdout
    assert str(tmp_path / "mine" / "index.html") in proc.stdout
    proc = cli("report", "no-such-run", "--json")
    assert proc.returncode == 2
    error = json.loads(proc.stdout)["error"]
    assert "'no-such-run'" in error["message"] and f"{plain.name} (COMPLETED)" in error["message"]
    proc = cli("report", plain.name, "--match", "seed")
    assert proc.returncode == 2 and "valid choices: prompt, index" in proc.stderr


def test_a_single_frame_run_shows_its_png_as_an_image(project, tmp_path):
    from opensora_core.inference.video_io import write_video

    run = make_run(project.runs_dir, "20260101-000000-infer-hhhh", ["still"])
    index_file = run / "outputs" / f"{run.name}_index.json"
    index = json.loads(index_file.read_text())
    (run / "outputs" / f"{run.name}_0000.mp4").unlink()
    write_video(run / "outputs" / f"{run.name}_0000.png", frames_of(0, count=1))
    index["videos"][0].update(file=f"{run.name}_0000.png", frames=1)
    atomic_write_json(index_file, index)
    summary = build_report(load_columns(project, [run.name]), tmp_path / "out")
    [tile] = summary["tiles"]
    assert tile["status"] == OK and tile["poster"] is None and tile["href"].endswith("_0000.png")
    page = Page((tmp_path / "out" / "index.html").read_text(encoding="utf-8"))
    assert page.all("video") == [] and [a["src"] for a in page.all("img")] == [tile["href"]]


def test_an_unwritable_place_is_a_user_error(project, two_runs, tmp_path):
    plain, _ = two_runs
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(UserError, match="cannot write the report in .*a-file") as err:
        build_report(load_columns(project, [plain.name]), blocker / "report")
    assert "--out DIR" in err.value.hint
