"""Checks: probe facts + the node's inventory entry (+ a plan) -> verdicts with remedies.

Pure functions of data: ``run_checks(facts, node, plan=None, inventory=None)`` for one
node, ``run_job_checks({node: facts})`` for what must agree across the nodes of a job
(the NCCL version). Each result says pass / warn / fail, what was found (``detail``) and
what to do about it (``remedy``); an inventory disagreement carries the exact nodes.yaml
edit (``edit``: file, line, key, value). A check whose inputs are missing (no NVIDIA
driver, no CUDA torch) is a ``warn`` with ``checked=False`` and says why: never a pass
it did not earn, never a crash.

Every threshold and rule is documented in docs/preflight.md with its source.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace

from clusterkit.errors import InvalidChoice
from clusterkit.gpus import match_nvml_name
from clusterkit.preflight.envspec import CUDA_LINES, parse_cuda

PASS, WARN, FAIL = "pass", "warn", "fail"
STATUSES = (PASS, WARN, FAIL)
GIB = 1024**3
MIB_PER_GIB = 1024

# /dev/shm: Docker's default is 64 MiB and NCCL's SHM transport fails in it (orchestration_facts
# §4 N10); the usual fix is --shm-size=1g or more.
SHM_FAIL_BYTES = 256 * 1024**2
SHM_WARN_BYTES = 1 * GIB
# Output disk: a training checkpoint of the 1.1B-parameter STDiT3 (fp32 weights + EMA + two Adam
# moments) is ~18 GiB; inference outputs are small. Below 1 GiB even logs and videos fail.
DISK_FAIL_BYTES = 1 * GIB
DISK_WARN_BYTES = 20 * GIB
# Host RAM: T5-XXL in fp32 (~19 GB, opensora_v12_facts.md §11.3) passes through host memory while
# it loads, once per process unless the checkpoint is memory-mapped.
HOST_RAM_WARN_BYTES = 24 * GIB
# A GPU with this much memory already in use is shared with someone else.
GPU_BUSY_FRACTION = 0.05
# Plan memory: a prediction this close to the free memory leaves no room for fragmentation.
PLAN_MARGIN_FRACTION = 0.05
FUSED_ATTENTION = frozenset({"flash", "flash-attn", "flash_attn", "flash2", "fused", "fa2"})
# NCCL's interface choice when NCCL_SOCKET_IFNAME is unset (ncclFindInterfaces): ib* first, then
# anything but docker* and lo, then docker*, then lo.
NCCL_DEFAULT_ORDER = ("ib", "^docker,lo", "docker", "lo")
_NOT_FABRIC = ("lo", "docker", "veth", "virbr", "br-", "ifb", "tun", "tap")


@dataclass(frozen=True)
class CheckResult:
    """One verdict. ``remedy`` is empty for a pass; ``edit`` is a nodes.yaml change that fixes it."""

    name: str
    status: str
    detail: str
    remedy: str = ""
    edit: dict | None = None
    checked: bool = True
    node: str | None = None

    def __post_init__(self) -> None:
        assert self.status in STATUSES, self.status

    def to_dict(self) -> dict:
        return asdict(self)


def _not_checked(name: str, why: str, what: str = "") -> CheckResult:
    return CheckResult(name, WARN, f"not checked: {why}" + (f"; {what}" if what else ""), checked=False)


# ---------------------------------------------------------------------------- reading facts


class _Facts:
    """Read-only helpers over one node's facts dict (any section may be missing or an error)."""

    def __init__(self, facts: Mapping) -> None:
        self.raw = facts or {}
        self.nvidia = self.raw.get("nvidia") or {}
        self.torch = self.raw.get("torch") or {}
        self.gpus = list(self.nvidia.get("gpus") or [])
        self.env = self.raw.get("env") or {}

    def section(self, name: str) -> dict:
        return self.raw.get(name) or {}

    @property
    def nvml_ok(self) -> bool:
        return bool(self.nvidia.get("available")) and not self.nvidia.get("error")

    @property
    def nvml_why(self) -> str:
        return self.nvidia.get("error") or "no NVIDIA facts"

    @property
    def torch_cuda(self) -> str | None:
        return self.torch.get("cuda") if self.torch.get("installed") else None

    def torch_label(self) -> str:
        if not self.torch.get("installed"):
            return "torch (not installed)"
        return f"torch {self.torch.get('version')}"

    def capability(self) -> tuple[int, int] | None:
        """The lowest compute capability among the node's GPUs, as measured."""
        caps = [tuple(g["compute_capability"]) for g in self.gpus if g.get("compute_capability")]
        caps = caps or [tuple(c) for c in self.torch.get("capabilities") or []]
        return min(caps) if caps else None

    def gpu_label(self) -> str | None:
        names = sorted({g.get("name") for g in self.gpus if g.get("name")})
        return ", ".join(names) if names else None


def _arch(cap: tuple[int, int]) -> str:
    return f"sm_{cap[0]}{cap[1]}"


def _gpu_arch(f: _Facts, node) -> tuple[tuple[int, int], str, str]:
    """(capability, GPU name, where it came from): measured when possible, else the catalog."""
    cap = f.capability()
    if cap is not None:
        return cap, f.gpu_label() or node.gpu.spec.name, "measured"
    spec = node.gpu.spec
    return spec.compute_capability, spec.name, "nodes.yaml catalog entry, not measured"


def _gib(n_bytes: float | None) -> str:
    return "?" if n_bytes is None else f"{n_bytes / GIB:.1f} GiB"


def _ver(text: str | None) -> tuple[int, ...] | None:
    if not text:
        return None
    try:
        return tuple(int(p) for p in str(text).split("."))
    except ValueError:
        return None


def _same_version(measured: str, written: str) -> bool:
    """ "2.18.1" matches "2.18" written in nodes.yaml (a shorter version is a prefix)."""
    a, b = _ver(measured), _ver(written)
    if a is None or b is None:
        return measured == written
    n = min(len(a), len(b))
    return a[:n] == b[:n]


def _env_file_for(driver_cuda: str | None) -> str | None:
    """The env/ file that fits a driver CUDA version (the same rule as ``clusterkit env``)."""
    driver = parse_cuda(driver_cuda)
    if driver is None:
        return None
    for name, cuda in CUDA_LINES:
        if cuda <= driver:
            return f"env/requirements-{name}.txt"
    return None


def _install_hint(f: _Facts, node) -> str:
    driver_cuda = f.nvidia.get("cuda_version") or node.cuda
    env_file = _env_file_for(driver_cuda)
    if env_file:
        return (f"install a CUDA build of torch that fits the driver (CUDA {driver_cuda}): "
                f"pip install -r {env_file} (see `clusterkit env {node.name}`)")
    return f"install a CUDA build of torch that fits the node's driver: see `clusterkit env {node.name}`"


# ---------------------------------------------------------------------------- nodes.yaml edits


class _Edits:
    """Builds the nodes.yaml edit that makes the inventory say what was measured."""

    def __init__(self, node, inventory) -> None:
        self.node = node
        self.inventory = inventory

    def make(self, key: str, value: object) -> tuple[dict, str]:
        path = str(self.inventory.path) if self.inventory is not None else "nodes.yaml"
        line = node_line = None
        if self.inventory is not None:
            try:
                line = self.inventory.line_of(self.node.name, key)
                node_line = self.inventory.line_of(self.node.name)
            except InvalidChoice:  # an inventory without this node (a stale or foreign file): no line numbers
                line = node_line = None
        present = line is not None and line != node_line
        shown = _yaml(value)
        edit = {"path": path, "line": line, "node": self.node.name, "key": key, "value": value, "yaml": shown}
        leaf = key.split(".")[-1]
        if line is None:
            text = f"in {path}, node {self.node.name}: set {key}: {shown}"
        elif present:
            text = f"{path}:{line}: set {leaf}: {shown}  ({self.node.name}.{key})"
        else:
            text = f"{path}:{line}: add {key}: {shown} to node {self.node.name}"
        return edit, text


def _yaml(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_yaml(v) for v in value) + "]"
    if isinstance(value, str) and value[:1].isdigit():
        return f'"{value}"'  # versions stay strings: 12.10 is not 12.1
    return str(value)


# ---------------------------------------------------------------------------- the driver and GPUs


def check_driver(f: _Facts, node) -> CheckResult:
    name = "nvidia-driver"
    if not f.nvidia.get("available"):
        return CheckResult(
            name, FAIL, f.nvml_why,
            f"no GPU job can run where NVML does not load: probe the node itself (`clusterkit preflight "
            f"{node.name}` without --local) or install the NVIDIA driver there (nvidia-smi must work); a machine "
            "without a GPU can only use env/requirements-cpu.txt")
    if f.nvidia.get("error"):
        return CheckResult(name, FAIL, f"driver {f.nvidia.get('driver_version')}: {f.nvidia['error']}",
                           "run nvidia-smi on the node; reload the driver or reboot")
    if not f.gpus:
        return CheckResult(name, FAIL, f"driver {f.nvidia.get('driver_version')} is loaded but NVML sees no GPU",
                           "check that the GPUs are seated and powered (nvidia-smi -L, dmesg | grep -i nvrm)")
    return CheckResult(name, PASS, f"driver {f.nvidia.get('driver_version')} (supports CUDA "
                                   f"{f.nvidia.get('cuda_version') or '?'}), {len(f.gpus)} GPU(s): {f.gpu_label()}")


def check_gpu_health(f: _Facts) -> CheckResult:
    name = "gpu-health"
    if not f.nvml_ok or not f.gpus:
        return _not_checked(name, f.nvml_why if not f.nvml_ok else "no GPUs")
    fails, warns, remedies = [], [], []
    no_persistence = [g["index"] for g in f.gpus if g.get("persistence_mode") is False]
    for g in f.gpus:
        i = g["index"]
        ecc = g.get("ecc") or {}
        if (ecc.get("uncorrected_volatile") or 0) > 0:
            fails.append(f"GPU {i}: {ecc['uncorrected_volatile']} uncorrected ECC errors since the last reset")
            remedies.append("drain the node and reset the GPU (nvidia-smi -r -i N) or have it replaced; "
                            "dcgmi diag -r 2 tests its memory")
        remap = g.get("remapped_rows") or {}
        if remap.get("failure"):
            fails.append(f"GPU {i}: row remapping failed (no spare rows left)")
            remedies.append("the GPU needs replacing (NVIDIA: a row-remap failure is an RMA condition)")
        elif remap.get("pending"):
            warns.append(f"GPU {i}: a row remap is pending")
            remedies.append("reset the GPU (nvidia-smi -r -i N) or reboot to apply pending row remaps")
        retired = g.get("retired_pages") or {}
        if retired.get("pending"):
            warns.append(f"GPU {i}: page retirement pending")
            remedies.append("reset the GPU or reboot to retire the pending pages")
        if (retired.get("double_bit") or 0) > 0:
            warns.append(f"GPU {i}: {retired['double_bit']} pages retired for double-bit ECC errors")
        total, used = g.get("memory_total_mib") or 0, g.get("memory_used_mib") or 0
        if total and used > GPU_BUSY_FRACTION * total:
            procs = g.get("compute_processes")
            warns.append(f"GPU {i}: {used / MIB_PER_GIB:.1f} of {total / MIB_PER_GIB:.1f} GiB in use"
                         + (f" by {procs} process(es)" if procs else ""))
            remedies.append("find the processes with nvidia-smi and stop them, or plan with the memory that is free")
    if no_persistence:
        warns.append(f"persistence mode off on GPU(s) {','.join(map(str, no_persistence))}")
        remedies.append("sudo nvidia-smi -pm 1 (each job otherwise pays driver initialisation; DCGM flags it)")
    if fails or warns:
        return CheckResult(name, FAIL if fails else WARN, "; ".join(fails + warns), "; ".join(dict.fromkeys(remedies)))
    return CheckResult(name, PASS, f"{len(f.gpus)} GPU(s): no ECC errors, no pending retirements or remaps, "
                                   "persistence on, memory free")


# ---------------------------------------------------------------------------- torch / CUDA / nvcc


def _arch_covered(cap: tuple[int, int], arch_list: Sequence[str]) -> bool:
    """CUDA binary compatibility: sm_XY code runs on X.Z for Z >= Y; PTX (compute_XY) JITs on anything newer."""
    for arch in arch_list:
        kind, _, digits = arch.partition("_")
        if not digits.isdigit() or len(digits) < 2:
            continue
        major, minor = int(digits[:-1]), int(digits[-1])
        if kind == "sm" and major == cap[0] and minor <= cap[1]:
            return True
        if kind == "compute" and (major, minor) <= cap:
            return True
    return False


def check_torch(f: _Facts, node) -> CheckResult:
    name = "torch"
    t = f.torch
    if not t.get("installed"):
        return CheckResult(name, FAIL, t.get("error") or "torch is not installed", _install_hint(f, node))
    label = f.torch_label()
    if not t.get("cuda"):
        where = (f"the node has {len(f.gpus)} GPU(s)" if f.gpus else
                 f"nodes.yaml gives {node.name} {node.gpu.count} GPU(s)")
        return CheckResult(name, FAIL, f"{label} is a CPU-only build (torch.version.cuda is None); {where}",
                           _install_hint(f, node))
    if t.get("error"):
        return CheckResult(name, FAIL, f"{label} (CUDA {t['cuda']}): {t['error']}",
                           "see the driver-cuda check: the driver must support torch's CUDA")
    if not t.get("cuda_available"):
        visible = f.env.get("CUDA_VISIBLE_DEVICES")
        why = (f"CUDA_VISIBLE_DEVICES={visible!r} hides every GPU" if visible is not None and not visible.strip()
               else "no usable GPU or driver")
        return CheckResult(name, FAIL, f"{label} (CUDA {t['cuda']}) cannot use CUDA: torch.cuda.is_available() "
                                       f"is False ({why})",
                           "fix the nvidia-driver check first; then check CUDA_VISIBLE_DEVICES and /dev/nvidia* "
                           "permissions")
    problems, remedies = [], []
    arch_list = t.get("arch_list") or []
    caps = {tuple(c) for c in t.get("capabilities") or []}
    caps |= {tuple(g["compute_capability"]) for g in f.gpus if g.get("compute_capability")}
    for cap in sorted(caps):
        if arch_list and not _arch_covered(cap, arch_list):
            problems.append(f"no kernels for {_arch(cap)} (built for {' '.join(arch_list)})")
            remedies.append("install a torch build that lists this architecture (a newer release)")
    visible = f.env.get("CUDA_VISIBLE_DEVICES")
    if visible and visible.strip() and not visible.startswith(("GPU-", "MIG-")):
        want = len([v for v in visible.split(",") if v.strip()])
        if want != t.get("device_count"):
            problems.append(f"CUDA_VISIBLE_DEVICES lists {want} GPU(s) but torch sees {t.get('device_count')}")
            remedies.append("check the Slurm GRES allocation and CUDA_VISIBLE_DEVICES")
    detail = (f"{label}: CUDA {t['cuda']}, {t.get('device_count')} GPU(s) visible, NCCL {t.get('nccl') or '?'}")
    if problems:
        fatal = any("no kernels" in p for p in problems)
        return CheckResult(name, FAIL if fatal else WARN, f"{detail}; " + "; ".join(problems), "; ".join(remedies))
    return CheckResult(name, PASS, detail)


def check_driver_cuda(f: _Facts, node) -> CheckResult:
    """The driver must support the CUDA torch was built with (driver CUDA >= torch CUDA)."""
    name = "driver-cuda"
    driver_cuda = f.nvidia.get("cuda_version")
    if not driver_cuda:
        return _not_checked(name, f.nvml_why, "the driver's CUDA version is unknown")
    if not f.torch_cuda:
        return _not_checked(name, f"{f.torch_label()} has no CUDA (CPU build or missing)",
                            f"the driver supports CUDA {driver_cuda}")
    driver, wheel = parse_cuda(driver_cuda), parse_cuda(f.torch_cuda)
    if driver is None or wheel is None:
        return _not_checked(name, f"unreadable versions: driver {driver_cuda!r}, torch {f.torch_cuda!r}")
    env_file = _env_file_for(driver_cuda)
    if driver >= wheel:
        return CheckResult(name, PASS, f"driver supports CUDA {driver_cuda} >= torch's CUDA {f.torch_cuda}")
    remedy = (f"pip install -r {env_file} (torch built for CUDA <= {driver_cuda}) or upgrade the NVIDIA driver"
              if env_file else "upgrade the NVIDIA driver")
    if driver[0] == wheel[0]:
        return CheckResult(
            name, WARN,
            f"driver supports CUDA {driver_cuda} < torch's CUDA {f.torch_cuda}: torch runs only through CUDA "
            "minor-version compatibility, without PTX JIT (Triton / torch.compile kernels fail with \"the "
            "provided PTX was compiled with an unsupported toolchain\")", remedy)
    return CheckResult(name, FAIL, f"driver supports CUDA {driver_cuda}, torch needs {f.torch_cuda} (another major "
                                   "version: CUDA cannot start)", remedy)


def check_nvcc(f: _Facts, node) -> CheckResult:
    """nvcc must match torch's CUDA for extension builds (apex, flash-attn from source)."""
    name = "nvcc"
    nvcc = f.section("nvcc")
    found = f"nvcc {nvcc.get('version')} ({nvcc.get('path')})" if nvcc.get("found") else "no nvcc"
    if not f.torch_cuda:
        return _not_checked(name, f"{f.torch_label()} has no CUDA (CPU build or missing)", found)
    if not nvcc.get("found"):
        return CheckResult(name, WARN, f"no nvcc: {nvcc.get('error') or 'not found'}; CUDA extensions (apex, "
                                       "flash-attn from source) cannot be built here, prebuilt wheels still work",
                           f"install the CUDA {f.torch_cuda} toolkit and export CUDA_HOME to it before building "
                           "extensions")
    have, want = parse_cuda(nvcc.get("version")), parse_cuda(f.torch_cuda)
    if have is None:
        return CheckResult(name, WARN, f"nvcc at {nvcc.get('path')}: {nvcc.get('error') or 'version unreadable'}",
                           "run `nvcc --version` on the node")
    if have == want:
        return CheckResult(name, PASS, f"{found} matches torch's CUDA {f.torch_cuda}")
    cu = f"cu{have[0]}{have[1]}"
    same_line = next((n for n, c in CUDA_LINES if n == cu), None)
    driver = parse_cuda(f.nvidia.get("cuda_version"))
    options = [f"export CUDA_HOME=/usr/local/cuda-{f.torch_cuda} (a toolkit matching torch) before building"]
    if same_line and driver is not None and driver >= have:
        options.append(f"or install torch for nvcc's CUDA: pip install -r env/requirements-{same_line}.txt")
    remedy = "; ".join(options)
    if have[0] != want[0]:
        return CheckResult(name, FAIL, f"{found} vs torch's CUDA {f.torch_cuda}: another major version, so "
                                       "torch.utils.cpp_extension refuses to build any CUDA extension", remedy)
    return CheckResult(
        name, WARN,
        f"{found} differs from torch's CUDA {f.torch_cuda}: apex's setup.py refuses the mismatch (\"Cuda extensions "
        "are being compiled with a version of Cuda that does not match\", Open-Sora #134) and torch extension builds "
        "warn; this is the seed's \"CUDA 12.4\" trouble. Prebuilt wheels are unaffected", remedy)


# ---------------------------------------------------------------------------- what the GPU can run


def _plan_str(plan: Mapping | None, key: str) -> str | None:
    value = (plan or {}).get(key)
    return None if value is None else str(value).lower()


def check_precision(f: _Facts, node, plan: Mapping | None) -> CheckResult:
    name = "precision"
    cap, gpu, source = _gpu_arch(f, node)
    bf16 = cap >= (8, 0)
    dtype = _plan_str(plan, "dtype")
    if dtype in ("bf16", "bfloat16") and not bf16:
        return CheckResult(name, FAIL, f"the plan runs bf16 but {gpu} is {_arch(cap)} ({source}): no bf16 before "
                                       "Ampere (sm80); this is the seed's \"Version Error\"",
                           "plan with --dtype fp16 (the planner picks fp16 on such GPUs when dtype is not pinned)")
    if dtype:
        return CheckResult(name, PASS, f"the plan's dtype {dtype} runs on {gpu} ({_arch(cap)}, {source})")
    if bf16:
        return CheckResult(name, PASS, f"bf16 supported: {gpu} is {_arch(cap)} ({source})")
    return CheckResult(
        name, WARN,
        f"{gpu} is {_arch(cap)} ({source}): no bf16 and no FlashAttention-2, so Open-Sora 1.2's defaults (bf16, "
        "flash-attn, fused layernorm) fail here with the seed's \"Version Error\"",
        f"run fp16 with unfused attention: `clusterkit plan --node {node.name}` picks it; pass --res/--frames to "
        "preflight to check a concrete plan")


def check_attention(f: _Facts, node, plan: Mapping | None) -> CheckResult:
    name = "attention"
    cap, gpu, source = _gpu_arch(f, node)
    fa2 = cap >= (8, 0)
    attention = _plan_str(plan, "attention")
    pkg = (f.section("packages").get("flash_attn") or {})
    if attention in FUSED_ATTENTION and not fa2:
        return CheckResult(name, FAIL, f"the plan uses fused attention ({attention}) but {gpu} is {_arch(cap)} "
                                       f"({source}): FlashAttention-2 needs sm80+",
                           "plan with --attention unfused (the planner charges its O(S^2) memory) or use an "
                           "Ampere-or-newer node")
    if pkg.get("installed") and pkg.get("importable") is False:
        return CheckResult(
            name, WARN,
            f"flash-attn {pkg.get('version')} is installed but does not import: {pkg.get('import_error')}. "
            "opensora_core silently falls back to torch SDPA; upstream Open-Sora crashes (an \"undefined symbol\" "
            "means the wheel was built for another torch, Open-Sora #338)",
            "pip install --force-reinstall --no-build-isolation flash-attn (after torch), or pip uninstall flash-attn")
    if pkg.get("installed") and not fa2:
        return CheckResult(name, WARN, f"flash-attn {pkg.get('version')} is installed but {gpu} is {_arch(cap)}: "
                                       "FlashAttention-2 needs sm80+, so it is never used here",
                           "pip uninstall flash-attn (it only costs import time and confusion on this node)")
    if not fa2:
        return CheckResult(name, PASS, f"{gpu} is {_arch(cap)} ({source}): no FlashAttention-2, attention runs "
                                       "unfused" + (" as planned" if attention else " (the planner charges its memory)"))
    if not pkg:
        which = "flash-attn not probed"
    elif pkg.get("installed"):
        which = f"flash-attn {pkg.get('version')} " + ("imports" if pkg.get("importable") else "(import not tried)")
    else:
        which = "flash-attn not installed: torch SDPA's own flash kernel is used"
    return CheckResult(name, PASS, f"fused attention available on {gpu} ({_arch(cap)}, {source}); {which}")


def check_packages(f: _Facts) -> CheckResult:
    """The optional kernels: none is required by opensora_core; a broken one is worth knowing."""
    name = "packages"
    packages = f.section("packages")
    if not any(isinstance(packages.get(m), dict) for m in ("flash_attn", "xformers", "apex", "colossalai")):
        return _not_checked(name, packages.get("error") or "no package facts")
    parts, broken = [], []
    for module, label in (("flash_attn", "flash-attn"), ("xformers", "xformers"), ("apex", "apex"),
                          ("colossalai", "colossalai")):
        entry = packages.get(module) or {}
        if not entry.get("installed"):
            parts.append(f"{label}: not installed")
            continue
        state = {True: "imports", False: "does not import", None: "import not tried"}[entry.get("importable")]
        parts.append(f"{label} {entry.get('version') or '?'}: {state}")
        if entry.get("importable") is False and module != "flash_attn":  # flash-attn: see the attention check
            broken.append(f"{label}: {entry.get('import_error')}")
    if broken:
        return CheckResult(name, WARN, "; ".join(parts) + ". Broken: " + "; ".join(broken),
                           "reinstall the broken package against this torch (compiled extensions must be built for "
                           "the installed torch and CUDA), or uninstall it: opensora_core needs none of them")
    return CheckResult(name, PASS, "; ".join(parts) + " (opensora_core needs none of them)")


def check_p2p(f: _Facts, node, inventory=None) -> CheckResult:
    name = "p2p"
    p2p = f.section("p2p")
    matrix = p2p.get("matrix")
    if matrix is None:
        reason = p2p.get("reason") or p2p.get("error") or "no P2P facts"
        if reason == "fewer than 2 GPUs":
            return CheckResult(name, PASS, "one GPU: peer-to-peer does not apply")
        return _not_checked(name, reason)
    pairs = [(i, j) for i, row in enumerate(matrix) for j, ok in enumerate(row) if i < j]
    missing = [(i, j) for i, j in pairs if not (matrix[i][j] and matrix[j][i])]
    spec = node.gpu.spec
    disabled = node.nccl_env.get("NCCL_P2P_DISABLE") == "1" or f.env.get("NCCL_P2P_DISABLE") == "1"
    source = p2p.get("source")
    if not missing:
        if spec.p2p_pcie is False and not disabled:
            edit, text = _Edits(node, inventory).make("nccl_env.NCCL_P2P_DISABLE", "1")
            return CheckResult(name, WARN, f"all {len(pairs)} GPU pairs report P2P ({source}) on {spec.name}, where "
                                           "NCCL's P2P is known to hang right after \"Init COMPLETE\" (signature N8)",
                               text, edit)
        return CheckResult(name, PASS, f"all {len(pairs)} GPU pairs have P2P access ({source})")
    if len(missing) == len(pairs):
        note = ("NCCL_P2P_DISABLE=1 is set" if disabled else "NCCL moves intra-node traffic through /dev/shm and "
                "host memory")
        return CheckResult(name, PASS, f"no GPU pair has P2P access ({source}): {note}")
    shown = ", ".join(f"{i}-{j}" for i, j in missing[:8]) + (" ..." if len(missing) > 8 else "")
    return CheckResult(
        name, WARN, f"{len(missing)} of {len(pairs)} GPU pairs lack P2P ({shown}; {source}): usually GPUs under "
                    "different CPU sockets / PCIe root complexes; NCCL routes those pairs through host memory",
        "keep sequence-parallel groups inside GPUs that have P2P with each other (nvidia-smi topo -m); if collectives "
        "hang with P2P on, check PCIe ACS / IOMMU (signature N9) or set NCCL_P2P_DISABLE=1")


# ---------------------------------------------------------------------------- inventory vs node


def check_inventory(f: _Facts, node, inventory=None) -> list[CheckResult]:
    edits = _Edits(node, inventory)
    results = [_inv_gpu_model(f, node, edits), _inv_gpu_count(f, node, edits), _inv_gpu_memory(f, node)]
    results.append(_inv_version(f, node, edits, "cuda", f.nvidia.get("cuda_version") if f.nvml_ok else None,
                                f.nvml_why, "the driver's CUDA version"))
    results.append(_inv_version(f, node, edits, "driver", f.nvidia.get("driver_version") if f.nvml_ok else None,
                                f.nvml_why, "the driver version"))
    results.append(_inv_version(f, node, edits, "nccl", f.torch.get("nccl"),
                                f"{f.torch_label()} reports no NCCL (CPU build or missing)", "the NCCL version"))
    results.append(_inv_p2p(f, node, edits))
    results.append(_inv_nics(f, node, edits))
    return results


def _inv_gpu_model(f: _Facts, node, edits: _Edits) -> CheckResult:
    name = "inventory-gpu-model"
    if not f.nvml_ok or not f.gpus:
        return _not_checked(name, f.nvml_why if not f.nvml_ok else "no GPUs", f"nodes.yaml says {node.gpu.model}")
    names = sorted({g["name"] for g in f.gpus})
    if len(names) > 1:
        return CheckResult(name, FAIL, f"mixed GPU models on one node: {', '.join(names)}; nodes.yaml holds one model "
                                       "per node",
                           "describe the node by the model its jobs use, and pin jobs to those GPUs")
    measured = match_nvml_name(names[0])
    if measured is None:
        return CheckResult(name, WARN, f"NVML reports {names[0]!r}, which the GPU catalog does not know; planning "
                                       f"uses nodes.yaml's {node.gpu.model}",
                           "add the SKU to clusterkit/gpus.py (with sources) or make sure nodes.yaml names its "
                           "closest equivalent")
    written = node.gpu.spec
    if measured.key == written.key:
        return CheckResult(name, PASS, f"{names[0]} = nodes.yaml's {written.key}")
    edit, text = edits.make("gpu.model", measured.key)
    if not written.variant_known and measured.family == written.family:
        return CheckResult(name, WARN, f"nodes.yaml says {written.key} (variant unknown: planned as "
                                       f"{written.memory_gb:g} GB); the node has {names[0]}", text, edit)
    return CheckResult(name, FAIL, f"nodes.yaml says {written.key} ({written.name}); the node has {names[0]}",
                       text, edit)


def _inv_gpu_count(f: _Facts, node, edits: _Edits) -> CheckResult:
    name = "inventory-gpu-count"
    if not f.nvml_ok:
        return _not_checked(name, f.nvml_why, f"nodes.yaml says {node.gpu.count}")
    count = len(f.gpus)
    if count == node.gpu.count:
        return CheckResult(name, PASS, f"{count} GPU(s), as nodes.yaml says")
    edit, text = edits.make("gpu.count", count)
    return CheckResult(name, FAIL, f"nodes.yaml says {node.gpu.count} GPU(s); NVML sees {count}",
                       text + " (or find the missing GPUs: nvidia-smi -L, dmesg)", edit)


def _inv_gpu_memory(f: _Facts, node) -> CheckResult:
    name = "inventory-gpu-memory"
    if not f.nvml_ok or not f.gpus:
        return _not_checked(name, f.nvml_why if not f.nvml_ok else "no GPUs",
                            f"planning budget {node.gpu.usable_gib:g} GiB per GPU")
    smallest = min(f.gpus, key=lambda g: g.get("memory_total_mib") or 0)
    total_gib = (smallest.get("memory_total_mib") or 0) / MIB_PER_GIB
    budget = node.gpu.usable_gib
    if total_gib + 0.05 < budget:
        ecc = (smallest.get("ecc") or {}).get("enabled")
        return CheckResult(name, WARN, f"the planner budgets {budget:g} GiB per GPU but GPU {smallest['index']} has "
                                       f"{total_gib:.2f} GiB in total" + (" (ECC is on)" if ecc else ""),
                           "check that nodes.yaml's gpu.model is the exact variant; plans on this node may be "
                           "optimistic by the difference")
    return CheckResult(name, PASS, f"{total_gib:.2f} GiB per GPU >= the planning budget {budget:g} GiB")


def _inv_version(f: _Facts, node, edits: _Edits, key: str, measured: str | None, why: str, what: str) -> CheckResult:
    name = f"inventory-{key}"
    written = getattr(node, key)
    if measured is None:
        return _not_checked(name, why, f"nodes.yaml says {key}: {_yaml(written)}")
    if written is None:
        edit, text = edits.make(key, measured)
        return CheckResult(name, WARN, f"nodes.yaml does not know {what}; the node reports {measured}", text, edit)
    if _same_version(measured, written):
        return CheckResult(name, PASS, f"{key}: {measured}, as nodes.yaml says")
    edit, text = edits.make(key, measured)
    return CheckResult(name, FAIL, f"nodes.yaml says {key}: {_yaml(written)}; the node reports {measured}", text, edit)


def _inv_p2p(f: _Facts, node, edits: _Edits) -> CheckResult:
    name = "inventory-p2p"
    matrix = f.section("p2p").get("matrix")
    written = node.interconnect.p2p
    if matrix is None:
        reason = f.section("p2p").get("reason") or "no P2P facts"
        if reason == "fewer than 2 GPUs":
            return CheckResult(name, PASS, "one GPU: nothing to record")
        return _not_checked(name, reason, f"nodes.yaml says p2p: {_yaml(written)}")
    values = [ok for i, row in enumerate(matrix) for j, ok in enumerate(row) if i != j]
    if all(values):
        measured: bool | None = True
    elif not any(values):
        measured = False
    else:
        measured = None
    if measured is None:
        return CheckResult(name, WARN if written else PASS,
                           f"P2P works between some GPU pairs only; nodes.yaml says p2p: {_yaml(written)}",
                           "p2p: true claims every pair; leave null (NCCL uses P2P where a pair has it)" if written
                           else "")
    if measured and node.gpu.spec.p2p_pcie is False and written is False:
        return CheckResult(name, PASS, f"NVML/torch report P2P on {node.gpu.spec.name}, but p2p: false is kept on "
                                       "purpose: NCCL's P2P hangs on these cards (N8)")
    if written == measured:
        return CheckResult(name, PASS, f"p2p: {_yaml(measured)}, as nodes.yaml says")
    edit, text = edits.make("interconnect.p2p", measured)
    status = WARN if written is None else FAIL
    return CheckResult(name, status, f"nodes.yaml says p2p: {_yaml(written)}; the node reports {_yaml(measured)} for "
                                     "every GPU pair", text, edit)


def _fabric_candidates(interfaces: list[dict]) -> list[str]:
    return [i["name"] for i in interfaces if i.get("up") and i.get("ipv4") and not i.get("loopback")
            and not i["name"].startswith(_NOT_FABRIC)]


def _inv_nics(f: _Facts, node, edits: _Edits) -> CheckResult:
    name = "inventory-nics"
    network = f.section("network")
    if "interfaces" not in network:
        return _not_checked(name, network.get("error") or "no network facts")
    interfaces = {i["name"]: i for i in network["interfaces"]}
    candidates = _fabric_candidates(network["interfaces"])
    if node.nics is None:
        if not candidates:
            return CheckResult(name, WARN, "nodes.yaml does not list nics, and no UP interface with IPv4 (other than "
                                           "loopback and virtual ones) exists", "check the node's networking")
        edit, text = edits.make("nics", candidates)
        return CheckResult(name, WARN, f"nodes.yaml does not list nics; UP interfaces with IPv4: "
                                       f"{', '.join(candidates)}", text, edit)
    problems = []
    for nic in node.nics:
        entry = interfaces.get(nic)
        if entry is None:
            problems.append(f"{nic} does not exist")
        elif not entry.get("up"):
            problems.append(f"{nic} is down")
        elif not entry.get("ipv4"):
            problems.append(f"{nic} has no IPv4 address")
    if problems:
        edit, text = edits.make("nics", candidates) if candidates else (None, "fix the node's networking")
        return CheckResult(name, FAIL, f"nodes.yaml nics {list(node.nics)}: " + "; ".join(problems)
                           + f" (the node has {', '.join(sorted(interfaces))})", text, edit)
    return CheckResult(name, PASS, f"nics {', '.join(node.nics)} exist, are up and have IPv4")


# ---------------------------------------------------------------------------- host: shm, disk, RAM, network, ports


def check_shm(f: _Facts) -> CheckResult:
    name = "dev-shm"
    shm = f.section("shm")
    if shm.get("error") or shm.get("free_bytes") is None:
        return _not_checked(name, shm.get("error") or "no /dev/shm facts")
    total, free = shm["total_bytes"], shm["free_bytes"]
    detail = f"{shm['path']}: {_gib(free)} free of {_gib(total)}"
    stale = shm.get("nccl_segments") or 0
    if stale:
        detail += f"; {stale} leftover nccl-* segment(s) ({_gib(shm.get('nccl_segment_bytes'))})"
    remedy = ("give the container a bigger /dev/shm (docker --shm-size=8g, or mount a tmpfs there); "
              "NCCL_SHM_DISABLE=1 is the slow last resort")
    if free < SHM_FAIL_BYTES:
        return CheckResult(name, FAIL, detail + ": NCCL's shared-memory transport fails (\"No space left on device\", "
                                                "signature N10)", remedy)
    if free < SHM_WARN_BYTES or stale:
        extra = "; remove stale segments when no job runs: rm /dev/shm/nccl-*" if stale else ""
        return CheckResult(name, WARN, detail + (": under 1 GiB" if free < SHM_WARN_BYTES else ""),
                           (remedy if free < SHM_WARN_BYTES else "") + extra)
    return CheckResult(name, PASS, detail)


def check_disk(f: _Facts) -> CheckResult:
    name = "disk"
    disk = f.section("disk")
    if disk.get("error") or disk.get("free_bytes") is None:
        return _not_checked(name, disk.get("error") or "no disk facts")
    detail = f"{_gib(disk['free_bytes'])} free of {_gib(disk['total_bytes'])} at {disk.get('measured_at')}"
    if disk.get("measured_at") != disk.get("path"):
        detail += f" (for {disk.get('path')}, not created yet)"
    remedy = "free space there or choose another --output-dir"
    if disk["free_bytes"] < DISK_FAIL_BYTES:
        return CheckResult(name, FAIL, detail + ": under 1 GiB", remedy)
    if disk["free_bytes"] < DISK_WARN_BYTES:
        return CheckResult(name, WARN, detail + ": under 20 GiB, less than one training checkpoint (~18 GiB)", remedy)
    return CheckResult(name, PASS, detail)


def check_host(f: _Facts, node, plan: Mapping | None) -> CheckResult:
    name = "host-resources"
    host = f.section("host")
    if "memory_total_bytes" not in host:
        return _not_checked(name, host.get("error") or "no host facts")
    ranks = int(((plan or {}).get("layout") or {}).get("gpus") or node.gpu.count)
    cpus = host.get("cpus_logical") or 0
    detail = (f"{_gib(host['memory_available_bytes'])} of {_gib(host['memory_total_bytes'])} RAM available, "
              f"{cpus} CPUs ({host.get('cpus_usable')} usable by this process)")
    problems, remedies = [], []
    if host["memory_available_bytes"] < HOST_RAM_WARN_BYTES:
        problems.append("under 24 GiB of RAM available: loading T5-XXL in fp32 (~19 GiB) passes through host memory")
        remedies.append("free host memory, or offload/encode T5 once (--t5 offload)")
    if cpus < ranks:
        problems.append(f"{cpus} CPUs for {ranks} ranks (one process per GPU)")
        remedies.append("use fewer GPUs per job on this node, or expect CPU-bound data loading")
    if problems:
        return CheckResult(name, WARN, detail + ": " + "; ".join(problems), "; ".join(remedies))
    return CheckResult(name, PASS, detail)


def nccl_ifname_matches(spec: str, names: Sequence[str]) -> list[str]:
    """Interfaces NCCL_SOCKET_IFNAME selects, by NCCL's rules: a comma list of prefixes;
    a leading ``^`` excludes them instead; a ``=`` (after any ``^``) makes them exact names."""
    text = spec.strip()
    exclude = text.startswith("^")
    text = text[1:] if exclude else text
    exact = text.startswith("=")
    text = text[1:] if exact else text
    items = [p.strip() for p in text.split(",") if p.strip()]

    def hit(name: str) -> bool:
        return any(name == p if exact else name.startswith(p) for p in items)

    return [n for n in names if hit(n) != exclude]


def nccl_default_interfaces(interfaces: Sequence[Mapping]) -> list[str]:
    """What NCCL picks with NCCL_SOCKET_IFNAME unset: ib*, else anything but docker*/lo, else docker*, else lo."""
    usable = [i["name"] for i in interfaces if i.get("up") and (i.get("ipv4") or i.get("ipv6"))]
    for rule in NCCL_DEFAULT_ORDER:
        chosen = nccl_ifname_matches(rule, usable)
        if chosen:
            return chosen
    return []


def check_nccl_ifname(f: _Facts, node) -> CheckResult:
    name = "nccl-socket-ifname"
    network = f.section("network")
    if "interfaces" not in network:
        return _not_checked(name, network.get("error") or "no network facts")
    interfaces = network["interfaces"]
    by_name = {i["name"]: i for i in interfaces}
    value, source = node.nccl_env.get("NCCL_SOCKET_IFNAME"), "nodes.yaml nccl_env"
    if value is None:
        value, source = f.env.get("NCCL_SOCKET_IFNAME"), "the environment"
    if value is None:
        chosen = nccl_default_interfaces(interfaces)
        if not chosen or all(by_name[n].get("loopback") for n in chosen):
            return CheckResult(name, WARN, "NCCL_SOCKET_IFNAME is unset and NCCL would fall back to "
                                           f"{', '.join(chosen) or 'nothing'}: multi-node jobs cannot connect",
                               "bring up a fabric interface, or set NCCL_SOCKET_IFNAME in nodes.yaml nccl_env")
        return CheckResult(name, PASS, f"NCCL_SOCKET_IFNAME unset: NCCL picks {', '.join(chosen)} (ib* first, then "
                                       "anything but lo and docker*)")
    matched = nccl_ifname_matches(value, list(by_name))
    usable = [n for n in matched if by_name[n].get("up") and by_name[n].get("ipv4")]
    have = ", ".join(f"{i['name']}{'' if i.get('up') else ' (down)'}" for i in interfaces)
    suggestion = _fabric_candidates(interfaces)
    remedy = (f"set NCCL_SOCKET_IFNAME (in nodes.yaml nccl_env for {node.name}) to a value that matches this node: "
              + (f"e.g. {suggestion[0].rstrip('0123456789') or suggestion[0]} (a prefix) or " if suggestion else "")
              + "the exclusion form ^lo,docker,veth,virbr")
    if not matched:
        return CheckResult(name, FAIL, f"NCCL_SOCKET_IFNAME={value} (from {source}) matches no interface on this node "
                                       f"(it has {have}): NCCL fails with \"Bootstrap : no socket interface found\" "
                                       "(signature N11)", remedy)
    if not usable:
        return CheckResult(name, FAIL, f"NCCL_SOCKET_IFNAME={value} (from {source}) matches {', '.join(matched)}, but "
                                       "none is up with an IPv4 address (signature N11)", remedy)
    if all(by_name[n].get("loopback") for n in usable):
        return CheckResult(name, WARN, f"NCCL_SOCKET_IFNAME={value} (from {source}) selects only loopback "
                                       f"({', '.join(usable)}): fine on one node, unreachable from other nodes", remedy)
    note = "; some NCCL builds ignore the '=' exact-match form" if "=" in value[:2] else ""
    return CheckResult(name, PASS, f"NCCL_SOCKET_IFNAME={value} (from {source}) selects {', '.join(usable)}{note}")


def check_port(f: _Facts) -> CheckResult:
    name = "rendezvous-port"
    ports = f.section("ports")
    checked = ports.get("checked")
    if not checked:
        return _not_checked(name, ports.get("error") or "no port facts")
    busy = [c for c in checked if c.get("free") is False]
    unknown = [c for c in checked if c.get("free") is None]
    requested = [c for c in checked if c.get("why") == "requested"]
    if requested:
        c = requested[0]
        if c.get("free") is False:
            return CheckResult(name, FAIL, f"port {c['port']} is in use on this node: a rendezvous there fails with "
                                           "EADDRINUSE (signature R1)",
                               "choose another port (clusterkit's own launches derive a free one per job and probe it "
                               f"on the head node); find the holder with: ss -ltnp 'sport = :{c['port']}'")
        if c.get("free") is None:
            return _not_checked(name, c.get("error") or "port probe failed", f"port {c['port']}")
        return CheckResult(name, PASS, f"port {c['port']} is free (bound on the wildcard address)")
    if busy:
        shown = ", ".join(str(c["port"]) for c in busy)
        return CheckResult(name, WARN, f"torchrun's default port(s) {shown} are in use: a hand-written torchrun "
                                       "without --standalone or an explicit port collides (signature R1); clusterkit's "
                                       "launches never use them",
                           "launch through clusterkit, or pass --rdzv-endpoint localhost:0 / --standalone to torchrun")
    if unknown:
        return _not_checked(name, unknown[0].get("error") or "port probe failed")
    return CheckResult(name, PASS, "torchrun's default ports " + ", ".join(str(c["port"]) for c in checked) + " are "
                                   "free (pass --port P to check the port a job will use)")


# ---------------------------------------------------------------------------- the plan


def plan_entry(plan: Mapping | None, node_name: str) -> Mapping | None:
    """One node's entry of a plan: accepts the entry itself or a whole plan result {"nodes": [...]}."""
    if plan is None:
        return None
    if "nodes" in plan and isinstance(plan["nodes"], list):
        return next((n for n in plan["nodes"] if n.get("name") == node_name), None)
    return plan


def check_plan_memory(f: _Facts, node, plan: Mapping | None) -> CheckResult:
    name = "plan-memory"
    if plan is None:
        return CheckResult(name, WARN, f"the plan has no entry for {node.name}", "plan this node: --node " + node.name)
    if not plan.get("feasible", True):
        reasons = "; ".join(plan.get("reasons") or []) or "no reason given"
        alternatives = plan.get("alternatives") or []
        shown = "; ".join(a if isinstance(a, str) else a.get("summary") or str(a) for a in alternatives[:3])
        return CheckResult(name, FAIL, f"the planner finds no feasible layout on {node.name}: {reasons}",
                           f"try: {shown}" if shown else "change the request (resolution, frames, T5 placement)")
    predicted = plan.get("predicted") or {}
    peak = predicted.get("peak_gib_per_gpu")
    gpus_used = int((plan.get("layout") or {}).get("gpus") or 1)
    if peak is None:
        return _not_checked(name, "the plan has no predicted.peak_gib_per_gpu")
    if not f.nvml_ok or not f.gpus:
        return _not_checked(name, f.nvml_why if not f.nvml_ok else "no GPUs",
                            f"the plan predicts {peak:.1f} GiB per GPU against the planning budget "
                            f"{predicted.get('usable_gib_per_gpu', node.gpu.usable_gib)} GiB")
    free = sorted(((g.get("memory_free_mib") or 0) / MIB_PER_GIB, g["index"]) for g in f.gpus)[::-1]
    if len(free) < gpus_used:
        return CheckResult(name, FAIL, f"the plan uses {gpus_used} GPUs; the node has {len(free)}",
                           "re-plan this node (fix nodes.yaml's gpu.count first: see inventory-gpu-count)")
    kth_free, kth_index = free[gpus_used - 1]
    if kth_free < peak:
        roomy = [i for gib, i in free if gib >= peak]
        return CheckResult(name, FAIL, f"predicted peak {peak:.1f} GiB per GPU > free memory: only {len(roomy)} GPU(s) "
                                       f"have that much free, the plan needs {gpus_used} (GPU {kth_index}: "
                                       f"{kth_free:.1f} GiB free)",
                           "free the GPUs (nvidia-smi shows what uses them) or pick the planner's lower-memory "
                           "alternative (T5 offload, bf16 T5, fewer frames or a lower resolution)")
    if kth_free - peak < PLAN_MARGIN_FRACTION * peak:
        return CheckResult(name, WARN, f"predicted peak {peak:.1f} GiB per GPU is within 5% of the free "
                                       f"{kth_free:.1f} GiB: allocator fragmentation can tip it over",
                           "set PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True or take a lower-memory option")
    return CheckResult(name, PASS, f"predicted peak {peak:.1f} GiB per GPU fits: {gpus_used} GPU(s) with >= "
                                   f"{kth_free:.1f} GiB free")


# ---------------------------------------------------------------------------- everything


def run_checks(facts: Mapping, node, plan: Mapping | None = None, *, inventory=None) -> list[CheckResult]:
    """Every per-node check, in report order. ``plan``: a plan entry for this node or a whole
    plan result; ``inventory`` (optional) gives nodes.yaml line numbers for the edits."""
    f = _Facts(facts)
    entry = plan_entry(plan, node.name)
    results = [
        check_driver(f, node),
        check_gpu_health(f),
        check_torch(f, node),
        check_driver_cuda(f, node),
        check_nvcc(f, node),
        check_precision(f, node, entry),
        check_attention(f, node, entry),
        check_packages(f),
        check_p2p(f, node, inventory),
        *check_inventory(f, node, inventory),
        check_shm(f),
        check_disk(f),
        check_host(f, node, entry),
        check_nccl_ifname(f, node),
        check_port(f),
    ]
    if plan is not None:
        results.append(check_plan_memory(f, node, entry))
    return [replace(r, node=node.name) for r in results]


def check_nccl_versions(facts_by_node: Mapping[str, Mapping]) -> CheckResult:
    """Every rank of a job must load the same NCCL (signature N14: mixed NCCL hangs or errors)."""
    name = "nccl-versions"
    versions = {n: (f.get("torch") or {}).get("nccl") for n, f in facts_by_node.items()}
    known = {n: v for n, v in versions.items() if v}
    unknown = sorted(n for n, v in versions.items() if not v)
    distinct = sorted(set(known.values()), key=lambda v: _ver(v) or (math.inf,))
    listing = ", ".join(f"{n}: {v}" for n, v in sorted(known.items()))
    if len(distinct) > 1:
        newest = distinct[-1]
        return CheckResult(name, FAIL, f"mixed NCCL versions in one job ({listing}): ranks that load different NCCL "
                                       "builds hang or fail (signature N14)",
                           f"install the same torch (and so NCCL {newest}) on every node of the job, e.g. the same "
                           "env/requirements-*.txt line, or run the job on nodes that already match")
    if unknown:
        return _not_checked(name, f"no NCCL version from {', '.join(unknown)}", listing or "none known")
    return CheckResult(name, PASS, f"every node loads NCCL {distinct[0]} ({', '.join(sorted(known))})" if distinct
                       else "no nodes")


def run_job_checks(facts_by_node: Mapping[str, Mapping]) -> list[CheckResult]:
    """Checks over all nodes of one job (more than one node)."""
    return [check_nccl_versions(facts_by_node)] if len(facts_by_node) > 1 else []


def summarize(results: Sequence[CheckResult]) -> dict:
    """Counts per status, and the overall verdict (ok = no failure)."""
    counts = {s: sum(1 for r in results if r.status == s) for s in STATUSES}
    counts["not_checked"] = sum(1 for r in results if not r.checked)
    return {"ok": counts[FAIL] == 0, "counts": counts}
