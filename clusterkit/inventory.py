"""nodes.yaml: the cluster inventory, parsed in one place.

``load_inventory(path) -> Inventory`` reads the file, validates it into frozen pydantic
models and reports every mistake as one ``InventoryError`` that names the file, the line,
the key (a dotted path such as ``nodes[2].gpu.model``), the bad value and the valid choices.
Nothing downstream touches raw YAML. The field reference is ``docs/nodes-yaml.md``.

How line numbers work: the YAML is composed into a node graph (which keeps marks) and
turned into plain Python data here, recording for every key path the line of its key and
of its value. Pydantic errors carry a ``loc``; ``_SourceMap`` maps it back to a line.
Validators raise ``PydanticCustomError("clusterkit", ...)`` whose context carries the
message, the value, the valid choices and, where the error concerns a deeper element than
the field (one NVLink pair, one env key), the sub-path to point at.

Null policy: a fact nobody has checked is ``null`` (None), never a guess. Preflight fills
the truth later.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from clusterkit.launch.envprofiles import DEPRECATED_NAMES
from clusterkit.errors import InvalidChoice, InventoryError, UserError, did_you_mean
from clusterkit.gpus import GPUSpec, all_gpus, get_gpu, gpu_keys

SCHEMA_VERSION = 1
INTERCONNECT_TYPES = ("pcie", "nvlink-bridge", "nvswitch")

Loc = tuple[str | int, ...]

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_ENV_KEY_RE = re.compile(r"^[A-Z_][A-Z0-9_]*$")
_NIC_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@-]*$")
_NIC_MAX = 15  # Linux IFNAMSIZ is 16 including the trailing NUL
_VERSION_RULES: dict[str, tuple[re.Pattern[str], str, tuple[str, ...]]] = {
    "cuda": (
        re.compile(r"^\d{1,2}\.\d{1,2}(\.\d{1,3})?$"),
        "a CUDA version as nvidia-smi prints it",
        ("MAJOR.MINOR (e.g. 12.2)", "MAJOR.MINOR.PATCH (e.g. 12.4.1)", "null (unknown)"),
    ),
    "driver": (
        re.compile(r"^\d{3,4}(\.\d{1,3}){1,2}$"),
        "an NVIDIA driver version",
        ("MAJOR.MINOR (e.g. 418.67)", "MAJOR.MINOR.PATCH (e.g. 535.104.05)", "null (unknown)"),
    ),
    "nccl": (
        re.compile(r"^\d{1,2}\.\d{1,3}(\.\d{1,3})?$"),
        "an NCCL version",
        ("MAJOR.MINOR.PATCH (e.g. 2.18.1)", "MAJOR.MINOR (e.g. 2.18)", "null (unknown)"),
    ),
}
_INHERITED_FACTS = ("cuda", "driver", "nccl", "nics")  # replaced wholesale by a node's own value
_INHERITED_MAPS = ("slurm", "nccl_env")  # merged key by key, the node's keys win


# --------------------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------------------

_UNSET: Any = object()


def _fail(
    message: str,
    *,
    value: Any = _UNSET,
    choices: Sequence[str] | None = None,
    sub: Loc = (),
    where: str = "value",
    hint: str | None = None,
) -> None:
    """Raise inside a validator; ``_Errors._one`` turns it into an InventoryError.

    ``sub`` points below the failing field (an NVLink pair, an env key); ``where="key"``
    reports the line of that key rather than of its value.
    """
    ctx = {"message": message, "value": value, "choices": list(choices) if choices else None}
    ctx.update(sub=tuple(sub), where=where, hint=hint)
    raise PydanticCustomError("clusterkit", "{message}", ctx)


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "list", dict: "mapping"}.get(
        type(value), type(value).__name__
    )


def _show(value: Any) -> str:
    """A value as the user wrote it in YAML: null, true/false, 'text', 12."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _text(value: Any, what: str, *, pattern: re.Pattern[str] | None = None, rule: str = "") -> str:
    if not isinstance(value, str):
        _fail(f"{what} must be a string, got {_show(value)} ({_type_name(value)})", value=value)
    if pattern is not None and not pattern.match(value):
        _fail(f"{what} {value!r} is not valid: {rule}", value=value)
    return value


def _optional_text(value: Any, what: str, *, pattern: re.Pattern[str] | None = None, rule: str = "") -> str | None:
    return None if value is None else _text(value, what, pattern=pattern, rule=rule)


def _optional_bool(value: Any, what: str) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    _fail(
        f"{what} must be true, false or null, got {_show(value)} ({_type_name(value)})",
        value=value,
        choices=("true", "false", "null"),
    )


def _version(value: Any, field: str) -> str | None:
    if value is None:
        return None
    pattern, what, formats = _VERSION_RULES[field]
    if not isinstance(value, str) or not pattern.match(value):
        _fail(f"{value!r} is not {what}", value=value, choices=formats)
    return value


_NAME_RULE = "use letters, digits, '.', '_' and '-', starting with a letter or digit"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# --------------------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------------------


class GPU(_Frozen):
    """The GPUs of one node: all of one model."""

    model: str = Field(description="Canonical catalog key (any alias is accepted in the file).")
    count: int = Field(description="Number of GPUs on the node, > 0.")
    memory_gb: float | None = Field(
        default=None,
        validate_default=True,
        description="Marketing memory per GPU. Must agree with the catalog; filled from it when the model is exact.",
    )

    @field_validator("model", mode="before")
    @classmethod
    def _model(cls, value: Any) -> str:
        if not isinstance(value, str):
            _fail(
                f"GPU model must be a string, got {_show(value)} ({_type_name(value)})",
                value=value,
                choices=gpu_keys(),
            )
        try:
            return get_gpu(value).key
        except InvalidChoice as exc:
            message = f"unknown GPU model {value!r}"
            if exc.suggestion:
                message += f" (did you mean {exc.suggestion!r}?)"
            _fail(message, value=value, choices=gpu_keys(), hint=exc.hint)

    @field_validator("count", mode="before")
    @classmethod
    def _count(cls, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            _fail(f"GPU count must be a whole number >= 1, got {_show(value)} ({_type_name(value)})", value=value)
        if value < 1:
            _fail(f"GPU count must be a whole number >= 1, got {value}", value=value)
        return value

    @field_validator("memory_gb", mode="before")
    @classmethod
    def _memory_type(cls, value: Any) -> float | None:
        if value is None:
            return None
        if not _is_number(value) or value <= 0:
            _fail(
                f"memory_gb must be a positive number of GB or null, got {_show(value)} ({_type_name(value)})",
                value=value,
            )
        return float(value)

    @field_validator("memory_gb", mode="after")
    @classmethod
    def _memory_matches_catalog(cls, value: float | None, info: Any) -> float | None:
        key = info.data.get("model")
        if key is None:  # the model itself was wrong; that error is reported
            return value
        spec = get_gpu(key)
        if value is None:
            return float(spec.memory_gb) if spec.variant_known else None
        if abs(value - spec.memory_gb) <= 0.5:
            return value
        same_family = [s.key for s in all_gpus() if s.family == spec.family and s.variant_known]
        matching = [k for k in same_family if abs(get_gpu(k).memory_gb - value) <= 0.5]
        if matching:
            _fail(
                f"{value:g} contradicts the catalog: {spec.name} ({spec.key}) has {spec.memory_gb:g} GB; "
                f"for {value:g} GB cards set gpu.model to one of {', '.join(matching)}",
                value=value,
                choices=[f"memory_gb: {spec.memory_gb:g}", *(f"model: {k}" for k in matching)],
            )
        _fail(
            f"{value:g} contradicts the catalog: {spec.name} ({spec.key}) has {spec.memory_gb:g} GB "
            f"(memory_gb is the marketing size; usable memory is {spec.usable_gib:g} GiB)",
            value=value,
            choices=[f"{spec.memory_gb:g}", "null"],
        )

    @property
    def spec(self) -> GPUSpec:
        """The catalog entry for ``model``."""
        return get_gpu(self.model)

    @property
    def usable_gib(self) -> float:
        """Planning budget per GPU in GiB (from the catalog)."""
        return self.spec.usable_gib


class Interconnect(_Frozen):
    """How the GPUs inside one node talk to each other."""

    type: str | None = Field(default=None, description="pcie | nvlink-bridge | nvswitch | null (unknown).")
    nvlink_pairs: tuple[tuple[int, int], ...] | None = Field(
        default=None, description="GPU index pairs joined by a 2-way NVLink bridge; null = unknown."
    )
    p2p: bool | None = Field(default=None, description="GPU peer-to-peer works on this node; null = unknown.")

    @field_validator("type", mode="before")
    @classmethod
    def _type(cls, value: Any) -> str | None:
        if value is None or value in INTERCONNECT_TYPES:
            return value
        _fail(f"unknown interconnect type {value!r}", value=value, choices=(*INTERCONNECT_TYPES, "null"))

    @field_validator("nvlink_pairs", mode="before")
    @classmethod
    def _pairs(cls, value: Any) -> tuple[tuple[int, int], ...] | None:
        if value is None:
            return None
        if not isinstance(value, list):
            _fail(f"nvlink_pairs must be a list of [a, b] GPU index pairs, got {_show(value)}", value=value)
        seen: dict[int, int] = {}
        pairs = []
        for i, pair in enumerate(value):
            ok = isinstance(pair, list) and len(pair) == 2
            if not ok or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in pair):
                _fail(f"an NVLink pair must be two GPU indices like [0, 1], got {pair!r}", value=pair, sub=(i,))
            if pair[0] == pair[1]:
                _fail(f"an NVLink pair joins two different GPUs, got {pair!r}", value=pair, sub=(i,))
            for j, index in enumerate(pair):
                if index in seen:
                    _fail(
                        f"GPU {index} is in two NVLink pairs (pairs {seen[index]} and {i}); a 2-way bridge joins "
                        "each GPU to exactly one other",
                        value=pair,
                        sub=(i, j),
                    )
                seen[index] = i
            pairs.append((pair[0], pair[1]))
        return tuple(pairs)

    @field_validator("p2p", mode="before")
    @classmethod
    def _p2p(cls, value: Any) -> bool | None:
        return _optional_bool(value, "p2p")

    @model_validator(mode="after")
    def _pairs_need_bridge(self) -> Interconnect:
        if self.nvlink_pairs and self.type != "nvlink-bridge":
            _fail(
                f"nvlink_pairs is set but type is {_show(self.type)}; pairs describe NVLink bridges",
                value=self.type,
                choices=("nvlink-bridge",),
                sub=("type",),
            )
        return self


class Slurm(_Frozen):
    """How Slurm knows the node."""

    partition: str | None = Field(default=None, description="Partition to submit to; null = the cluster default.")
    gres_type: str | None = Field(
        default=None, description="GRES type exactly as in gres.conf (case-sensitive); null = the catalog's name."
    )

    @field_validator("partition", "gres_type", mode="before")
    @classmethod
    def _names(cls, value: Any, info: Any) -> str | None:
        return _optional_text(value, info.field_name, pattern=_NAME_RE, rule=_NAME_RULE)


class _FactValidators(_Frozen):
    """Validators shared by ``Defaults`` and ``Node`` (each declares its own fields, in file order)."""

    @field_validator("cuda", "driver", "nccl", mode="before", check_fields=False)
    @classmethod
    def _versions(cls, value: Any, info: Any) -> str | None:
        return _version(value, info.field_name)

    @field_validator("nics", mode="before", check_fields=False)
    @classmethod
    def _nics(cls, value: Any) -> tuple[str, ...] | None:
        if value is None:
            return None
        if not isinstance(value, list) or not value:
            _fail(f"nics must be a non-empty list of interface names or null, got {_show(value)}", value=value)
        for i, nic in enumerate(value):
            if not isinstance(nic, str) or not _NIC_RE.match(nic) or len(nic) > _NIC_MAX:
                _fail(
                    f"{nic!r} is not a network interface name (letters, digits, '_.:@-', at most {_NIC_MAX} chars)",
                    value=nic,
                    sub=(i,),
                )
        if len(set(value)) != len(value):
            _fail(f"nics lists an interface twice: {value!r}", value=value)
        return tuple(value)

    @field_validator("slurm", mode="before", check_fields=False)
    @classmethod
    def _empty_slurm(cls, value: Any) -> Any:
        return {} if value is None else value

    @field_validator("nccl_env", mode="before", check_fields=False)
    @classmethod
    def _env(cls, value: Any) -> dict[str, str]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            _fail(f"nccl_env must be a mapping of NAME: \"value\", got {_show(value)}", value=value)
        env: dict[str, str] = {}
        for key, item in value.items():
            if not isinstance(key, str) or not _ENV_KEY_RE.match(key):
                _fail(
                    f"{key!r} is not an environment variable name (upper case letters, digits and '_', "
                    "not starting with a digit)",
                    value=key,
                    sub=(key,),
                    where="key",
                )
            if key in DEPRECATED_NAMES:
                _fail(
                    f"{key} is a deprecated name (renamed in torch 2.2); write {DEPRECATED_NAMES[key]}",
                    value=key,
                    sub=(key,),
                    where="key",
                )
            if isinstance(item, str):
                env[key] = item
            elif _is_number(item):
                env[key] = str(item)
            else:
                _fail(
                    f"{key} must be a string or a number, got {_show(item)} ({_type_name(item)})"
                    + ('; write "1" or "0"' if isinstance(item, bool) else ""),
                    value=item,
                    sub=(key,),
                )
        return env


class Defaults(_FactValidators):
    """Values applied to every node unless the node sets the key itself."""

    cuda: str | None = Field(default=None, description="CUDA version the driver supports (nvidia-smi), e.g. 12.2.")
    driver: str | None = Field(default=None, description="NVIDIA driver version, e.g. 535.104.05.")
    nccl: str | None = Field(default=None, description="NCCL version the job uses, e.g. 2.18.1.")
    nics: tuple[str, ...] | None = Field(default=None, description="Network interface names for NCCL; null = unknown.")
    slurm: Slurm = Field(default_factory=Slurm)
    nccl_env: dict[str, str] = Field(default_factory=dict, description="Extra environment for NCCL/torch.")


class Node(_FactValidators):
    """One machine of the cluster."""

    name: str = Field(description="Unique name used on the command line (--node).")
    hostname: str = Field(description="Host to reach; defaults to name.")
    gpu: GPU
    cuda: str | None = Field(default=None, description="CUDA version the driver supports (nvidia-smi), e.g. 12.2.")
    driver: str | None = Field(default=None, description="NVIDIA driver version, e.g. 535.104.05.")
    nccl: str | None = Field(default=None, description="NCCL version the job uses, e.g. 2.18.1.")
    interconnect: Interconnect = Field(default_factory=Interconnect)
    nics: tuple[str, ...] | None = Field(default=None, description="Network interface names for NCCL; null = unknown.")
    slurm: Slurm = Field(default_factory=Slurm)
    nccl_env: dict[str, str] = Field(default_factory=dict, description="Extra environment for NCCL/torch on this node.")
    notes: str = Field(default="", description="Free text: what is known to go wrong here.")

    @model_validator(mode="before")
    @classmethod
    def _default_hostname(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("hostname") is None and "name" in data:
            data = {**data, "hostname": data["name"]}
        return data

    @field_validator("name", "hostname", mode="before")
    @classmethod
    def _names(cls, value: Any, info: Any) -> str:
        return _text(value, f"node {info.field_name}", pattern=_NAME_RE, rule=_NAME_RULE)

    @field_validator("gpu", mode="before")
    @classmethod
    def _gpu_mapping(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            _fail(f"gpu must be a mapping like {{model: rtx-a6000, count: 8}}, got {_show(value)}", value=value)
        return value

    @field_validator("interconnect", mode="before")
    @classmethod
    def _empty_interconnect(cls, value: Any) -> Any:
        return {} if value is None else value

    @field_validator("notes", mode="before")
    @classmethod
    def _notes(cls, value: Any) -> str:
        return "" if value is None else _text(value, "notes")

    @model_validator(mode="after")
    def _interconnect_fits_gpus(self) -> Node:
        spec, count = self.gpu.spec, self.gpu.count
        for i, pair in enumerate(self.interconnect.nvlink_pairs or ()):
            for j, index in enumerate(pair):
                if index >= count:
                    _fail(
                        f"NVLink pair {list(pair)} names GPU {index} but the node has {count} GPUs",
                        value=index,
                        choices=[str(k) for k in range(count)],
                        sub=("interconnect", "nvlink_pairs", i, j),
                    )
        if self.interconnect.type in ("nvlink-bridge", "nvswitch") and spec.nvlink is None:
            _fail(
                f"interconnect type {self.interconnect.type!r} is impossible: {spec.name} has no NVLink",
                value=self.interconnect.type,
                choices=("pcie", "null"),
                sub=("interconnect", "type"),
            )
        return self

    def __hash__(self) -> int:
        # nccl_env is a dict, so the generated field hash would fail; names are unique per inventory.
        return hash((type(self), self.name, self.hostname))

    @property
    def gres_type(self) -> str:
        """GRES type for sbatch: ``slurm.gres_type`` if set, else the catalog's conventional name."""
        return self.slurm.gres_type or self.gpu.spec.slurm_gres

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: the fields plus the catalog facts the CLI shows."""
        data = self.model_dump(mode="json")
        data["gpu"].update(name=self.gpu.spec.name, usable_gib=self.gpu.usable_gib)
        data["gres_type"] = self.gres_type
        return data


class Inventory(BaseModel):
    """A validated nodes.yaml."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: Path
    version: int = SCHEMA_VERSION
    defaults: Defaults = Field(default_factory=Defaults)
    nodes: tuple[Node, ...]
    _source: _SourceMap | None = PrivateAttr(default=None)

    def names(self) -> tuple[str, ...]:
        """Node names in file order."""
        return tuple(node.name for node in self.nodes)

    def node(self, name: str) -> Node:
        """The node called ``name``; ``InvalidChoice`` names the known nodes otherwise."""
        for node in self.nodes:
            if node.name == name:
                return node
        raise InvalidChoice("node", name, self.names(), hint=f"nodes are listed in {self.path}")

    def select(self, spec: str | Iterable[str]) -> tuple[Node, ...]:
        """Nodes named by ``spec``: "all", "a,b" or a list of names, in the order given."""
        if isinstance(spec, str):
            if spec.strip() == "all":
                return self.nodes
            names = [part.strip() for part in spec.split(",")]
        else:
            names = [str(part).strip() for part in spec]
            if names == ["all"]:
                return self.nodes
        if not names or any(not name for name in names):
            raise InvalidChoice("node list", spec if isinstance(spec, str) else ",".join(names), ["all", *self.names()])
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise UserError(f"node {duplicates[0]!r} is listed twice in {','.join(names)!r}; name each node once")
        return tuple(self.node(name) for name in names)

    def line_of(self, node_name: str, key: str | None = None) -> int | None:
        """Line in nodes.yaml of a node (or of one of its keys, dotted: "gpu.count"), for messages."""
        if self._source is None:
            return None
        index = self.names().index(self.node(node_name).name)
        loc: Loc = ("nodes", index)
        for part in (key.split(".") if key else ()):
            loc = (*loc, part)
        return self._source.key_line(loc)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of the whole inventory."""
        return {
            "path": str(self.path),
            "version": self.version,
            "defaults": self.defaults.model_dump(mode="json"),
            "nodes": [node.to_dict() for node in self.nodes],
        }


# --------------------------------------------------------------------------------------
# YAML with line numbers
# --------------------------------------------------------------------------------------


class _SourceMap:
    """Line numbers (1-based) of every key and value in the file, by key path."""

    def __init__(self) -> None:
        self.key_lines: dict[Loc, int] = {}
        self.value_lines: dict[Loc, int] = {}
        self.number_text: dict[Loc, str] = {}  # numbers as written, e.g. "12.10" for cuda

    def value_line(self, loc: Loc) -> int | None:
        """Line of the value at ``loc``, else of the nearest enclosing element."""
        for end in range(len(loc), -1, -1):
            line = self.value_lines.get(loc[:end])
            if line is not None:
                return line
        return None

    def key_line(self, loc: Loc) -> int | None:
        """Line of the key at ``loc`` (or of the list item), else of the nearest enclosing one."""
        for end in range(len(loc), -1, -1):
            line = self.key_lines.get(loc[:end]) or self.value_lines.get(loc[:end])
            if line is not None:
                return line
        return None


def _compose(text: str, path: str) -> tuple[Any, _SourceMap]:
    source = _SourceMap()
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        data = None if root is None else _to_python(root, (), loader, source, path, set())
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or "syntax error"
        if exc.context and exc.context_mark:
            problem += f" ({exc.context} at line {exc.context_mark.line + 1})"
        elif exc.context:
            problem += f" ({exc.context})"
        raise InventoryError(
            f"invalid YAML: {problem}",
            path=path,
            line=mark.line + 1 if mark else None,
            hint="check indentation (spaces, not tabs) and that every 'key: value' has a space after the colon",
        ) from None
    except yaml.YAMLError as exc:
        raise InventoryError(f"invalid YAML: {exc}", path=path) from None
    finally:
        loader.dispose()
    if root is not None:
        source.value_lines[()] = root.start_mark.line + 1
    return data, source


def _to_python(node: yaml.Node, loc: Loc, loader: yaml.SafeLoader, source: _SourceMap, path: str, active: set) -> Any:
    if id(node) in active:
        raise InventoryError(
            f"{_dotted(loc) or 'top level'}: a YAML alias refers to itself",
            path=path,
            line=node.start_mark.line + 1,
            key=_dotted(loc) or None,
        )
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_object(node)
        if _is_number(value):
            source.number_text[loc] = node.value
        return value
    active = active | {id(node)}
    if isinstance(node, yaml.SequenceNode):
        items = []
        for i, item in enumerate(node.value):
            source.value_lines[(*loc, i)] = item.start_mark.line + 1
            items.append(_to_python(item, (*loc, i), loader, source, path, active))
        return items
    mapping: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        line = key_node.start_mark.line + 1
        if key_node.tag == "tag:yaml.org,2002:merge":
            raise InventoryError(
                f"{_dotted(loc) or 'top level'}: YAML merge keys ('<<') are not supported",
                path=path,
                line=line,
                key=_dotted(loc) or None,
                hint="put shared values under 'defaults:' instead",
            )
        key = loader.construct_object(key_node) if isinstance(key_node, yaml.ScalarNode) else None
        if not isinstance(key, str):
            raise InventoryError(
                f"{_dotted(loc) or 'top level'}: keys must be plain names, got {key_node.value!r}",
                path=path,
                line=line,
                key=_dotted(loc) or None,
                value=key_node.value if isinstance(key_node, yaml.ScalarNode) else None,
            )
        if key in mapping:
            first = source.key_lines[(*loc, key)]
            raise InventoryError(
                f"{_dotted((*loc, key))}: duplicate key {key!r} (first at line {first})",
                path=path,
                line=line,
                key=_dotted((*loc, key)),
                value=key,
            )
        source.key_lines[(*loc, key)] = line
        source.value_lines[(*loc, key)] = value_node.start_mark.line + 1
        mapping[key] = _to_python(value_node, (*loc, key), loader, source, path, active)
    return mapping


def _dotted(loc: Loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


# --------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------

_TOP_KEYS = ("version", "defaults", "nodes")


def load_inventory(path: str | Path) -> Inventory:
    """Read and validate nodes.yaml. Every mistake raises one ``InventoryError``."""
    file = Path(path)
    shown = str(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InventoryError(
            "file not found", path=shown, hint="pass --inventory PATH or set CLUSTERKIT_INVENTORY"
        ) from None
    except IsADirectoryError:
        raise InventoryError("is a directory, not a nodes.yaml file", path=shown) from None
    except UnicodeDecodeError as exc:
        raise InventoryError(f"not UTF-8 text ({exc.reason} at byte {exc.start})", path=shown) from None
    except OSError as exc:
        raise InventoryError(f"cannot read the file: {exc.strerror}", path=shown) from None
    return parse_inventory(text, path=shown)


def parse_inventory(text: str, *, path: str = "<string>") -> Inventory:
    """Validate nodes.yaml content; ``path`` is only used in messages and ``Inventory.path``."""
    data, source = _compose(text, path)
    errors = _Errors(path, source)
    if data is None:
        raise InventoryError("the file is empty; it needs 'version: 1' and a 'nodes:' list", path=path)
    if not isinstance(data, dict):
        raise errors.at(
            (),
            f"the top level must be a mapping with keys {', '.join(_TOP_KEYS)}, got a {_type_name(data)}",
            value=data,
            choices=_TOP_KEYS,
        )
    for key in data:
        if key not in _TOP_KEYS:
            raise errors.unknown_key((key,), _TOP_KEYS)
    for key in ("version", "nodes"):
        if key not in data:
            message = f"missing required key {key!r} (required: version, nodes)"
            raise errors.at((key,), message, where="key", line_loc=())
    version = data["version"]
    if type(version) is not int or version != SCHEMA_VERSION:
        raise errors.at(("version",), f"unsupported version {version!r}", value=version, choices=(str(SCHEMA_VERSION),))

    raw_defaults = data.get("defaults")
    if raw_defaults is None:
        raw_defaults = {}
    if not isinstance(raw_defaults, dict):
        raise errors.at(("defaults",), f"defaults must be a mapping, got {_show(raw_defaults)}", value=raw_defaults)
    raw_defaults = _numbers_as_written(raw_defaults, ("defaults",), source)
    defaults = errors.validate(Defaults, raw_defaults, ("defaults",))

    raw_nodes = data["nodes"]
    if not isinstance(raw_nodes, list) or not raw_nodes:
        raise errors.at(
            ("nodes",), f"nodes must be a non-empty list of nodes, got {_show(raw_nodes)}", value=raw_nodes
        )
    nodes = []
    for i, raw in enumerate(raw_nodes):
        if not isinstance(raw, dict):
            raise errors.at(
                ("nodes", i), f"each node must be a mapping with name:, gpu:, ..., got {_show(raw)}", value=raw
            )
        merged = _with_defaults(_numbers_as_written(raw, ("nodes", i), source), raw_defaults)
        nodes.append(errors.validate(Node, merged, ("nodes", i)))

    _check_unique(nodes, "name", errors)
    _check_unique(nodes, "hostname", errors)
    inventory = Inventory(path=Path(path), version=version, defaults=defaults, nodes=tuple(nodes))
    inventory._source = source
    return inventory


def _numbers_as_written(raw: dict, loc: Loc, source: _SourceMap) -> dict:
    """Keep versions and env values exactly as typed: unquoted 12.10 is "12.10", not 12.1."""
    out = dict(raw)
    for key in ("cuda", "driver", "nccl"):
        if _is_number(out.get(key)):
            out[key] = source.number_text.get((*loc, key), str(out[key]))
    env = out.get("nccl_env")
    if isinstance(env, dict):
        out["nccl_env"] = {
            k: (source.number_text.get((*loc, "nccl_env", k), str(v)) if _is_number(v) else v) for k, v in env.items()
        }
    return out


def _with_defaults(node: dict, defaults: Mapping) -> dict:
    merged = dict(node)
    for key in _INHERITED_FACTS:
        if key not in node and key in defaults:
            merged[key] = defaults[key]
    for key in _INHERITED_MAPS:
        base, own = defaults.get(key), node.get(key)
        if isinstance(base, dict) and (own is None or isinstance(own, dict)):
            merged[key] = {**base, **(own or {})}
    return merged


def _check_unique(nodes: list[Node], field: str, errors: _Errors) -> None:
    first: dict[str, int] = {}
    for i, node in enumerate(nodes):
        value = getattr(node, field)
        if value in first:
            j = first[value]
            # a hostname filled from name has no line of its own: point at the node instead
            here = ("nodes", i, field) if ("nodes", i, field) in errors.source.key_lines else ("nodes", i)
            there = ("nodes", j, field) if ("nodes", j, field) in errors.source.key_lines else ("nodes", j)
            raise errors.at(
                here,
                f"duplicate node {field} {value!r}; nodes[{j}] at line {errors.source.key_line(there)} has it too",
                value=value,
                hint=f"every node needs its own {field}",
            )
        first[value] = i


# --------------------------------------------------------------------------------------
# error translation
# --------------------------------------------------------------------------------------


def _required_keys(loc: Loc) -> tuple[str, ...]:
    """Keys the mapping at ``loc`` must have."""
    if not loc:
        return ("version", "nodes")
    filled = {"hostname"}  # required by the model, but filled from name when absent
    return tuple(n for n, field in _model_at(loc).model_fields.items() if field.is_required() and n not in filled)


def _allowed_keys(loc: Loc) -> tuple[str, ...]:
    """Keys allowed in the mapping at ``loc``."""
    if not loc:
        return _TOP_KEYS
    return tuple(_model_at(loc).model_fields)


def _model_at(loc: Loc) -> type[BaseModel]:
    last = loc[-1]
    model: type[BaseModel]
    if loc == ("defaults",):
        model = Defaults
    elif isinstance(last, int) and loc[0] == "nodes":
        model = Node
    else:
        model = {"gpu": GPU, "interconnect": Interconnect, "slurm": Slurm}.get(str(last), Node)
    return model


class _Errors:
    """Builds InventoryErrors with the file, line, dotted key, value and choices."""

    def __init__(self, path: str, source: _SourceMap) -> None:
        self.path = path
        self.source = source

    def at(
        self,
        loc: Loc,
        message: str,
        *,
        value: Any = None,
        choices: Sequence[str] | None = None,
        where: str = "value",
        hint: str | None = None,
        line_loc: Loc | None = None,
    ) -> InventoryError:
        """``where``: "value" points at the value's line, "key" at the key's.

        ``line_loc`` (default ``loc``) is the element whose line is reported and whose dotted
        path prefixes the message; ``loc`` is the ``key`` the error carries.
        """
        at = loc if line_loc is None else line_loc
        line = self.source.key_line(at) if where == "key" else self.source.value_line(at)
        key, label = _dotted(loc), _dotted(at)
        return InventoryError(
            f"{label}: {message}" if label else message,
            path=self.path,
            line=line,
            key=key or None,
            value=value,
            choices=list(choices) if choices else None,
            hint=hint,
        )

    def unknown_key(self, loc: Loc, allowed: Sequence[str]) -> InventoryError:
        name = str(loc[-1])
        suggestion = did_you_mean(name, allowed)
        message = f"unknown key {name!r}" + (f" (did you mean {suggestion!r}?)" if suggestion else "")
        hint = None
        if loc[:-1] == ("defaults",) and name in Node.model_fields:
            hint = f"{name!r} cannot be a default; set it on each node"
        return self.at(loc, message, value=name, choices=allowed, where="key", hint=hint)

    def validate(self, model: type[BaseModel], data: dict, prefix: Loc) -> Any:
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            raise self._first(exc, prefix) from None

    def _first(self, exc: ValidationError, prefix: Loc) -> InventoryError:
        """The error that comes first in the file (pydantic reports in field order).

        A missing key comes after every other error: "missing 'gpu'" next to "unknown key
        'gpus'" is explained by the unknown key, which is the one to fix.
        """
        errors = exc.errors(include_url=False)
        found = [(err["type"] == "missing", self._one(err, prefix)) for err in errors]
        return min(found, key=lambda item: (item[0], item[1].line if item[1].line is not None else 1 << 30))[1]

    def _one(self, err: Mapping[str, Any], prefix: Loc) -> InventoryError:
        loc: Loc = (*prefix, *(p for p in err["loc"] if isinstance(p, int) or "[" not in str(p)))
        kind = err["type"]
        if kind == "clusterkit":
            ctx = err["ctx"]
            value = err.get("input") if ctx["value"] is _UNSET else ctx["value"]
            return self.at(
                (*loc, *ctx["sub"]),
                ctx["message"],
                value=value,
                choices=ctx["choices"],
                where=ctx["where"],
                hint=ctx["hint"],
            )
        if kind == "extra_forbidden":
            return self.unknown_key(loc, _allowed_keys(loc[:-1]))
        if kind == "missing":
            parent = loc[:-1]
            required = ", ".join(_required_keys(parent))
            message = f"missing required key {loc[-1]!r} (required: {required})"
            return self.at(loc, message, where="key", line_loc=parent)
        if kind in ("model_type", "dict_type"):
            value = err.get("input")
            return self.at(loc, f"must be a mapping, got {_show(value)} ({_type_name(value)})", value=value)
        value = err.get("input")
        return self.at(loc, f"{err['msg']}, got {_show(value)} ({_type_name(value)})", value=value)
