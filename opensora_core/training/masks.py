"""Frame masks for training (upstream ``MaskGenerator``): which latent frames are noised and scored.

For every sample a mask type is drawn with ``mask_ratios`` ("identity", the rest of the
probability, masks nothing). False frames stay clean, get the time-0 modulation in STDiT3 and are
left out of the loss, which teaches the model image/video conditioning:

- ``image_head`` / ``image_tail`` / ``image_head_tail`` / ``image_random``: one frame (at the start,
  the end, both, or anywhere);
- ``quarter_*``: the same with 1 .. T//4 frames;
- ``intepolate`` [sic]: every other frame; ``random``: each frame with a random rate in [0.1, 0.9].

A mask never hides every frame (the last one is then kept), and single-frame latents are never
masked. Draws come from the generator passed in, so a resumed run makes the same masks.
"""

from __future__ import annotations

import torch


def _randint(low: int, high: int, generator: torch.Generator) -> int:
    """An integer in [low, high] (inclusive, like ``random.randint``)."""
    return int(torch.randint(low, high + 1, (1,), generator=generator).item())


class MaskGenerator:
    def __init__(self, mask_ratios: dict[str, float]) -> None:
        ratios = dict(mask_ratios)
        if "identity" not in ratios:
            ratios["identity"] = max(0.0, 1.0 - sum(ratios.values()))
        self.mask_ratios = ratios

    @property
    def enabled(self) -> bool:
        return any(p > 0 for name, p in self.mask_ratios.items() if name != "identity")

    def mask_type(self, generator: torch.Generator) -> str:
        draw = float(torch.rand((), generator=generator))
        total = 0.0
        for name, ratio in self.mask_ratios.items():
            total += ratio
            if draw < total:
                return name
        return "identity"

    def get_mask(self, num_frames: int, generator: torch.Generator) -> torch.Tensor:
        """[num_frames] bool, True = noised and scored."""
        name = self.mask_type(generator)
        mask = torch.ones(num_frames, dtype=torch.bool)
        if num_frames <= 1 or name == "identity":
            return mask
        quarter = max(1, num_frames // 4)
        if name.startswith("quarter_"):
            size = _randint(1, quarter, generator)
        else:
            size = 1
        if name in ("quarter_random", "image_random"):
            start = _randint(0, num_frames - size, generator)
            mask[start:start + size] = False
        elif name in ("quarter_head", "image_head"):
            mask[:size] = False
        elif name in ("quarter_tail", "image_tail"):
            mask[-size:] = False
        elif name in ("quarter_head_tail", "image_head_tail"):
            mask[:size] = False
            mask[-size:] = False
        elif name == "intepolate":
            mask[_randint(0, 1, generator)::2] = False
        elif name == "random":
            rate = 0.1 + 0.8 * float(torch.rand((), generator=generator))
            mask = torch.rand(num_frames, generator=generator) > rate
        if not mask.any():
            mask[-1] = True
        return mask

    def get_masks(self, batch: int, num_frames: int, generator: torch.Generator) -> torch.Tensor:
        """[batch, num_frames] bool."""
        return torch.stack([self.get_mask(num_frames, generator) for _ in range(batch)])
