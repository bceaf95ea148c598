"""Preflight probes: the real ones on this machine (no NVIDIA driver here: plain facts, no
exception), and every probe through its seam, fed with facts of real GPUs."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from clusterkit.preflight import probes
from clusterkit.preflight.probes import CommandResult, Host, collect_facts

from preflight_fakes import FIXTURES, FakeNVML, fake_torch, load_facts

ROOT = Path(__file__).resolve().parents[2]


def _nvml_loads() -> bool:
    try:
        import pynvml

        pynvml.nvmlInit()
        pynvml.nvmlShutdown()
        return True
    except Exception:
        return False


HAS_NVML = _nvml_loads()


# ---------------------------------------------------------------------------- the real machine


@pytest.fixture(scope="module")
def real_facts(tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "not-yet"
    return collect_facts(Host.for_machine(dict(os.environ)), output_dir=str(out), port=None)


def test_real_probes_return_plain_json_facts(real_facts):
    assert real_facts["schema"] == probes.FACTS_SCHEMA
    json.dumps(real_facts)  # JSON-serialisable as is
    for section in ("host", "env", "nvidia", "torch", "p2p", "nvcc", "packages", "shm", "disk", "network", "ports"):
        assert section in real_facts
        assert not str(real_facts[section].get("error", "") if isinstance(real_facts[section], dict) else "").startswith(
            "probe "), (section, real_facts[section])  # no probe crashed


@pytest.mark.skipif(HAS_NVML, reason="this machine has an NVIDIA driver")
def test_no_driver_is_a_plain_fact(real_facts):
    nvidia = real_facts["nvidia"]
    assert nvidia["available"] is False and nvidia["gpus"] == []
    assert nvidia["error"].startswith("no NVIDIA driver: NVML not found")
    assert real_facts["p2p"]["matrix"] is None and real_facts["p2p"]["reason"].startswith("no NVIDIA driver")


def test_real_torch_and_host_facts(real_facts):
    import torch

    assert real_facts["torch"]["installed"] and real_facts["torch"]["version"] == str(torch.__version__)
    assert real_facts["torch"]["cuda"] == torch.version.cuda
    host = real_facts["host"]
    assert host["memory_total_bytes"] > 0 and host["cpus_logical"] >= 1 and host["hostname"] == socket.gethostname()
    assert real_facts["disk"]["free_bytes"] > 0 and real_facts["disk"]["measured_at"] != real_facts["disk"]["path"]
    assert any(i["name"] == "lo" and i["loopback"] for i in real_facts["network"]["interfaces"])
    if Path("/dev/shm").exists():
        assert real_facts["shm"]["total_bytes"] > 0


def test_real_port_probe_sees_a_bound_port():
    with socket.socket() as sock:
        sock.bind(("0.0.0.0", 0))
        sock.listen()
        port = sock.getsockname()[1]
        facts = probes.probe_ports(Host(), port)
    assert facts == {"requested": port, "checked": [{"port": port, "why": "requested", "free": False, "error": None}]}
    assert probes.probe_ports(Host(), port)["checked"][0]["free"] is True
    defaults = probes.probe_ports(Host(), None)["checked"]
    assert [c["port"] for c in defaults] == [29500, 29400] and {c["why"] for c in defaults} == {"torch default"}


def test_probe_main_writes_the_facts_atomically(tmp_path):
    result = tmp_path / "sub" / "facts.json"
    proc = subprocess.run([sys.executable, "-m", "clusterkit.preflight.probe_main", "--result", str(result),
                           "--port", "29123", "--output-dir", str(tmp_path), "--no-import-check"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    facts = json.loads(result.read_text())
    assert facts["schema"] == probes.FACTS_SCHEMA and facts["ports"]["requested"] == 29123
    assert facts["disk"]["measured_at"] == str(tmp_path)
    assert [p.name for p in result.parent.iterdir()] == ["facts.json"]  # no temporary file left behind
    assert json.loads(proc.stdout.strip().splitlines()[-1])["facts"] == str(result)


def test_importing_preflight_is_light():
    code = ("import sys\nimport clusterkit.preflight, clusterkit.cli_preflight\n"
            "heavy = sorted(m for m in ('torch', 'pynvml', 'psutil', 'submitit') if m in sys.modules)\n"
            "assert not heavy, heavy\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr


# ---------------------------------------------------------------------------- NVML through a fake fed with real GPUs


@pytest.mark.parametrize("fixture", FIXTURES)
def test_probe_nvidia_reads_every_gpu_fact(fixture):
    expected = load_facts(fixture)["nvidia"]
    nvml = FakeNVML(expected)
    facts = probes.probe_nvidia(Host(load_nvml=lambda: nvml))
    assert facts == expected
    assert nvml.shut_down


def test_geforce_reports_no_ecc_and_no_retirement():
    facts = probes.probe_nvidia(Host(load_nvml=lambda: FakeNVML(load_facts("rtx3090")["nvidia"])))
    gpu = facts["gpus"][0]
    assert gpu["ecc"] is None and gpu["retired_pages"] is None and gpu["remapped_rows"] is None
    assert gpu["catalog_key"] == "rtx-3090" and gpu["persistence_mode"] is False


@pytest.mark.parametrize("error,text", [
    ("NVMLError_LibraryNotFound", "no NVIDIA driver: NVML not found"),
    ("NVMLError_DriverNotLoaded", "NVIDIA driver not loaded"),
    ("NVMLError_NoPermission", "NVML refused access"),
])
def test_nvml_init_failures_are_sentences(error, text):
    nvml = FakeNVML(init_error=getattr(FakeNVML, error)("x"))
    facts = probes.probe_nvidia(Host(load_nvml=lambda: nvml))
    assert facts["available"] is False and facts["error"].startswith(text) and facts["gpus"] == []


def test_missing_nvidia_ml_py_is_a_fact():
    def load():
        raise ImportError("No module named 'pynvml'")

    facts = probes.probe_nvidia(Host(load_nvml=load))
    assert facts["error"] == "nvidia-ml-py is not installed: pip install nvidia-ml-py"


def test_an_nvml_error_mid_way_keeps_what_was_read():
    nvml = FakeNVML(load_facts("a6000")["nvidia"])

    def broken(index):
        raise FakeNVML.NVMLError("GPU is lost")

    nvml.nvmlDeviceGetHandleByIndex = broken
    facts = probes.probe_nvidia(Host(load_nvml=lambda: nvml))
    assert facts["available"] and facts["driver_version"] == "535.104.05" and "GPU is lost" in facts["error"]
    assert nvml.shut_down


# ---------------------------------------------------------------------------- torch through a fake


@pytest.mark.parametrize("fixture", FIXTURES)
def test_probe_torch_reads_version_cuda_nccl_and_p2p(fixture):
    expected = load_facts(fixture)["torch"]
    facts = probes.probe_torch(Host(import_torch=lambda: fake_torch(expected)))
    for key in ("installed", "version", "cuda", "cuda_available", "device_count", "capabilities", "arch_list", "nccl",
                "cudnn", "p2p_matrix", "error"):
        assert facts[key] == expected[key], key


@pytest.mark.parametrize("raw,text", [((2, 20, 5), "2.20.5"), (2708, "2.7.8"), (21903, "2.19.3"), ([2, 21, 5], "2.21.5")])
def test_nccl_version_encodings(raw, text):
    torch = fake_torch(load_facts("a6000")["torch"], nccl=raw)
    assert probes.probe_torch(Host(import_torch=lambda: torch))["nccl"] == text


def test_cuda_init_failure_is_a_fact():
    torch = fake_torch(load_facts("a6000")["torch"], init_error=RuntimeError(
        "The NVIDIA driver on your system is too old (found version 11040)"))
    facts = probes.probe_torch(Host(import_torch=lambda: torch))
    assert facts["installed"] and facts["error"].startswith("CUDA initialisation failed: RuntimeError: The NVIDIA")


def test_cpu_torch_asks_nothing_of_cuda():
    torch = SimpleNamespace(__version__="2.13.0+cpu", version=SimpleNamespace(cuda=None))  # no .cuda at all
    facts = probes.probe_torch(Host(import_torch=lambda: torch))
    assert facts["installed"] and facts["cuda"] is None and facts["nccl"] is None and facts["error"] is None


def test_missing_torch_is_a_fact():
    def load():
        raise ImportError("No module named 'torch'")

    facts = probes.probe_torch(Host(import_torch=load))
    assert facts["installed"] is False and facts["error"] == "torch is not importable: No module named 'torch'"


# ---------------------------------------------------------------------------- nvcc, packages, shm, disk


NVCC_OUT = ("nvcc: NVIDIA (R) Cuda compiler driver\nCopyright (c) 2005-2024 NVIDIA Corporation\n"
            "Built on Thu_Mar_28_02:18:24_PDT_2024\nCuda compilation tools, release 12.4, V12.4.131\n")


def _runner(outputs):
    calls = []

    def run(argv, timeout):
        calls.append(list(argv))
        for key, result in outputs.items():
            if key in " ".join(argv):
                return result
        return CommandResult(127, "", f"{argv[0]}: not found")
    run.calls = calls
    return run


def test_nvcc_from_cuda_home_wins_over_path():
    run = _runner({"/opt/cuda-12.4/bin/nvcc": CommandResult(0, NVCC_OUT, "")})
    host = Host(environ={"CUDA_HOME": "/opt/cuda-12.4"}, run=run, which=lambda _: "/usr/bin/nvcc",
                is_file=lambda p: p in ("/opt/cuda-12.4/bin/nvcc", "/usr/bin/nvcc"))
    facts = probes.probe_nvcc(host)
    assert facts == {"found": True, "path": "/opt/cuda-12.4/bin/nvcc", "source": "$CUDA_HOME", "version": "12.4",
                     "error": None}


def test_nvcc_on_path_then_usr_local_cuda():
    host = Host(run=_runner({"nvcc": CommandResult(0, NVCC_OUT.replace("12.4", "12.1"), "")}),
                which=lambda _: None, is_file=lambda p: p == "/usr/local/cuda/bin/nvcc")
    facts = probes.probe_nvcc(host)
    assert facts["source"] == "/usr/local/cuda" and facts["version"] == "12.1"


def test_no_nvcc_and_a_broken_nvcc_are_facts():
    missing = probes.probe_nvcc(Host(which=lambda _: None, is_file=lambda _: False))
    assert missing["found"] is False and missing["error"].startswith("nvcc not found")
    broken = probes.probe_nvcc(Host(which=lambda _: "/usr/bin/nvcc", is_file=lambda _: True,
                                    run=_runner({"nvcc": CommandResult(1, "", "Segmentation fault")})))
    assert broken["found"] and broken["version"] is None and "Segmentation fault" in broken["error"]


def test_packages_import_check_catches_an_undefined_symbol():
    err = ("Traceback (most recent call last):\n  File \"<string>\", line 1\n"
           "ImportError: flash_attn_2_cuda.cpython-310-x86_64-linux-gnu.so: undefined symbol: _ZN3c104cuda9SetDeviceEi\n")
    run = _runner({"import flash_attn": CommandResult(1, "", err), "import xformers.ops": CommandResult(0, "", "")})
    host = Host(run=run, python="/venv/bin/python",
                find_spec=lambda m: object() if m in ("flash_attn", "xformers") else None,
                dist_version={"flash-attn": "2.5.8", "xformers": "0.0.26.post1"}.get)
    facts = probes.probe_packages(host)
    assert facts["flash_attn"] == {"installed": True, "version": "2.5.8", "importable": False,
                                   "import_error": err.strip().splitlines()[-1]}
    assert facts["xformers"]["importable"] is True
    assert facts["apex"] == {"installed": False, "version": None, "importable": None, "import_error": None}
    assert all(call[0] == "/venv/bin/python" for call in run.calls) and len(run.calls) == 2  # only installed ones


def test_packages_without_import_check_run_nothing():
    run = _runner({})
    facts = probes.probe_packages(Host(run=run, find_spec=lambda m: object(), dist_version=lambda d: "1.0"),
                                  import_check=False)
    assert run.calls == [] and all(p["installed"] and p["importable"] is None for p in facts.values())


def _fake_psutil(**overrides):
    usage = SimpleNamespace(total=64 * 1024**2, used=0, free=64 * 1024**2)
    base = {"disk_usage": lambda path: usage}
    base.update(overrides)
    return lambda: SimpleNamespace(**base)


def test_shm_counts_stale_nccl_segments():
    host = Host(psutil=_fake_psutil(), listdir=lambda p: ["nccl-abc", "nccl-def", "torch_123", "sem.x"],
                file_size=lambda p: 4 * 1024**2)
    facts = probes.probe_shm(host)
    assert facts["total_bytes"] == 64 * 1024**2 and facts["nccl_segments"] == 2
    assert facts["nccl_segment_bytes"] == 8 * 1024**2 and facts["error"] is None


def test_shm_missing_is_a_fact():
    def usage(path):
        raise FileNotFoundError(2, "No such file or directory")

    facts = probes.probe_shm(Host(psutil=_fake_psutil(disk_usage=usage)))
    assert facts["error"] == "/dev/shm: No such file or directory"


def test_disk_walks_up_to_an_existing_parent(tmp_path):
    facts = probes.probe_disk(Host(), str(tmp_path / "a" / "b"))
    assert facts["measured_at"] == str(tmp_path) and facts["free_bytes"] > 0
    assert probes.probe_disk(Host(), None)["error"] == "no output directory given"


def test_a_probe_that_crashes_becomes_an_error_fact():
    def psutil():
        raise RuntimeError("psutil exploded")

    facts = collect_facts(Host(psutil=psutil, load_nvml=lambda: FakeNVML(init_error=FakeNVML.NVMLError_LibraryNotFound()),
                               import_torch=lambda: fake_torch(load_facts("a6000")["torch"]),
                               which=lambda _: None, is_file=lambda _: False, find_spec=lambda _: None),
                          output_dir="/tmp")
    for section in ("host", "shm", "disk", "network"):
        assert facts[section] == {"error": f"probe {section!r} failed: RuntimeError: psutil exploded"}
    assert facts["torch"]["version"] == "2.3.0+cu121"  # the other probes still ran
    json.dumps(facts)


def test_env_records_only_what_matters():
    env = probes.probe_env(Host(environ={"CUDA_VISIBLE_DEVICES": "0,1", "NCCL_SOCKET_IFNAME": "ib",
                                         "TORCH_NCCL_ASYNC_ERROR_HANDLING": "3", "AWS_SECRET_ACCESS_KEY": "x",
                                         "HOME": "/root", "SLURMD_NODENAME": "worker-5"}))
    assert env == {"CUDA_VISIBLE_DEVICES": "0,1", "NCCL_SOCKET_IFNAME": "ib", "SLURMD_NODENAME": "worker-5",
                   "TORCH_NCCL_ASYNC_ERROR_HANDLING": "3"}


def test_network_facts_from_psutil_shapes():
    addr = SimpleNamespace
    fake = _fake_psutil(
        net_if_addrs=lambda: {"eno1": [addr(family=socket.AF_INET, address="10.0.0.5"),
                                       addr(family=socket.AF_INET6, address="fe80::1%eno1")],
                              "lo": [addr(family=socket.AF_INET, address="127.0.0.1")]},
        net_if_stats=lambda: {"eno1": SimpleNamespace(isup=True, speed=25000, mtu=9000, flags="up,broadcast,running"),
                              "lo": SimpleNamespace(isup=True, speed=0, mtu=65536, flags="up,loopback,running"),
                              "ib0": SimpleNamespace(isup=False, speed=0, mtu=2044, flags="broadcast")})
    facts = probes.probe_network(Host(psutil=fake))
    assert facts["interfaces"] == [
        {"name": "eno1", "up": True, "ipv4": ["10.0.0.5"], "ipv6": ["fe80::1%eno1"], "speed_mbps": 25000, "mtu": 9000,
         "loopback": False},
        {"name": "ib0", "up": False, "ipv4": [], "ipv6": [], "speed_mbps": None, "mtu": 2044, "loopback": False},
        {"name": "lo", "up": True, "ipv4": ["127.0.0.1"], "ipv6": [], "speed_mbps": None, "mtu": 65536,
         "loopback": True},
    ]


# ---------------------------------------------------------------------------- run_preflight, local, with fakes


def test_run_preflight_local_on_a_faked_a6000_node(tmp_path):
    from clusterkit.preflight import run_preflight
    from clusterkit.project import Project

    fx = load_facts("a6000")
    project = Project.from_options(str(ROOT / "nodes.yaml"), {"CLUSTERKIT_RUNS_DIR": str(tmp_path / "runs")})
    host = Host(environ=fx["env"], load_nvml=lambda: FakeNVML(fx["nvidia"]),
                import_torch=lambda: fake_torch(fx["torch"]), which=lambda _: None, is_file=lambda _: False,
                find_spec=lambda _: None)
    result = run_preflight(project, "worker-5", local=True, host=host, port=None)
    checks = {c["name"]: c for c in result["checks"]}
    assert result["mode"] == "local" and result["runs"] == [] and result["executor"] is None
    assert result["facts"]["nvidia"]["gpus"] == fx["nvidia"]["gpus"]
    assert checks["inventory-gpu-model"]["status"] == "pass" and checks["precision"]["status"] == "pass"
    assert checks["nvcc"]["status"] == "warn"  # this fake host has no nvcc
    assert result["ok"] is True and result["counts"]["fail"] == 0
    assert not (tmp_path / "runs").exists()  # a local preflight records nothing


def test_preflight_cli_local_on_this_machine(tmp_path):
    env = {**os.environ, "CLUSTERKIT_RUNS_DIR": str(tmp_path), "CLUSTERKIT_INVENTORY": str(ROOT / "nodes.yaml")}
    env.pop("SLURM_CONF", None)
    proc = subprocess.run([sys.executable, "-m", "clusterkit", "preflight", "worker-5", "--local", "--json"],
                          capture_output=True, text=True, timeout=180, env=env, cwd=ROOT)
    assert "Traceback" not in proc.stderr
    out = json.loads(proc.stdout)
    assert out["command"] == "preflight" and out["error"] is None
    result = out["result"]
    failed = [c for c in result["checks"] if c["status"] == "fail"]
    assert proc.returncode == (1 if failed else 0) and out["ok"] is (not failed)
    assert all({"name", "status", "detail", "remedy"} <= set(c) for c in result["checks"])
    if not HAS_NVML:
        driver = next(c for c in result["checks"] if c["name"] == "nvidia-driver")
        assert driver["status"] == "fail" and driver["detail"].startswith("no NVIDIA driver: NVML not found")


@pytest.mark.parametrize("args,message", [
    (["preflight", "worker-5,worker-6", "--local"], "--local probes this one machine"),
    (["preflight", "worker-5", "--local", "--res", "720p"], "both --res and --frames"),
    (["preflight", "worker-5", "--local", "--port", "70000"], "not a TCP port"),
    (["preflight", "worker-99", "--local"], "worker-99"),
])
def test_preflight_user_errors_exit_2(tmp_path, args, message):
    env = {**os.environ, "CLUSTERKIT_RUNS_DIR": str(tmp_path), "CLUSTERKIT_INVENTORY": str(ROOT / "nodes.yaml")}
    proc = subprocess.run([sys.executable, "-m", "clusterkit", *args], capture_output=True, text=True, timeout=60,
                          env=env, cwd=ROOT)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
