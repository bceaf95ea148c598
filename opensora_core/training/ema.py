"""Exponential moving average of the trainable weights, kept in fp32 (upstream ``update_ema``).

Each rank holds the EMA of what it holds of the weights (a shard under ``zero2``), so the update
needs no communication: ``ema = decay * ema + (1 - decay) * master``. Frozen parameters and
buffers have no EMA; the exported file takes them from the model, which never changes them.
"""

from __future__ import annotations

import torch

from .parallel import full, local


class EMA:
    def __init__(self, sources: list[tuple[str, torch.Tensor]]) -> None:
        """Start as a copy of ``sources`` (upstream initialises with decay 0, i.e. a copy)."""
        self.shadow: dict[str, torch.Tensor] = {name: t.detach().clone().float() for name, t in sources}

    @torch.no_grad()
    def update(self, sources: list[tuple[str, torch.Tensor]], decay: float) -> None:
        for name, master in sources:
            local(self.shadow[name]).mul_(decay).add_(local(master).float(), alpha=1 - decay)

    def full_state(self, plugin, keep: bool) -> dict[str, torch.Tensor]:
        """The whole EMA in the model's state-dict layout (collective under ``zero2``): EMA tensors
        where there is one, the model's own tensors (frozen parameters, buffers) elsewhere. Only a
        rank with ``keep`` gets it (the others get an empty dict)."""
        out = plugin.full_model_state(keep, skip=frozenset(self.shadow))
        for name in sorted(self.shadow):  # the same order on every rank: full() is a collective
            whole = full(self.shadow[name]).detach()
            if keep:
                out[name] = whole.float().cpu()
        return out if keep else {}

    @torch.no_grad()
    def load_full(self, whole: dict[str, torch.Tensor], shard_like) -> None:
        """Take the EMA from a whole state dict (an ``ema.safetensors``), laid out like the weights."""
        missing = sorted(set(self.shadow) - set(whole))
        if missing:
            from clusterkit.errors import UserError

            raise UserError(f"the checkpoint's EMA lacks {len(missing)} trainable tensors (first {missing[0]!r})")
        for name in self.shadow:
            self.shadow[name] = shard_like(name, whole[name].float()).clone()
