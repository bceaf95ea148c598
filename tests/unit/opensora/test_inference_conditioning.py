"""Conditioned inference on the tiny model (CPU): references placed by mask strategies and kept by
the sampler's per-video frame mask, extending, long videos with --loop, editing ratios, and every
bad mask strategy or reference refused at submit, before anything is written or launched."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from clusterkit.project import Project
from clusterkit.submit import submit_infer
from opensora_core.errors import ConditioningError, ReferenceNotFound
from opensora_core.inference import mask_strategy as ms
from opensora_core.inference.conditioned import BatchConditioning, loop_seed, noise_generators
from opensora_core.inference.models import load_models, save_random_checkpoint
from opensora_core.inference.pipeline import denoise, generate, initial_noise
from opensora_core.inference.prompt_syntax import split_json_suffix, split_segments
from opensora_core.inference.prompts import encoder_text
from opensora_core.inference.request import InferRequest
from opensora_core.parallel.groups import single_process_context
from opensora_core.presets import TINY
from opensora_core.schedulers import rectified_flow

ROOT = Path(__file__).resolve().parents[3]
ASSETS = ROOT / "docs" / "assets" / "modes"
IMAGE, IMAGE2, VIDEO = str(ASSETS / "sunrise.png"), str(ASSETS / "sunset.png"), str(ASSETS / "ball.mp4")
CPU = torch.device("cpu")
STEPS = 4


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return load_models(TINY, save_random_checkpoint(tmp_path_factory.mktemp("tiny"), TINY))


def make(prompts=("a red ball",), **changes):
    settings = dict(prompts=tuple(prompts), frames="2s", resolution="144p", model="tiny", steps=STEPS, name="t")
    return InferRequest(**{**settings, **changes})


def sample(models, request, loop_i=0):
    """What ``generate`` does for clip ``loop_i`` of the request's videos, keeping z after every step:
    (conditioning, frame mask, [z after step i], sampling times [N, B])."""
    items = request.videos()
    cond = BatchConditioning(request, items, models.vae, single_process_context(CPU, request.layout(1)))
    z = initial_noise([loop_seed(v.seed, loop_i) for v in items], (4, *request.geometry.latent))
    z, frame_mask = cond.prepare(z, loop_i)
    encoded = [models.text_encoder.encode([request.encoder_segments(v.prompt_index)[0][1]]) for v in items]
    y, mask = torch.cat([e[0] for e in encoded]), torch.cat([e[1] for e in encoded])
    seen = []
    geo = request.geometry
    denoise(models.stdit3, z, y, mask, height=geo.height, width=geo.width, num_frames=geo.num_frames, fps=24,
            steps=STEPS, cfg_scale=7.0, on_step=lambda i, z_: seen.append(z_.clone()), frame_mask=frame_mask,
            generator=None if frame_mask is None else noise_generators(items, loop_i))
    n = torch.full((len(items),), float(geo.num_frames))
    times = rectified_flow.timesteps(STEPS, height=torch.full_like(n, geo.height), width=torch.full_like(n, geo.width),
                                     num_frames=n, batch_size=len(items))
    return cond, frame_mask, seen, times


# -- the sampler keeps the conditioning frames -------------------------------------------------


def test_image_to_video_keeps_the_conditioning_frame_at_every_step(models):
    cond, frame_mask, seen, _ = sample(models, make(reference_paths=(IMAGE,), mask_strategies=("0",)))
    assert frame_mask.tolist() == [[0.0] + [1.0] * 14]
    [reference] = cond.refs[0]
    assert reference.shape == (4, 1, 18, 32)  # the image, VAE-encoded: one latent frame
    assert len(seen) == STEPS
    for z in seen:
        assert torch.equal(z[0, :, 0], reference[:, 0])
    assert not torch.equal(seen[0][0, :, 1:], seen[-1][0, :, 1:])  # the other frames are generated


def test_extending_reproduces_the_conditioning_frames(models):
    cond, frame_mask, seen, _ = sample(models, make(reference_paths=(VIDEO,), mask_strategies=("0,0,-5,0,5",)))
    [reference] = cond.refs[0]
    assert reference.shape[1] == 15  # as long as the whole 51-frame video: 15 latent frames
    # only the last 17-frame VAE chunk (latent frames 10..14) was decoded and encoded; nothing reads the rest
    assert not reference[:, :10].any() and reference[:, 10:].abs().sum() > 0
    assert frame_mask.tolist() == [[0.0] * 5 + [1.0] * 10]
    final = seen[-1][0]
    assert torch.equal(final[:, :5], reference[:, 10:15])  # its last 17 frames start the new video
    video = models.vae.decode(final[None], num_frames=51)[0]
    tail = models.vae.decode(reference[None, :, 10:15], num_frames=17)[0]
    torch.testing.assert_close(video[:, :17], tail, rtol=0, atol=1e-4)  # the same frames (VAE micro-batch rounding)


def test_edit_ratio_zero_returns_the_reference_latents(models):
    cond, frame_mask, seen, _ = sample(models, make(reference_paths=(VIDEO,), mask_strategies=("0,0,0,0,15,0",)))
    assert frame_mask.tolist() == [[0.0] * 15]
    assert all(torch.equal(z[0], cond.refs[0][0]) for z in seen)


def test_edit_ratio_between_renoises_once_t_is_below_ratio_times_1000(models):
    cond, _, seen, times = sample(models, make(reference_paths=(VIDEO,), mask_strategies=("0,0,0,0,15,0.4",)))
    reference = cond.refs[0][0]
    kept = [bool(t > 400) for t in times[:, 0]]
    assert kept[0] and not kept[-1]  # the test sees both phases
    for z, still in zip(seen, kept):
        assert torch.equal(z[0], reference) == still


def test_edit_ratio_one_ignores_the_reference(models, tmp_path):
    """The same pixels as text-to-video (ratio 0.4 and 0 differ from it: the tests above)."""
    plain = generate(make(frames="17"), models, tmp_path / "plain", device=CPU)
    ignored = generate(make(frames="17", reference_paths=(VIDEO,), mask_strategies=("0,0,0,0,5,1",)), models,
                       tmp_path / "one", device=CPU)
    assert ignored[0]["pixels_sha256"] == plain[0]["pixels_sha256"]
    assert ignored[0]["conditioning"]["mask_strategy"] == "0,0,0,0,5,1" and "conditioning" not in plain[0]


@pytest.mark.parametrize("loop", [1, 3])
def test_loop_makes_loop_times_num_frames_minus_the_repeated_frames(models, tmp_path, loop):
    """--frames 34 (10 latent frames), --condition-frame-length 5 latent frames = 17 video frames:
    loop*(34-17)+17 frames."""
    request = make(frames="34", loop=loop)
    [entry] = generate(request, models, tmp_path, device=CPU)
    assert entry["frames"] == request.output_frames == loop * (34 - 17) + 17
    from opensora_core.inference.video_io import read_video

    assert read_video(entry["path"]).shape[0] == loop * (34 - 17) + 17


def test_a_later_clip_is_conditioned_on_the_end_of_the_clip_before(models):
    request = make(frames="34", loop=2)
    items = request.videos()
    cond = BatchConditioning(request, items, models.vae, single_process_context(CPU, request.layout(1)))
    z0, mask0 = cond.prepare(initial_noise([items[0].seed], (4, 10, 18, 32)), 0)
    assert mask0 is None  # clip 0 of a plain prompt: text-to-video
    cond.decode_clip(z0, 34)
    z1, mask1 = cond.prepare(initial_noise([loop_seed(items[0].seed, 1)], (4, 10, 18, 32)), 1)
    assert mask1.tolist() == [[0.0] * 5 + [1.0] * 5]
    previous = cond.refs[0][-1]  # clip 0, decoded and encoded again
    assert torch.equal(z1[0, :, :5], previous[:, 5:10])


def test_masks_are_per_video_and_a_batch_changes_nothing(models, tmp_path):
    prompts = ("a red ball", "a sunrise")
    conditioning = dict(reference_paths=("", IMAGE), mask_strategies=("", "0"), frames="17")
    one = generate(make(prompts, **conditioning), models, tmp_path / "one", device=CPU)
    two = generate(make(prompts, batch_size=2, **conditioning), models, tmp_path / "two", device=CPU)
    alone = generate(make(prompts[:1], frames="17"), models, tmp_path / "alone", device=CPU)
    assert [e["pixels_sha256"] for e in one] == [e["pixels_sha256"] for e in two]
    assert one[0]["pixels_sha256"] == alone[0]["pixels_sha256"]  # the unconditioned video is plain text-to-video


def test_multi_segment_prompts_encode_one_text_per_segment():
    request = make(("|0|a red ball|2|a blue ball",), loop=3, flow=2, camera_motion="zoom in")
    assert request.encoder_segments(0) == (
        (0, "a red ball aesthetic score: 6.5. motion score: 2.0. camera motion: zoom in."),
        (2, "a blue ball aesthetic score: 6.5. motion score: 2.0. camera motion: zoom in."),
    )


# -- parsing ---------------------------------------------------------------------------------


def test_mask_strategy_fields_and_defaults_as_upstream():
    assert ms.parse_mask_strategy("0") == (ms.MaskEntry(0, 0, 0, 0, 1, 0.0),)
    assert ms.parse_mask_strategy("0;0,1,0,-1,1") == (ms.MaskEntry(0, 0, 0, 0, 1, 0.0),
                                                      ms.MaskEntry(0, 1, 0, -1, 1, 0.0))
    assert ms.parse_mask_strategy(" 1, 2 ,-5,0,5,0.4") == (ms.MaskEntry(1, 2, -5, 0, 5, 0.4),)
    assert ms.parse_mask_strategy("") == ()


def test_placement_counts_from_the_end_snaps_to_align_and_clips():
    entry = ms.parse_mask_strategy("0,0,0,-1,1")[0]
    assert ms.place(entry, 1, 15, 5, what="m").target_start == 10  # upstream's align 5
    assert ms.place(entry, 1, 15, 1, what="m").target_start == 14
    assert ms.place(ms.parse_mask_strategy("0,0,-5,0,5")[0], 15, 15, 5, what="m") == ms.Placement(0, 10, 0, 5, 0.0)
    assert ms.place(ms.parse_mask_strategy("0,0,0,0,32,0.4")[0], 15, 10, 5, what="m").length == 10
    assert [ms.find_nearest_point(v, 5, 15) for v in (0, 2, 3, 7, 8, 12, 13, 14)] == [0, 0, 5, 5, 10, 10, 10, 10]
    with pytest.raises(ConditioningError, match=r"ref_start resolves to latent frame -4, outside reference 0 "):
        ms.place(ms.parse_mask_strategy("0,0,-5,0,5")[0], 1, 15, None, what="m")


def test_json_suffix_and_segments():
    assert split_json_suffix('a cat. {"reference_path": "a.png", "mask_strategy": "0"}') == (
        "a cat.", {"reference_path": "a.png", "mask_strategy": "0"})
    assert split_json_suffix("a cat") == ("a cat", {})
    assert split_segments("|0|a|2|b") == ((0, "a"), (2, "b"))
    for bad, message in (('a{"seed": 1}', r"JSON key\(s\) \['seed'\] not allowed"), ("a{x", "not valid JSON"),
                         ('a{"mask_strategy": 0}', "mask_strategy must be a string")):
        with pytest.raises(ConditioningError, match=message):
            split_json_suffix(bad)
    assert split_segments("a |1| b") == ((0, "a |1| b"),) and split_segments("|x|a") == ((0, "|x|a"),)
    for bad, message in (("|0|a|0|b", "must increase"), ("|0|a|x|b", "'x' is not"), ("|0|a|2", "alternate"),
                         ("|1|a|2|b", r"^prompt '\|1\|a\|2\|b' starts with a loop-segment marker but not with "
                                      r"'\|0\|': a multi-segment prompt must start with exactly '\|0\|'"),
                         (" |0|a", r"starts with a loop-segment marker but not with '\|0\|'")):
        with pytest.raises(ConditioningError, match=message):
            split_segments(bad)


def test_reference_span_and_partial_video_reads():
    """What ``encode_reference`` decodes: the latent frames the groups copy (ratio 1 copies nothing),
    and exactly those pixel frames of the video."""
    span = lambda text: ms.reference_span(ms.parse_mask_strategy(text), 0, 15, 15, 5)  # noqa: E731
    assert span("0,0,-5,0,5;0,0,0,0,1,1") == (10, 15) and span("0,0,0,0,1,1") is None
    assert span("0,0,0,0,2;0,0,7,5,3") == (0, 8) and span("0,1") is None
    from opensora_core.inference.references import load_pixels, probe

    assert probe(VIDEO).frames == 51 and probe(IMAGE).frames == 1
    whole = load_pixels(VIDEO, 144, 256)
    assert whole.shape == (3, 51, 144, 256)
    assert torch.equal(load_pixels(VIDEO, 144, 256, (34, 51)), whole[:, 34:51])


def test_a_reference_is_decoded_once_for_every_video_that_uses_it(models, monkeypatch):
    from opensora_core.inference import conditioned

    decoded = []
    real = conditioned.load_pixels
    monkeypatch.setattr(conditioned, "load_pixels", lambda *a, **k: decoded.append(a) or real(*a, **k))
    conditioned._pixels.cache_clear()
    entries = ms.parse_mask_strategy("0,0,-5,0,5")
    first, second = (conditioned.encode_reference(models.vae, VIDEO, 0, entries, height=144, width=256,
                                                  target_frames=15, align=5, seed=seed) for seed in (1, 2))
    assert len(decoded) == 1  # the second video reuses the decoded frames; its own seed still samples
    assert first.shape == second.shape and not torch.equal(first, second)


def test_encoder_text_appends_each_score_once():
    assert encoder_text("a city street at night", 5.5, 10, "pan left") == (
        "a city street at night aesthetic score: 5.5. motion score: 10.0. camera motion: pan left.")
    assert encoder_text("a cat. motion score: 3.0.", None, 10) == "a cat. motion score: 3.0."


# -- submit: every bad value refused before anything is written or launched ---------------------


@pytest.fixture()
def project(tmp_path):
    return Project.from_options(str(ROOT / "nodes.yaml"), {"CLUSTERKIT_RUNS_DIR": str(tmp_path / "runs")})


def submit(project, **options):
    args = dict(model="tiny", frames="2s", resolution="144p", prompts=("a red ball",), executor="local")
    return submit_infer(project, **{**args, **options})


@pytest.mark.parametrize("options, error, message", [
    (dict(mask_strategy="0,0,0,0,1,0,7"), ConditioningError, r"'0,0,0,0,1,0,7' has 7 field\(s\).*1 to 6"),
    (dict(mask_strategy="0,,1"), ConditioningError, r"'0,,1' has 3 field\(s\) \(one empty\)"),
    (dict(mask_strategy="0,x"), ConditioningError, r"^mask_strategy '0,x' of prompt 0: ref_index 'x' in group "
                                                   r"'0,x' is not an integer"),
    (dict(mask_strategy="0,0,0,0,1.5"), ConditioningError, r"length '1.5' .* is not an integer"),
    (dict(mask_strategy="0,0,0,0,1,abc"), ConditioningError, r"edit_ratio 'abc' .* is not a number"),
    (dict(mask_strategy="0,1"), ConditioningError, r"^mask_strategy '0,1' of prompt 0: group '0,1,0,0,1,0' uses "
                                                   r"ref_index 1 but the prompt has 1 reference\(s\): valid "
                                                   r"ref_index 0..0$"),
    (dict(mask_strategy="0,0,0,0,1,1.5"), ConditioningError, r"edit_ratio 1.5; it must be in \[0, 1\]"),
    (dict(mask_strategy="0,0,0,0,1,-0.1"), ConditioningError, r"edit_ratio -0.1; it must be in \[0, 1\]"),
    (dict(mask_strategy="0,0,0,0,1,nan"), ConditioningError, r"edit_ratio nan; it must be in \[0, 1\]"),
    (dict(mask_strategy="0,0,0,0,0"), ConditioningError, r"length 0; it must be >= 1"),
    (dict(mask_strategy="1"), ConditioningError, r"loop_id 1 but --loop is 1 \(valid loop_id 0..0\)"),
    (dict(mask_strategy="0,0,0,20,1"), ConditioningError, r"^mask_strategy '0,0,0,20,1' of prompt 0 \(reference 0: "
                                                          r"image .*\): group '0,0,0,20,1,0': target_start resolves "
                                                          r"to latent frame 20, outside the video \(15 latent frame"),
    (dict(mask_strategy=""), ConditioningError, r"has reference_path .* but no mask_strategy"),
    (dict(ref="missing.png"), ReferenceNotFound, r"reference 'missing.png' does not exist"),
    (dict(ref="unreadable.png"), ConditioningError, r"unreadable.png' cannot be read as an image"),
    (dict(ref="broken.mp4"), ConditioningError, r"broken.mp4' cannot be read as a video"),
    (dict(ref="notes.txt"), ConditioningError, r"extension '.txt' is neither a video"),
    (dict(ref="https://example.com/a.mp4"), ConditioningError, r"is a URL: clusterkit does not download"),
])
def test_bad_conditioning_is_refused_at_submit(project, tmp_path, options, error, message):
    (tmp_path / "unreadable.png").write_bytes(b"not a png")
    (tmp_path / "broken.mp4").write_bytes(b"\x00" * 64)
    (tmp_path / "notes.txt").write_text("x")
    ref = options.get("ref", IMAGE)
    ref = ref if "://" in ref or ref == IMAGE else str(tmp_path / ref)
    message = message.replace("missing.png", str(tmp_path / "missing.png"))
    with pytest.raises(error, match=message):
        submit(project, reference_paths=(ref,), mask_strategies=(options.get("mask_strategy", "0"),))
    assert not project.runs_dir.exists()  # nothing written, nothing launched


@pytest.mark.parametrize("options, message", [
    (dict(loop=0), r"--loop 0 must be an integer >= 1"),
    (dict(loop=2, condition_frame_length=3), r"--condition-frame-length 3 must be a multiple of 5"),
    (dict(loop=2, condition_frame_length=15), r"--condition-frame-length 15 must be below the clip's 15 latent"),
    (dict(loop=2, condition_frame_edit=2.0), r"--condition-frame-edit 2.0 must be a number in \[0, 1\]"),
    (dict(prompts=("|0|a|3|b",), loop=2), r"segment \|3\| starts after the last loop \(--loop 2"),
    (dict(reference_paths=(IMAGE, IMAGE), mask_strategies=("0", "0")), r"--reference-path was given 2 time\(s\) "
                                                                     r"for 1 prompt\(s\)"),
    (dict(start_index=1), r"--start-index 1 must be an integer in 0..0"),
    (dict(mask_strategies=("0",)), r"^mask_strategy '0' of prompt 0: group '0,0,0,0,1,0' uses ref_index 0 but the "
                                   r"prompt has no reference_path$"),
    (dict(reference_paths=("a.png;;b.png",), mask_strategies=("0",)),
     r"^reference_path 'a.png;;b.png' of prompt 0: an entry between ';' is empty$"),
    (dict(prompts=("|1|a|2|b",), loop=3), r"'\|1\|a\|2\|b' starts with a loop-segment marker but not with '\|0\|'"),
    (dict(prompts=("a", "b"), end_index=3), r"--end-index 3 must be an integer in 1..2"),
])
def test_bad_loop_and_prompt_settings_are_refused_at_submit(project, options, message):
    with pytest.raises(Exception, match=message) as info:
        submit(project, **options)
    assert getattr(info.value, "exit_code", 2) == 2 and not project.runs_dir.exists()


def test_references_travel_as_absolute_paths_and_the_prompt_loses_its_json(project, monkeypatch):
    monkeypatch.chdir(ROOT)
    prompt = 'a sunrise{"reference_path": "docs/assets/modes/sunrise.png", "mask_strategy": "0"}'
    result = submit(project, prompts=(prompt,), dry_run=True)
    request = InferRequest.from_dict(result["request"])
    assert request.prompts == ("a sunrise",)
    assert request.reference_paths == (IMAGE,) and request.mask_strategies == ("0",)
    assert json.loads(json.dumps(result["request"]))["reference_paths"] == [IMAGE]
    sliced = submit(project, prompts=("a", "b", "c"), start_index=1, end_index=3, num_samples=2, dry_run=True)
    assert [Path(p).name.split("_", 3)[-1] for p in sliced["expected_outputs"]] == [
        "0001-0.mp4", "0001-1.mp4", "0002-0.mp4", "0002-1.mp4"]


def test_per_prompt_lists_are_sliced_with_the_prompts(project):
    """With --start-index/--end-index, --reference-path / --mask-strategy may be given once per prompt
    of the whole list (sliced like it) or once per selected prompt; any other count names both."""
    prompts, refs, masks = ("a", "b", "c", "d"), ("", IMAGE, IMAGE2, ""), ("", "0", "0,0,0,0,1,0.5", "")
    both = dict(prompts=prompts, start_index=1, end_index=3, dry_run=True)
    for given in (dict(reference_paths=refs, mask_strategies=masks),
                  dict(reference_paths=refs[1:3], mask_strategies=masks[1:3]),
                  dict(reference_paths=refs, mask_strategies=masks[1:3])):
        request = InferRequest.from_dict(submit(project, **both, **given)["request"])
        assert request.prompts == ("b", "c") and request.reference_paths == (IMAGE, IMAGE2)
        assert request.mask_strategies == ("0", "0,0,0,0,1,0.5") and request.start_index == 1
    with pytest.raises(ConditioningError, match=r"^--reference-path was given 3 time\(s\) for prompts 1..2 of 4 "
                       r"\(--start-index 1, --end-index 3\): give it once per prompt of the list \(4\) or once per "
                       r"selected prompt \(2\)"):
        submit(project, **both, reference_paths=refs[:3], mask_strategies=masks)


def test_index_prompt_index_is_the_file_name_index_and_report_matches_on_it(models, tmp_path):
    """--start-index 2: the index says prompt_index 2 and 3, as the file names, so ``report --match
    index`` puts them beside lines 2 and 3 of a run of the whole file (the same videos: same seeds)."""
    from clusterkit.report.gallery import OK, Tile, match_rows
    from clusterkit.report.sources import Video

    lines = ("w", "x", "y", "z")
    full = generate(make(lines, frames="1", name="full"), models, tmp_path / "full", device=CPU)
    part = generate(make(lines[2:], frames="1", name="part", start_index=2), models, tmp_path / "part", device=CPU)
    assert [(e["file"], e["prompt_index"]) for e in part] == [("part_0002.png", 2), ("part_0003.png", 3)]
    rows = match_rows([[Tile(Video(e, Path(e["path"])), OK) for e in run] for run in (full, part)], "index")
    assert [[cell and cell.video.entry["prompt"] for cell in row.cells] for row in rows] == [
        ["w", None], ["x", None], ["y", "y"], ["z", "z"]]
    assert [e["pixels_sha256"] for e in full[2:]] == [e["pixels_sha256"] for e in part]


def test_batch_size_is_not_sold_as_a_speedup():
    """--batch-size changes nothing but the grouping (each video goes through the model alone)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "COLUMNS": "240", "TERM": "dumb", "NO_COLOR": "1"}
    out = subprocess.run([sys.executable, "-m", "clusterkit", "submit", "infer", "--help"], capture_output=True,
                         text=True, env=env, cwd=ROOT, check=True).stdout
    help_text = " ".join(out.split())
    assert "speed only" not in help_text and "gives no speedup" in help_text
    for doc in ("docs/inference-modes.md", "docs/inference.md"):
        row = next(line for line in (ROOT / doc).read_text().splitlines() if line.startswith("| `--batch-size"))
        assert "speed only" not in row and "no speedup" in row and "alone" in row, (doc, row)
    source = (ROOT / "opensora_core" / "inference" / "request.py").read_text()
    assert "speed only" not in source.split("batch_size: int = 1", 1)[1].split('"""', 2)[1]


def test_submit_imports_no_numpy():
    """references.py needs numpy only to load pixels (in the job); importing it costs the submit host ~150 ms."""
    import subprocess
    import sys

    code = ("import sys, clusterkit.submit, opensora_core.inference.conditioning_spec\n"
            "assert 'numpy' not in sys.modules, 'numpy imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, capture_output=True)
