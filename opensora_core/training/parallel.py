"""Data-parallel training plugins: how the model is wrapped, stepped and checkpointed.

- ``zero2`` (default): torch-native FSDP2 (``fully_shard``) on every STDiT3 block and the root with
  ``reshard_after_forward=False``: parameters are gathered once per step and kept until the
  backward is done, gradients are reduce-scattered and the optimizer state lives sharded — the
  ZeRO-2 trade of ColossalAI's ``LowLevelZeroPlugin(stage=2)`` upstream uses.
- ``ddp``: ``DistributedDataParallel``; every rank holds everything.
- ``colossalai-zero2``: upstream's own ``Booster(LowLevelZeroPlugin(stage=2))``, when the
  ``colossalai`` extra is installed.

Weights stay fp32 (the master copy); bf16 comes from autocast around the forward. Model and
optimizer state are saved and loaded with ``torch.distributed.checkpoint`` (one file per rank;
it reshards on load, so a checkpoint of one plugin or world size loads into another).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from clusterkit.errors import UserError


def trainable(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(name, p) for name, p in model.named_parameters() if p.requires_grad]


def local(tensor: torch.Tensor) -> torch.Tensor:
    """The part of ``tensor`` this rank holds (a DTensor's shard, or the tensor itself)."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def full(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor (a collective for a sharded DTensor: every rank must call it)."""
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


class TorchPlugin:
    """``ddp`` and ``zero2``: torch-native wrapping, AdamW, clipping, DCP checkpoints."""

    def __init__(self, name: str, device: torch.device) -> None:
        self.name = name
        self.device = device
        self.model: nn.Module | None = None  # the wrapped model (what the forward calls)
        self.module: nn.Module | None = None  # the STDiT3 inside it (its parameter names)
        self.optimizer: torch.optim.Optimizer | None = None

    def setup(self, model: nn.Module, *, lr: float, weight_decay: float, eps: float) -> torch.optim.Optimizer:
        model.to(self.device)
        if self.name == "zero2":
            from torch.distributed.fsdp import fully_shard

            for block in (*model.spatial_blocks, *model.temporal_blocks):
                fully_shard(block, reshard_after_forward=False)
            fully_shard(model, reshard_after_forward=False)
            self.model = self.module = model
        elif self.name == "ddp":
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = DistributedDataParallel(model, device_ids=ids)
            self.module = model
        else:
            raise ValueError(f"unknown torch plugin {self.name}")
        params = [p for _, p in trainable(self.module)]
        self.optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, eps=eps)
        return self.optimizer

    @property
    def autocast_enabled(self) -> bool:
        return True

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self, grad_clip: float) -> float:
        """Clip (when grad_clip > 0), step, zero the gradients; returns the total gradient norm."""
        params = [p for _, p in trainable(self.module)]
        max_norm = grad_clip if grad_clip > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(full(norm).item())

    def ema_sources(self) -> list[tuple[str, torch.Tensor]]:
        """(name, fp32 master weight) of every trainable parameter, as this rank holds it."""
        return [(name, p.detach()) for name, p in trainable(self.module)]

    def full_model_state(self, keep: bool, skip: frozenset = frozenset()) -> dict[str, torch.Tensor]:
        """The tensors of the STDiT3 state dict not in ``skip``, whole, on the CPU (collective: all
        ranks call it; only a rank with ``keep`` holds the result, the others get an empty dict)."""
        out = {}
        for name, tensor in self.module.state_dict().items():
            if name in skip:
                continue
            whole = full(tensor).detach()
            if keep:
                out[name] = whole.cpu()
        return out

    def save(self, folder: Path) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_state, optim_state = get_state_dict(self.model, self.optimizer)
        dcp.save({"model": model_state, "optimizer": optim_state}, checkpoint_id=str(folder))

    def load(self, folder: Path) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        model_state, optim_state = get_state_dict(self.model, self.optimizer)
        state = {"model": model_state, "optimizer": optim_state}
        dcp.load(state, checkpoint_id=str(folder))
        set_state_dict(self.model, self.optimizer, model_state_dict=state["model"],
                       optim_state_dict=state["optimizer"])

    def shard_like(self, name: str, whole: torch.Tensor) -> torch.Tensor:
        """``whole`` laid out like parameter ``name`` (sliced locally for a sharded parameter)."""
        param = dict(self.module.named_parameters())[name]
        if hasattr(param, "device_mesh"):
            from torch.distributed.tensor import distribute_tensor

            return distribute_tensor(whole.to(self.device), param.device_mesh, param.placements, src_data_rank=None)
        return whole.to(self.device)


class ColossalAIPlugin:
    """Upstream's ``Booster(LowLevelZeroPlugin(stage=2))``; the model itself is cast to the compute
    dtype and the optimizer (HybridAdam in AdamW mode) keeps the fp32 masters."""

    name = "colossalai-zero2"

    def __init__(self, device: torch.device, dtype: str, grad_clip: float) -> None:
        try:
            from colossalai.booster import Booster
            from colossalai.booster.plugin import LowLevelZeroPlugin
        except ImportError:
            raise UserError("plugin colossalai-zero2 needs ColossalAI, which is not installed on this node",
                            hint="pip install 'clusterkit[colossalai]', or use plugin zero2 (torch-native)") from None
        precision = "bf16" if dtype == "bf16" else "fp32"
        self.booster = Booster(plugin=LowLevelZeroPlugin(stage=2, precision=precision, initial_scale=2**16,
                                                         max_norm=grad_clip if grad_clip > 0 else 0.0))
        self.device = device
        self.model = self.module = self.optimizer = None

    def setup(self, model: nn.Module, *, lr: float, weight_decay: float, eps: float):
        from colossalai.nn.optimizer import HybridAdam

        model.to(self.device)
        self.module = model
        optimizer = HybridAdam([p for _, p in trainable(model)], adamw_mode=True, lr=lr,
                               weight_decay=weight_decay, eps=eps)
        self.model, self.optimizer, *_ = self.booster.boost(model=model, optimizer=optimizer)
        return self.optimizer

    @property
    def autocast_enabled(self) -> bool:
        return False  # the booster runs the model in its precision

    def backward(self, loss: torch.Tensor) -> None:
        self.booster.backward(loss=loss, optimizer=self.optimizer)

    def step(self, grad_clip: float) -> float:
        self.optimizer.step()  # clipping happens inside (max_norm)
        self.optimizer.zero_grad()
        norm = getattr(self.optimizer, "_grad_norm", None) or getattr(self.optimizer, "grad_norm", None)
        return float(norm) if norm is not None else float("nan")

    def ema_sources(self) -> list[tuple[str, torch.Tensor]]:
        masters = self.optimizer.get_working_to_master_map()
        out = []
        for name, p in trainable(self.module):
            master = masters.get(id(p))
            out.append((name, (master if master is not None and master.shape == p.shape else p).detach()))
        return out

    def full_model_state(self, keep: bool, skip: frozenset = frozenset()) -> dict[str, torch.Tensor]:
        state = self.module.state_dict()
        return {name: t.detach().float().cpu() for name, t in state.items() if name not in skip} if keep else {}

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.booster.save_model(self.model, str(folder / "model"), shard=True)
        self.booster.save_optimizer(self.optimizer, str(folder / "optimizer"), shard=True)

    def load(self, folder: Path) -> None:
        self.booster.load_model(self.model, str(folder / "model"))
        self.booster.load_optimizer(self.optimizer, str(folder / "optimizer"))

    def shard_like(self, name: str, whole: torch.Tensor) -> torch.Tensor:
        return whole.to(self.device)


def build_plugin(name: str, device: torch.device, *, dtype: str, grad_clip: float):
    if name == "colossalai-zero2":
        return ColossalAIPlugin(device, dtype, grad_clip)
    return TorchPlugin(name, device)


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()
