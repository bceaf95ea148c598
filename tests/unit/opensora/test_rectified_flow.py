"""Rectified-flow sampler and training maths against the official RFLOW (rflow_schedule fixture)."""

from __future__ import annotations

import pytest
import torch

from opensora_core.conditioning import video_conditions
from opensora_core.errors import ModelInputError
from opensora_core.schedulers import rectified_flow as rf

COMBOS = ["720x1280x102", "480x854x51", "240x426x51", "720x1280x1", "360x640x204"]


def metadata(combo: str, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    height, width, frames = map(int, combo.split("x"))
    return video_conditions(1, height, width, frames, dtype=dtype)


@pytest.mark.parametrize("combo", COMBOS)
@pytest.mark.parametrize(("prefix", "dtype"), [("timesteps", torch.float32), ("timesteps_bf16meta", torch.bfloat16)])
def test_30_step_schedules(rflow_fx, tol, combo, prefix, dtype):
    meta = metadata(combo, dtype)
    times = rf.timesteps(30, height=meta["height"], width=meta["width"], num_frames=meta["num_frames"])
    assert times.shape == (30, 1) and times.dtype == torch.float32
    tol.check(times[:, 0], rflow_fx[f"{prefix}.{combo}"], tol.timesteps)


def test_bf16_metadata_really_changes_the_schedule(rflow_fx):
    assert (rflow_fx["timesteps.720x1280x102"] - rflow_fx["timesteps_bf16meta.720x1280x102"]).abs().max() > 0.4


def test_numbers_work_as_metadata(rflow_fx, tol):
    times = rf.timesteps(30, height=480, width=854, num_frames=51, batch_size=3)
    assert times.shape == (30, 3)
    tol.check(times[:, 2], rflow_fx["timesteps.480x854x51"], tol.timesteps)


def test_untransformed_schedule(rflow_fx, tol):
    tol.check(rf.timesteps(30, use_timestep_transform=False)[:, 0], rflow_fx["timesteps_untransformed.30"], 0.0)


@pytest.mark.parametrize("prefix", ["timesteps", "timesteps_bf16meta"])
def test_transform_reproduces_the_degenerate_2_to_16_frame_case(rflow_fx, prefix):
    meta = metadata("240x426x16", torch.bfloat16 if "bf16" in prefix else torch.float32)
    grid = torch.tensor([(1 - i / 30) * 1000 for i in range(30)])
    shifted = torch.stack(
        [rf.timestep_transform(t[None], meta["height"], meta["width"], meta["num_frames"]) for t in grid]
    )[:, 0]
    reference = rflow_fx[f"{prefix}.240x426x16"]
    assert torch.isnan(reference[0]) and torch.isnan(shifted[0])
    assert torch.equal(shifted[1:], reference[1:]) and not reference[1:].any()


@pytest.mark.parametrize("frames", [2, 9, 16])
def test_timesteps_rejects_lengths_the_shift_zeroes(frames):
    with pytest.raises(ModelInputError, match=f"num_frames={frames}"):
        rf.timesteps(30, height=240, width=426, num_frames=frames)


def test_timesteps_needs_metadata_for_the_transform():
    with pytest.raises(ModelInputError, match="needs height, width and num_frames"):
        rf.timesteps(30)


def test_video_conditions():
    video = video_conditions(2, 720, 1280, 102, fps=30)
    assert {k: v.tolist() for k, v in video.items()} == {
        "height": [720.0] * 2,
        "width": [1280.0] * 2,
        "num_frames": [102.0] * 2,
        "fps": [30.0] * 2,
        "ar": [pytest.approx(0.5625)] * 2,
    }
    assert video_conditions(1, 720, 1280, 1)["fps"].item() == 120  # images: IMG_FPS
    assert video_conditions(1, 480, 854, 51, dtype=torch.bfloat16)["width"].item() == 856  # bf16 rounding


def test_fp16_metadata_is_upcast():
    meta16 = video_conditions(1, 720, 1280, 102, dtype=torch.float16)
    meta32 = video_conditions(1, 720, 1280, 102)
    times16 = rf.timesteps(30, height=meta16["height"], width=meta16["width"], num_frames=meta16["num_frames"])
    times32 = rf.timesteps(30, height=meta32["height"], width=meta32["width"], num_frames=meta32["num_frames"])
    assert torch.isfinite(times16).all()
    torch.testing.assert_close(times16, times32)


def test_five_step_cfg_sampling_run(tiny_stdit3, rflow_fx, tol):
    fx = rflow_fx
    args = {k: fx[f"sample.args.{k}"] for k in ("height", "width", "num_frames", "fps")}
    times = rf.timesteps(5, height=args["height"], width=args["width"], num_frames=args["num_frames"], batch_size=2)
    tol.check(times[:, 0], fx["sample.timesteps"], tol.timesteps)
    guided = tiny_stdit3.cfg_model_fn(
        fx["sample.y"], fx["sample.mask"], fps=args["fps"], height=args["height"], width=args["width"]
    )
    outputs = []

    def model_fn(z, t, x_mask):
        outputs.append(guided(z, t, x_mask))
        return outputs[-1]

    final = rf.sample(model_fn, fx["sample.z0"], times, cfg_scale=7.0)
    assert len(outputs) == 5
    for i, out in enumerate(outputs):
        tol.check(out, fx[f"sample.model_out.step{i}"], tol.stdit, tol.stdit)
    tol.check(final, fx["sample.final"], tol.sample)

    # Upstream passes an all-ones frame mask in inference; the result is the same.
    ones = rf.sample(model_fn, fx["sample.z0"], times, cfg_scale=7.0, frame_mask=torch.ones(2, 5))
    tol.check(ones, fx["sample.final"], tol.sample)


def test_step_and_guidance_formulas():
    z = torch.ones(2, 1, 1, 1, 1)
    v = torch.tensor([2.0, -1.0]).view(2, 1, 1, 1, 1)
    out = rf.step(z, v, torch.tensor([1000.0, 500.0]), torch.tensor([900.0, 0.0]))
    torch.testing.assert_close(out.flatten(), torch.tensor([1 + 2 * 0.1, 1 - 1 * 0.5]))
    torch.testing.assert_close(rf.guidance(torch.tensor(3.0), torch.tensor(1.0), 7.0), torch.tensor(15.0))


def test_euler_integration_of_an_exact_velocity_recovers_the_data():
    """With the true velocity x0 - noise, RF sampling lands exactly on x0 from pure noise."""
    x0, noise = torch.randn(2, 4, 3, 4, 4), torch.randn(2, 4, 3, 4, 4)
    times = rf.timesteps(7, use_timestep_transform=False, batch_size=2)
    calls = []

    def model_fn(z, t, x_mask):
        calls.append(t)
        return torch.cat([x0 - noise] * 2)

    out = rf.sample(model_fn, noise, times, cfg_scale=7.0)
    torch.testing.assert_close(out, x0, atol=1e-5, rtol=1e-5)
    assert calls[0].shape == (4,)


def test_frame_mask_conditioning():
    """Frames with mask 0 stay at the reference; 0.5 joins once t <= 500; 1 is generated."""
    reference = torch.randn(1, 4, 3, 2, 2)
    frame_mask = torch.tensor([[0.0, 0.5, 1.0]])
    times = rf.timesteps(4, use_timestep_transform=False)  # 1000, 750, 500, 250
    seen = []

    def model_fn(z, t, x_mask):
        seen.append(x_mask.clone())
        return torch.zeros_like(z)

    out = rf.sample(
        model_fn, reference.clone(), times, frame_mask=frame_mask, generator=torch.Generator().manual_seed(0)
    )
    expected = [[False, False, True], [False, False, True], [False, True, True], [False, True, True]]
    assert [m[0].tolist() for m in seen] == expected
    assert all(m.shape == (2, 3) for m in seen)
    assert torch.equal(out[:, :, 0], reference[:, :, 0])
    # Zero velocity: frame 1 keeps exactly its single noising at t = 500 (the third step's draw);
    # frame 2 (mask 1) counts as noised from the start, so z's own content is its starting noise.
    gen = torch.Generator().manual_seed(0)
    draws = [torch.randn(reference.shape, generator=gen) for _ in range(4)]
    torch.testing.assert_close(out[:, :, 1], 0.5 * reference[:, :, 1] + 0.5 * draws[2][:, :, 1])
    torch.testing.assert_close(out[:, :, 2], reference[:, :, 2])


def test_sample_validates_shapes():
    z = torch.zeros(2, 4, 3, 2, 2)
    with pytest.raises(ModelInputError, match="times must be"):
        rf.sample(lambda *a: z, z, torch.zeros(5, 3))
    with pytest.raises(ModelInputError, match="frame_mask must be"):
        rf.sample(lambda *a: z, z, torch.zeros(5, 2), frame_mask=torch.ones(2, 4))


def test_add_noise_endpoints_and_midpoint():
    x0, noise = torch.randn(3, 4, 2, 2, 2), torch.randn(3, 4, 2, 2, 2)
    out = rf.add_noise(x0, noise, torch.tensor([0.0, 1000.0, 250.0]))
    torch.testing.assert_close(out[0], x0[0])
    torch.testing.assert_close(out[1], noise[1])
    torch.testing.assert_close(out[2], 0.75 * x0[2] + 0.25 * noise[2])


def test_logit_normal_times():
    gen = torch.Generator().manual_seed(0)
    t = rf.logit_normal_timesteps(20000, generator=gen)
    assert ((t > 0) & (t < 1000)).all()
    assert abs(t.median().item() - 500) < 15
    # Logit-normal has little mass at the ends compared with uniform.
    assert ((t < 100) | (t > 900)).float().mean() < 0.05
    again = rf.logit_normal_timesteps(20000, generator=torch.Generator().manual_seed(0))
    assert torch.equal(t, again)
    expected = torch.sigmoid(torch.randn(20000, generator=torch.Generator().manual_seed(0))) * 1000
    torch.testing.assert_close(t, expected)


def test_training_timesteps_are_shifted_logit_normal():
    t = rf.training_timesteps(8, height=720, width=1280, num_frames=102, generator=torch.Generator().manual_seed(1))
    base = rf.logit_normal_timesteps(8, generator=torch.Generator().manual_seed(1))
    meta = video_conditions(8, 720, 1280, 102)
    torch.testing.assert_close(t, rf.timestep_transform(base, meta["height"], meta["width"], meta["num_frames"]))
    assert (t > base).all()  # r > 1 shifts toward noise


def test_training_inputs_and_loss_with_a_frame_mask():
    x0, noise = torch.randn(2, 4, 3, 2, 2), torch.randn(2, 4, 3, 2, 2)
    t = torch.tensor([600.0, 300.0])
    frame_mask = torch.tensor([[True, False, True], [True, True, True]])
    x_t = rf.noisy_latents(x0, noise, t, frame_mask)
    assert torch.equal(x_t[0, :, 1], x0[0, :, 1])
    torch.testing.assert_close(x_t[1], rf.add_noise(x0, noise, t)[1])

    velocity = torch.randn(2, 4, 3, 2, 2)
    loss = rf.training_loss(velocity, x0, noise, frame_mask)
    err = (velocity - (x0 - noise)) ** 2
    torch.testing.assert_close(loss[0], err[0][:, [0, 2]].mean())
    torch.testing.assert_close(loss[1], err[1].mean())
    changed = velocity.clone()
    changed[0, :, 1] += 5  # a conditioning frame: excluded from the loss
    torch.testing.assert_close(rf.training_loss(changed, x0, noise, frame_mask), loss)
    torch.testing.assert_close(rf.training_loss(velocity, x0, noise), err.mean(dim=(1, 2, 3, 4)))
