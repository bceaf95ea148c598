"""GPU catalog: the per-SKU facts the planner, preflight and launch layer reason with.

Every number carries its source in ``GPUSpec.source``; numbers we could not check against a
primary source say UNVERIFIED there. The reference is ``docs/nodes-yaml.md`` ("GPU catalog").

Conventions (they matter for the planner):

* ``memory_gb`` is the marketing capacity ("48 GB"). For GDDR/HBM parts that number is really
  GiB of DRAM (48 GB = 49,152 MiB).
* ``usable_gib`` is the planning budget: what a process can allocate, in GiB. Measured values
  come from performance_facts.md §1: 48 GB GDDR6 cards show 45,634 MiB (= 44.56 GiB; §1's
  "≈45.6 GiB" is 45.6 *thousand MiB*) and 24 GB consumer cards ~23.65 GiB. Every other entry
  is derived as 0.95 × memory_gb, except datacenter GDDR6 cards whose ECC is on by default
  (T4, A10, L4), which get the measured ECC ratio 45,634 / 49,152. Preflight measures the truth.
* ``tflops_fp16`` / ``tflops_bf16`` are dense tensor-core TFLOPS with FP32 accumulate (what
  PyTorch uses), no structured sparsity. ``tflops_bf16`` is None where BF16 is unsupported.
* ``p2p_pcie``: True = the SKU and driver allow GPU peer-to-peer over PCIe (topology, ACS and
  IOMMU can still block it: preflight checks ``nvidia-smi topo -p2p``); False = the SKU never
  does it (GeForce); None = not established by our sources, or not applicable (SXM modules
  talk over NVLink).
* ``nvlink`` describes the SKU's NVLink capability (None = the SKU has no NVLink); whether a
  bridge is actually installed is a node fact (``interconnect`` in nodes.yaml).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from clusterkit.errors import InvalidChoice, UserError, did_you_mean

# nvidia-smi shows 45,634 MiB on a 48 GB GDDR6 card with ECC enabled (performance_facts.md §1).
_MIB_48GB_ECC = 45_634
_ECC_RATIO = _MIB_48GB_ECC / (48 * 1024)
_GIB_48GB = round(_MIB_48GB_ECC / 1024, 2)  # 44.56
_GIB_24GB = 23.65  # §1: RTX 4090 "23.65 GiB total capacity"; used for every 24 GB consumer card


def _derived(memory_gb: float) -> float:
    """Planning budget for a card without a measured figure: 0.95 × marketing capacity."""
    return round(0.95 * memory_gb, 2)


def _derived_ecc(memory_gb: float) -> float:
    """Planning budget for a GDDR6 card that ships with ECC on: the measured 48 GB ratio."""
    return round(memory_gb * _ECC_RATIO, 2)


@dataclass(frozen=True)
class GPUSpec:
    """Facts about one GPU SKU. See the module docstring for units and conventions."""

    key: str  # canonical id used in nodes.yaml, e.g. "rtx-a6000"
    name: str  # marketing name
    family: str  # product family shared by memory/form-factor variants, e.g. "a100"
    aliases: tuple[str, ...]  # spellings users, nvidia-smi/NVML and Slurm use
    memory_gb: float
    usable_gib: float
    bandwidth_gbs: float
    compute_capability: tuple[int, int]
    bf16: bool
    flash_attn2: bool  # FlashAttention-2 needs sm80+
    p2p_pcie: bool | None
    nvlink: str | None
    nvlink_gbs: float | None  # total bidirectional GB/s per GPU
    tflops_bf16: float | None
    tflops_fp16: float
    slurm_gres: str  # conventional GRES type; the site's gres.conf may differ (nodes.yaml slurm.gres_type)
    source: str
    variant_known: bool = True  # False only for a family entry whose exact SKU is unconfirmed

    @property
    def sm(self) -> str:
        """Compute capability as an arch name, e.g. "sm_86"."""
        return f"sm_{self.compute_capability[0]}{self.compute_capability[1]}"


_RTX8000_SRC = (
    "performance_facts.md §1: Leadtek Quadro RTX 8000 datasheet copy (130.5 tensor TFLOPS, FP16 "
    "matmul with FP16 or FP32 accumulate; 672 GB/s; 2-way NVLink 100 GB/s; PCIe 3.0). Turing sm_75: "
    "no BF16, no FlashAttention-2 (FA1 README: Turing fp16 only). P2P over PCIe: pro driver, "
    "UNVERIFIED per platform. usable_gib: 45,634 MiB as for 48 GB GDDR6 cards (§1)."
)
_A100_SRC = (
    "performance_facts.md §1: NVIDIA A100 datasheet via glennklockwood.com and the PC2 wiki (312 TFLOPS "
    "dense BF16/FP16; 1,555 GB/s at 40 GB; 2,039 GB/s at 80 GB SXM; NVLink 300+300 GB/s; "
    "\"NVLink bridge for up to 2 GPUs\" on PCIe). usable_gib derived as 0.95 × memory_gb."
)
_V100_SRC = (
    "NVIDIA Tesla V100 datasheet: tensor performance 125 TFLOPS (SXM2) / 112 TFLOPS (PCIe), FP16 "
    "multiply with FP32 accumulate; HBM2 900 GB/s; NVLink 300 GB/s on SXM2 only. Volta sm_70: no BF16, "
    "no FlashAttention-2. P2P over PCIe not established by our sources (None). usable_gib derived "
    "as 0.95 × memory_gb."
)
_H100_SXM_SRC = (
    "performance_facts.md §1: NVIDIA H100 datasheet via mngaonkar notes (989 TFLOPS dense BF16, "
    "3,350 GB/s, NVLink 900 GB/s). usable_gib derived as 0.95 × memory_gb."
)


_CATALOG: tuple[GPUSpec, ...] = (
    # --- the seed cluster -------------------------------------------------------------------
    GPUSpec(
        key="quadro-rtx-8000",
        name="NVIDIA Quadro RTX 8000",
        family="quadro-rtx-8000",
        aliases=("Quadro RTX 8000", "NVIDIA Quadro RTX 8000", "RTX 8000", "RTX8000", "8000", "quadro_rtx_8000"),
        memory_gb=48,
        usable_gib=_GIB_48GB,
        bandwidth_gbs=672,
        compute_capability=(7, 5),
        bf16=False,
        flash_attn2=False,
        p2p_pcie=True,
        nvlink="2-way NVLink bridge",
        nvlink_gbs=100,
        tflops_bf16=None,
        tflops_fp16=130.5,
        slurm_gres="quadro_rtx_8000",
        source=_RTX8000_SRC,
    ),
    GPUSpec(
        key="rtx-3090",
        name="NVIDIA GeForce RTX 3090",
        family="rtx-3090",
        aliases=("RTX 3090", "3090", "GeForce RTX 3090", "NVIDIA GeForce RTX 3090", "rtx_3090"),
        memory_gb=24,
        usable_gib=_GIB_24GB,
        bandwidth_gbs=936,
        compute_capability=(8, 6),
        bf16=True,
        flash_attn2=True,
        p2p_pcie=False,
        nvlink="2-way NVLink bridge (UNVERIFIED for the 3090)",
        nvlink_gbs=112.5,
        tflops_bf16=71,
        tflops_fp16=71,
        slurm_gres="rtx_3090",
        source=(
            "performance_facts.md §1: NVIDIA GA102 whitepaper v2.0 via waredb/ctc tables: 936 GB/s; 71 TFLOPS "
            "FP16/BF16 with FP32 accumulate (142 with FP16 accumulate; GeForce runs FP32 accumulate at half "
            "rate) - UNVERIFIED, seen only in third-party tables. NVLink 112.5 GB/s UNVERIFIED for the 3090. "
            "P2P over PCIe: generally no on GeForce (NVIDIA/nccl#1127, reports mixed); works over the NVLink "
            "bridge. usable_gib: ~23.65 GiB for 24 GB cards (§1)."
        ),
    ),
    GPUSpec(
        key="a100",
        name="NVIDIA A100 (variant unknown)",
        family="a100",
        aliases=("A100", "NVIDIA A100", "Tesla A100"),
        memory_gb=40,
        usable_gib=_derived(40),
        bandwidth_gbs=1555,
        compute_capability=(8, 0),
        bf16=True,
        flash_attn2=True,
        p2p_pcie=None,
        nvlink=(
            "variant unknown: PCIe cards take a 2-GPU NVLink bridge, SXM4 modules use NVLink/NVSwitch "
            "(600 GB/s both)"
        ),
        nvlink_gbs=600,
        tflops_bf16=312,
        tflops_fp16=312,
        slurm_gres="a100",
        source=(
            "Family entry for an A100 whose variant is not confirmed (the seed cluster says only \"A100\"). "
            "Every figure is the most conservative of the four A100 entries (40 GB, 1,555 GB/s); 312 TFLOPS "
            "is common to all. Preflight reads the NVML name; then set gpu.model to the exact variant. "
            + _A100_SRC
        ),
        variant_known=False,
    ),
    GPUSpec(
        key="a100-40gb-pcie",
        name="NVIDIA A100 40GB PCIe",
        family="a100",
        aliases=("A100 40GB PCIe", "A100-PCIE-40GB", "NVIDIA A100-PCIE-40GB", "a100_40gb_pcie"),
        memory_gb=40,
        usable_gib=_derived(40),
        bandwidth_gbs=1555,
        compute_capability=(8, 0),
        bf16=True,
        flash_attn2=True,
        p2p_pcie=True,
        nvlink="NVLink bridge for 2 GPUs",
        nvlink_gbs=600,
        tflops_bf16=312,
        tflops_fp16=312,
        slurm_gres="a100_40gb_pcie",
        source="312 TFLOPS at lower sustained clocks (250 W). " + _A100_SRC,
    ),
    GPUSpec(
        key="a100-80gb-pcie",
        name="NVIDIA A100 80GB PCIe",
        family="a100",
        aliases=(
            "A100 80GB PCIe",
            "NVIDIA A100 80GB PCIe",
            "A100-PCIE-80GB",
            "NVIDIA A100-PCIE-80GB",
            "a100_80gb_pcie",
        ),
        memory_gb=80,
        usable_gib=_derived(80),
        bandwidth_gbs=1935,
        compute_capability=(8, 0),
        bf16=True,
        flash_attn2=True,
        p2p_pcie=True,
        nvlink="NVLink bridge for 2 GPUs",
        nvlink_gbs=600,
        tflops_bf16=312,
        tflops_fp16=312,
        slurm_gres="a100_80gb_pcie",
        source="1,935 GB/s is UNVERIFIED (datasheet from memory, §1); 300 W. " + _A100_SRC,
    ),
    GPUSpec(
        key="a100-40gb-sxm4",
        name="NVIDIA A100 40GB SXM4",
        family="a100",
        aliases=("A100 40GB SXM4", "A100-SXM4-40GB", "NVIDIA A100-SXM4-40GB", "a100_40gb_sxm4"),
        memory_gb=40,
        usable_gib=_derived(40),
        bandwidth_gbs=1555,
        compute_capability=(8, 0),
        bf16=True,
        flash_attn2=True,
        p2p_pcie=None,
        nvlink="NVLink 3 via NVSwitch (HGX A100)",
        nvlink_gbs=600,
        tflops_bf16=312,
        tflops_fp16=312,
        slurm_gres="a100_40gb_sxm4",
        source="SXM4: peer traffic uses NVLink (p2p_pcie n/a). " + _A100_SRC,
    ),
    GPUSpec(
        key="a100-80gb-sxm4",
        name="NVIDIA A100 80GB SXM4",
        family="a100",
        aliases=(
            "A100 80GB SXM4",
            "A100-SXM4-80GB",
            "NVIDIA A100-SXM4-80GB",
            "A100-SXM-80GB",
            "NVIDIA A100-SXM-80GB",
            "a100_80gb_sxm4",
        ),
        memory_gb=80,
        usable_gib=_derived(80),
        bandwidth_gbs=2039,
        compute_capability=(8, 0),
        bf16=True,
        flash_attn2=True,
        p2p_pcie=None,
        nvlink="NVLink 3 via NVSwitch (HGX A100)",
        nvlink_gbs=600,
        tflops_bf16=312,
        tflops_fp16=312,
        slurm_gres="a100_80gb_sxm4",
        source="SXM4: peer traffic uses NVLink (p2p_pcie n/a). " + _A100_SRC,
    ),
    GPUSpec(
        key="rtx-a6000",
        name="NVIDIA RTX A6000",
        family="rtx-a6000",
        aliases=("A6000", "RTX A6000", "NVIDIA RTX A6000", "rtx_a6000"),
        memory_gb=48,
        usable_gib=_GIB_48GB,
        bandwidth_gbs=768,
        compute_capability=(8, 6),
        bf16=True,
        flash_attn2=True,
        p2p_pcie=True,
        nvlink="2-way NVLink bridge",
        nvlink_gbs=112.5,
        tflops_bf16=154.8,
        tflops_fp16=154.8,
        slurm_gres="rtx_a6000",
        source=(
            "performance_facts.md §1: servethehome spec table (768 GB/s, PCIe 4.0, NVLink 112.5 GB/s "
            "bidirectional) and llmperf/Microway (154.8 TFLOPS dense FP16/BF16; pro GA102 runs FP32 accumulate "
            "at full rate). P2P over PCIe: pro card, platform-dependent. usable_gib: 45,634 MiB as for 48 GB "
            "GDDR6 cards (§1)."
        ),
    ),
    GPUSpec(
        key="a40",
        name="NVIDIA A40",
        family="a40",
        aliases=("A40", "NVIDIA A40", "a40"),
        memory_gb=48,
        usable_gib=_GIB_48GB,
        bandwidth_gbs=696,
        compute_capability=(8, 6),
        bf16=True,
        flash_attn2=True,
        p2p_pcie=True,
        nvlink="2-way NVLink bridge",
        nvlink_gbs=112.5,
        tflops_bf16=149.7,
        tflops_fp16=149.7,
        slurm_gres="a40",
        source=(
            "performance_facts.md §1: NVIDIA A40 datasheet copy (ecer.com) and hmc-tech: BF16 with FP32 "
            "accumulate 149.7 TFLOPS, 696 GB/s, NVLink 112.5 GB/s bidirectional; nvidia-smi shows 45,634 MiB; "
            "P2P over PCIe runs in NVIDIA/nccl-tests#74."
        ),
    ),
    GPUSpec(
        key="rtx-4090",
        name="NVIDIA GeForce RTX 4090",
        family="rtx-4090",
        aliases=("RTX 4090", "4090", "GeForce RTX 4090", "NVIDIA GeForce RTX 4090", "rtx_4090"),
        memory_gb=24,
        usable_gib=_GIB_24GB,
        bandwidth_gbs=1008,
        compute_capability=(8, 9),
        bf16=True,
        flash_attn2=True,
        p2p_pcie=False,
        nvlink=None,
        nvlink_gbs=None,
        tflops_bf16=165.2,
        tflops_fp16=165.2,
        slurm_gres="rtx_4090",
        source=(
            "performance_facts.md §1: NVIDIA Ada whitepaper via waredb/ctc tables: 165.2 TFLOPS FP16/BF16 with "
            "FP32 accumulate (330.3 with FP16 accumulate), 1,008 GB/s, 23.65 GiB total capacity. No NVLink. No "
            "P2P: NVIDIA confirmed it is not supported (purepc.pl forum statement, allanchan339 blog, "
            "cocktailpeanut/fluxgym#283; accelerate refuses P2P on the RTX 4000 series)."
        ),
    ),
    # --- other common datacenter / workstation GPUs -----------------------------------------
    GPUSpec(
        key="v100-16gb-sxm2",
        name="NVIDIA Tesla V100 SXM2 16GB",
        family="v100",
        aliases=("V100 SXM2 16GB", "V100-SXM2-16GB", "Tesla V100-SXM2-16GB", "v100_16gb_sxm2"),
        memory_gb=16,
        usable_gib=_derived(16),
        bandwidth_gbs=900,
        compute_capability=(7, 0),
        bf16=False,
        flash_attn2=False,
        p2p_pcie=None,
        nvlink="NVLink 2 (hybrid cube mesh, DGX-1/HGX-1)",
        nvlink_gbs=300,
        tflops_bf16=None,
        tflops_fp16=125,
        slurm_gres="v100_16gb_sxm2",
        source=_V100_SRC,
    ),
    GPUSpec(
        key="v100-32gb-sxm2",
        name="NVIDIA Tesla V100 SXM2 32GB",
        family="v100",
        aliases=("V100 SXM2 32GB", "V100-SXM2-32GB", "Tesla V100-SXM2-32GB", "v100_32gb_sxm2"),
        memory_gb=32,
        usable_gib=_derived(32),
        bandwidth_gbs=900,
        compute_capability=(7, 0),
        bf16=False,
        flash_attn2=False,
        p2p_pcie=None,
        nvlink="NVLink 2 (hybrid cube mesh, DGX-1/HGX-1)",
        nvlink_gbs=300,
        tflops_bf16=None,
        tflops_fp16=125,
        slurm_gres="v100_32gb_sxm2",
        source=_V100_SRC,
    ),
    GPUSpec(
        key="v100-16gb-pcie",
        name="NVIDIA Tesla V100 PCIe 16GB",
        family="v100",
        aliases=("V100 PCIe 16GB", "V100-PCIE-16GB", "Tesla V100-PCIE-16GB", "v100_16gb_pcie"),
        memory_gb=16,
        usable_gib=_derived(16),
        bandwidth_gbs=900,
        compute_capability=(7, 0),
        bf16=False,
        flash_attn2=False,
        p2p_pcie=None,
        nvlink=None,
        nvlink_gbs=None,
        tflops_bf16=None,
        tflops_fp16=112,
        slurm_gres="v100_16gb_pcie",
        source=_V100_SRC,
    ),
    GPUSpec(
        key="v100-32gb-pcie",
        name="NVIDIA Tesla V100 PCIe 32GB",
        family="v100",
        aliases=("V100 PCIe 32GB", "V100-PCIE-32GB", "Tesla V100-PCIE-32GB", "v100_32gb_pcie"),
        memory_gb=32,
        usable_gib=_derived(32),
        bandwidth_gbs=900,
        compute_capability=(7, 0),
        bf16=False,
        flash_attn2=False,
        p2p_pcie=None,
        nvlink=None,
        nvlink_gbs=None,
        tflops_bf16=None,
        tflops_fp16=112,
        slurm_gres="v100_32gb_pcie",
        source=_V100_SRC,
    ),
    GPUSpec(
        key="t4",
        name="NVIDIA T4",
        family="t4",
        aliases=("T4", "Tesla T4", "NVIDIA T4"),
        memory_gb=16,
        usable_gib=_derived_ecc(16),
        bandwidth_gbs=320,
        compute_capability=(7, 5),
        bf16=False,
        flash_attn2=False,
        p2p_pcie=None,
        nvlink=None,
        nvlink_gbs=None,
        tflops_bf16=None,
        tflops_fp16=65,
        slurm_gres="t4",
        source=(
            "NVIDIA T4 datasheet: mixed precision (FP16/FP32) 65 TFLOPS, 16 GB GDDR6, 320+ GB/s, PCIe Gen3, "
            "70 W, no NVLink. Turing sm_75: no BF16, no FlashAttention-2. P2P over PCIe not established by our "
            "sources (None). usable_gib derived with the ECC ratio 45,634/49,152 (ECC on by default)."
        ),
    ),
    GPUSpec(
        key="a10",
        name="NVIDIA A10",
        family="a10",
        aliases=("A10", "NVIDIA A10"),
        memory_gb=24,
        usable_gib=_derived_ecc(24),
        bandwidth_gbs=600,
        compute_capability=(8, 6),
        bf16=True,
        flash_attn2=True,
        p2p_pcie=None,
        nvlink=None,
        nvlink_gbs=None,
        tflops_bf16=125,
        tflops_fp16=125,
        slurm_gres="a10",
        source=(
            "NVIDIA A10 datasheet: BF16/FP16 tensor 125 TFLOPS dense (250 with sparsity), 24 GB GDDR6, "
            "600 GB/s, PCIe Gen4, no NVLink. The datasheet does not state the accumulator width; full-rate FP32 "
            "accumulate as on the datacenter A40 is assumed - UNVERIFIED. Not the AWS A10G (different tensor "
            "rate). P2P over PCIe not established (None). usable_gib derived with the ECC ratio."
        ),
    ),
    GPUSpec(
        key="l4",
        name="NVIDIA L4",
        family="l4",
        aliases=("L4", "NVIDIA L4"),
        memory_gb=24,
        usable_gib=_derived_ecc(24),
        bandwidth_gbs=300,
        compute_capability=(8, 9),
        bf16=True,
        flash_attn2=True,
        p2p_pcie=None,
        nvlink=None,
        nvlink_gbs=None,
        tflops_bf16=121,
        tflops_fp16=121,
        slurm_gres="l4",
        source=(
            "NVIDIA L4 datasheet: FP16/BF16 tensor 242 TFLOPS with sparsity, i.e. 121 dense; 24 GB GDDR6; "
            "300 GB/s; PCIe Gen4; 72 W; no NVLink. FP32-accumulate rate not stated - UNVERIFIED. P2P over PCIe "
            "not established (None). usable_gib derived with the ECC ratio."
        ),
    ),
    GPUSpec(
        key="l40s",
        name="NVIDIA L40S",
        family="l40s",
        aliases=("L40S", "NVIDIA L40S"),
        memory_gb=48,
        usable_gib=_GIB_48GB,
        bandwidth_gbs=864,
        compute_capability=(8, 9),
        bf16=True,
        flash_attn2=True,
        p2p_pcie=None,
        nvlink=None,
        nvlink_gbs=None,
        tflops_bf16=362.05,
        tflops_fp16=362.05,
        slurm_gres="l40s",
        source=(
            "NVIDIA L40S datasheet: BF16/FP16 tensor 362.05 TFLOPS dense (733 with sparsity), 48 GB GDDR6 with "
            "ECC, 864 GB/s, PCIe Gen4 x16, NVLink not supported. P2P over PCIe not established (None). "
            "usable_gib: 45,634 MiB as for 48 GB GDDR6 cards (§1)."
        ),
    ),
    GPUSpec(
        key="rtx-6000-ada",
        name="NVIDIA RTX 6000 Ada Generation",
        family="rtx-6000-ada",
        aliases=("RTX 6000 Ada", "RTX 6000 Ada Generation", "NVIDIA RTX 6000 Ada Generation", "rtx_6000_ada"),
        memory_gb=48,
        usable_gib=_GIB_48GB,
        bandwidth_gbs=960,
        compute_capability=(8, 9),
        bf16=True,
        flash_attn2=True,
        p2p_pcie=None,
        nvlink=None,
        nvlink_gbs=None,
        tflops_bf16=364.2,
        tflops_fp16=364.2,
        slurm_gres="rtx_6000_ada",
        source=(
            "NVIDIA RTX 6000 Ada Generation datasheet: 48 GB GDDR6 ECC, 960 GB/s, PCIe Gen4, no NVLink; its "
            "\"1,457 TFLOPS\" is FP8 with sparsity. 364.2 TFLOPS FP16/BF16 dense with FP32 accumulate is from the "
            "NVIDIA Ada Lovelace architecture whitepaper appendix - UNVERIFIED (from memory, 1,457/4). P2P over "
            "PCIe not established (None). usable_gib: 45,634 MiB as for 48 GB GDDR6 cards (§1)."
        ),
    ),
    GPUSpec(
        key="h100-pcie",
        name="NVIDIA H100 PCIe",
        family="h100",
        aliases=("H100 PCIe", "NVIDIA H100 PCIe", "H100-PCIe", "H100 PCIe 80GB", "h100_pcie"),
        memory_gb=80,
        usable_gib=_derived(80),
        bandwidth_gbs=2000,
        compute_capability=(9, 0),
        bf16=True,
        flash_attn2=True,
        p2p_pcie=True,
        nvlink="NVLink bridge (UNVERIFIED)",
        nvlink_gbs=600,
        tflops_bf16=756,
        tflops_fp16=756,
        slurm_gres="h100_pcie",
        source=(
            "performance_facts.md §1: ~2,000 GB/s, ~756 TFLOPS dense BF16 and NVLink bridge 600 GB/s are all "
            "UNVERIFIED; H100 PCIe + bridge pair measured ~116 GB/s busbw (NVIDIA/nccl-tests#194). usable_gib "
            "derived as 0.95 × memory_gb."
        ),
    ),
    GPUSpec(
        key="h100-sxm",
        name="NVIDIA H100 SXM5 80GB",
        family="h100",
        aliases=("H100 SXM", "H100 SXM5", "H100-SXM5-80GB", "NVIDIA H100 80GB HBM3", "H100 80GB HBM3", "h100_sxm"),
        memory_gb=80,
        usable_gib=_derived(80),
        bandwidth_gbs=3350,
        compute_capability=(9, 0),
        bf16=True,
        flash_attn2=True,
        p2p_pcie=None,
        nvlink="NVLink 4 via NVSwitch (HGX H100)",
        nvlink_gbs=900,
        tflops_bf16=989,
        tflops_fp16=989,
        slurm_gres="h100_sxm",
        source="SXM5: peer traffic uses NVLink (p2p_pcie n/a). " + _H100_SXM_SRC,
    ),
    GPUSpec(
        key="h200",
        name="NVIDIA H200 SXM 141GB",
        family="h200",
        aliases=("H200", "NVIDIA H200", "H200 SXM", "H200-SXM-141GB", "h200_sxm"),
        memory_gb=141,
        usable_gib=_derived(141),
        bandwidth_gbs=4800,
        compute_capability=(9, 0),
        bf16=True,
        flash_attn2=True,
        p2p_pcie=None,
        nvlink="NVLink 4 via NVSwitch (HGX H200)",
        nvlink_gbs=900,
        tflops_bf16=989,
        tflops_fp16=989,
        slurm_gres="h200",
        source=(
            "performance_facts.md §1: NVIDIA H200 datasheet via mngaonkar notes (141 GB HBM3e, 4,800 GB/s, "
            "989 TFLOPS dense BF16, NVLink 900 GB/s). SXM: peer traffic uses NVLink (p2p_pcie n/a). Not the "
            "H200 NVL (PCIe). usable_gib derived as 0.95 × memory_gb."
        ),
    ),
)

_DTYPES = {"bf16": "bf16", "bfloat16": "bf16", "fp16": "fp16", "float16": "fp16", "half": "fp16"}


def _norm(text: str) -> str:
    """Case-, space-, underscore- and hyphen-insensitive form; a leading "NVIDIA" is dropped."""
    flat = re.sub(r"[\s_\-]+", "", text.strip().lower())
    if flat.startswith("nvidia") and len(flat) > len("nvidia"):
        flat = flat[len("nvidia") :]
    return flat


def _build_index(catalog: tuple[GPUSpec, ...]) -> dict[str, GPUSpec]:
    index: dict[str, GPUSpec] = {}
    for spec in catalog:
        for spelling in (spec.key, spec.name, spec.slurm_gres, *spec.aliases):
            norm = _norm(spelling)
            other = index.get(norm)
            assert other is None or other is spec, f"catalog spelling {spelling!r} names {other.key} and {spec.key}"
            index[norm] = spec
    return index


_INDEX = _build_index(_CATALOG)


def all_gpus() -> tuple[GPUSpec, ...]:
    """Every catalog entry, in catalog order."""
    return _CATALOG


def gpu_keys() -> tuple[str, ...]:
    """Every canonical key, in catalog order."""
    return tuple(spec.key for spec in _CATALOG)


def get_gpu(name_or_alias: str) -> GPUSpec:
    """Look a GPU up by key, marketing name, NVML name, GRES type or alias.

    Matching ignores case, spaces, underscores, hyphens and a leading "NVIDIA". An unknown
    name raises ``InvalidChoice("GPU model", value, keys)`` with a did-you-mean; a name that
    only prefixes several entries (e.g. "A100 80GB") gets a hint listing them.
    """
    if not isinstance(name_or_alias, str) or not name_or_alias.strip():
        raise InvalidChoice("GPU model", name_or_alias, gpu_keys())
    spec = _INDEX.get(_norm(name_or_alias))
    if spec is not None:
        return spec
    candidates = _prefix_matches(name_or_alias)
    if len(candidates) > 1:
        hint = f"{name_or_alias!r} matches several catalog entries ({', '.join(candidates)}); name one of them"
        raise InvalidChoice("GPU model", name_or_alias, gpu_keys(), hint=hint, suggestion=None)
    raise InvalidChoice("GPU model", name_or_alias, gpu_keys(), suggestion=_suggest(name_or_alias, candidates))


def _prefix_matches(value: str) -> list[str]:
    """Keys of the entries with a spelling that starts with ``value`` (normalised)."""
    norm = _norm(value)
    return sorted({spec.key for spelling, spec in _INDEX.items() if spelling.startswith(norm)})


def _suggest(value: str, prefixed: list[str]) -> str | bool:
    if prefixed:
        return prefixed[0]
    if did_you_mean(value, gpu_keys()) is not None:
        return True  # InvalidChoice computes the same suggestion from the keys
    import difflib

    close = difflib.get_close_matches(_norm(value), list(_INDEX), n=1, cutoff=0.75)
    return _INDEX[close[0]].key if close else None


def match_nvml_name(name: str) -> GPUSpec | None:
    """The catalog entry for a device name as NVML / nvidia-smi reports it, or None.

    Only exact (normalised) spellings match, and never a variant-unknown family entry:
    NVML always reports the variant ("NVIDIA A100-SXM4-80GB"), and a near miss such as
    "NVIDIA A10G" or "Tesla V100S-PCIE-32GB" is a different SKU, not a typo.
    """
    spec = _INDEX.get(_norm(name)) if isinstance(name, str) else None
    if spec is None or not spec.variant_known:
        return None
    return spec


def peak_tflops(spec: GPUSpec, dtype: str) -> float:
    """Dense tensor-core peak (FP32 accumulate) for ``dtype`` ("bf16"/"bfloat16", "fp16"/"float16"/"half").

    Raises ``InvalidChoice`` for an unknown dtype and ``UserError`` for BF16 on a GPU without it.
    """
    kind = _DTYPES.get(str(dtype).strip().lower())
    if kind is None:
        raise InvalidChoice("dtype", dtype, sorted(_DTYPES))
    if kind == "fp16":
        return spec.tflops_fp16
    if not spec.bf16 or spec.tflops_bf16 is None:
        raise UserError(
            f"{spec.name} ({spec.sm}) has no BF16 tensor cores; dtype 'bf16' is not valid on it; valid choices: fp16",
            hint="run this GPU in fp16 (Turing and Volta have no bfloat16)",
        )
    return spec.tflops_bf16
