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


MODES_DOC = Path(__file__).resolve().parents[2] / "docs" / "inference-modes.md"


def mode_examples(doc: Path = MODES_DOC) -> dict[str, list[str]]:
    """The worked examples of docs/inference-modes.md: each ```bash block's first line is ``# <mode>``
    and the rest one ``clusterkit ...`` command (``\\`` continuations joined); mode -> argv after
    ``clusterkit``."""
    import re
    import shlex

    examples = {}
    for block in re.findall(r"```bash\n(.*?)```", doc.read_text(encoding="utf-8"), flags=re.S):
        first, _, rest = block.partition("\n")
        if not first.startswith("# "):
            continue
        argv = shlex.split(rest.replace("\\\n", " "))
        assert argv[0] == "clusterkit", f"example {first!r} is not a clusterkit command: {rest!r}"
        examples[first[2:].strip()] = argv[1:]
    return examples


MODE_ASSETS = MODES_DOC.parent / "assets" / "modes"


def check_mode(mode: str, request, entries: list[dict] | None = None) -> None:
    """What docs/inference-modes.md promises for ``mode``'s example: about the request its command
    sends (``InferRequest``) and, given the index entries of the videos it made, about those."""
    refs = lambda *names: [str(MODE_ASSETS / n) for n in names]  # noqa: E731
    record = lambda: entries[0]["conditioning"]  # noqa: E731
    if mode == "prompt-slice":
        lines = (MODE_ASSETS / "prompts.txt").read_text().splitlines()
        assert request.prompts == tuple(lines[1:3]) and (request.batch_size, request.num_samples) == (2, 2)
        assert [v.filename.split("_")[-1] for v in request.videos()] == ["0001-0.mp4", "0001-1.mp4", "0002-0.mp4",
                                                                        "0002-1.mp4"]
        if entries is not None:
            assert [e["prompt"] for e in entries] == [lines[1], lines[1], lines[2], lines[2]]
            assert [e["prompt_index"] for e in entries] == [1, 1, 2, 2]  # the file's numbering, as the names
            assert [e["frames"] for e in entries] == [51] * 4
        return
    frames = {"long-video": 119, "multi-segment": 119}.get(mode, 51)
    assert request.output_frames == frames
    if entries is not None:
        [entry] = entries
        assert entry["frames"] == frames and (entry["height"], entry["width"]) == (144, 256)
    expected_refs = {"image-to-video": (refs("sunrise.png"), "0"),
                     "video-connecting": (refs("sunrise.png", "sunset.png"), "0;0,1,0,-1,1"),
                     "video-extending": (refs("ball.mp4"), "0,0,-5,0,5"),
                     "editing": (refs("ball.mp4"), "0,0,0,0,15,0.4")}
    if mode in expected_refs:
        paths, strategy = expected_refs[mode]
        assert request.reference_paths == (";".join(paths),) and request.mask_strategies == (strategy,)
        if entries is not None:
            assert record()["reference_path"] == paths and record()["mask_strategy"] == strategy
    else:
        assert not request.reference_paths
    if mode == "video-connecting":
        assert request.prompts == ("the sun rises over the sea",) and request.align == 1  # the JSON is not text
    if mode in ("long-video", "multi-segment"):
        assert request.loop == 3
    if mode == "multi-segment":
        assert request.encoder_segments(0) == ((0, "a red ball rolling on a meadow aesthetic score: 6.5."),
                                               (2, "a red ball rolling on the beach aesthetic score: 6.5."))
    if mode == "scores":
        text = "a city street at night aesthetic score: 5.5. motion score: 10.0. camera motion: pan left."
        assert request.encoder_segments(0) == ((0, text),)
        if entries is not None:
            assert entries[0]["encoder_text"] == text
    if mode == "text-to-video":
        assert not request.conditioned and (entries is None or "conditioning" not in entries[0])


MODES = ("text-to-video", "image-to-video", "video-connecting", "video-extending", "long-video", "editing",
         "multi-segment", "scores", "prompt-slice")
