"""Fakes for the preflight probes' seams, fed with facts of real GPUs (tests/unit/data/preflight).

NVML cannot load on a machine without a GPU, so ``FakeNVML`` serves a fixture's ``nvidia``
section through the same calls (and the same "not supported" exceptions) pynvml makes;
``probe_nvidia`` must read it back unchanged. ``fake_torch`` does the same for torch.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from types import SimpleNamespace

DATA = Path(__file__).parent / "data" / "preflight"
FIXTURES = ("rtx8000_cuda122", "rtx8000_cuda124", "rtx3090", "a6000", "a100", "rtx4090")
# fixture -> the seed node it describes
NODE_OF = {"rtx8000_cuda122": "worker-1", "rtx8000_cuda124": "worker-2", "rtx3090": "worker-3",
           "a6000": "worker-5", "a100": "worker-4", "rtx4090": "worker-8"}


def load_facts(name: str) -> dict:
    """A fresh (deep) copy of a fixture, safe to mutate."""
    return copy.deepcopy(json.loads((DATA / f"{name}.json").read_text()))


class FakeNVML:
    """pynvml's surface as the probes use it, answering from a fixture's ``nvidia`` section."""

    class NVMLError(Exception):
        pass

    class NVMLError_NotSupported(NVMLError):
        pass

    class NVMLError_LibraryNotFound(NVMLError):
        pass

    class NVMLError_DriverNotLoaded(NVMLError):
        pass

    class NVMLError_NoPermission(NVMLError):
        pass

    NVML_FEATURE_ENABLED = 1
    NVML_P2P_CAPS_INDEX_READ = 0
    NVML_P2P_STATUS_OK = 0
    NVML_MEMORY_ERROR_TYPE_UNCORRECTED = 1
    NVML_VOLATILE_ECC = 0
    NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS = 0
    NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR = 1

    def __init__(self, nvidia: dict | None = None, init_error: Exception | None = None) -> None:
        self.nvidia = nvidia or {}
        self.gpus = self.nvidia.get("gpus") or []
        self.init_error = init_error
        self.shut_down = False

    def _unsupported(self):
        raise self.NVMLError_NotSupported("Not Supported")

    # -- system
    def nvmlInit(self):
        if self.init_error is not None:
            raise self.init_error

    def nvmlShutdown(self):
        self.shut_down = True

    def nvmlSystemGetDriverVersion(self):
        return self.nvidia["driver_version"]

    def nvmlSystemGetCudaDriverVersion(self):
        major, minor = (int(x) for x in self.nvidia["cuda_version"].split("."))
        return major * 1000 + minor * 10

    def nvmlSystemGetNVMLVersion(self):
        return self.nvidia["nvml_version"]

    # -- devices (a handle is the index)
    def nvmlDeviceGetCount(self):
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index):
        return index

    def nvmlDeviceGetName(self, h):
        return self.gpus[h]["name"].encode()  # older pynvml returns bytes

    def nvmlDeviceGetUUID(self, h):
        return self.gpus[h]["uuid"]

    def nvmlDeviceGetPciInfo(self, h):
        return SimpleNamespace(busId=self.gpus[h]["pci_bus_id"].encode())

    def nvmlDeviceGetMemoryInfo(self, h):
        g = self.gpus[h]
        mib = 1024 * 1024
        return SimpleNamespace(total=g["memory_total_mib"] * mib, free=g["memory_free_mib"] * mib,
                               used=g["memory_used_mib"] * mib)

    def nvmlDeviceGetCudaComputeCapability(self, h):
        return tuple(self.gpus[h]["compute_capability"])

    def nvmlDeviceGetPersistenceMode(self, h):
        mode = self.gpus[h]["persistence_mode"]
        if mode is None:
            self._unsupported()
        return 1 if mode else 0

    def nvmlDeviceGetEccMode(self, h):
        ecc = self.gpus[h]["ecc"]
        if ecc is None:
            self._unsupported()
        return [int(ecc["enabled"]), int(ecc["pending"])]

    def nvmlDeviceGetTotalEccErrors(self, h, error_type, counter):
        ecc = self.gpus[h]["ecc"]
        if ecc is None or ecc["uncorrected_volatile"] is None:
            self._unsupported()
        return ecc["uncorrected_volatile"]

    def nvmlDeviceGetRetiredPagesPendingStatus(self, h):
        retired = self.gpus[h]["retired_pages"]
        if retired is None:
            self._unsupported()
        return int(retired["pending"])

    def nvmlDeviceGetRetiredPages(self, h, cause):
        retired = self.gpus[h]["retired_pages"]
        count = retired["double_bit"] if cause == self.NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR else retired["single_bit"]
        return [0x1000 * i for i in range(count)]

    def nvmlDeviceGetRemappedRows(self, h):
        remap = self.gpus[h]["remapped_rows"]
        if remap is None:
            self._unsupported()
        return (remap["correctable"], remap["uncorrectable"], int(remap["pending"]), int(remap["failure"]))

    def nvmlDeviceGetComputeRunningProcesses(self, h):
        return [SimpleNamespace(pid=1000 + i) for i in range(self.gpus[h]["compute_processes"] or 0)]

    def nvmlDeviceGetP2PStatus(self, a, b, cap):
        matrix = self.nvidia.get("p2p_matrix")
        return self.NVML_P2P_STATUS_OK if matrix and matrix[a][b] else 4  # 4: NVML_P2P_STATUS_NOT_SUPPORTED


def fake_torch(torch_facts: dict, *, init_error: Exception | None = None, nccl=None):
    """A torch-shaped object answering from a fixture's ``torch`` section."""
    caps = [tuple(c) for c in torch_facts.get("capabilities") or []]
    matrix = torch_facts.get("p2p_matrix")

    def device_count():
        if init_error is not None:
            raise init_error
        return len(caps)

    version = nccl if nccl is not None else tuple(int(p) for p in (torch_facts.get("nccl") or "0.0.0").split("."))
    cuda = SimpleNamespace(
        nccl=SimpleNamespace(version=lambda: version),
        get_arch_list=lambda: list(torch_facts.get("arch_list") or []),
        is_available=lambda: bool(torch_facts.get("cuda_available")),
        device_count=device_count,
        get_device_capability=lambda i: caps[i],
        can_device_access_peer=lambda i, j: bool(matrix[i][j]),
    )
    return SimpleNamespace(__version__=torch_facts["version"], version=SimpleNamespace(cuda=torch_facts.get("cuda")),
                           cuda=cuda, backends=SimpleNamespace(cudnn=SimpleNamespace(version=lambda: torch_facts.get("cudnn"))))
