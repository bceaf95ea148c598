"""What bus bandwidth a link should reach, from the inventory and the GPU catalog.

Large-message NCCL busbw per fabric, from performance_facts.md §5 (nccl-tests issues and
NCCL's own threads; ranges marked UNVERIFIED there are used at their conservative end):

| fabric                                   | busbw GB/s | source |
| ---------------------------------------- | ---------- | ------ |
| PCIe Gen4, no P2P (SHM through host RAM) | 12         | NVIDIA/nccl#1603 (4x4090 SHM: 18; 8 GPUs dual socket ~8-15) |
| PCIe Gen4, P2P on one switch/root port   | 20         | nccl#1603 (4x4090 patched P2P: 22) |
| PCIe Gen3 (Turing boards), either way    | 8          | half of Gen4 (x16 Gen3 = 15.75 GB/s raw) |
| NVLink 2-way bridge, pro GA102 pair      | 40         | performance_facts §5 (UNVERIFIED, 40-50) |
| A100 PCIe + NVLink bridge pair           | 200        | nccl-tests#178 (~208) |
| H100 PCIe + NVLink bridge pair           | 110        | nccl-tests#194 (~116) |
| A100 SXM4, NVSwitch                      | 200        | nccl-tests#149, #228 (220-230) |
| H100/H200 SXM, NVSwitch                  | 350        | NVIDIA/nccl#1374 (360-480) |

Inter-node links have no expectation unless the inventory records one: nodes.yaml lists NIC
names, not their speed. On CPU (gloo) there is no GPU fabric, so no expectation either.
"""

from __future__ import annotations

FAR_BELOW = 0.5  # flag a link measured below half of what its fabric should reach
LARGE_MESSAGE = 64 * 1024**2  # bandwidth is only meaningful for large messages

_NVSWITCH = {"a100-40gb-sxm4": 200.0, "a100-80gb-sxm4": 200.0, "h100-sxm": 350.0, "h200": 350.0}
_BRIDGE_PAIR = {"a100-40gb-pcie": 200.0, "a100-80gb-pcie": 200.0, "h100-pcie": 110.0}


def expected_busbw(node, group_size: int, backend: str) -> tuple[float | None, str]:
    """(GB/s or None, why) for ``group_size`` ranks of ``node`` (an inventory Node)."""
    if backend != "nccl":
        return None, f"{backend} on CPU: no GPU fabric to compare with"
    spec = node.gpu.spec
    link = node.interconnect.type
    gen3 = spec.compute_capability < (8, 0)
    if link == "nvswitch" and spec.key in _NVSWITCH:
        return _NVSWITCH[spec.key], f"{spec.name} NVSwitch"
    pairs = node.interconnect.nvlink_pairs or ()
    if link == "nvlink-bridge" and group_size == 2 and pairs:
        return _BRIDGE_PAIR.get(spec.key, 40.0), f"{spec.name} NVLink-bridged pair (if the pair is bridged)"
    p2p = node.interconnect.p2p if node.interconnect.p2p is not None else spec.p2p_pcie
    if gen3:
        return 8.0, "PCIe Gen3"
    if p2p:
        return 20.0, "PCIe Gen4 with P2P"
    return 12.0, "PCIe Gen4 without P2P (shared memory)" + ("" if p2p is False else ", P2P unknown")


def annotate(timings: list[dict], inventory, backend: str) -> list[dict]:
    """Add ``expected_busbw_gbs``, ``expected_from`` and ``flag`` to every timing row."""
    rows = []
    for row in timings:
        scope = row["scope"]
        expected, why = None, "no expectation for the whole world or inter-node links"
        if scope.startswith("intra:"):
            node_name = scope.split(":", 1)[1]
            if node_name in inventory.names():
                expected, why = expected_busbw(inventory.node(node_name), row["ranks"], backend)
        elif scope == "world" and row.get("single_node"):
            expected, why = expected_busbw(inventory.node(row["single_node"]), row["ranks"], backend)
        flag = None
        if expected and row["bytes"] >= LARGE_MESSAGE and row["busbw_gbs"] < FAR_BELOW * expected:
            flag = f"busbw {row['busbw_gbs']:.1f} GB/s is below half of the {expected:.0f} GB/s expected ({why})"
        rows.append({**row, "expected_busbw_gbs": expected, "expected_from": why, "flag": flag})
    return rows
