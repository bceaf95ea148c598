"""GPU catalog: lookups, NVML names, and the internal consistency of every entry."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from clusterkit import gpus
from clusterkit.errors import InvalidChoice, UserError
from clusterkit.gpus import all_gpus, get_gpu, gpu_keys, match_nvml_name, peak_tflops

# --------------------------------------------------------------------------------------
# lookups
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spelling", "key"),
    [
        ("rtx-a6000", "rtx-a6000"),
        ("A6000", "rtx-a6000"),
        ("RTX A6000", "rtx-a6000"),
        ("NVIDIA RTX A6000", "rtx-a6000"),
        ("rtx_a6000", "rtx-a6000"),
        ("  rtx a6000 ", "rtx-a6000"),
        ("8000", "quadro-rtx-8000"),  # how the seed notes write it
        ("Quadro RTX 8000", "quadro-rtx-8000"),
        ("quadro_rtx_8000", "quadro-rtx-8000"),
        ("3090", "rtx-3090"),
        ("GeForce RTX 3090", "rtx-3090"),
        ("4090", "rtx-4090"),
        ("A100", "a100"),
        ("a100-80gb-sxm4", "a100-80gb-sxm4"),
        ("A100-SXM4-40GB", "a100-40gb-sxm4"),
        ("A100 80GB PCIe", "a100-80gb-pcie"),
        ("A40", "a40"),
        ("Tesla T4", "t4"),
        ("L40S", "l40s"),
        ("RTX 6000 Ada Generation", "rtx-6000-ada"),
        ("H100 SXM5", "h100-sxm"),
        ("h100_pcie", "h100-pcie"),
        ("H200", "h200"),
        ("Tesla V100-SXM2-32GB", "v100-32gb-sxm2"),
        ("nvidia_a100-sxm4-80gb", "a100-80gb-sxm4"),  # Slurm AutoDetect=nvml GRES type
    ],
)
def test_get_gpu_accepts_every_common_spelling(spelling: str, key: str) -> None:
    assert get_gpu(spelling).key == key


@pytest.mark.parametrize(
    ("typo", "suggestion"),
    [
        ("RTX A600", "rtx-a6000"),
        ("rtx-a6000x", "rtx-a6000"),
        ("quadro 8000", "quadro-rtx-8000"),
        ("3090ti", "rtx-3090"),
        ("l40", "l40s"),
    ],
)
def test_unknown_gpu_names_the_value_choices_and_a_suggestion(typo: str, suggestion: str) -> None:
    with pytest.raises(InvalidChoice) as info:
        get_gpu(typo)
    err = info.value
    assert err.what == "GPU model"
    assert err.value == typo
    assert err.choices == list(gpu_keys())
    assert err.suggestion == suggestion
    assert repr(typo) in err.message and f"Did you mean {suggestion!r}" in err.message
    assert "rtx-a6000" in err.message and "h200" in err.message


@pytest.mark.parametrize(
    ("ambiguous", "candidates"),
    [
        ("A100 80GB", ["a100-80gb-pcie", "a100-80gb-sxm4"]),
        ("H100", ["h100-pcie", "h100-sxm"]),
        ("V100", ["v100-16gb-pcie", "v100-16gb-sxm2", "v100-32gb-pcie", "v100-32gb-sxm2"]),
    ],
)
def test_ambiguous_name_lists_candidates_instead_of_guessing(ambiguous: str, candidates: list[str]) -> None:
    with pytest.raises(InvalidChoice) as info:
        get_gpu(ambiguous)
    assert info.value.suggestion is None
    assert "Did you mean" not in info.value.message
    assert info.value.hint is not None
    for key in candidates:
        assert key in info.value.hint


@pytest.mark.parametrize("bad", ["", "   ", "xyz-9000"])
def test_get_gpu_rejects_nonsense(bad: str) -> None:
    with pytest.raises(InvalidChoice):
        get_gpu(bad)


@pytest.mark.parametrize(
    ("nvml_name", "key"),
    [
        ("NVIDIA A100-SXM4-80GB", "a100-80gb-sxm4"),
        ("NVIDIA A100-SXM4-40GB", "a100-40gb-sxm4"),
        ("NVIDIA A100-PCIE-40GB", "a100-40gb-pcie"),
        ("NVIDIA A100 80GB PCIe", "a100-80gb-pcie"),
        ("Quadro RTX 8000", "quadro-rtx-8000"),
        ("NVIDIA GeForce RTX 3090", "rtx-3090"),
        ("GeForce RTX 3090", "rtx-3090"),  # older drivers omit "NVIDIA"
        ("NVIDIA GeForce RTX 4090", "rtx-4090"),
        ("NVIDIA RTX A6000", "rtx-a6000"),
        ("NVIDIA A40", "a40"),
        ("NVIDIA H100 80GB HBM3", "h100-sxm"),
        ("NVIDIA H100 PCIe", "h100-pcie"),
        ("NVIDIA H200", "h200"),
        ("Tesla T4", "t4"),
        ("Tesla V100-SXM2-16GB", "v100-16gb-sxm2"),
        ("Tesla V100-PCIE-32GB", "v100-32gb-pcie"),
        ("NVIDIA A10", "a10"),
        ("NVIDIA L4", "l4"),
        ("NVIDIA L40S", "l40s"),
        ("NVIDIA RTX 6000 Ada Generation", "rtx-6000-ada"),
    ],
)
def test_match_nvml_name(nvml_name: str, key: str) -> None:
    spec = match_nvml_name(nvml_name)
    assert spec is not None and spec.key == key


@pytest.mark.parametrize(
    "other_sku",
    [
        "NVIDIA A10G",  # AWS variant, different tensor rate
        "Tesla V100S-PCIE-32GB",  # V100S, different bandwidth
        "NVIDIA H100 NVL",
        "NVIDIA GeForce RTX 3090 Ti",
        "NVIDIA L40",
        "A100",  # NVML always names the variant; the family entry is not a match
        "",
    ],
)
def test_match_nvml_name_does_not_stretch_to_other_skus(other_sku: str) -> None:
    assert match_nvml_name(other_sku) is None


# --------------------------------------------------------------------------------------
# the catalog's own consistency
# --------------------------------------------------------------------------------------

SPECS = all_gpus()


def test_catalog_covers_the_seed_cluster_and_the_common_datacenter_gpus() -> None:
    assert set(gpu_keys()) >= {
        "quadro-rtx-8000",
        "rtx-3090",
        "a100",
        "a100-40gb-pcie",
        "a100-80gb-pcie",
        "a100-40gb-sxm4",
        "a100-80gb-sxm4",
        "rtx-a6000",
        "a40",
        "rtx-4090",
        "t4",
        "a10",
        "l4",
        "l40s",
        "h100-pcie",
        "h100-sxm",
        "h200",
        "rtx-6000-ada",
    }
    assert any(s.family == "v100" for s in SPECS)
    assert len(set(gpu_keys())) == len(SPECS)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.key)
def test_entry_is_consistent(spec: gpus.GPUSpec) -> None:
    assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", spec.key)
    assert re.fullmatch(r"[a-z0-9_]+", spec.slurm_gres)
    assert spec.source.strip() and len(spec.source) > 40
    # flash-attn 2 needs sm80+; no bf16 means no flash-attn 2 and no bf16 peak
    assert spec.flash_attn2 == (spec.compute_capability >= (8, 0))
    assert spec.bf16 == (spec.compute_capability >= (8, 0))
    if not spec.bf16:
        assert not spec.flash_attn2
        assert spec.tflops_bf16 is None
    else:
        assert spec.tflops_bf16 is not None and spec.tflops_bf16 > 0
    assert spec.tflops_fp16 > 0
    # usable memory is a GiB budget below the marketing size (48 GB = 48 GiB of DRAM)
    assert 0.9 * spec.memory_gb <= spec.usable_gib < spec.memory_gb
    assert spec.bandwidth_gbs > 0
    assert (spec.nvlink is None) == (spec.nvlink_gbs is None)
    assert spec.p2p_pcie in (True, False, None)
    assert spec.sm == f"sm_{spec.compute_capability[0]}{spec.compute_capability[1]}"
    assert get_gpu(spec.key) is spec and get_gpu(spec.name) is spec
    for alias in spec.aliases:
        assert get_gpu(alias) is spec, alias


def test_no_spelling_names_two_entries() -> None:
    seen: dict[str, str] = {}
    for spec in SPECS:
        for spelling in {spec.key, spec.name, spec.slurm_gres, *spec.aliases}:
            norm = gpus._norm(spelling)
            assert seen.setdefault(norm, spec.key) == spec.key, spelling


def test_only_the_a100_family_entry_is_variant_unknown() -> None:
    unknown = [s.key for s in SPECS if not s.variant_known]
    assert unknown == ["a100"]
    family = [s for s in SPECS if s.family == "a100" and s.variant_known]
    generic = get_gpu("a100")
    # the family entry is the most conservative variant, never an optimistic one
    assert generic.memory_gb == min(s.memory_gb for s in family)
    assert generic.usable_gib == min(s.usable_gib for s in family)
    assert generic.bandwidth_gbs == min(s.bandwidth_gbs for s in family)
    assert "variant" in generic.source and "unknown" in generic.name


def test_unverified_numbers_say_so() -> None:
    for key in ("rtx-3090", "a100-80gb-pcie", "h100-pcie", "rtx-6000-ada", "a10", "l4"):
        assert "UNVERIFIED" in get_gpu(key).source, key


# Values pinned to performance_facts.md §1 (and the named datasheets for the rest).
@pytest.mark.parametrize(
    ("key", "memory_gb", "bandwidth", "cc", "fp16", "bf16", "p2p", "nvlink_gbs"),
    [
        ("quadro-rtx-8000", 48, 672, (7, 5), 130.5, None, True, 100),
        ("rtx-3090", 24, 936, (8, 6), 71, 71, False, 112.5),
        ("a100-40gb-pcie", 40, 1555, (8, 0), 312, 312, True, 600),
        ("a100-80gb-pcie", 80, 1935, (8, 0), 312, 312, True, 600),
        ("a100-40gb-sxm4", 40, 1555, (8, 0), 312, 312, None, 600),
        ("a100-80gb-sxm4", 80, 2039, (8, 0), 312, 312, None, 600),
        ("rtx-a6000", 48, 768, (8, 6), 154.8, 154.8, True, 112.5),
        ("a40", 48, 696, (8, 6), 149.7, 149.7, True, 112.5),
        ("rtx-4090", 24, 1008, (8, 9), 165.2, 165.2, False, None),
        ("h100-sxm", 80, 3350, (9, 0), 989, 989, None, 900),
        ("h100-pcie", 80, 2000, (9, 0), 756, 756, True, 600),
        ("h200", 141, 4800, (9, 0), 989, 989, None, 900),
        ("v100-32gb-sxm2", 32, 900, (7, 0), 125, None, None, 300),
        ("v100-16gb-pcie", 16, 900, (7, 0), 112, None, None, None),
        ("t4", 16, 320, (7, 5), 65, None, None, None),
        ("a10", 24, 600, (8, 6), 125, 125, None, None),
        ("l4", 24, 300, (8, 9), 121, 121, None, None),
        ("l40s", 48, 864, (8, 9), 362.05, 362.05, None, None),
        ("rtx-6000-ada", 48, 960, (8, 9), 364.2, 364.2, None, None),
    ],
)
def test_catalog_values(key, memory_gb, bandwidth, cc, fp16, bf16, p2p, nvlink_gbs) -> None:
    spec = get_gpu(key)
    assert (spec.memory_gb, spec.bandwidth_gbs, spec.compute_capability) == (memory_gb, bandwidth, cc)
    assert (spec.tflops_fp16, spec.tflops_bf16) == (fp16, bf16)
    assert spec.p2p_pcie is p2p
    assert spec.nvlink_gbs == nvlink_gbs


def test_usable_memory_rules() -> None:
    # §1: 48 GB cards show 45,634 MiB; 24 GB cards ~23.65 GiB
    for key in ("quadro-rtx-8000", "rtx-a6000", "a40", "l40s", "rtx-6000-ada"):
        assert get_gpu(key).usable_gib == round(45_634 / 1024, 2) == 44.56
    for key in ("rtx-3090", "rtx-4090"):
        assert get_gpu(key).usable_gib == 23.65
    # others: 0.95 x marketing size, or the measured ECC ratio for GDDR6 ECC-on cards
    assert get_gpu("a100-80gb-sxm4").usable_gib == 76.0
    assert get_gpu("h200").usable_gib == round(0.95 * 141, 2)
    assert get_gpu("t4").usable_gib == round(16 * 45_634 / 49_152, 2)


@pytest.mark.parametrize(
    ("key", "dtype", "expected"),
    [
        ("rtx-a6000", "bf16", 154.8),
        ("rtx-a6000", "bfloat16", 154.8),
        ("rtx-a6000", "fp16", 154.8),
        ("rtx-4090", "float16", 165.2),
        ("quadro-rtx-8000", "half", 130.5),
        ("h100-sxm", "BF16", 989),
    ],
)
def test_peak_tflops(key: str, dtype: str, expected: float) -> None:
    assert peak_tflops(get_gpu(key), dtype) == expected


def test_peak_tflops_refuses_bf16_on_turing_and_unknown_dtypes() -> None:
    with pytest.raises(UserError, match=r"no BF16.*valid choices: fp16"):
        peak_tflops(get_gpu("quadro-rtx-8000"), "bf16")
    with pytest.raises(InvalidChoice) as info:
        peak_tflops(get_gpu("a40"), "fp8")
    assert info.value.value == "fp8" and "bf16" in info.value.choices


def test_catalog_and_inventory_import_without_torch() -> None:
    code = "import sys, clusterkit.gpus, clusterkit.inventory; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
