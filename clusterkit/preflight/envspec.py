"""Which software environment (``env/requirements-*.txt``) fits a node, and why.

The rule is the one CUDA itself sets: a wheel built with CUDA toolkit X.Y runs when the
driver supports CUDA >= X.Y (the version at the top right of ``nvidia-smi``, the
``cuda:`` field of nodes.yaml). Within one major version, CUDA's *minor version
compatibility* also lets an X.Y application run on an older X.* driver (>= 525.60.13 for
12.x, >= 450.80.02 for 11.x), but without PTX JIT: anything compiled at run time (Triton
kernels behind torch.compile, PTX-only code paths) then fails with "the provided PTX was
compiled with an unsupported toolchain". So ``choose_env`` picks the newest line that is
not newer than the driver, and names the others.

Pure except ``load_env_specs`` (reads the files) and ``measured_cuda`` (reads the registry).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from clusterkit.errors import UserError

# (name, CUDA version of the wheels), newest first. The env/ files carry the same in a header.
CUDA_LINES: tuple[tuple[str, tuple[int, int]], ...] = (("cu124", (12, 4)), ("cu121", (12, 1)), ("cu118", (11, 8)))
# Open-Sora 1.2's own requirements target this line (requirements-cu121.txt, opensora_v12_facts.md §10.2).
UPSTREAM_LINE = "cu121"
# CUDA minor-version compatibility: the oldest driver of each major that runs any minor (NVIDIA CUDA
# compatibility guide, "Minor Version Compatibility" table).
MINOR_COMPAT_MIN_DRIVER = {12: "525.60.13", 11: "450.80.02"}

_HEADER = re.compile(r"^#\s*([a-z-]+)\s*:\s*(.+?)\s*$")
_PIN = re.compile(r"^([A-Za-z0-9_.-]+)\s*==\s*([^\s;#]+)")


@dataclass(frozen=True)
class EnvSpec:
    """One environment file: ``env/requirements-<name>.txt``."""

    name: str  # cu118 | cu121 | cu124 | cpu
    path: Path
    cuda: tuple[int, int] | None  # CUDA of the wheels; None for the CPU environment
    index_url: str | None
    pins: dict[str, str]  # package -> version, as pinned in the file

    @property
    def cuda_text(self) -> str | None:
        return None if self.cuda is None else f"{self.cuda[0]}.{self.cuda[1]}"

    def to_dict(self) -> dict:
        return {"name": self.name, "path": str(self.path), "cuda": self.cuda_text, "index_url": self.index_url,
                "pins": dict(self.pins)}


def parse_cuda(text: str | None) -> tuple[int, int] | None:
    """ "12.2" / "12.4.1" -> (12, 2); None or junk -> None."""
    if not text:
        return None
    match = re.match(r"^\s*(\d+)\.(\d+)", str(text))
    return (int(match.group(1)), int(match.group(2))) if match else None


def parse_env_spec(path: Path, text: str) -> EnvSpec:
    """Read the ``# cuda:`` / ``# index-url:`` header and the ``pkg==version`` pins."""
    name = path.stem.removeprefix("requirements-")
    headers: dict[str, str] = {}
    pins: dict[str, str] = {}
    for line in text.splitlines():
        header = _HEADER.match(line.strip())
        if header:
            headers.setdefault(header.group(1), header.group(2))
            continue
        pin = _PIN.match(line.strip())
        if pin:
            pins[pin.group(1).lower()] = pin.group(2)
    cuda_text = headers.get("cuda")
    cuda = None if cuda_text in (None, "none", "cpu") else parse_cuda(cuda_text)
    if cuda_text not in (None, "none", "cpu") and cuda is None:
        raise UserError(f"{path}: header '# cuda: {cuda_text}' is not a CUDA version (write e.g. '# cuda: 12.1')")
    return EnvSpec(name=name, path=path, cuda=cuda, index_url=headers.get("index-url"), pins=pins)


def load_env_specs(env_dir: Path) -> list[EnvSpec]:
    """Every ``requirements-*.txt`` in ``env_dir``, newest CUDA first, CPU last."""
    files = sorted(Path(env_dir).glob("requirements-*.txt"))
    if not files:
        raise UserError(f"no environment specs (requirements-*.txt) in {env_dir}",
                        hint="copy env/ from the clusterkit checkout next to your nodes.yaml")
    specs = [parse_env_spec(p, p.read_text(encoding="utf-8")) for p in files]
    return sorted(specs, key=lambda s: (s.cuda is None, tuple(-v for v in (s.cuda or (0, 0)))))


def choose_env(driver_cuda: str | None, specs: list[EnvSpec], *, gpu=None) -> dict:
    """The environment for a driver that supports CUDA ``driver_cuda``, with the reasons.

    ``gpu`` (a catalog GPUSpec, optional) adds what that architecture can use of it.
    Returns {env, path, driver_cuda, reasons, alternatives, notes}; ``env`` is None when the
    driver is unknown or too old for every CUDA line.
    """
    gpu_specs = [s for s in specs if s.cuda is not None]
    cpu = next((s for s in specs if s.cuda is None), None)
    driver = parse_cuda(driver_cuda)
    result: dict = {"env": None, "path": None, "driver_cuda": driver_cuda, "reasons": [], "alternatives": [],
                    "notes": []}
    if driver is None:
        result["reasons"].append(
            "the driver's CUDA version is unknown (nodes.yaml `cuda:` is null and no preflight measured it); "
            "run `clusterkit preflight NODE` or read it from the top right of `nvidia-smi` on the node")
        return result
    fitting = [s for s in gpu_specs if s.cuda <= driver]
    newer = [_newer_alternative(s, driver, driver_cuda) for s in sorted(gpu_specs, key=lambda s: s.cuda)
             if s.cuda > driver]
    if not fitting:
        oldest = min(gpu_specs, key=lambda s: s.cuda) if gpu_specs else None
        result["reasons"].append(
            f"the driver supports CUDA {driver_cuda}, older than every CUDA line here"
            + (f" (the oldest is {oldest.name}, CUDA {oldest.cuda_text})" if oldest else "")
            + "; upgrade the NVIDIA driver (CUDA 11.8 needs driver >= 520, 12.1 needs >= 530)")
        result["alternatives"].extend(newer)
        if cpu is not None:
            result["alternatives"].append({"env": cpu.name, "path": str(cpu.path), "why": "CPU only: no GPU use",
                                           "fits": True})
        return result
    chosen = max(fitting, key=lambda s: s.cuda)
    result.update(env=chosen.name, path=str(chosen.path))
    result["reasons"].append(
        f"the driver supports CUDA {driver_cuda}; {chosen.name} wheels are built with CUDA {chosen.cuda_text} "
        f"<= {driver_cuda}, so they run (a wheel needs driver CUDA >= wheel CUDA)")
    result["alternatives"].extend(newer)
    for spec in sorted(fitting, key=lambda s: s.cuda, reverse=True):
        if spec is chosen:
            continue
        why = f"older CUDA {spec.cuda_text} also runs on this driver"
        if spec.name == UPSTREAM_LINE:
            why += " (the line upstream Open-Sora 1.2 pins: torch 2.3 / xformers cu121)"
        result["alternatives"].append({"env": spec.name, "path": str(spec.path), "why": why, "fits": True})
    if chosen.name != UPSTREAM_LINE and any(s.name == UPSTREAM_LINE for s in fitting):
        result["notes"].append(
            f"upstream Open-Sora 1.2 targets {UPSTREAM_LINE}, and a CUDA {driver_cuda} driver runs it too: a driver "
            "newer than the wheels is not what breaks Open-Sora (the seed's \"CUDA 12.4\" trouble is an nvcc that "
            "differs from torch's CUDA when building extensions, or a GPU without bf16: `clusterkit preflight NODE`)")
    if gpu is not None:
        result["notes"].extend(_gpu_notes(gpu))
    return result


def _newer_alternative(spec: EnvSpec, driver: tuple[int, int], driver_cuda: str) -> dict:
    if spec.cuda[0] == driver[0] and driver[0] in MINOR_COMPAT_MIN_DRIVER:
        why = (f"CUDA {spec.cuda_text} > {driver_cuda}: runs only through CUDA minor-version compatibility "
               f"(driver >= {MINOR_COMPAT_MIN_DRIVER[driver[0]]}), without PTX JIT, so Triton / "
               "torch.compile kernels fail; upgrade the driver to use it")
    else:
        why = f"CUDA {spec.cuda_text} needs a newer driver (a different major version: no compatibility)"
    return {"env": spec.name, "path": str(spec.path), "why": why, "fits": False}


def _gpu_notes(gpu) -> list[str]:
    notes = []
    if not gpu.bf16:
        notes.append(f"{gpu.name} is {gpu.sm}: no bf16 and no FlashAttention-2; run fp16 with unfused "
                     "attention, and do not install flash-attn (its wheels need sm80+)")
    elif gpu.flash_attn2:
        notes.append(f"{gpu.name} is {gpu.sm}: flash-attn 2 is optional (torch's SDPA has a flash kernel for "
                     "sm80+); install it with `pip install flash-attn --no-build-isolation` after torch")
    return notes


def env_for_node(node, specs: list[EnvSpec], measured: dict | None = None) -> dict:
    """``choose_env`` for an inventory node. ``measured``: {cuda, run_id} from a preflight run,
    which wins over nodes.yaml (a measurement beats a note); a disagreement is reported."""
    inventory_cuda = node.cuda
    measured_cuda = (measured or {}).get("cuda")
    cuda, source = (measured_cuda, f"measured by preflight run {measured.get('run_id')}") if measured_cuda else (
        inventory_cuda, "nodes.yaml" if inventory_cuda else None)
    result = choose_env(cuda, specs, gpu=node.gpu.spec)
    result.update(node=node.name, gpu_model=node.gpu.model, cuda_source=source, inventory_cuda=inventory_cuda)
    if measured_cuda and inventory_cuda and parse_cuda(measured_cuda) != parse_cuda(inventory_cuda):
        result["notes"].insert(0, f"nodes.yaml says cuda: \"{inventory_cuda}\" but the node reports {measured_cuda}; "
                                  f"update nodes.yaml (the measurement is used here)")
    return result


def measured_cuda(project, node_name: str, limit: int = 200) -> dict | None:
    """The driver CUDA from the newest completed preflight run of ``node_name``, if any."""
    from clusterkit.launch.records import read_json
    from clusterkit.launch.render import RunPaths

    for record in project.registry.list(limit=limit):
        if record.kind != "preflight" or record.nodes != (node_name,) or record.state != "COMPLETED":
            continue
        facts = read_json(RunPaths(record.run_dir).result) or {}
        cuda = (facts.get("nvidia") or {}).get("cuda_version")
        if cuda:
            return {"cuda": cuda, "run_id": record.run_id}
    return None
