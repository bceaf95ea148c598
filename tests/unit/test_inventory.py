"""nodes.yaml: the shipped inventory, the schema rules, and the error messages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from clusterkit.errors import InvalidChoice, InventoryError, UserError
from clusterkit.gpus import get_gpu, gpu_keys
from clusterkit.inventory import Inventory, load_inventory, parse_inventory

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "nodes.yaml"
BAD = Path(__file__).resolve().parent / "data" / "inventories"


@pytest.fixture(scope="module")
def shipped() -> Inventory:
    return load_inventory(SHIPPED)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "nodes.yaml"
    path.write_text(text, encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------
# the shipped nodes.yaml describes the seed cluster exactly
# --------------------------------------------------------------------------------------

SEED = [
    # name, model, count, memory_gb, cuda, a phrase the notes must carry
    ("worker-1", "quadro-rtx-8000", 6, 48.0, "12.2", "Version Error"),
    ("worker-2", "quadro-rtx-8000", 8, 48.0, "12.4", "Version Error"),
    ("worker-3", "rtx-3090", 8, 24.0, "12.2", "Memory Not Enough"),
    ("worker-4", "a100", 4, None, None, "variant unconfirmed"),
    ("worker-5", "rtx-a6000", 8, 48.0, "12.2", "16 attention heads"),
    ("worker-6", "rtx-a6000", 8, 48.0, None, ""),
    ("worker-7", "a40", 4, 48.0, None, ""),
    ("worker-8", "rtx-4090", 2, 24.0, None, "no P2P"),
]


def test_shipped_inventory_lists_the_seed_nodes_in_order(shipped: Inventory) -> None:
    assert shipped.names() == tuple(row[0] for row in SEED)
    assert shipped.version == 1
    assert shipped.path == SHIPPED


@pytest.mark.parametrize(("name", "model", "count", "memory_gb", "cuda", "phrase"), SEED)
def test_shipped_node_matches_the_seed(shipped: Inventory, name, model, count, memory_gb, cuda, phrase) -> None:
    node = shipped.node(name)
    assert (node.gpu.model, node.gpu.count, node.gpu.memory_gb, node.cuda) == (model, count, memory_gb, cuda)
    assert node.hostname == name
    assert phrase in node.notes
    # nothing the seed does not say is filled in
    assert (node.driver, node.nccl, node.nics) == (None, None, None)
    assert (node.slurm.partition, node.slurm.gres_type) == (None, None)
    assert node.interconnect.nvlink_pairs is None


def test_shipped_turing_nodes_have_no_bf16_and_no_flash_attention(shipped: Inventory) -> None:
    for name in ("worker-1", "worker-2"):
        spec = shipped.node(name).gpu.spec
        assert spec.compute_capability == (7, 5) and not spec.bf16 and not spec.flash_attn2
    assert "no bf16" in shipped.node("worker-1").notes


def test_shipped_worker4_keeps_the_a100_variant_open(shipped: Inventory) -> None:
    gpu = shipped.node("worker-4").gpu
    assert gpu.model == "a100" and not gpu.spec.variant_known
    assert gpu.memory_gb is None  # unknown, not guessed
    assert gpu.usable_gib == get_gpu("a100-40gb-pcie").usable_gib  # plans with the conservative variant


def test_shipped_worker8_disables_p2p(shipped: Inventory) -> None:
    node = shipped.node("worker-8")
    assert node.interconnect.type == "pcie"
    assert node.interconnect.p2p is False
    assert node.nccl_env == {"NCCL_P2P_DISABLE": "1"}
    assert node.gpu.spec.p2p_pcie is False and node.gpu.spec.nvlink is None
    others = [n for n in shipped.nodes if n.name != "worker-8"]
    assert all(n.nccl_env == {} and n.interconnect.p2p is None and n.interconnect.type is None for n in others)


def test_shipped_gres_types_come_from_the_catalog(shipped: Inventory) -> None:
    assert shipped.node("worker-5").gres_type == "rtx_a6000"
    assert shipped.node("worker-1").gres_type == "quadro_rtx_8000"


# --------------------------------------------------------------------------------------
# bad inventories: one file each, exact line, key, value and choices
# --------------------------------------------------------------------------------------

MODEL_CHOICES = list(gpu_keys())

# file, line, key, value, choices (None when the rule is not a set), phrases the message must contain
BAD_CASES = [
    ("yaml_syntax_error.yaml", 5, None, None, None, ["invalid YAML", "flow mapping at line 4"]),
    ("top_level_list.yaml", 1, None, ..., ["version", "defaults", "nodes"], ["top level must be a mapping", "list"]),
    ("missing_nodes.yaml", 2, "nodes", None, None, ["missing required key 'nodes'"]),
    (
        "unknown_key_gpus.yaml",
        4,
        "nodes[0].gpus",
        "gpus",
        ["name", "hostname", "gpu", "cuda", "driver", "nccl", "interconnect", "nics", "slurm", "nccl_env", "notes"],
        ["unknown key 'gpus'", "(did you mean 'gpu'?)"],
    ),
    (
        "unknown_gpu_model.yaml",
        5,
        "nodes[0].gpu.model",
        "RTX A600",
        MODEL_CHOICES,
        ["unknown GPU model 'RTX A600'", "(did you mean 'rtx-a6000'?)"],
    ),
    ("duplicate_node_name.yaml", 7, "nodes[2].name", "worker-5", None, ["duplicate node name 'worker-5'", "line 3"]),
    ("count_zero.yaml", 6, "nodes[0].gpu.count", 0, None, ["whole number >= 1", "got 0"]),
    ("count_string.yaml", 6, "nodes[0].gpu.count", "4", None, ["whole number >= 1", "got '4' (string)"]),
    ("count_fraction.yaml", 6, "nodes[1].gpu.count", 1.5, None, ["whole number >= 1", "got 1.5"]),
    (
        "bad_cuda_version.yaml",
        5,
        "nodes[0].cuda",
        "CUDA 12.2",
        ["MAJOR.MINOR (e.g. 12.2)", "MAJOR.MINOR.PATCH (e.g. 12.4.1)", "null (unknown)"],
        ["'CUDA 12.2' is not a CUDA version"],
    ),
    (
        "bad_driver_version.yaml",
        3,
        "defaults.driver",
        "535",
        ["MAJOR.MINOR (e.g. 418.67)", "MAJOR.MINOR.PATCH (e.g. 535.104.05)", "null (unknown)"],
        ["'535' is not an NVIDIA driver version"],
    ),
    (
        "memory_contradicts_catalog.yaml",
        7,
        "nodes[0].gpu.memory_gb",
        24.0,
        ["48", "null"],
        ["24 contradicts the catalog", "NVIDIA RTX A6000 (rtx-a6000) has 48 GB"],
    ),
    (
        "a100_memory_80.yaml",
        7,
        "nodes[0].gpu.memory_gb",
        80.0,
        ["memory_gb: 40", "model: a100-80gb-pcie", "model: a100-80gb-sxm4"],
        ["80 contradicts the catalog", "a100-80gb-pcie, a100-80gb-sxm4"],
    ),
    (
        "nvlink_pair_out_of_range.yaml",
        9,
        "nodes[0].interconnect.nvlink_pairs[1][1]",
        4,
        ["0", "1", "2", "3"],
        ["NVLink pair [2, 4] names GPU 4", "has 4 GPUs"],
    ),
    (
        "nvlink_pairs_overlap.yaml",
        8,
        "nodes[0].interconnect.nvlink_pairs[2][0]",
        [3, 4],
        None,
        ["GPU 3 is in two NVLink pairs"],
    ),
    (
        "bad_nccl_env_key.yaml",
        7,
        "nodes[0].nccl_env.nccl_p2p_disable",
        "nccl_p2p_disable",
        None,
        ["'nccl_p2p_disable' is not an environment variable name"],
    ),
    (
        "nccl_env_boolean.yaml",
        6,
        "nodes[0].nccl_env.NCCL_P2P_DISABLE",
        True,
        None,
        ["got true (boolean)", 'write "1" or "0"'],
    ),
    ("bad_node_name.yaml", 3, "nodes[0].name", "worker 3", None, ["node name 'worker 3' is not valid"]),
    ("empty.yaml", None, None, None, None, ["empty"]),
    (
        "bad_interconnect_type.yaml",
        6,
        "nodes[0].interconnect.type",
        "infiniband",
        ["pcie", "nvlink-bridge", "nvswitch", "null"],
        ["unknown interconnect type 'infiniband'"],
    ),
    ("duplicate_yaml_key.yaml", 6, "nodes[0].cuda", "cuda", None, ["duplicate key 'cuda' (first at line 4)"]),
    (
        "defaults_unknown_key.yaml",
        4,
        "defaults.gpu",
        "gpu",
        ["cuda", "driver", "nccl", "nics", "slurm", "nccl_env"],
        ["unknown key 'gpu'"],
    ),
    ("unsupported_version.yaml", 1, "version", 2, ["1"], ["unsupported version 2"]),
    (
        "nvlink_on_rtx4090.yaml",
        6,
        "nodes[0].interconnect.type",
        "nvlink-bridge",
        ["pcie", "null"],
        ["'nvlink-bridge' is impossible", "RTX 4090 has no NVLink"],
    ),
    (
        "missing_gpu_count.yaml",
        4,
        "nodes[0].gpu.count",
        None,
        None,
        ["missing required key 'count' (required: model, count)"],
    ),
    ("p2p_string.yaml", 5, "nodes[0].interconnect.p2p", "no", ["true", "false", "null"], ["got 'no' (string)"]),
    ("nics_not_a_list.yaml", 5, "nodes[0].nics", "eno1", None, ["list of interface names", "got 'eno1'"]),
    ("yaml_merge_key.yaml", 6, "nodes[1]", None, None, ["merge keys ('<<') are not supported"]),
    (
        "deprecated_nccl_env_name.yaml",
        6,
        "nodes[0].nccl_env.NCCL_ASYNC_ERROR_HANDLING",
        "NCCL_ASYNC_ERROR_HANDLING",
        None,
        ["deprecated name", "TORCH_NCCL_ASYNC_ERROR_HANDLING"],
    ),
]


def test_every_bad_inventory_file_has_a_case() -> None:
    assert sorted(p.name for p in BAD.glob("*.yaml")) == sorted(case[0] for case in BAD_CASES)
    assert len(BAD_CASES) >= 14


@pytest.mark.parametrize(("filename", "line", "key", "value", "choices", "phrases"), BAD_CASES, ids=lambda x: x)
def test_bad_inventory_gives_one_precise_error(filename, line, key, value, choices, phrases) -> None:
    path = BAD / filename
    with pytest.raises(InventoryError) as info:
        load_inventory(path)
    err = info.value
    assert err.path == str(path)
    assert err.line == line
    assert err.key == key
    if value is not ...:
        assert err.value == value and type(err.value) is type(value)
    where = f"{path}:{line}: " if line else f"{path}: "
    assert err.message.startswith(where)
    if key:
        # the message opens with the dotted key; a missing key is reported on its parent mapping
        label = (key.rpartition(".")[0] if "." in key else "") if "missing required key" in err.message else key
        assert err.message.startswith(f"{where}{label}: " if label else where)
    for phrase in phrases:
        assert phrase in err.message
    assert err.choices == choices
    if choices:
        assert err.message.endswith("valid choices: " + ", ".join(choices))
    data = err.to_dict()
    assert data["line"] == line and data["key"] == key and data["path"] == str(path)
    json.dumps(data)


def test_missing_file_names_the_path_and_how_to_point_elsewhere(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(InventoryError) as info:
        load_inventory(missing)
    assert info.value.line is None
    assert info.value.message == f"{missing}: file not found"
    assert "--inventory" in (info.value.hint or "")


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(InventoryError, match="is a directory"):
        load_inventory(tmp_path)


@pytest.mark.parametrize(
    "text",
    ["version: 1\nnodes: []\n", "version: 1\nnodes: worker-1\n", "version: 1\nnodes:\n  - worker-1\n"],
)
def test_nodes_must_be_a_non_empty_list_of_mappings(text: str) -> None:
    with pytest.raises(InventoryError) as info:
        parse_inventory(text, path="nodes.yaml")
    assert info.value.line in (2, 3) and info.value.key in ("nodes", "nodes[0]")


def test_every_truncation_or_deleted_line_of_the_shipped_file_is_reported_cleanly() -> None:
    """Whatever a user deletes, the result loads or raises InventoryError, never a raw traceback."""
    lines = SHIPPED.read_text(encoding="utf-8").splitlines(keepends=True)
    variants = ["".join(lines[:cut]) for cut in range(len(lines))]
    variants += ["".join(lines[:i] + lines[i + 1 :]) for i in range(len(lines))]
    errors = 0
    for text in variants:
        try:
            parse_inventory(text, path="nodes.yaml")
        except InventoryError as err:
            errors += 1
            assert err.line is None or 1 <= err.line <= len(lines) + 1
    assert errors > 10  # the variants really do break things


# --------------------------------------------------------------------------------------
# semantics: defaults, aliases, numbers as written, filled values
# --------------------------------------------------------------------------------------

DEFAULTS_INVENTORY = """\
version: 1
defaults:
  cuda: 12.2
  driver: "535.104.05"
  nics: [eno1]
  slurm: {partition: gpu}
  nccl_env:
    NCCL_DEBUG: WARN
    NCCL_SOCKET_IFNAME: eno1
nodes:
  - name: a
    gpu: {model: A6000, count: 8}
  - name: b
    hostname: b.cluster.local
    gpu: {model: NVIDIA GeForce RTX 4090, count: 2}
    cuda: 12.10
    driver: null
    nics: [ib0, eno2]
    slurm: {gres_type: RTX4090}
    nccl_env:
      NCCL_SOCKET_IFNAME: ib0
      NCCL_P2P_DISABLE: 1
"""


def test_defaults_apply_unless_the_node_sets_the_key(tmp_path: Path) -> None:
    inv = load_inventory(write(tmp_path, DEFAULTS_INVENTORY))
    a, b = inv.nodes
    assert (a.cuda, a.driver, a.nics) == ("12.2", "535.104.05", ("eno1",))
    assert (b.cuda, b.driver, b.nics) == ("12.10", None, ("ib0", "eno2"))  # explicit null overrides
    assert (a.slurm.partition, a.slurm.gres_type) == ("gpu", None)
    assert (b.slurm.partition, b.slurm.gres_type) == ("gpu", "RTX4090")  # merged key by key
    assert a.nccl_env == {"NCCL_DEBUG": "WARN", "NCCL_SOCKET_IFNAME": "eno1"}
    assert b.nccl_env == {"NCCL_DEBUG": "WARN", "NCCL_SOCKET_IFNAME": "ib0", "NCCL_P2P_DISABLE": "1"}
    assert inv.defaults.cuda == "12.2" and inv.defaults.slurm.partition == "gpu"


def test_aliases_resolve_to_catalog_keys_and_hostname_defaults_to_name(tmp_path: Path) -> None:
    a, b = load_inventory(write(tmp_path, DEFAULTS_INVENTORY)).nodes
    assert (a.gpu.model, b.gpu.model) == ("rtx-a6000", "rtx-4090")
    assert (a.hostname, b.hostname) == ("a", "b.cluster.local")
    assert a.gres_type == "rtx_a6000"  # catalog name
    assert b.gres_type == "RTX4090"  # the site's gres.conf spelling wins, verbatim


def test_memory_is_filled_from_the_catalog_only_for_exact_models() -> None:
    text = """\
version: 1
nodes:
  - {name: a, gpu: {model: a40, count: 1}}
  - {name: b, gpu: {model: a100, count: 1}}
"""
    a, b = parse_inventory(text).nodes
    assert a.gpu.memory_gb == 48.0
    assert b.gpu.memory_gb is None


def test_memory_within_rounding_is_accepted() -> None:
    text = "version: 1\nnodes:\n  - {name: a, gpu: {model: h200, count: 8, memory_gb: 141.4}}\n"
    assert parse_inventory(text).nodes[0].gpu.memory_gb == 141.4


def test_an_error_in_defaults_points_at_defaults_not_at_the_node() -> None:
    text = """\
version: 1
defaults:
  nccl_env:
    NCCL_DEBUG: [INFO]
nodes:
  - {name: a, gpu: {model: a40, count: 1}}
"""
    with pytest.raises(InventoryError) as info:
        parse_inventory(text, path="n.yaml")
    assert (info.value.line, info.value.key) == (4, "defaults.nccl_env.NCCL_DEBUG")


def test_empty_sections_mean_nothing_set() -> None:
    text = """\
version: 1
defaults:
nodes:
  - name: a
    gpu: {model: a40, count: 1}
    slurm:
    nccl_env:
    interconnect:
    notes:
"""
    node = parse_inventory(text).nodes[0]
    assert node.nccl_env == {} and node.slurm.partition is None and node.interconnect.type is None
    assert node.notes == ""


def test_duplicate_hostnames_are_refused() -> None:
    text = """\
version: 1
nodes:
  - {name: a, gpu: {model: a40, count: 1}}
  - {name: b, hostname: a, gpu: {model: a40, count: 1}}
"""
    with pytest.raises(InventoryError) as info:
        parse_inventory(text, path="n.yaml")
    assert (info.value.line, info.value.key, info.value.value) == (4, "nodes[1].hostname", "a")


def test_valid_nvlink_pairs_are_kept() -> None:
    text = (
        "version: 1\nnodes:\n  - name: a\n    gpu: {model: rtx-a6000, count: 4}\n"
        "    interconnect: {type: nvlink-bridge, nvlink_pairs: [[0, 1], [3, 2]], p2p: true}\n"
    )
    ic = parse_inventory(text).nodes[0].interconnect
    assert ic.nvlink_pairs == ((0, 1), (3, 2)) and ic.p2p is True


def test_models_are_frozen(shipped: Inventory) -> None:
    node = shipped.node("worker-5")
    with pytest.raises(ValidationError):
        node.name = "renamed"  # type: ignore[misc]
    with pytest.raises(ValidationError):
        node.gpu.count = 1  # type: ignore[misc]
    assert len({*shipped.nodes}) == len(shipped.nodes)  # hashable despite the nccl_env dict


# --------------------------------------------------------------------------------------
# Inventory API: node(), select(), to_dict(), line_of()
# --------------------------------------------------------------------------------------


def test_node_lookup_names_the_known_nodes(shipped: Inventory) -> None:
    assert shipped.node("worker-7").gpu.model == "a40"
    with pytest.raises(InvalidChoice) as info:
        shipped.node("worker-9")
    assert info.value.what == "node" and info.value.choices == list(shipped.names())
    with pytest.raises(InvalidChoice) as info:
        shipped.node("worker5")
    assert info.value.suggestion == "worker-5"


@pytest.mark.parametrize(
    ("spec", "names"),
    [
        ("all", [f"worker-{i}" for i in range(1, 9)]),
        ("worker-5", ["worker-5"]),
        ("worker-6,worker-5", ["worker-6", "worker-5"]),
        (" worker-1 , worker-2 ", ["worker-1", "worker-2"]),
        (["worker-7", "worker-8"], ["worker-7", "worker-8"]),
        (("worker-3",), ["worker-3"]),
        (["all"], [f"worker-{i}" for i in range(1, 9)]),
    ],
)
def test_select(shipped: Inventory, spec, names) -> None:
    assert [node.name for node in shipped.select(spec)] == names


@pytest.mark.parametrize("spec", ["worker-9", "worker-5,worker-10", "", "worker-5,,worker-6", []])
def test_select_rejects_unknown_or_empty_names(shipped: Inventory, spec) -> None:
    with pytest.raises(InvalidChoice) as info:
        shipped.select(spec)
    assert "worker-5" in info.value.choices


def test_select_rejects_a_node_named_twice(shipped: Inventory) -> None:
    with pytest.raises(UserError, match="'worker-5' is listed twice"):
        shipped.select("worker-5,worker-6,worker-5")


def test_to_dict_is_json_and_carries_catalog_facts(shipped: Inventory) -> None:
    data = json.loads(json.dumps(shipped.to_dict()))
    assert data["path"] == str(SHIPPED) and data["version"] == 1
    assert [n["name"] for n in data["nodes"]] == list(shipped.names())
    w8 = data["nodes"][7]
    assert w8["gpu"] == {
        "model": "rtx-4090",
        "count": 2,
        "memory_gb": 24.0,
        "name": "NVIDIA GeForce RTX 4090",
        "usable_gib": 23.65,
    }
    assert w8["interconnect"] == {"type": "pcie", "nvlink_pairs": None, "p2p": False}
    assert w8["gres_type"] == "rtx_4090" and w8["nccl_env"] == {"NCCL_P2P_DISABLE": "1"}
    assert data["nodes"][3]["gpu"]["memory_gb"] is None


def test_line_of_points_into_the_file(shipped: Inventory) -> None:
    lines = SHIPPED.read_text(encoding="utf-8").splitlines()
    assert lines[shipped.line_of("worker-8") - 1].strip() == "- name: worker-8"
    assert lines[shipped.line_of("worker-8", "nccl_env.NCCL_P2P_DISABLE") - 1].strip().startswith("NCCL_P2P_DISABLE:")
    assert lines[shipped.line_of("worker-4", "gpu.model") - 1].strip() == "model: a100"
    with pytest.raises(InvalidChoice):
        shipped.line_of("worker-0")
