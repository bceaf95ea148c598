"""STDiT3 forward parity with the official code (stdit3_tiny fixture) and forward semantics."""

from __future__ import annotations

import math

import pytest
import torch

from opensora_core.errors import ModelInputError
from opensora_core.models.embeddings import sincos_2d
from opensora_core.models.stdit3 import STDiT3, STDiT3Config


def call(model, fx, **changes):
    """The fixture's main forward call, with some arguments replaced."""
    args = dict(
        x=fx["input.x"],
        timestep=fx["input.timestep"],
        y=fx["input.y"],
        mask=fx["input.mask"],
        fps=fx["input.fps"],
        height=fx["input.height"],
        width=fx["input.width"],
    )
    args.update(changes)
    return model(**args)


def test_fixture_state_dict_loads_strictly(stdit_fx, tiny_stdit3_config):
    model = STDiT3(tiny_stdit3_config)
    result = model.load_state_dict(stdit_fx.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert len(stdit_fx.state_dict()) == len(model.state_dict()) == 89


def test_noise_pred(tiny_stdit3, stdit_fx, tol):
    out = call(tiny_stdit3, stdit_fx)
    assert out.dtype == torch.float32
    tol.check(out, stdit_fx["output.noise_pred"], tol.stdit, tol.stdit)


def test_noise_pred_with_x_mask_uses_time_zero_on_conditioning_frames(tiny_stdit3, stdit_fx, tol):
    out = call(tiny_stdit3, stdit_fx, x_mask=stdit_fx["input.x_mask"])
    tol.check(out, stdit_fx["output.noise_pred_xmask"], tol.stdit, tol.stdit)


def test_noise_pred_with_odd_height_and_width_is_padded_then_cropped(tiny_stdit3, stdit_fx, tol):
    out = call(
        tiny_stdit3,
        stdit_fx,
        x=stdit_fx["input.x_odd"],
        height=stdit_fx["input.height_odd"],
        width=stdit_fx["input.width_odd"],
    )
    tol.check(out, stdit_fx["output.noise_pred_odd"], tol.stdit, tol.stdit)


def test_intermediates_match_the_reference(tiny_stdit3, stdit_fx, tol):
    model, fx = tiny_stdit3, stdit_fx
    captured = {}
    hooks = [model.x_embedder.register_forward_hook(lambda m, i, o: captured.setdefault("x_embed", o))]
    hooks.append(model.final_layer.register_forward_hook(lambda m, i, o: captured.setdefault("final_layer", o)))
    hooks.append(model.y_embedder.register_forward_hook(lambda m, i, o: captured.setdefault("y_proj", o)))
    for kind in ("spatial", "temporal"):
        for i, block in enumerate(getattr(model, f"{kind}_blocks")):
            name = f"block.{kind}_{i}"
            hooks.append(block.register_forward_hook(lambda m, inp, out, name=name: captured.setdefault(name, out)))
    try:
        call(model, fx)
    finally:
        for hook in hooks:
            hook.remove()
    for name, value in captured.items():
        tol.check(value, fx[f"debug.{name}"], tol.stdit, tol.stdit)

    scale = math.sqrt(64 * 96) / 512
    tol.check(sincos_2d(64, 4, 6, scale, 5, torch.device("cpu"), torch.float32), fx["debug.pos_emb"], tol.stdit)
    t = model.t_embedder(fx["input.timestep"]) + model.fps_embedder(fx["input.fps"])
    tol.check(t, fx["debug.t"], tol.stdit, tol.stdit)
    tol.check(model.t_block(t), fx["debug.t_mlp"], tol.stdit, tol.stdit)
    packed = model.encode_text(fx["input.y"], fx["input.mask"], 2)
    assert packed.lengths == (8, 3)
    tol.check(packed.tokens[None], fx["debug.y_packed"], tol.stdit, tol.stdit)


def test_flash_attention_path_uses_the_right_layout(tiny_stdit3, tiny_stdit3_config, stdit_fx, tol, monkeypatch):
    """flash_attn_func takes and returns [B, N, heads, head_dim]; a stand-in with that contract."""
    from opensora_core.models import attention

    calls = []

    def fake_flash(q, k, v):
        calls.append(q.shape)
        out = torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return out.transpose(1, 2)

    monkeypatch.setattr(attention, "_flash_attn_func", lambda: fake_flash)
    monkeypatch.setattr(attention, "_flash_usable", lambda q: True)
    config = STDiT3Config(**{**tiny_stdit3_config.__dict__, "enable_flash_attn": True})
    model = STDiT3(config).eval()
    model.load_state_dict(tiny_stdit3.state_dict())
    tol.check(call(model, stdit_fx), stdit_fx["output.noise_pred"], tol.stdit, tol.stdit)
    assert calls[:2] == [(10, 24, 4, 16), (48, 5, 4, 16)]  # spatial: B*T x S; temporal: B*S x T
    calls.clear()
    call(tiny_stdit3, stdit_fx)
    assert not calls  # disabled in the config: never used


def test_cfg_doubled_batch_matches_the_sampler_step0(tiny_stdit3, rflow_fx, tol):
    fx = rflow_fx
    z0 = fx["sample.z0"]
    out = tiny_stdit3(
        torch.cat([z0, z0]),
        fx["sample.timesteps"][:1].repeat(4),
        torch.cat([fx["sample.y"], tiny_stdit3.null_caption(2)]),
        mask=fx["sample.mask"],  # 2 rows for a batch of 4: repeated for the null half
        fps=fx["sample.args.fps"],
        height=fx["sample.args.height"],
        width=fx["sample.args.width"],
    )
    tol.check(out, fx["sample.model_out.step0"], tol.stdit, tol.stdit)


def test_null_caption_is_the_stored_y_embedding(tiny_stdit3, rflow_fx):
    assert torch.equal(tiny_stdit3.null_caption(2), rflow_fx["sample.y_null"])


def test_no_mask_equals_all_ones_mask(tiny_stdit3, stdit_fx):
    ones = torch.ones_like(stdit_fx["input.mask"])
    torch.testing.assert_close(call(tiny_stdit3, stdit_fx, mask=None), call(tiny_stdit3, stdit_fx, mask=ones))


def test_masked_caption_tokens_do_not_influence_the_output(tiny_stdit3, stdit_fx):
    y = stdit_fx["input.y"].clone()
    y[1, :, 3:] = 100.0  # sample 1 has only 3 valid tokens
    torch.testing.assert_close(call(tiny_stdit3, stdit_fx, y=y), stdit_fx["output.noise_pred"], atol=1e-5, rtol=1e-5)
    y[0, :, 3:] = 100.0  # sample 0 uses all 8 tokens
    assert not torch.allclose(call(tiny_stdit3, stdit_fx, y=y)[0], stdit_fx["output.noise_pred"][0], atol=1e-3)


def test_samples_do_not_see_each_other(tiny_stdit3, stdit_fx):
    fx = stdit_fx
    alone = tiny_stdit3(
        fx["input.x"][1:],
        fx["input.timestep"][1:],
        fx["input.y"][1:],
        mask=fx["input.mask"][1:],
        fps=fx["input.fps"][1:],
        height=fx["input.height"][1:],
        width=fx["input.width"][1:],
    )
    torch.testing.assert_close(alone[0], fx["output.noise_pred"][1], atol=1e-5, rtol=1e-5)


def test_per_sample_arguments_may_be_numbers_or_fewer_rows(tiny_stdit3, stdit_fx, tol):
    ref = call(tiny_stdit3, stdit_fx, fps=torch.tensor([24.0, 24.0]))
    torch.testing.assert_close(call(tiny_stdit3, stdit_fx, fps=24), ref)
    torch.testing.assert_close(call(tiny_stdit3, stdit_fx, fps=torch.tensor([24.0])), ref)
    tol.check(call(tiny_stdit3, stdit_fx, height=64, width=96), stdit_fx["output.noise_pred"], tol.stdit, tol.stdit)


@pytest.mark.parametrize(("dtype", "rel_tol"), [(torch.bfloat16, 2e-2), (torch.float16, 2e-3)])
def test_half_precision_forward_is_close_to_fp32(tiny_stdit3, tiny_stdit3_config, stdit_fx, dtype, rel_tol):
    # Timesteps exact in both dtypes: the model casts them to its dtype, as upstream does.
    timestep = torch.tensor([900.0, 250.0])
    ref = call(tiny_stdit3, stdit_fx, timestep=timestep, x_mask=stdit_fx["input.x_mask"])
    model = STDiT3(tiny_stdit3_config).eval()
    model.load_state_dict(tiny_stdit3.state_dict())
    model.to(dtype)
    out = call(model, stdit_fx, timestep=timestep, x_mask=stdit_fx["input.x_mask"])
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert (out - ref).norm() / ref.norm() < rel_tol


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (dict(fps=None), "needs fps, height and width"),
        (dict(x=torch.zeros(2, 3, 5, 8, 12)), "x must be"),
        (dict(timestep=torch.zeros(3)), "timestep must be"),
        (dict(y=torch.zeros(2, 1, 8, 31)), "y must be"),
        (dict(mask=torch.ones(3, 8)), "mask must be"),
        (dict(mask=torch.tensor([[1] * 8, [0] * 8])), "at least one caption token"),
        (dict(x_mask=torch.ones(2, 4, dtype=torch.bool)), "x_mask must be"),
        (dict(x_mask=torch.ones(2, 5)), "x_mask must be a bool tensor"),
        (dict(fps=torch.tensor([24.0, 24.0, 24.0])), "does not divide the batch"),
    ],
)
def test_bad_inputs_raise_model_input_error(tiny_stdit3, stdit_fx, changes, message):
    with pytest.raises(ModelInputError, match=message):
        call(tiny_stdit3, stdit_fx, **changes)


def test_skip_y_embedder_takes_packed_projected_captions(tiny_stdit3, tiny_stdit3_config, stdit_fx, tol):
    config = STDiT3Config(**{**tiny_stdit3_config.__dict__, "skip_y_embedder": True})
    model = STDiT3(config).eval()
    model.load_state_dict(tiny_stdit3.state_dict())
    packed = tiny_stdit3.encode_text(stdit_fx["input.y"], stdit_fx["input.mask"], 2)
    out = call(model, stdit_fx, y=packed.tokens[None], mask=torch.tensor(packed.lengths))
    tol.check(out, stdit_fx["output.noise_pred"], tol.stdit, tol.stdit)


def test_training_features(tiny_stdit3, tiny_stdit3_config, stdit_fx):
    config = STDiT3Config(**{**tiny_stdit3_config.__dict__, "class_dropout_prob": 0.0})
    model = STDiT3(config).train()
    model.load_state_dict(tiny_stdit3.state_dict())
    with torch.enable_grad():
        plain = call(model, stdit_fx)
        plain.square().mean().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        model.zero_grad()
        model.gradient_checkpointing = True
        checkpointed = call(model, stdit_fx)
        checkpointed.square().mean().backward()
    torch.testing.assert_close(checkpointed, plain)
    for name, param in model.named_parameters():
        if name in grads:
            torch.testing.assert_close(param.grad, grads[name], atol=1e-6, rtol=1e-5)
    assert grads["temporal_blocks.1.mlp.fc2.weight"].abs().sum() > 0
    assert "rope.freqs" not in grads


def test_caption_dropout_in_training_swaps_in_the_null_caption(tiny_stdit3, tiny_stdit3_config, stdit_fx):
    config = STDiT3Config(**{**tiny_stdit3_config.__dict__, "class_dropout_prob": 0.999999})
    model = STDiT3(config)
    model.load_state_dict(tiny_stdit3.state_dict())
    torch.manual_seed(0)
    dropped = call(model.train(), stdit_fx)
    null = call(model.eval(), stdit_fx, y=model.null_caption(2))
    torch.testing.assert_close(dropped, null)


def test_freezing_options(tiny_stdit3_config):
    temporal_only = STDiT3(STDiT3Config(**{**tiny_stdit3_config.__dict__, "only_train_temporal": True}))
    trainable = {n for n, p in temporal_only.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("temporal_blocks.") for n in trainable)
    frozen_y = STDiT3(STDiT3Config(**{**tiny_stdit3_config.__dict__, "freeze_y_embedder": True}))
    assert not any(p.requires_grad for p in frozen_y.y_embedder.parameters())
    assert frozen_y.spatial_blocks[0].attn.qkv.weight.requires_grad
    assert not frozen_y.rope.freqs.requires_grad


def test_fresh_model_starts_with_inert_temporal_blocks(tiny_stdit3_config):
    model = STDiT3(tiny_stdit3_config)
    for block in model.temporal_blocks:
        assert not block.attn.proj.weight.any() and not block.cross_attn.proj.weight.any()
        assert not block.mlp.fc2.weight.any()
    assert not model.fps_embedder.mlp[2].weight.any()
    torch.testing.assert_close(model.rope.freqs, 10000 ** (-torch.arange(0, 16, 2).float() / 16))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
@pytest.mark.parametrize("flash", [False, True])
def test_cuda_bf16_forward_is_close_to_fp32(tiny_stdit3, tiny_stdit3_config, stdit_fx, flash):
    """On a GPU: bf16 with SDPA kernels (and flash-attn where installed) against the fp32 CPU result."""
    timestep = torch.tensor([900.0, 250.0])
    ref = call(tiny_stdit3, stdit_fx, timestep=timestep, x_mask=stdit_fx["input.x_mask"])
    model = STDiT3(STDiT3Config(**{**tiny_stdit3_config.__dict__, "enable_flash_attn": flash})).eval()
    model.load_state_dict(tiny_stdit3.state_dict())
    model.to("cuda", torch.bfloat16)
    inputs = {k: stdit_fx[f"input.{k}"].cuda() for k in ("x", "y", "mask", "fps", "height", "width", "x_mask")}
    out = model(inputs.pop("x"), timestep.cuda(), inputs.pop("y"), **inputs).cpu()
    assert (out - ref).norm() / ref.norm() < 2e-2
