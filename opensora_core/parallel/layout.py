"""``ParallelLayout``: how the ranks of one inference job share the work, checked before launch.

Torch-free, like torchtitan's ``ParallelDims``: the arithmetic is validated on the submit host
(and again on every rank before any weight is loaded), and process groups are built later, by
``opensora_core.parallel.groups.build_groups``.

A job of ``world_size`` ranks is ``replicas`` independent groups; each group makes one video at
a time with ``cfg`` x ``sp`` ranks:

- ``sp`` (sequence parallelism): the tokens of every frame are sharded over ``sp`` ranks;
  spatial self-attention runs either head-sharded (Ulysses) or frame-sharded (DSP), see
  ``opensora_core.parallel.sequence``. Both need the degree to divide the attention heads
  (Ulysses scatters heads; DSP falls back to Ulysses for clips with fewer latent frames than
  ranks, e.g. images), so the legal degrees are the divisors of ``num_heads``: 1, 2, 4, 8, 16
  for STDiT3-XL/2. Upstream with 6 ranks crashes on some ranks and hangs the rest until the
  NCCL timeout; here 6 is refused with this rule before any process starts.
- ``cfg`` (2 = CFG parallelism): the conditional and unconditional halves of classifier-free
  guidance run on two ranks, which exchange only the predicted velocity.

Rank order, innermost first: sp, cfg, replica. Consecutive ranks form an SP group, so the
heaviest traffic stays between neighbouring GPUs (an NVLink pair, one PCIe switch).
"""

from __future__ import annotations

from dataclasses import dataclass

from opensora_core.errors import LayoutError

#: Spatial-attention schemes of sequence parallelism (``opensora_core.parallel.sequence``).
SP_SCHEMES: tuple[str, ...] = ("dsp", "ulysses")
#: The default scheme: the faster of the two in benchmarks/parallel_infer.py (docs/benchmarks.md).
DEFAULT_SP_SCHEME = "dsp"
#: STDiT3-XL/2's attention heads (the tiny preset has 4).
XL_NUM_HEADS = 16
SP_RULE = ("sequence parallelism splits the model's {heads} attention heads across the ranks, "
           "so --sp must divide {heads}")


def legal_sp_degrees(num_heads: int = XL_NUM_HEADS) -> tuple[int, ...]:
    """The SP degrees a model with ``num_heads`` heads allows: the divisors of ``num_heads``."""
    return tuple(d for d in range(1, num_heads + 1) if num_heads % d == 0)


@dataclass(frozen=True, kw_only=True, slots=True)
class ParallelLayout:
    """replicas x cfg x sp ranks; validated on construction (``LayoutError`` names the rule)."""

    sp: int = 1
    """Sequence-parallel degree: ranks sharing the tokens of one video."""
    cfg: int = 1
    """2 when the CFG pair is split over two ranks, else 1."""
    replicas: int = 1
    """Independent groups, each making its own videos."""
    sp_scheme: str = DEFAULT_SP_SCHEME
    """How spatial attention is sharded when sp > 1: "dsp" (frames) or "ulysses" (heads)."""
    num_heads: int = XL_NUM_HEADS
    """Attention heads of the transformer the layout is for."""

    def __post_init__(self) -> None:
        for name in ("sp", "cfg", "replicas", "num_heads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise LayoutError(f"{_flag(name)} {value!r} must be a positive integer")
        if self.cfg not in (1, 2):
            raise LayoutError(f"cfg {self.cfg!r}: the CFG pair splits over 1 or 2 ranks (--cfg-parallel)")
        if self.sp_scheme not in SP_SCHEMES:
            raise LayoutError(f"--sp-scheme {self.sp_scheme!r} is not valid; valid choices: {', '.join(SP_SCHEMES)}")
        check_sp_degree(self.sp, self.num_heads, self.replicas * self.cfg * self.sp)

    @classmethod
    def for_world(
        cls, world_size: int, *, sp: int = 1, cfg_parallel: bool = False, sp_scheme: str = DEFAULT_SP_SCHEME,
        num_heads: int = XL_NUM_HEADS,
    ) -> ParallelLayout:
        """The layout using ``world_size`` ranks: replicas = world_size / (sp x cfg), which must divide."""
        if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
            raise LayoutError(f"--gpus {world_size!r} must be a positive integer")
        cfg = 2 if cfg_parallel else 1
        check_sp_degree(sp, num_heads, world_size)
        probe = cls(sp=sp, cfg=cfg, sp_scheme=sp_scheme, num_heads=num_heads)  # checks sp and the scheme first
        if world_size % probe.group_size:
            raise LayoutError(
                f"--gpus {world_size} is not a multiple of the group size {probe.group_size} "
                f"({probe.describe_group()}): every rank must belong to a whole group",
                hint=_hint_for(world_size, num_heads),
            )
        return cls(sp=sp, cfg=cfg, replicas=world_size // probe.group_size, sp_scheme=sp_scheme,
                   num_heads=num_heads)

    # ------------------------------------------------------------------ sizes

    @property
    def group_size(self) -> int:
        """Ranks that make one video together: cfg x sp."""
        return self.cfg * self.sp

    @property
    def world_size(self) -> int:
        return self.replicas * self.group_size

    @property
    def sp_enabled(self) -> bool:
        return self.sp > 1

    @property
    def cfg_enabled(self) -> bool:
        return self.cfg > 1

    # ------------------------------------------------------------------ ranks

    def coordinates(self, rank: int) -> tuple[int, int, int]:
        """(replica, cfg rank, sp rank) of global ``rank``."""
        if not 0 <= rank < self.world_size:
            raise LayoutError(f"rank {rank} is outside a world of {self.world_size}")
        replica, inner = divmod(rank, self.group_size)
        cfg_rank, sp_rank = divmod(inner, self.sp)
        return replica, cfg_rank, sp_rank

    def rank(self, replica: int, cfg_rank: int, sp_rank: int) -> int:
        """The global rank at these coordinates."""
        return (replica * self.cfg + cfg_rank) * self.sp + sp_rank

    def sp_groups(self) -> list[list[int]]:
        """Ranks of every SP group (one per replica and CFG half)."""
        return [[self.rank(r, c, s) for s in range(self.sp)] for r in range(self.replicas) for c in range(self.cfg)]

    def cfg_groups(self) -> list[list[int]]:
        """Ranks of every CFG pair (one per replica and SP rank)."""
        return [[self.rank(r, c, s) for c in range(self.cfg)] for r in range(self.replicas) for s in range(self.sp)]

    def replica_groups(self) -> list[list[int]]:
        """Ranks of every replica group: the ranks that make one video together."""
        return [list(range(r * self.group_size, (r + 1) * self.group_size)) for r in range(self.replicas)]

    # ------------------------------------------------------------------ text

    def describe_group(self) -> str:
        """E.g. "cfg2 x sp4", "sp2", "1 rank"."""
        parts = [p for p in ("cfg2" if self.cfg_enabled else "", f"sp{self.sp}" if self.sp_enabled else "") if p]
        return " x ".join(parts) or "1 rank"

    def describe(self) -> str:
        """E.g. "8 ranks: 2 replicas x (cfg2 x sp2), dsp"."""
        text = f"{self.world_size} rank{'s' if self.world_size > 1 else ''}"
        group = self.describe_group()
        if self.replicas > 1:
            text += f": {self.replicas} replicas x ({group})"
        elif self.group_size > 1:
            text += f": {group}"
        return text + (f", {self.sp_scheme}" if self.sp_enabled else "")

    def to_dict(self) -> dict:
        return {"world_size": self.world_size, "replicas": self.replicas, "cfg": self.cfg, "sp": self.sp,
                "sp_scheme": self.sp_scheme, "num_heads": self.num_heads}


def check_sp_degree(sp: int, num_heads: int, world_size: int) -> None:
    """``LayoutError`` naming the rule, the legal degrees and the legal layouts of ``world_size``
    ranks when ``sp`` does not divide ``num_heads``."""
    if isinstance(sp, bool) or not isinstance(sp, int) or sp < 1:
        raise LayoutError(f"--sp {sp!r} must be a positive integer")
    if num_heads % sp:
        legal = legal_sp_degrees(num_heads)
        raise LayoutError(
            f"--sp {sp} is not valid: {SP_RULE.format(heads=num_heads)}; valid choices: {', '.join(map(str, legal))}",
            hint=_hint_for(world_size, num_heads),
        )


def layouts_for(world_size: int, num_heads: int = XL_NUM_HEADS) -> list[ParallelLayout]:
    """Every legal layout of exactly ``world_size`` ranks, largest groups first."""
    out = []
    for cfg in (2, 1):
        for sp in reversed(legal_sp_degrees(num_heads)):
            if world_size % (cfg * sp) == 0:
                out.append(ParallelLayout(sp=sp, cfg=cfg, replicas=world_size // (cfg * sp), num_heads=num_heads))
    return sorted(out, key=lambda layout: -layout.group_size)


def _hint_for(world_size: int, num_heads: int) -> str:
    options = []
    for layout in layouts_for(world_size, num_heads)[:5]:
        flags = f"--gpus {world_size}" + (f" --sp {layout.sp}" if layout.sp_enabled else "")
        flags += " --cfg-parallel" if layout.cfg_enabled else ""
        group = layout.describe_group() if layout.group_size > 1 else "1 GPU each"
        options.append(f"{flags} ({layout.replicas} x {group})" if layout.replicas > 1 else f"{flags} ({group})")
    return f"legal layouts of {world_size} GPU(s): {'; '.join(options)}"


def _flag(name: str) -> str:
    return {"sp": "--sp", "replicas": "replicas", "num_heads": "num_heads", "cfg": "cfg"}[name]


__all__ = ["DEFAULT_SP_SCHEME", "SP_SCHEMES", "ParallelLayout", "XL_NUM_HEADS", "layouts_for", "legal_sp_degrees"]
