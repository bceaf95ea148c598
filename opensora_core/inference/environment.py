"""What a job ran on, for benchmark reports: the software versions and the device a rank used.

Read on the node, inside the job (the node's torch and CUDA are what was measured, not the
submit host's). NVML is asked for the device's name where it is installed, matched through the
PCI bus id because ``CUDA_VISIBLE_DEVICES`` renumbers torch's devices; every NVML failure just
leaves its fields None.
"""

from __future__ import annotations

import platform
import socket

import torch

from clusterkit.gpus import match_nvml_name


def software_versions() -> dict:
    """clusterkit, Python, torch, CUDA and cuDNN (None on a CPU build), PyAV and the OS."""
    import clusterkit

    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {
        "clusterkit": clusterkit.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": str(cudnn) if cudnn else None,
        "pyav": _pyav_version(),
        "platform": platform.platform(),
    }


def device_facts(device: torch.device) -> dict:
    """The device a rank computed on: "cuda:N" with its torch and NVML names and catalog key, or
    "cpu" (what a rank without a GPU uses) with the machine's processor."""
    if device.type != "cuda":
        return {"device": "cpu", "type": "cpu", "name": f"cpu ({platform.machine()})", "torch_name": None,
                "nvml_name": None, "driver": None, "gpu_model": None, "memory_bytes": None,
                "compute_capability": None, "cpu_threads": torch.get_num_threads(),
                "processor": platform.processor() or platform.machine()}
    props = torch.cuda.get_device_properties(device)
    torch_name = torch.cuda.get_device_name(device)
    nvml_name, driver = _nvml_name(props)
    spec = match_nvml_name(nvml_name or torch_name)
    return {"device": str(device), "type": "cuda", "name": nvml_name or torch_name, "torch_name": torch_name,
            "nvml_name": nvml_name, "driver": driver, "gpu_model": spec.key if spec else None,
            "memory_bytes": int(props.total_memory), "compute_capability": f"{props.major}.{props.minor}",
            "cpu_threads": torch.get_num_threads(), "processor": platform.processor() or platform.machine()}


def host_name() -> str:
    return socket.gethostname()


def _pyav_version() -> str | None:
    try:
        import av
    except ImportError:
        return None
    return av.__version__


def _nvml_name(props) -> tuple[str | None, str | None]:
    """(NVML device name, driver version) of the device with ``props``' PCI address, or (None, None)."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - no NVML here (no driver, no pynvml): torch's name stands
        return None, None
    try:
        bus_id = f"{props.pci_domain_id:08X}:{props.pci_bus_id:02X}:{props.pci_device_id:02X}.0"
        handle = pynvml.nvmlDeviceGetHandleByPciBusId(bus_id)
        name = pynvml.nvmlDeviceGetName(handle)
        driver = pynvml.nvmlSystemGetDriverVersion()
        return _text(name), _text(driver)
    except Exception:  # noqa: BLE001 - an older torch without PCI ids, or NVML refusing: torch's name stands
        return None, None
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:  # noqa: BLE001
            pass


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
