"""Rectified flow (RFLOW) of Open-Sora v1.2 as pure tensor maths.

Convention: x_t = (1 - t/1000) * x0 + (t/1000) * noise, so t = 1000 is pure noise, and the model
predicts the velocity v = x0 - noise. Sampling walks t from 1000 down with Euler steps, after a
resolution- and length-aware shift of the time grid (``timestep_transform``), with classifier-free
guidance. Training draws t from a logit-normal law and applies the same shift.

Sampling:   ts = timesteps(height=..., width=..., num_frames=..., batch_size=B)
            z = sample(model_fn, z, ts, cfg_scale=7.0)
Training:   t = training_timesteps(B, height=..., width=..., num_frames=...)
            x_t = add_noise(x0, noise, t); loss = training_loss(model(x_t, t, ...)[:, :C], x0, noise)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ..errors import ModelInputError

NUM_TIMESTEPS = 1000
NUM_SAMPLING_STEPS = 30
CFG_SCALE = 7.0
BASE_RESOLUTION = 512 * 512
#: Pixel frames per VAE chunk and latent frames it makes; the shift counts chunks of 17 as 5 frames.
MICRO_FRAMES, LATENT_FRAMES_PER_CHUNK = 17, 5

ModelFn = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


def timestep_transform(
    t: torch.Tensor,
    height: torch.Tensor,
    width: torch.Tensor,
    num_frames: torch.Tensor,
    *,
    num_timesteps: int = NUM_TIMESTEPS,
    scale: float = 1.0,
) -> torch.Tensor:
    """Shift times toward noise for bigger/longer videos: s' = r*s / (1 + (r-1)*s), s = t/num_timesteps.

    r = sqrt(H*W / 512^2) * sqrt(F) * scale with pixel H, W and F = 1 for images, else
    floor(num_frames/17)*5. The metadata tensors' dtype is kept, as upstream does (bf16 metadata
    gives slightly different times; only fp16 is upcast, to avoid overflow). Note 2 <= num_frames
    <= 16 gives r = 0 (NaN at t = 1000); ``timesteps`` rejects those lengths.
    """
    height, width, num_frames = (v.float() if v.dtype == torch.float16 else v for v in (height, width, num_frames))
    t = t / num_timesteps
    ratio_space = (height * width / BASE_RESOLUTION).sqrt()
    # Upstream decides image-vs-video from the first sample only.
    if num_frames[0] == 1:
        frames = torch.ones_like(num_frames)
    else:
        frames = num_frames // MICRO_FRAMES * LATENT_FRAMES_PER_CHUNK
    ratio = ratio_space * frames.sqrt() * scale
    return ratio * t / (1 + (ratio - 1) * t) * num_timesteps


def timesteps(
    num_steps: int = NUM_SAMPLING_STEPS,
    *,
    height: torch.Tensor | float | None = None,
    width: torch.Tensor | float | None = None,
    num_frames: torch.Tensor | float | None = None,
    batch_size: int = 1,
    num_timesteps: int = NUM_TIMESTEPS,
    use_timestep_transform: bool = True,
    use_discrete_timesteps: bool = False,
    transform_scale: float = 1.0,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The sampling times, [num_steps, batch_size] fp32, noisiest first: (1 - i/N) * 1000, shifted.

    height, width (pixels) and num_frames are numbers or per-sample tensors; pass the same tensors
    the model gets (their dtype matters: bf16 metadata reproduces the bf16 reference run).
    """
    if num_steps < 1:
        raise ModelInputError(f"num_steps={num_steps}: must be at least 1")
    grid = [(1.0 - i / num_steps) * num_timesteps for i in range(num_steps)]
    if use_discrete_timesteps:
        grid = [int(round(t)) for t in grid]
    times = torch.tensor(grid, device=device)[:, None].expand(num_steps, batch_size).float()
    if not use_timestep_transform:
        return times
    if height is None or width is None or num_frames is None:
        raise ModelInputError("the timestep transform needs height, width and num_frames")
    height, width, num_frames = (_as_tensor(v, batch_size, device) for v in (height, width, num_frames))
    frames0 = int(num_frames[0].item())
    if 2 <= frames0 < MICRO_FRAMES:
        raise ModelInputError(
            f"num_frames={frames0}: v1.2's timestep shift is zero for 2..16 frames (every step would be t=0); "
            "use 1 (image) or at least 17 frames"
        )
    shift = [timestep_transform(row, height, width, num_frames, num_timesteps=num_timesteps, scale=transform_scale)
             for row in times]  # fmt: skip
    return torch.stack(shift)


def step(
    z: torch.Tensor, velocity: torch.Tensor, t: torch.Tensor, t_next: torch.Tensor, num_timesteps: int = NUM_TIMESTEPS
) -> torch.Tensor:
    """One Euler step from time t to t_next (both [B]); velocity points from noise to data."""
    dt = (t - t_next) / num_timesteps
    return z + velocity * dt.view(-1, *([1] * (z.ndim - 1)))


def guidance(pred_cond: torch.Tensor, pred_uncond: torch.Tensor, cfg_scale: float) -> torch.Tensor:
    """Classifier-free guidance: uncond + scale * (cond - uncond)."""
    return pred_uncond + cfg_scale * (pred_cond - pred_uncond)


def sample(
    model_fn: ModelFn,
    z: torch.Tensor,
    times: torch.Tensor,
    *,
    cfg_scale: float = CFG_SCALE,
    frame_mask: torch.Tensor | None = None,
    num_timesteps: int = NUM_TIMESTEPS,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    callback: Callable[[int, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Denoise ``z`` [B, C, T, H, W] along ``times`` [N, B] (from ``timesteps``) with CFG.

    ``model_fn(z_in, t_in, x_mask)`` receives the doubled batch [z; z] for [cond; null] captions
    (the caller binds captions and metadata) and returns at least C output channels; the first C
    are the velocity.

    ``frame_mask`` [B, T] in [0, 1] conditions on frames already placed in ``z``: a frame with value
    m stays at its reference until t <= m*1000, then it is noised once to the current level and
    denoised with the rest; m = 0 keeps it fixed, 1 generates it. Those frames also get x_mask False
    (time-0 modulation) while fixed. The noise they get comes from ``generator``: one generator, or
    one CPU generator per sample (each row's noise then depends on its own generator only, the same
    on every device and in every batch), drawn at every step as upstream does.
    ``callback(i, z)`` sees z after each step.
    """
    batch, channels = z.shape[:2]
    if times.ndim != 2 or times.shape[1] != batch:
        raise ModelInputError(f"times must be [num_steps, B={batch}], got {list(times.shape)}")
    if frame_mask is not None and frame_mask.shape != (batch, z.shape[2]):
        raise ModelInputError(f"frame_mask must be [B={batch}, T={z.shape[2]}], got {list(frame_mask.shape)}")
    noised = None if frame_mask is None else frame_mask == 1
    for i, t in enumerate(times):
        x_mask = reference = None
        if frame_mask is not None:
            reference = z.clone()
            active = frame_mask * num_timesteps >= t[:, None]
            noise = _noise_like(z, generator)  # drawn at every step, as upstream (the same stream)
            z = torch.where(_frames(active & ~noised), add_noise(reference, noise, t, num_timesteps), reference)
            noised = active
            x_mask = active.repeat(2, 1)
        out = model_fn(torch.cat([z, z]), torch.cat([t, t]), x_mask)
        pred_cond, pred_uncond = out[:, :channels].chunk(2)
        t_next = times[i + 1] if i + 1 < len(times) else torch.zeros_like(t)
        z = step(z, guidance(pred_cond, pred_uncond, cfg_scale), t, t_next, num_timesteps)
        if frame_mask is not None:
            z = torch.where(_frames(active), z, reference)
        if callback is not None:
            callback(i, z)
    return z


def add_noise(
    x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, num_timesteps: int = NUM_TIMESTEPS
) -> torch.Tensor:
    """x_t = (1 - t/N) * x0 + (t/N) * noise, per sample (t is [B])."""
    keep = (1 - t.float() / num_timesteps).view(-1, *([1] * (x0.ndim - 1)))
    return keep * x0 + (1 - keep) * noise


def logit_normal_timesteps(
    batch_size: int,
    *,
    loc: float = 0.0,
    scale: float = 1.0,
    num_timesteps: int = NUM_TIMESTEPS,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Training times t = N * sigmoid(u), u ~ Normal(loc, scale): dense around the middle (SD3)."""
    u = torch.randn(batch_size, generator=generator, device=device) * scale + loc
    return torch.sigmoid(u) * num_timesteps


def training_timesteps(
    batch_size: int,
    *,
    height: torch.Tensor | float,
    width: torch.Tensor | float,
    num_frames: torch.Tensor | float,
    transform_scale: float = 1.0,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Logit-normal times shifted by ``timestep_transform`` for this batch's size, as v1.2 trains."""
    t = logit_normal_timesteps(batch_size, generator=generator, device=device)
    height, width, num_frames = (_as_tensor(v, batch_size, device) for v in (height, width, num_frames))
    return timestep_transform(t, height, width, num_frames, scale=transform_scale)


def noisy_latents(
    x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, frame_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Model input for training: x_t, except frames where ``frame_mask`` [B, T] is False stay clean."""
    x_t = add_noise(x0, noise, t)
    return x_t if frame_mask is None else torch.where(_frames(frame_mask), x_t, x0)


def training_loss(
    velocity: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor, frame_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-sample MSE to the target x0 - noise, averaged over C, T, H, W (over True frames only)."""
    err = (velocity.float() - (x0 - noise).float()).pow(2)
    if frame_mask is None:
        return err.mean(dim=tuple(range(1, err.ndim)))
    per_frame = err.transpose(1, 2).flatten(2)  # [B, T, C*H*W]
    weights = frame_mask.to(err.dtype)
    return (per_frame * weights[:, :, None]).sum(dim=(1, 2)) / (weights.sum(1) * per_frame.shape[-1])


def _noise_like(z: torch.Tensor, generator) -> torch.Tensor:
    """Standard normal noise shaped like ``z``: from one generator, or one CPU generator per row."""
    if generator is None or isinstance(generator, torch.Generator):
        return torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
    if len(generator) != z.shape[0]:
        raise ModelInputError(f"one generator per sample: got {len(generator)} for a batch of {z.shape[0]}")
    rows = [torch.randn(z.shape[1:], generator=g) for g in generator]
    return torch.stack(rows).to(device=z.device, dtype=z.dtype)


def _frames(mask: torch.Tensor) -> torch.Tensor:
    """[B, T] -> [B, 1, T, 1, 1] to select whole frames of [B, C, T, H, W]."""
    return mask[:, None, :, None, None]


def _as_tensor(value, batch_size: int, device) -> torch.Tensor:
    if torch.is_tensor(value):
        return value.to(device) if device is not None else value
    return torch.full((batch_size,), float(value), device=device)
