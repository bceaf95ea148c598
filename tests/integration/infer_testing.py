"""Helpers for the end-to-end inference tests (local executor and Slurm)."""

from __future__ import annotations

from pathlib import Path

#: The README's main job, without the executor (each test picks it).
README_JOB = ["submit", "infer", "--model", "tiny", "--frames", "2s", "--res", "144p", "--aspect-ratio", "9:16",
              "--prompt", "a beautiful waterfall", "--wait"]
THREE_PROMPTS = ["a cat on a sofa", "a beautiful waterfall", "a red car at night"]


def decode(path: str | Path):
    """Every frame of a video file, [T, H, W, 3] uint8, decoded with PyAV."""
    from opensora_core.inference.video_io import read_video

    return read_video(path)


def check_readme_result(out: dict) -> dict:
    """The README job's JSON: one mp4 of 51 frames of 144x256 (9:16 is H:W: 144 high, 256 wide)."""
    import av

    assert out["ok"] and out["command"] == "submit infer"
    result = out["result"]
    assert result["state"] == "COMPLETED" and result["random_weights"] is True
    assert {"run_id", "run_dir", "job_ids", "outputs", "timings"} <= set(result)
    [path] = result["outputs"]
    assert path.endswith(f"{result['run_id']}_0000.mp4") and Path(path).is_file()
    with av.open(path) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.name, stream.codec_context.pix_fmt) == ("h264", "yuv420p")
        assert stream.average_rate == 24
    assert decode(path).shape == (51, 144, 256, 3)
    timings = result["timings"]
    assert {"load_s", "text_encoding_s", "denoising_s", "decode_s", "write_s", "total_s"} <= set(timings)
    assert len(timings["denoising_steps_s"]) == 30
    assert result["peak_memory"]["peak_bytes"] > 0
    return result


def write_prompts(folder: Path, prompts: list[str]) -> Path:
    path = folder / "prompts.txt"
    path.write_text("\n".join(prompts) + "\n", encoding="utf-8")
    return path
