"""Per-node NCCL env recommendations, and applying them to nodes.yaml without losing a comment.

Recommendations come from three places: what the inventory/catalog already says about a
node (a GPU without P2P), what the fabric benchmark measured (an intra-node link far below
its fabric), and what log diagnosis matched (a signature whose fix is an env setting).
``apply_env_edits`` rewrites only the characters it must — comments, order, quoting and
folded text stay as the user wrote them — validates the result with the real inventory
loader, and replaces the file atomically.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from clusterkit.errors import UserError


@dataclass(frozen=True)
class EnvRecommendation:
    node: str
    key: str
    value: str
    reason: str

    def to_dict(self) -> dict:
        return asdict(self)


def recommend_from_inventory(inventory, node_names: list[str]) -> list[EnvRecommendation]:
    """A node whose GPUs cannot do peer-to-peer must tell NCCL so (a hang otherwise: N8)."""
    recs = []
    for name in node_names:
        node = inventory.node(name)
        p2p = node.interconnect.p2p if node.interconnect.p2p is not None else node.gpu.spec.p2p_pcie
        if p2p is False and node.nccl_env.get("NCCL_P2P_DISABLE") != "1":
            recs.append(EnvRecommendation(
                name, "NCCL_P2P_DISABLE", "1",
                f"{node.gpu.spec.name} has no GPU peer-to-peer over PCIe; NCCL hangs or crawls trying it",
            ))
    return recs


def recommend_from_timings(inventory, timings: list[dict]) -> list[EnvRecommendation]:
    """An intra-node link far below a P2P fabric's bandwidth: P2P is probably going through
    the CPU root complex or ACS/IOMMU (N9); shared memory is faster there."""
    recs = {}
    for row in timings:
        if not (row.get("flag") and row["scope"].startswith("intra:")):
            continue
        name = row["scope"].split(":", 1)[1]
        node = inventory.node(name)
        if "with P2P" in (row.get("expected_from") or "") and node.nccl_env.get("NCCL_P2P_DISABLE") != "1":
            recs[name] = EnvRecommendation(name, "NCCL_P2P_DISABLE", "1", f"{row['op']}: {row['flag']}")
    return list(recs.values())


def recommend_from_findings(report, context, inventory) -> list[EnvRecommendation]:
    """Log findings whose fix is an env setting (N8/N9 P2P, N12 IPv6 bootstrap, ...), on the
    node the finding came from (by host name, through the inventory)."""
    recs = {}
    findings = [report.first_error] if report.first_error else []
    findings += [f for group in report.groups for f in group.findings]
    for finding in findings:
        hardware = context.hosts.get(finding.host or "") if finding.host else None
        if not (finding.env and hardware and hardware.node and hardware.node in inventory.names()):
            continue
        node = inventory.node(hardware.node)
        for key, value in finding.env.items():
            if node.nccl_env.get(key) != value:
                recs[(node.name, key)] = EnvRecommendation(node.name, key, value, f"{finding.id}: {finding.signature.title}")
    return list(recs.values())


def render_edits(recs: list[EnvRecommendation]) -> str:
    """The nodes.yaml edit, as a user would type it."""
    lines = []
    for node in dict.fromkeys(r.node for r in recs):
        lines.append(f"  - name: {node}\n    nccl_env:")
        lines += [f"      {r.key}: {json.dumps(r.value)}    # {r.reason}" for r in recs if r.node == node]
    return "\n".join(lines)


def apply_env_edits(path: Path, recs: list[EnvRecommendation]) -> str:
    """Add/replace ``nccl_env`` entries in ``path``; returns the new text (already written)."""
    from clusterkit.inventory import parse_inventory
    from clusterkit.launch.records import atomic_write_text

    text = Path(path).read_text()
    for rec in recs:
        text = _set_env(text, rec.node, rec.key, rec.value)
    inventory = parse_inventory(text, path=str(path))  # refuse to write anything the loader rejects
    for rec in recs:
        assert inventory.node(rec.node).nccl_env.get(rec.key) == rec.value, rec
    atomic_write_text(Path(path), text)
    return text


def _set_env(text: str, node_name: str, key: str, value: str) -> str:
    root = yaml.compose(text)
    node_map = _find_node(root, node_name)
    quoted = json.dumps(value)  # a JSON string is a valid YAML double-quoted scalar
    env_key, env_value = _get(node_map, "nccl_env")
    if env_key is None:  # no nccl_env: add a line after the node's last value
        last_value = node_map.value[-1][1]
        indent = node_map.value[0][0].start_mark.column
        return _insert_line(text, last_value.end_mark, f"{' ' * indent}nccl_env: {{{key}: {quoted}}}")
    if isinstance(env_value, yaml.MappingNode) and not env_value.flow_style and env_value.value:
        existing_key, existing_value = _get(env_value, key)
        if existing_key is not None:
            return _replace(text, existing_value.start_mark.index, existing_value.end_mark.index, quoted)
        indent = env_value.value[0][0].start_mark.column
        return _insert_line(text, env_value.value[-1][1].end_mark, f"{' ' * indent}{key}: {quoted}")
    # flow mapping, {} or null: rewrite the value as a one-line flow mapping
    entries = {} if not isinstance(env_value, yaml.MappingNode) else {k.value: v.value for k, v in env_value.value}
    entries[key] = value
    flow = "{" + ", ".join(f"{k}: {json.dumps(str(v))}" for k, v in entries.items()) + "}"
    start, end = env_value.start_mark.index, env_value.end_mark.index
    if start == end:  # `nccl_env:` with nothing after it
        return _replace(text, env_key.end_mark.index + 1, env_key.end_mark.index + 1, f" {flow}")
    return _replace(text, start, end, flow)


def _find_node(root, name: str):
    _, nodes = _get(root, "nodes")
    for item in nodes.value if isinstance(nodes, yaml.SequenceNode) else []:
        _, name_node = _get(item, "name")
        if name_node is not None and name_node.value == name:
            return item
    raise UserError(f"node {name!r} not found in the inventory file")


def _get(mapping, key: str):
    for k, v in mapping.value if isinstance(mapping, yaml.MappingNode) else []:
        if isinstance(k, yaml.ScalarNode) and k.value == key:
            return k, v
    return None, None


def _replace(text: str, start: int, end: int, new: str) -> str:
    return text[:start] + new + text[end:]


def _insert_line(text: str, mark, line: str) -> str:
    """Insert ``line`` after the source line that holds ``mark`` (block scalars end at column 0)."""
    lines = text.splitlines(keepends=True)
    index = mark.line if mark.column == 0 else mark.line + 1
    while index > 0 and not lines[index - 1].strip():  # keep blank lines after the new one
        index -= 1
    lines.insert(index, line + "\n")
    return "".join(lines)
