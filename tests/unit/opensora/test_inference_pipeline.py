"""The text-to-video pipeline on the tiny preset (CPU, seconds): per-video seeding (no prompt
ghosting), the files written, stage timings, T5 offload, and the job entry's result records."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from opensora_core.inference import run as entry
from opensora_core.inference.models import load_models, save_random_checkpoint
from opensora_core.inference.pipeline import StageClock, denoise, generate, initial_noise
from opensora_core.inference.request import InferRequest
from opensora_core.inference.video_io import frames_sha256, read_video, to_uint8, write_video
from opensora_core.presets import TINY

CPU = torch.device("cpu")
STEPS = 2


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    return save_random_checkpoint(tmp_path_factory.mktemp("tiny"), TINY)


@pytest.fixture(scope="module")
def models(tiny_ckpt):
    return load_models(TINY, tiny_ckpt)


@pytest.fixture(scope="module")
def ghosting(models, tmp_path_factory):
    """The same prompt alone, and second after another prompt (images: lossless, and cheap; the
    integration tests do the same with 51-frame mp4s)."""
    folder = tmp_path_factory.mktemp("ghosting")
    alone = generate(make(["a beautiful waterfall"], frames="1"), models, folder / "alone", device=CPU)
    after = generate(make(["a cat on a sofa", "a beautiful waterfall"], frames="1"), models, folder / "after",
                     device=CPU)
    return alone, after


def make(prompts, **changes):
    settings = dict(prompts=tuple(prompts), frames="17", resolution="144p", model="tiny", steps=STEPS, name="t")
    return InferRequest(**{**settings, **changes})


def test_a_prompt_gives_the_same_video_alone_or_after_other_prompts(ghosting):
    alone, after = ghosting
    assert [e["file"] for e in after] == ["t_0000.png", "t_0001.png"]
    assert alone[0]["seed"] == after[1]["seed"] != after[0]["seed"]
    assert alone[0]["pixels_sha256"] == after[1]["pixels_sha256"] != after[0]["pixels_sha256"]
    assert np.array_equal(read_video(alone[0]["path"]), read_video(after[1]["path"]))


def test_another_run_seed_gives_another_video(models, tmp_path):
    a = generate(make(["a cat"], frames="1"), models, tmp_path / "a", device=CPU)
    b = generate(make(["a cat"], frames="1", seed=43), models, tmp_path / "b", device=CPU)
    assert a[0]["pixels_sha256"] != b[0]["pixels_sha256"]


def test_noise_rows_do_not_depend_on_the_batch():
    batch = initial_noise([11, 22, 33], (4, 5, 18, 32))
    assert torch.equal(batch[1], initial_noise([22], (4, 5, 18, 32))[0])
    assert not torch.equal(batch[0], batch[1])


def test_in_a_larger_batch_a_video_keeps_its_noise_and_its_latents_bit_for_bit(models):
    prompts = ["a cat", "a beautiful waterfall"]
    encoded = [models.text_encoder.encode([p]) for p in prompts]
    shape = (4, 5, 18, 32)
    kwargs = dict(height=144, width=256, num_frames=17, fps=24, steps=STEPS, cfg_scale=7.0)
    z2 = denoise(models.stdit3, initial_noise([1, 2], shape), torch.cat([e[0] for e in encoded]),
                 torch.cat([e[1] for e in encoded]), **kwargs)
    z1 = denoise(models.stdit3, initial_noise([2], shape), *encoded[1], **kwargs)
    assert torch.equal(z2[1:], z1)  # each video's CFG pair goes through the transformer alone
    r = make(prompts, batch_size=2)
    assert [v.seed for v in r.videos()] == [v.seed for v in make(prompts).videos()]


def test_the_video_file(models, tmp_path):
    import av

    [entry_] = generate(make(["a beautiful waterfall"], frames="17"), models, tmp_path, device=CPU)
    with av.open(entry_["path"]) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264" and stream.codec_context.pix_fmt == "yuv420p"
        assert stream.average_rate == 24
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 17 and frames[0].shape == (144, 256, 3)
    assert (entry_["frames"], entry_["height"], entry_["width"]) == (17, 144, 256)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t_0000.mp4"]  # no temporary files left


def test_one_frame_is_a_png_with_the_exact_pixels(ghosting):
    [entry_] = ghosting[0]
    assert entry_["file"] == "t_0000.png"
    assert Path(entry_["path"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert frames_sha256(read_video(entry_["path"])) == entry_["pixels_sha256"]  # lossless


def test_to_uint8_maps_minus_one_to_one_like_upstream():
    video = torch.tensor([-2.0, -1.0, 0.0, 1.0, 3.0]).view(1, 1, 1, 5).expand(3, 1, 1, 5)
    assert to_uint8(video)[0, 0, :, 0].tolist() == [0, 0, 128, 255, 255]


def test_a_failed_write_leaves_nothing_behind(tmp_path, monkeypatch):
    import av

    frames = np.zeros((3, 16, 16, 3), np.uint8)

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(av.VideoFrame, "from_ndarray", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        write_video(tmp_path / "v.mp4", frames)
    assert list(tmp_path.iterdir()) == []


def test_stage_timings_progress_and_offload_order(models, tmp_path, monkeypatch):
    order, events = [], []
    monkeypatch.setattr(models.text_encoder, "offload", lambda: order.append("offload"))
    handle = models.stdit3.register_forward_pre_hook(lambda *_: order.append("denoise"))
    clock = StageClock(CPU)
    try:
        generate(make(["a", "b", "c"], frames="1", batch_size=2), models, tmp_path, device=CPU,
                 on_event=events.append, clock=clock)
    finally:
        handle.remove()
    assert order[0] == "offload" and order.count("offload") == 1 and "denoise" in order
    timings = clock.timings()
    assert {"text_encoding_s", "denoising_s", "decode_s", "write_s"} <= set(timings)
    assert len(timings["denoising_steps_s"]) == STEPS * 2  # two batches (2 + 1 videos)
    assert all(s > 0 for s in timings["denoising_steps_s"])
    memory = clock.peak_memory()
    assert memory["kind"] == "cpu_rss" and memory["peak_bytes"] > 0
    stages = [e["stage"] for e in events]
    assert stages[:3] == ["text_encoding"] * 3 and stages.count("write") == 3
    steps = [(e["video"], e["step"]) for e in events if e["stage"] == "denoising"]
    assert steps == [(1, 1), (1, 2), (3, 1), (3, 2)]


def test_a_resident_t5_is_never_offloaded(models, tmp_path, monkeypatch):
    # --t5 gpu-fp32/gpu-bf16 plan T5's memory beside the transformer: the job must keep it there
    order = []
    monkeypatch.setattr(models.text_encoder, "offload", lambda: order.append("offload"))
    generate(make(["a", "b"], frames="1", t5_offload=False), models, tmp_path, device=CPU)
    assert order == []


def write_job_files(folder, request):
    (folder / "request.json").write_text(json.dumps(request.settings()))
    (folder / "prompts.json").write_text(json.dumps(list(request.prompts)))
    return ["--request", str(folder / "request.json"), "--prompts", str(folder / "prompts.json"),
            "--result", str(folder / "result.json")]


def test_job_entry_writes_result_index_and_progress(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    request = make(["a beautiful waterfall", "a cat"], frames="1", output_dir=str(tmp_path / "out"), name="run1")
    assert entry.main(write_job_files(tmp_path, request)) == 0
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["ok"] and result["random_weights"] and result["model"] == "tiny"
    assert result["outputs"] == [str(tmp_path / "out" / "run1_0000.png"), str(tmp_path / "out" / "run1_0001.png")]
    assert {"load_s", "text_encoding_s", "denoising_s", "decode_s", "write_s", "total_s"} <= set(result["timings"])
    index = json.loads((tmp_path / "out" / "run1_index.json").read_text())
    assert [v["seed"] for v in index["videos"]] == [v.seed for v in request.videos()]
    assert index["random_weights"] is True and index["videos"][1]["prompt"] == "a cat"
    assert json.loads((tmp_path / "progress.json").read_text())["stage"] == "write"
    log = capsys.readouterr().out
    assert "RANDOM weights" in log and f"video 2/2 step {STEPS}/{STEPS}" in log


@pytest.mark.parametrize("world, changes, words", [
    (6, dict(sp=4), "--gpus 6 is not a multiple of the group size 4 (sp4)"),
    (3, dict(cfg_parallel=True), "--gpus 3 is not a multiple of the group size 2 (cfg2)"),
])
def test_job_entry_refuses_a_world_that_does_not_split_into_groups_before_loading(tmp_path, monkeypatch, world,
                                                                                   changes, words):
    monkeypatch.setenv("WORLD_SIZE", str(world))  # no RANK/MASTER_ADDR: joining a process group would fail
    monkeypatch.setattr(entry, "load_models", lambda *a, **k: pytest.fail("models loaded before the layout check"))
    assert entry.main(write_job_files(tmp_path, make(["a cat"], **changes))) == 2
    error = json.loads((tmp_path / "result.json").read_text())["error"]
    assert error["kind"] == "user_error" and words in error["message"]
    assert "legal layouts of" in error["hint"]


def test_job_entry_reports_a_bad_checkpoint_before_any_compute(tmp_path, tiny_ckpt, capsys, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    request = make(["a cat"], model="opensora-v1.2", ckpt_dir=str(tiny_ckpt), output_dir=str(tmp_path / "out"))
    assert entry.main(write_job_files(tmp_path, request)) == 2
    error = json.loads((tmp_path / "result.json").read_text())["error"]
    assert error["type"] == "CheckpointMismatch" and "first mismatching key 'rope.freqs'" in error["message"]
    assert "step" not in capsys.readouterr().out and not (tmp_path / "out").exists()


def test_job_entry_loads_component_folders_like_the_checkpoint_folder(tmp_path, tiny_ckpt, monkeypatch):
    """--ckpt-path-* on the node: the four components in unrelated folders make the same image as
    the --ckpt-dir layout, and the index says where each came from (not random weights)."""
    import shutil

    from safetensors.torch import load_file, save_file

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ckpt = shutil.copytree(tiny_ckpt, tmp_path / "ckpt")  # other weights than the random ones a fallback would use
    dit = ckpt / "dit" / "model.safetensors"
    save_file({k: v * 1.5 for k, v in load_file(str(dit)).items()}, str(dit))
    folders = {name: str(shutil.copytree(ckpt / name, tmp_path / "hf" / f"{name}-download"))
               for name in ("dit", "t5", "vae2d", "vae3d")}
    images = []
    for label, weights in (("random", {}), ("dir", dict(ckpt_dir=str(ckpt))), ("parts", dict(ckpt_paths=folders))):
        request = make(["a beautiful waterfall"], frames="1", output_dir=str(tmp_path / label), name=label, **weights)
        (tmp_path / label).mkdir()
        assert entry.main(write_job_files(tmp_path / label, request)) == 0
        index = json.loads((tmp_path / label / f"{label}_index.json").read_text())
        assert index["random_weights"] is (label == "random")
        images.append((tmp_path / label / f"{label}_0000.png").read_bytes())
    assert index["weights"] == ", ".join(f"{name} {path}" for name, path in folders.items())
    assert images[1] == images[2] != images[0]
