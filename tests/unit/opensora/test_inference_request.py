"""The inference request (torch-free): bad input is a typed error naming the flag, seeds depend
only on (seed, prompt, sample), output names, prompts files and the text the encoder sees."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from clusterkit.errors import InvalidChoice, NotFound, UserError
from opensora_core.inference.prompts import clean_prompt, encoder_text, read_prompts_file
from opensora_core.inference.request import InferRequest, output_name, video_seed

BASE = dict(prompts=("a beautiful waterfall",), frames="2s", resolution="144p", aspect_ratio="9:16", model="tiny")


def request(**changes):
    return InferRequest(**{**BASE, **changes})


def test_the_readme_request():
    r = request()
    g = r.geometry
    assert (g.num_frames, g.height, g.width) == (51, 144, 256)  # 9:16 is H:W: landscape
    assert g.latent == (15, 18, 32) and g.decoded == (51, 144, 256)
    assert r.model_dtype == "fp32" and r.random_weights
    assert [v.filename for v in r.videos()] == ["sample_0000.mp4"]


@pytest.mark.parametrize(
    ("changes", "error", "message"),
    [
        (dict(resolution="145p"), InvalidChoice, "--res '145p' is not valid; valid choices: 144p"),
        (dict(aspect_ratio="9:15"), InvalidChoice, r"--aspect-ratio \(at 144p\) '9:15' is not valid; valid choices: 3:8"),
        (dict(frames="3s"), InvalidChoice, "--frames '3s' is not valid; valid choices: 1x"),
        (dict(frames="0"), InvalidChoice, "--frames '0' is not valid"),
        (dict(frames="-1"), InvalidChoice, "--frames '-1' is not valid"),
        (dict(frames="8"), UserError, "timestep shift is zero for 2 to 16 frames"),
        (dict(prompts=("",)), UserError, "prompt 0 is empty"),
        (dict(prompts=("a cat", "  \t")), UserError, "prompt 1 is empty"),
        (dict(prompts=()), UserError, "no prompt given"),
        (dict(model="sora-2"), InvalidChoice, "--model 'sora-2' is not valid; valid choices: tiny, opensora-v1.2"),
        (dict(model="opensora-v1.2"), UserError, "needs --ckpt-dir"),
        (dict(steps=0), UserError, "--steps 0 must be an integer >= 1"),
        (dict(seed=-1), UserError, "--seed -1 must be an integer >= 0"),
        (dict(num_samples=0), UserError, "--num-samples 0"),
        (dict(dtype="fp8"), InvalidChoice, "--dtype 'fp8'"),
        (dict(t5_device="tpu"), InvalidChoice, "T5 device"),
        (dict(vae_micro_batch=0), UserError, "VAE micro-batch 0"),
        (dict(name="../evil"), UserError, "output name"),
    ],
)
def test_bad_input_is_a_typed_error(changes, error, message):
    with pytest.raises(error, match=message):
        request(**changes)


def test_images_and_trained_lengths():
    assert [v.filename for v in request(frames="1").videos()] == ["sample_0000.png"]
    assert request(frames="17").num_frames == 17 and request(frames="4s").num_frames == 102


def test_video_seed_depends_on_seed_prompt_and_sample_only():
    s = video_seed(42, "a cat", 0)
    assert s == video_seed(42, "a cat", 0) and 0 <= s < 2**63
    assert len({s, video_seed(43, "a cat", 0), video_seed(42, "a dog", 0), video_seed(42, "a cat", 1)}) == 4
    alone = request(prompts=("a cat",)).videos()[0]
    second = request(prompts=("a dog", "a cat")).videos()[1]
    assert alone.seed == second.seed == video_seed(42, "a cat", 0)
    assert (alone.filename, second.filename) == ("sample_0000.mp4", "sample_0001.mp4")


def test_names_with_several_samples():
    videos = request(prompts=("a", "b"), num_samples=2, name="20261122-120000-infer-ab12").videos()
    assert [v.filename for v in videos] == [
        "20261122-120000-infer-ab12_0000-0.mp4", "20261122-120000-infer-ab12_0000-1.mp4",
        "20261122-120000-infer-ab12_0001-0.mp4", "20261122-120000-infer-ab12_0001-1.mp4",
    ]
    assert output_name("run", 12, 0, 1, ".png") == "run_0012.png"
    assert videos[0].seed != videos[1].seed


def test_round_trip_through_the_run_folder_files(tmp_path):
    hostile = "it's \"q\" $(touch /tmp/x) `id`; ☃\nline2"
    r = request(prompts=("a cat", hostile), seed=7, notes=("from the plan",))
    (tmp_path / "request.json").write_text(json.dumps(r.settings()))
    (tmp_path / "prompts.json").write_text(json.dumps(list(r.prompts)))
    assert "prompts" not in json.loads((tmp_path / "request.json").read_text())
    assert InferRequest.load(tmp_path / "request.json", tmp_path / "prompts.json") == r
    with pytest.raises(UserError, match="unknown keys"):
        InferRequest.from_dict({**r.to_dict(), "mystery": 1})


def test_prompts_file(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("a beautiful waterfall\n\n  a cat on a sofa  \n\t\na red car\n")
    assert read_prompts_file(path) == ["a beautiful waterfall", "a cat on a sofa", "a red car"]
    path.write_text("\n \n")
    with pytest.raises(UserError, match="holds no prompt"):
        read_prompts_file(path)
    path.write_bytes(b"\xff\xfe bad")
    with pytest.raises(UserError, match="not UTF-8"):
        read_prompts_file(path)
    with pytest.raises(NotFound, match="does not exist"):
        read_prompts_file(tmp_path / "nope.txt")


def test_encoder_text_appends_the_aesthetic_score_and_cleans():
    assert encoder_text("A Beautiful  Waterfall") == "a beautiful waterfall aesthetic score: 6.5."
    assert encoder_text("a cat. aesthetic score: 5.0.") == "a cat. aesthetic score: 5.0."
    assert encoder_text("a cat", aes=None) == "a cat"
    assert clean_prompt("“Hi” — see https://x.org/a <b>now</b> &amp; then") == '"hi" - see now & then'


def test_importing_the_request_does_not_import_torch():
    code = ("import sys; import opensora_core.inference.request, opensora_core.presets; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


FOUR = {"dit": "/m/OpenSora-STDiT-v3", "t5": "/m/t5-v1_1-xxl", "vae2d": "/m/pixart_sigma_sdxlvae_T5_diffusers",
        "vae3d": "/m/OpenSora-VAE-v1.2"}


def test_component_folders_travel_in_the_request():
    for model in ("opensora-v1.2", "tiny"):  # all four need no --ckpt-dir; tiny then loads them, not random weights
        r = request(model=model, ckpt_paths=dict(reversed(FOUR.items())))
        assert r.ckpt_paths == FOUR and list(r.ckpt_paths) == list(FOUR) and not r.random_weights
        settings = json.loads(json.dumps(r.settings()))
        assert settings["ckpt_paths"] == FOUR and settings["ckpt_dir"] is None
        assert InferRequest.from_dict({**settings, "prompts": list(r.prompts)}) == r
    mixed = request(model="opensora-v1.2", ckpt_dir="/ckpt", ckpt_paths={"t5": "/m/t5"})
    assert mixed.ckpt_paths == {"t5": "/m/t5"} and not mixed.random_weights
    old = {k: v for k, v in request().settings().items() if k != "ckpt_paths"}  # a request.json from before
    assert InferRequest.from_dict({**old, "prompts": ["a"]}).ckpt_paths == {}


@pytest.mark.parametrize(
    ("changes", "error", "message"),
    [
        (dict(ckpt_paths={"dit": "/d", "t5": "/t"}), UserError,
         "no folder for --ckpt-path-vae2d, --ckpt-path-vae3d; give them, or --ckpt-dir DIR"),
        (dict(model="opensora-v1.2"), UserError,
         "needs --ckpt-dir DIR or --ckpt-path-dit, --ckpt-path-t5, --ckpt-path-vae2d, --ckpt-path-vae3d"),
        (dict(ckpt_paths={**FOUR, "vae": "/v"}), InvalidChoice,
         "ckpt_paths component 'vae' is not valid; valid choices: dit, t5, vae2d, vae3d"),
        (dict(ckpt_paths={**FOUR, "t5": ""}), UserError, "--ckpt-path-t5 '' must be a folder path"),
        (dict(ckpt_paths=["/d"]), UserError, "must map components"),
    ],
)
def test_bad_component_folders_are_named(changes, error, message):
    with pytest.raises(error, match=message):
        request(**changes)
