"""Probes: small functions that each measure one thing on the machine they run on.

Every probe returns plain JSON data ("facts") and never raises: what cannot be measured is
a fact too (``"error": "no NVIDIA driver: NVML not found"``). ``collect_facts`` runs them
all and guards each one, so even a probe with a bug ends as an ``error`` string in the
report instead of a traceback. Checks (``checks.py``) turn facts into verdicts; probes
judge nothing.

Every side effect goes through ``Host``, one frozen bundle of seams (environment,
command runner, NVML loader, torch importer, psutil, ...). Tests replace any of them;
``Host.for_machine(os.environ)`` is built at the edge (``probe_main``, the CLI).

Nothing heavy is imported at module import time: torch only inside ``probe_torch``,
pynvml only inside ``probe_nvidia``, psutil only when a probe runs.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FACTS_SCHEMA = "clusterkit/preflight-facts/v1"
SHM_PATH = "/dev/shm"
# torchrun's default rendezvous ports: what hand-written launches (the seed's) collide on.
TORCH_DEFAULT_PORTS = (29500, 29400)
# Environment the report records: what decides GPU visibility, NCCL and extension builds.
ENV_KEYS = ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES", "CUDA_HOME", "CUDA_PATH", "SLURM_JOB_ID",
            "SLURMD_NODENAME", "SLURM_JOB_GPUS", "SLURM_CPUS_ON_NODE", "CLUSTERKIT_NODE", "CLUSTERKIT_JOB_ID")
ENV_PREFIXES = ("NCCL_", "TORCH_NCCL_")
# The optional kernels Open-Sora 1.2 can use: (module, distribution, import statement run in a
# subprocess to prove the compiled extension loads against this torch).
PACKAGES = (
    ("flash_attn", "flash-attn", "import flash_attn, flash_attn_2_cuda"),
    ("xformers", "xformers", "import xformers.ops"),
    ("apex", "apex", "from apex.normalization import FusedLayerNorm; import fused_layer_norm_cuda"),
    ("colossalai", "colossalai", "import colossalai"),
)
IMPORT_TIMEOUT_S = 120.0
NVCC_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class CommandResult:
    returncode: int
    stdout: str
    stderr: str


Runner = Callable[[Sequence[str], float], CommandResult]


def run_command(argv: Sequence[str], timeout: float) -> CommandResult:
    """Run argv (a list, never a shell) with a hard timeout; a missing program is exit 127."""
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        return CommandResult(127, "", f"{argv[0]}: not found")
    except subprocess.TimeoutExpired:
        return CommandResult(124, "", f"{argv[0]} timed out after {timeout:g}s")
    except OSError as exc:
        return CommandResult(126, "", f"{argv[0]}: {exc.strerror or exc}")
    return CommandResult(proc.returncode, proc.stdout, proc.stderr)


def _load_nvml() -> Any:
    import pynvml

    return pynvml


def _import_torch() -> Any:
    import torch

    return torch


def _find_spec(name: str) -> Any:
    import importlib.util

    try:
        return importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None


def _dist_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _psutil() -> Any:
    import psutil

    return psutil


def _cpu_affinity() -> int | None:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


@dataclass(frozen=True)
class Host:
    """The seams between the probes and the machine. Every field has a real default."""

    environ: Mapping[str, str] = field(default_factory=dict)
    run: Runner = run_command
    load_nvml: Callable[[], Any] = _load_nvml
    import_torch: Callable[[], Any] = _import_torch
    find_spec: Callable[[str], Any] = _find_spec
    dist_version: Callable[[str], str | None] = _dist_version
    which: Callable[[str], str | None] = shutil.which
    psutil: Callable[[], Any] = _psutil
    listdir: Callable[[str], list[str]] = os.listdir
    file_size: Callable[[str], int] = os.path.getsize
    is_file: Callable[[str], bool] = os.path.isfile
    port_is_free: Callable[[int], bool] | None = None  # None: clusterkit.launch.ports.port_is_free
    cpu_affinity: Callable[[], int | None] = _cpu_affinity
    hostname: Callable[[], str] = socket.gethostname
    clock: Callable[[], float] = time.time
    python: str = sys.executable

    @classmethod
    def for_machine(cls, environ: Mapping[str, str]) -> Host:
        """The real machine, with ``environ`` read once at the edge."""
        return cls(environ=dict(environ))


# ---------------------------------------------------------------------------- NVIDIA driver + GPUs


def _nvml_error_text(exc: BaseException, nvml: Any) -> str:
    """NVML's failures as plain sentences (the one a GPU-less machine gets comes first)."""
    def is_(name: str) -> bool:
        cls = getattr(nvml, name, None)
        return isinstance(cls, type) and isinstance(exc, cls)

    if is_("NVMLError_LibraryNotFound"):
        return "no NVIDIA driver: NVML not found (libnvidia-ml.so.1 is not installed)"
    if is_("NVMLError_DriverNotLoaded"):
        return "NVIDIA driver not loaded: the kernel module is missing or failed to load"
    if is_("NVMLError_NoPermission"):
        return "NVML refused access (no permission on /dev/nvidia*)"
    if is_("NVMLError_LibRmVersionMismatch"):
        return "NVIDIA driver/library version mismatch: the kernel module and libnvidia-ml differ (reboot or reload the driver)"
    return f"NVML error: {exc}"


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _optional(call: Callable[[], Any], nvml: Any) -> Any:
    """A value NVML may not report on this GPU (GeForce has no ECC, pre-Ampere no row remap)."""
    try:
        return call()
    except Exception as exc:  # NVMLError_NotSupported and friends: "not reported" is the fact
        if isinstance(exc, getattr(nvml, "NVMLError", ())):
            return None
        raise


def _cuda_from_int(value: int | None) -> str | None:
    """NVML/CUDA encode versions as 1000*major + 10*minor (12020 -> "12.2")."""
    if not value:
        return None
    return f"{value // 1000}.{(value % 1000) // 10}"


def _mib(n_bytes: int) -> int:
    return int(n_bytes) // (1024 * 1024)


def _device_facts(nvml: Any, index: int) -> tuple[dict, Any]:
    from clusterkit.gpus import match_nvml_name

    handle = nvml.nvmlDeviceGetHandleByIndex(index)
    name = _text(nvml.nvmlDeviceGetName(handle))
    memory = nvml.nvmlDeviceGetMemoryInfo(handle)
    spec = match_nvml_name(name)
    capability = _optional(lambda: list(nvml.nvmlDeviceGetCudaComputeCapability(handle)), nvml)
    persistence = _optional(lambda: nvml.nvmlDeviceGetPersistenceMode(handle), nvml)
    ecc_mode = _optional(lambda: list(nvml.nvmlDeviceGetEccMode(handle)), nvml)
    ecc = None
    if ecc_mode is not None:
        ecc = {
            "enabled": bool(ecc_mode[0]),
            "pending": bool(ecc_mode[1]),
            "uncorrected_volatile": _optional(lambda: int(nvml.nvmlDeviceGetTotalEccErrors(
                handle, nvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, nvml.NVML_VOLATILE_ECC)), nvml),
        }
    retired = None
    pending = _optional(lambda: nvml.nvmlDeviceGetRetiredPagesPendingStatus(handle), nvml)
    if pending is not None:
        retired = {
            "double_bit": len(_optional(lambda: nvml.nvmlDeviceGetRetiredPages(
                handle, nvml.NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR), nvml) or ()),
            "single_bit": len(_optional(lambda: nvml.nvmlDeviceGetRetiredPages(
                handle, nvml.NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS), nvml) or ()),
            "pending": bool(pending),
        }
    remap = _optional(lambda: list(nvml.nvmlDeviceGetRemappedRows(handle)), nvml)
    remapped = None if remap is None else {
        "correctable": int(remap[0]), "uncorrectable": int(remap[1]),
        "pending": bool(remap[2]), "failure": bool(remap[3]),
    }
    processes = _optional(lambda: len(nvml.nvmlDeviceGetComputeRunningProcesses(handle)), nvml)
    pci = _optional(lambda: _text(nvml.nvmlDeviceGetPciInfo(handle).busId), nvml)
    return {
        "index": index,
        "name": name,
        "catalog_key": spec.key if spec else None,
        "uuid": _optional(lambda: _text(nvml.nvmlDeviceGetUUID(handle)), nvml),
        "pci_bus_id": pci,
        "memory_total_mib": _mib(memory.total),
        "memory_free_mib": _mib(memory.free),
        "memory_used_mib": _mib(memory.used),
        "compute_capability": capability,
        "persistence_mode": None if persistence is None else persistence == getattr(nvml, "NVML_FEATURE_ENABLED", 1),
        "ecc": ecc,
        "retired_pages": retired,
        "remapped_rows": remapped,
        "compute_processes": processes,
    }, handle


def _nvml_p2p(nvml: Any, handles: list) -> list[list[bool | None]] | None:
    if len(handles) < 2:
        return None
    matrix: list[list[bool | None]] = []
    for i, a in enumerate(handles):
        row: list[bool | None] = []
        for j, b in enumerate(handles):
            if i == j:
                row.append(None)
                continue
            status = _optional(lambda: nvml.nvmlDeviceGetP2PStatus(a, b, nvml.NVML_P2P_CAPS_INDEX_READ), nvml)
            row.append(None if status is None else status == getattr(nvml, "NVML_P2P_STATUS_OK", 0))
        matrix.append(row)
    return matrix


def probe_nvidia(host: Host) -> dict:
    """The NVIDIA driver, the CUDA version it supports, and every GPU NVML sees.

    NVML sees all GPUs of the machine, whatever CUDA_VISIBLE_DEVICES says (which is right
    for checking the inventory); the torch probe sees the job's allocation.
    """
    facts: dict = {"available": False, "error": None, "driver_version": None, "cuda_version": None,
                   "nvml_version": None, "gpus": [], "p2p_matrix": None}
    try:
        nvml = host.load_nvml()
    except ImportError:
        facts["error"] = "nvidia-ml-py is not installed: pip install nvidia-ml-py"
        return facts
    try:
        nvml.nvmlInit()
    except Exception as exc:
        facts["error"] = _nvml_error_text(exc, nvml)
        return facts
    try:
        facts["available"] = True
        facts["driver_version"] = _text(nvml.nvmlSystemGetDriverVersion())
        facts["cuda_version"] = _cuda_from_int(_optional(nvml.nvmlSystemGetCudaDriverVersion, nvml))
        facts["nvml_version"] = _optional(lambda: _text(nvml.nvmlSystemGetNVMLVersion()), nvml)
        handles = []
        for index in range(int(nvml.nvmlDeviceGetCount())):
            device, handle = _device_facts(nvml, index)
            facts["gpus"].append(device)
            handles.append(handle)
        facts["p2p_matrix"] = _nvml_p2p(nvml, handles)
    except Exception as exc:
        if not isinstance(exc, getattr(nvml, "NVMLError", ())):
            raise
        facts["error"] = _nvml_error_text(exc, nvml)
    finally:
        try:
            nvml.nvmlShutdown()
        except Exception:
            pass
    return facts


# ---------------------------------------------------------------------------- torch


def _nccl_text(version: Any) -> str | None:
    """torch.cuda.nccl.version(): a tuple (2, 20, 5) on current torch, an int on old ones."""
    if version is None:
        return None
    if isinstance(version, (tuple, list)):
        return ".".join(str(int(v)) for v in version[:3])
    code = int(version)
    if code >= 10000:  # NCCL >= 2.9: major*10000 + minor*100 + patch
        return f"{code // 10000}.{(code % 10000) // 100}.{code % 100}"
    return f"{code // 1000}.{(code % 1000) // 100}.{code % 100}"


def probe_torch(host: Host) -> dict:
    """torch's version, the CUDA it was built with, whether CUDA works, NCCL, and P2P access."""
    facts: dict = {"installed": False, "version": None, "cuda": None, "cuda_available": False, "device_count": 0,
                   "capabilities": [], "arch_list": [], "nccl": None, "cudnn": None, "p2p_matrix": None,
                   "import_s": None, "error": None}
    started = time.monotonic()
    try:
        torch = host.import_torch()
    except ImportError as exc:
        facts["error"] = f"torch is not importable: {exc}"
        return facts
    facts["installed"] = True
    facts["import_s"] = round(time.monotonic() - started, 2)
    facts["version"] = str(torch.__version__)
    facts["cuda"] = getattr(torch.version, "cuda", None)
    if not facts["cuda"]:
        return facts  # a CPU build: nothing more to ask
    try:
        facts["nccl"] = _nccl_text(torch.cuda.nccl.version())
    except Exception as exc:
        facts["nccl_error"] = f"{type(exc).__name__}: {exc}"
    try:
        facts["cudnn"] = torch.backends.cudnn.version()
    except Exception:
        pass
    try:
        facts["arch_list"] = list(torch.cuda.get_arch_list())
        facts["cuda_available"] = bool(torch.cuda.is_available())
        if facts["cuda_available"]:
            count = int(torch.cuda.device_count())
            facts["device_count"] = count
            facts["capabilities"] = [list(torch.cuda.get_device_capability(i)) for i in range(count)]
            if count > 1:
                facts["p2p_matrix"] = [[None if i == j else bool(torch.cuda.can_device_access_peer(i, j))
                                        for j in range(count)] for i in range(count)]
    except Exception as exc:  # e.g. "CUDA driver version is insufficient for CUDA runtime version"
        facts["error"] = f"CUDA initialisation failed: {type(exc).__name__}: {exc}"
    return facts


# ---------------------------------------------------------------------------- nvcc


_NVCC_RELEASE = re.compile(r"release (\d+)\.(\d+)")


def probe_nvcc(host: Host) -> dict:
    """The nvcc an extension build would use: $CUDA_HOME (or $CUDA_PATH), else PATH, else /usr/local/cuda.

    This is the order ``torch.utils.cpp_extension`` resolves CUDA_HOME in, and what apex /
    flash-attn source builds compile with.
    """
    facts: dict = {"found": False, "path": None, "source": None, "version": None, "error": None}
    candidates = []
    for key in ("CUDA_HOME", "CUDA_PATH"):
        if host.environ.get(key):
            candidates.append((str(Path(host.environ[key]) / "bin" / "nvcc"), f"${key}"))
    on_path = host.which("nvcc")
    if on_path:
        candidates.append((on_path, "PATH"))
    candidates.append(("/usr/local/cuda/bin/nvcc", "/usr/local/cuda"))
    for path, source in candidates:
        if not host.is_file(path):
            continue
        facts.update(found=True, path=path, source=source)
        result = host.run([path, "--version"], NVCC_TIMEOUT_S)
        match = _NVCC_RELEASE.search(result.stdout)
        if match:
            facts["version"] = f"{match.group(1)}.{match.group(2)}"
        else:
            last = (result.stderr or result.stdout).strip().splitlines()
            facts["error"] = f"`{path} --version` gave no release line (exit {result.returncode}): " + (
                last[-1] if last else "no output")
        return facts
    facts["error"] = "nvcc not found ($CUDA_HOME unset, not on PATH, no /usr/local/cuda)"
    return facts


# ---------------------------------------------------------------------------- optional kernels


def probe_packages(host: Host, *, import_check: bool = True) -> dict:
    """flash-attn / xformers / apex / colossalai: installed, version, and whether the compiled
    extension actually loads (in a subprocess, so a crash or an ``undefined symbol`` cannot
    take the probe down; only run for packages that are installed)."""
    facts: dict = {}
    for module, dist, statement in PACKAGES:
        entry: dict = {"installed": False, "version": None, "importable": None, "import_error": None}
        if host.find_spec(module) is not None:
            entry["installed"] = True
            entry["version"] = host.dist_version(dist)
            if import_check:
                result = host.run([host.python, "-c", statement], IMPORT_TIMEOUT_S)
                entry["importable"] = result.returncode == 0
                if result.returncode != 0:
                    lines = (result.stderr or result.stdout).strip().splitlines()
                    entry["import_error"] = lines[-1] if lines else f"exit {result.returncode}"
        facts[module] = entry
    return facts


# ---------------------------------------------------------------------------- memory, disk, CPUs


def probe_shm(host: Host, path: str = SHM_PATH) -> dict:
    """/dev/shm size and free space, and stale NCCL segments left by dead jobs (signature N10)."""
    facts: dict = {"path": path, "total_bytes": None, "free_bytes": None, "nccl_segments": None,
                   "nccl_segment_bytes": None, "error": None}
    try:
        usage = host.psutil().disk_usage(path)
    except OSError as exc:
        facts["error"] = f"{path}: {exc.strerror or exc}"
        return facts
    facts["total_bytes"], facts["free_bytes"] = int(usage.total), int(usage.free)
    try:
        names = [n for n in host.listdir(path) if n.startswith("nccl-")]
    except OSError:
        return facts
    size = 0
    for name in names:
        try:
            size += int(host.file_size(os.path.join(path, name)))
        except OSError:
            pass
    facts["nccl_segments"], facts["nccl_segment_bytes"] = len(names), size
    return facts


def probe_disk(host: Host, output_dir: str | None) -> dict:
    """Free space where outputs go (the nearest existing parent when the directory is new)."""
    facts: dict = {"path": output_dir, "measured_at": None, "total_bytes": None, "free_bytes": None, "error": None}
    if not output_dir:
        facts["error"] = "no output directory given"
        return facts
    where = Path(output_dir)
    psutil = host.psutil()
    while True:
        try:
            usage = psutil.disk_usage(str(where))
            break
        except FileNotFoundError:
            if where.parent == where:
                facts["error"] = f"{output_dir}: no existing parent directory"
                return facts
            where = where.parent
        except OSError as exc:
            facts["error"] = f"{where}: {exc.strerror or exc}"
            return facts
    facts.update(measured_at=str(where), total_bytes=int(usage.total), free_bytes=int(usage.free))
    return facts


def probe_host(host: Host) -> dict:
    """RAM and CPUs: all of the machine's, and those this process may use (Slurm's allocation)."""
    psutil = host.psutil()
    memory = psutil.virtual_memory()
    return {
        "hostname": host.hostname(),
        "memory_total_bytes": int(memory.total),
        "memory_available_bytes": int(memory.available),
        "cpus_logical": psutil.cpu_count(logical=True),
        "cpus_physical": psutil.cpu_count(logical=False),
        "cpus_usable": host.cpu_affinity(),
    }


# ---------------------------------------------------------------------------- network, ports


def probe_network(host: Host) -> dict:
    """Every interface: up or down, its IPv4/IPv6 addresses, speed and MTU (what NCCL picks from)."""
    psutil = host.psutil()
    addrs = psutil.net_if_addrs()
    stats = psutil.net_if_stats()
    interfaces = []
    for name in sorted(set(addrs) | set(stats)):
        stat = stats.get(name)
        ipv4 = [a.address for a in addrs.get(name, ()) if a.family == socket.AF_INET]
        ipv6 = [a.address for a in addrs.get(name, ()) if a.family == socket.AF_INET6]
        interfaces.append({
            "name": name,
            "up": bool(stat.isup) if stat else None,
            "ipv4": ipv4,
            "ipv6": ipv6,
            "speed_mbps": (stat.speed or None) if stat else None,
            "mtu": stat.mtu if stat else None,
            "loopback": "loopback" in (getattr(stat, "flags", "") or "") if stat else name == "lo",
        })
    return {"interfaces": interfaces}


def probe_ports(host: Host, port: int | None) -> dict:
    """Whether the planned rendezvous port is free (bound on the wildcard address, as the
    launch layer probes). Without one, torchrun's defaults, which hand-written launches use."""
    is_free = host.port_is_free
    if is_free is None:
        from clusterkit.launch.ports import port_is_free as is_free
    wanted = [(port, "requested")] if port is not None else [(p, "torch default") for p in TORCH_DEFAULT_PORTS]
    checked = []
    for number, why in wanted:
        try:
            free: bool | None = bool(is_free(number))
            error = None
        except OSError as exc:
            free, error = None, f"{exc.strerror or exc}"
        checked.append({"port": number, "why": why, "free": free, "error": error})
    return {"requested": port, "checked": checked}


def probe_env(host: Host) -> dict:
    """The environment variables that decide GPU visibility, NCCL behaviour and extension builds."""
    env = {k: host.environ[k] for k in ENV_KEYS if k in host.environ}
    env.update({k: v for k, v in host.environ.items() if k.startswith(ENV_PREFIXES)})
    return dict(sorted(env.items()))


# ---------------------------------------------------------------------------- all together


def _guard(name: str, probe: Callable[[], dict]) -> dict:
    try:
        return probe()
    except Exception as exc:  # a probe bug must still end as a fact, never a traceback
        return {"error": f"probe {name!r} failed: {type(exc).__name__}: {exc}"}


def collect_facts(host: Host, *, output_dir: str | None = None, port: int | None = None,
                  import_check: bool = True) -> dict:
    """Run every probe on this machine; returns JSON-serialisable facts (schema FACTS_SCHEMA)."""
    started = host.clock()
    clock_start = time.monotonic()
    nvidia = _guard("nvidia", lambda: probe_nvidia(host))
    torch_facts = _guard("torch", lambda: probe_torch(host))
    facts = {
        "schema": FACTS_SCHEMA,
        "collected_at": started,
        "host": _guard("host", lambda: probe_host(host)),
        "env": _guard("env", lambda: probe_env(host)),
        "nvidia": nvidia,
        "torch": torch_facts,
        "p2p": _p2p(nvidia, torch_facts),
        "nvcc": _guard("nvcc", lambda: probe_nvcc(host)),
        "packages": _guard("packages", lambda: probe_packages(host, import_check=import_check)),
        "shm": _guard("shm", lambda: probe_shm(host)),
        "disk": _guard("disk", lambda: probe_disk(host, output_dir)),
        "network": _guard("network", lambda: probe_network(host)),
        "ports": _guard("ports", lambda: probe_ports(host, port)),
    }
    facts["duration_s"] = round(time.monotonic() - clock_start, 2)
    return facts


def _p2p(nvidia: dict, torch_facts: dict) -> dict:
    """One P2P matrix: torch's (the job's GPUs, as CUDA sees them) when it has one, else NVML's."""
    if torch_facts.get("p2p_matrix") is not None:
        return {"source": "torch.cuda.can_device_access_peer", "matrix": torch_facts["p2p_matrix"]}
    if nvidia.get("p2p_matrix") is not None:
        return {"source": "nvmlDeviceGetP2PStatus (read)", "matrix": nvidia["p2p_matrix"]}
    gpus = max(len(nvidia.get("gpus") or ()), int(torch_facts.get("device_count") or 0))
    reason = "fewer than 2 GPUs" if nvidia.get("available") or torch_facts.get("cuda_available") else (
        nvidia.get("error") or "no GPUs")
    return {"source": None, "matrix": None, "gpus": gpus, "reason": reason}
