"""Log diagnosis: the signature catalogue against a corpus of realistic log excerpts, first-error
ordering across ranks, the NCCL INFO summary and flight-recorder dumps.

The corpus (tests/unit/data/nccl_logs/<case>/) holds one small run directory or log folder per
signature, written from the documented message texts (orchestration_facts §4a-4c, opensora_v12_facts
§8.4), with the noise real logs carry. ``case.json`` says which signature must be the first error
(null for clean runs and info-only cases), which must be matched at all, and any inventory context.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from clusterkit.diagnose import signatures as sigs
from clusterkit.diagnose.logs import (
    DiagnoseContext,
    HostHardware,
    context_from_inventory,
    diagnose,
    diagnose_files,
    diagnose_run,
    logs_from_texts,
    parse_flight_record,
    parse_timestamp,
    render,
)
from clusterkit.errors import NotFound

REPO = Path(__file__).resolve().parents[2]
CORPUS = Path(__file__).parent / "data" / "nccl_logs"
CASES = sorted(p for p in CORPUS.iterdir() if (p / "case.json").exists())


def load_case(case: Path) -> tuple[dict, DiagnoseContext]:
    spec = json.loads((case / "case.json").read_text())
    hosts = {h: HostHardware(node=h, gpu=v["gpu"], p2p=v["p2p"]) for h, v in spec.get("hardware", {}).items()}
    return spec, DiagnoseContext(expected_world_size=spec.get("expected_world_size"), hosts=hosts)


def run_case(case: Path):
    spec, context = load_case(case)
    return spec, diagnose_files([case], context)


# ---------------------------------------------------------------------------------------- catalogue


def test_catalogue_has_every_documented_signature():
    ids = {s.id for s in sigs.CATALOGUE}
    documented = ({f"N{i}" for i in range(1, 16)} | {f"R{i}" for i in range(1, 8)} | {f"S{i}" for i in range(1, 7)}
                  | {"O1"})
    assert documented <= ids
    for s in sigs.CATALOGUE:
        assert s.title and s.message and s.cause and s.fix and s.source, s.id
        assert s.severity in sigs.SEVERITIES
    # consequences are flagged as such, wrappers as generic
    assert not sigs.signature("N3").first_error and not sigs.signature("N6").first_error
    assert sigs.signature("N5").generic and sigs.signature("X3").generic
    assert {s.id for s in sigs.CATALOGUE if s.derived} == {"N8", "N9", "N14", "R5"}


def test_every_signature_has_a_corpus_case():
    covered = set()
    for case in CASES:
        spec = json.loads((case / "case.json").read_text())
        covered |= set(spec["matches"]) | ({spec["first_error"]} if spec["first_error"] else set())
    missing = [s.id for s in sigs.CATALOGUE if s.id not in covered]
    assert not missing, f"signatures without a log excerpt in {CORPUS}: {missing}"
    assert sum(1 for c in CASES if c.name.startswith("clean_")) >= 3


def test_unknown_signature_id_names_the_valid_ones():
    with pytest.raises(KeyError, match="N1, N2"):
        sigs.signature("N99")


@pytest.mark.parametrize(
    "line, expected",
    [
        ("[Rank 1] Watchdog caught collective operation timeout: WorkNCCL(SeqNum=7, OpType=ALLREDUCE, NumelIn=1, "
         "NumelOut=1, Timeout(ms)=600000) ran for 600076 milliseconds before timing out.", "N1"),
        ("Process group watchdog thread terminated with exception: [Rank 0] Watchdog caught collective operation "
         "timeout: WorkNCCL(SeqNum=3, OpType=BROADCAST, NumelIn=1, NumelOut=1, Timeout(ms)=1800000) ran for", "N1"),
        ("failure detected by watchdog at work sequence id: 12 PG status: last enqueued work: 12, last completed work: 11", "N1"),
        ("Environment variable NCCL_DESYNC_DEBUG is deprecated; use TORCH_NCCL_DESYNC_DEBUG instead", "N15"),
        ("The server socket has failed to bind to [::]:29500 (errno: 98 - Address already in use).", "R1"),
        ("RuntimeError: Address already in use", "R1"),
        ("connect() timed out. Original timeout was 60000 ms.", "R2"),
        ("Timed out initializing process group in store based barrier on rank: 3, for key: store_based_barrier_key:1 "
         "(world_size=4, worker_count=3, timeout=0:30:00)", "R6"),  # fewer workers: a node never came, not two jobs
        ("torch.distributed.elastic.rendezvous.api.RendezvousClosedError", "R6"),
        ("raise RendezvousClosedError()", None),  # a source line in a traceback is not the exception
        ("slurmstepd: error: *** STEP 4242.0 ON worker-5 CANCELLED AT 2026-11-22T02:30:00 ***", "S8"),
        ("RuntimeError: shape '[30, 600, 1152]' is invalid for input of size 20736000", "X3"),  # 16 heads: a plain bug
        ("    assert num_heads % sp_size == 0", "O1"),
        ("RuntimeError: [Rank 0]: Ranks 1, 3 failed to pass monitoredBarrier in 1800000 ms", "N1"),
        ("RuntimeError: [../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer [10.0.0.6]:5172", "N6"),
        ("NCCL WARN Cuda failure 'out of memory'", None),
        ("Setting OMP_NUM_THREADS environment variable for each process to be 1 in default", None),
    ],
)
def test_single_lines(line, expected):
    found = sigs.match_line(line.strip())
    assert (found[0].id if found else None) == expected


def test_shape_error_counts_as_uneven_heads_when_the_world_does_not_divide_16():
    line = "RuntimeError: shape '[4, 100, 64]' is invalid for input of size 100000"
    assert sigs.match_line(line)[0].id == "X3"
    assert sigs.match_line(line, world_size=6)[0].id == "O1"
    assert sigs.match_line(line, world_size=4)[0].id == "X3"


# ---------------------------------------------------------------------------------------- corpus


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_corpus_case(case):
    spec, report = run_case(case)
    first = report.first_error
    assert (first.id if first else None) == spec["first_error"], (first and first.to_dict())
    assert (first.variant.name if first and first.variant else None) == spec.get("variant")
    matched = {g.signature.id for g in report.groups}
    assert set(spec["matches"]) <= matched
    if first is not None:
        assert first.evidence and first.cause and first.fix
        assert any(e.line == first.line and e.file == first.file for e in first.evidence) or first.signature.derived
    json.dumps(report.to_dict())  # the --json envelope must serialise


@pytest.mark.parametrize("case", [c for c in CASES if c.name.startswith("clean_")], ids=lambda c: c.name)
def test_clean_logs_match_no_error(case):
    _spec, report = run_case(case)
    assert report.ok and report.first_error is None
    assert [g.signature.id for g in report.groups if g.findings[0].level == "error"] == []
    assert report.nccl.init_complete  # they are real runs: NCCL came up on every rank
    assert set(report.nccl.init_complete) == set(report.ranks_seen)


def test_six_gpu_seed_run_points_at_the_head_split_not_the_timeout():
    report = diagnose_files([CORPUS / "o1_six_gpus_uneven_heads"])
    first = report.first_error
    assert (first.id, first.rank, first.host) == ("O1", 0, "worker-5")
    assert "1, 2, 4 or 8 GPUs" in first.fix
    assert report.group("N1").ranks == (4, 5)
    assert any("blocks.py" in e.text for e in first.evidence)  # the frame that raised it


def test_consumer_gpu_p2p_names_the_node_and_the_env_fix():
    report = diagnose_files([CORPUS / "n08_consumer_gpu_p2p"], load_case(CORPUS / "n08_consumer_gpu_p2p")[1])
    first = report.first_error
    assert first.id == "N8" and first.host == "worker-8"
    assert first.env == {"NCCL_P2P_DISABLE": "1"}
    assert "RTX 4090" in first.detail and "P2P/IPC" in first.detail
    assert report.first_error.time < report.group("N1").findings[0].time


def test_p2p_on_a_consumer_gpu_without_a_failure_is_a_warning():
    case = CORPUS / "clean_single_node_p2p"
    context = DiagnoseContext(hosts={"worker-5": HostHardware(gpu="NVIDIA GeForce RTX 4090", p2p=False)})
    report = diagnose_files([case], context)
    assert report.first_error is None
    assert report.group("N8").findings[0].level == "warning"


def test_untimed_nccl_debug_file_is_placed_before_its_ranks_error():
    report = diagnose_files([CORPUS / "n12_bootstrap_connect_abort"])
    first = report.first_error
    assert first.file == "nccl/worker-6.4401.log" and first.rank == 1 and first.time_estimated
    assert "docker0" in first.detail  # the peer bootstrapped on a docker bridge
    assert any("no timestamps" in n for n in report.notes)


# ---------------------------------------------------------------------------------------- ordering


def c10(rank, clock, msg, lvl="E"):
    return f"[rank{rank}]:[{lvl}1122 {clock}.000100 ProcessGroupNCCL.cpp:616] {msg}"


WATCHDOG = ("[Rank {r}] Watchdog caught collective operation timeout: WorkNCCL(SeqNum=9, OpType=ALLREDUCE, NumelIn=1, "
            "NumelOut=1, Timeout(ms)=600000) ran for 600010 milliseconds before timing out.")
SOME_FAILED = ("[Rank {r}] Some NCCL operations have failed or timed out. Due to the asynchronous nature of CUDA kernels, "
               "subsequent GPU operations might run on corrupted/incomplete data.")


def noise(rank, n, start_minute=0):
    return [f"2026-11-22 02:{start_minute + i // 60:02d}:{i % 60:02d},000 INFO train: rank {rank} step {i}" for i in range(n)]


def test_later_in_file_but_earlier_in_time_wins():
    rank0 = noise(0, 3) + [c10(0, "02:30:00", WATCHDOG.format(r=0))]  # line 4, late
    rank1 = noise(1, 50) + ["[rank1]: torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB."]  # line 51, ~02:00:49
    logs = logs_from_texts({"logs/rank-000.log": "\n".join(rank0), "logs/rank-001.log": "\n".join(rank1)})
    first = diagnose(logs).first_error
    assert (first.id, first.rank, first.file, first.line) == ("X1", 1, "logs/rank-001.log", 51)
    assert first.time == datetime(2026, 11, 22, 2, 0, 49) and first.time_estimated


def test_interleaved_rank_files_find_the_earliest_root():
    files = {
        "logs/rank-000.log": [c10(0, "02:18:11", WATCHDOG.format(r=0)), c10(0, "02:18:11", SOME_FAILED.format(r=0))],
        "logs/rank-001.log": noise(1, 5, 8) + [c10(1, "02:18:12", WATCHDOG.format(r=1))],
        "logs/rank-002.log": [c10(2, "02:08:10", "step"), "worker-6:77:77 [0] NCCL WARN Error while creating shared memory "
                              "segment /dev/shm/nccl-ab12 (size 9637888)", c10(2, "02:18:13", WATCHDOG.format(r=2))],
        "logs/rank-003.log": noise(3, 2, 7) + [c10(3, "02:18:14", WATCHDOG.format(r=3))],
    }
    report = diagnose(logs_from_texts({k: "\n".join(v) for k, v in files.items()}))
    first = report.first_error
    assert (first.id, first.rank, first.host) == ("N10", 2, "worker-6")
    assert report.group("N1").count == 4 and report.group("N1").ranks == (0, 1, 2, 3)


def test_a_consequence_earlier_in_time_does_not_beat_the_root_cause():
    files = {
        # rank 0 tears down first (its clock may run ahead) - N3 is only ever a consequence
        "logs/rank-000.log": [c10(0, "02:18:09", SOME_FAILED.format(r=0))],
        "logs/rank-001.log": [c10(1, "02:18:10", WATCHDOG.format(r=1))],
    }
    first = diagnose(logs_from_texts({k: "\n".join(v) for k, v in files.items()})).first_error
    assert (first.id, first.rank) == ("N1", 1)

    files = {
        "logs/rank-000.log": noise(0, 2) + ["worker-5:1:1 [0] NCCL WARN [Service thread] Connection closed by localRank 1"],
        "logs/rank-001.log": noise(1, 30) + ["worker-5:2:2 [1] NCCL WARN Call to posix_fallocate failed : No space left on device"],
    }
    report = diagnose(logs_from_texts({k: "\n".join(v) for k, v in files.items()}))
    assert report.group("N6").findings[0].time < report.first_error.time
    assert (report.first_error.id, report.first_error.rank) == ("N10", 1)


def test_only_consequences_left_the_earliest_one_is_reported():
    text = "\n".join([c10(0, "02:18:09", SOME_FAILED.format(r=0)),
                      "[rank0]: torch.distributed.elastic.multiprocessing.errors.ChildFailedError: "])
    first = diagnose(logs_from_texts({"logs/rank-000.log": text})).first_error
    assert first.id == "N3"


def test_unhandled_system_error_is_explained_by_its_last_error_line():
    text = "\n".join(noise(1, 2) + [
        "[rank1]: torch.distributed.DistBackendError: NCCL error in: ../torch/csrc/distributed/c10d/ProcessGroupNCCL.cpp:"
        "1970, unhandled system error (run with NCCL_DEBUG=INFO for details), NCCL version 2.21.5",
        "[rank1]: ncclSystemError: System call (e.g. socket, malloc) or external library call failed or device error. ",
        "[rank1]: Last error:",
        "[rank1]: Call to connect returned Connection refused, retrying",
    ])
    report = diagnose(logs_from_texts({"logs/rank-001.log": text}))
    first = report.first_error
    assert first.id == "N12" and first.line == 6
    assert first.evidence[0].line == 3  # the wrapper the user saw comes first
    assert report.group("N5").count == 2 and report.group("X3") is None


def test_requeue_teardown_is_not_an_error():
    report = diagnose_files([CORPUS / "s5_requeue"])
    assert report.first_error is None and report.group("X2").count == 1


# ---------------------------------------------------------------------------------------- timestamps, attribution


@pytest.mark.parametrize(
    "line, expected, rest",
    [
        ("[W1122 02:08:11.123456 ProcessGroupNCCL.cpp:1234] Warning: x", datetime(2026, 11, 22, 2, 8, 11, 123456), "Warning: x"),
        ("[E1122 02:08:11.612302862 ProcessGroupNCCL.cpp:1] y", datetime(2026, 11, 22, 2, 8, 11, 612302), "y"),
        ("I0527 15:16:51.665375 58626 ProcessGroupNCCL.cpp:869] [PG 0 Rank 2] z", datetime(2026, 5, 27, 15, 16, 51, 665375),
         "[PG 0 Rank 2] z"),
        ("I20241209 23:39:42.495619 138559122262912 ProcessGroupNCCL.cpp:905] w", datetime(2024, 12, 9, 23, 39, 42, 495619), "w"),
        ("W1209 23:39:39.912000 19400 site-packages/torch/distributed/run.py:793] ****", datetime(2026, 12, 9, 23, 39, 39, 912000), "****"),
        ("2026-11-22 02:08:11,123 INFO x", datetime(2026, 11, 22, 2, 8, 11, 123000), None),
        ("[2026-11-22 02:08:11,5] [INFO] deepspeed", datetime(2026, 11, 22, 2, 8, 11, 500000), None),
        ("2026-11-22T02:08:11+0100 worker-7 kernel: DMAR", datetime(2026, 11, 22, 2, 8, 11), None),
        ("submitit INFO (2026-11-22 02:08:11,001) - Starting", datetime(2026, 11, 22, 2, 8, 11, 1000), None),
        ("[11/22/26 02:08:11] INFO colossalai - colossalai - INFO: launched", datetime(2026, 11, 22, 2, 8, 11), None),
        ("slurmstepd: error: *** JOB 4242 ON worker-5 CANCELLED AT 2026-11-22T02:08:11 DUE TO TIME LIMIT ***",
         datetime(2026, 11, 22, 2, 8, 11), None),
        ("worker-5:51007:51007 [0] NCCL INFO Bootstrap : Using eno1:10.0.0.5<0>", None, None),
        ("a message that mentions, well after its first forty-eight characters, 2026-11-22 02:08:11", None, None),
        ("E9999 99:99:99.1 bad] x", None, None),
    ],
)
def test_timestamp_formats(line, expected, rest):
    stamp, remainder = parse_timestamp(line, 2026)
    assert stamp == expected
    assert remainder == (rest if rest is not None else line)


def test_rank_and_host_attribution():
    logs = logs_from_texts(
        {
            "logs/rank-003.log": "[clusterkit] rank 3/4 on worker-6.cluster.local pid 77: m\nplain line",
            "logs/node-worker-5.log": "[rank2]:[E1122 02:08:11.1 x.cpp:1] [PG 0 Rank 2] boom\n"
                                      "worker-5:55:55 [1] NCCL WARN Duplicate GPU detected : rank 1 and rank 0 both on CUDA device 1000",
            "nccl/worker-7.4242.log": "worker-7:4242:4300 [0] NCCL WARN Call to posix_fallocate failed : No space left on device",
        },
        ranks={1: {"host": "worker-7", "pid": 4242}},
    )
    report = diagnose(logs)
    assert report.group("N7").findings[0].host == "worker-5"
    n10 = report.group("N10").findings[0]
    assert (n10.rank, n10.host) == (1, "worker-7")  # host and pid from the file name, rank from ranks/*.json
    assert "worker-6" in report.hosts_seen  # the banner's FQDN is shortened
    assert set(report.ranks_seen) >= {1, 2, 3}


# ---------------------------------------------------------------------------------------- NCCL summary


def nccl(host, pid, dev, msg):
    return f"{host}:{pid}:{pid} [{dev}] NCCL INFO {msg}"


def test_nccl_summary_counts_versions_interfaces_and_transports():
    r0 = [
        nccl("a", 10, 0, "Bootstrap : Using eth0:10.0.0.1<0>"),
        nccl("a", 10, 0, "NCCL version 2.21.5+cuda12.4"),
        nccl("a", 10, 0, "NET/IB : Using [0]mlx5_0:1/IB [1]mlx5_1:1/RoCE ; OOB eth0:10.0.0.1<0>"),
        nccl("a", 10, 0, "Using network IB"),
        nccl("a", 10, 0, "NCCL_IB_GID_INDEX set by environment to 3"),
        nccl("a", 10, 0, "Channel 00/0 : 0[0] -> 1[1] via P2P/IPC"),
        nccl("a", 10, 0, "Channel 01/0 : 0[0] -> 1[1] via P2P/IPC/read"),
        nccl("a", 10, 0, "Channel 02/0 : 0[0] -> 1[1] via SHM/direct/direct"),
        nccl("a", 10, 0, "Channel 00/0 : 0[0] -> 2[0] [send] via NET/IB/0/GDRDMA"),
        nccl("a", 10, 0, "Channel 00/0 : 2[0] -> 0[0] [receive] via NET/IB/0/GDRDMA"),
        nccl("a", 10, 0, "Channel 00/02 :    0   1   2"),  # a ring listing, not a transport
        nccl("a", 10, 0, "comm 0x1 rank 0 nranks 3 cudaDev 0 nvmlDev 0 busId 1000 commId 0x9 - Init COMPLETE"),
    ]
    r2 = [
        nccl("b", 20, 0, "Bootstrap : Using eth0:10.0.0.2<0>"),
        nccl("b", 20, 0, "NET/Socket : Using [0]eth0:10.0.0.2<0> [1]eth1:10.1.0.2<0>"),
        nccl("b", 20, 0, "Using network Socket"),
        nccl("b", 20, 0, "Channel 00 : 2[0] -> 0[0] [send] via NET/Socket/0"),
        nccl("b", 20, 0, "comm 0x2 rank 2 nranks 3 cudaDev 0 nvmlDev 0 busId 1000 commId 0x9 - Init COMPLETE"),
        "[rank2]:[I1122 02:07:58.1 ProcessGroupNCCL.cpp:914] [PG 0 Rank 2] ProcessGroupNCCL environments: NCCL version: 2.21.5, X: 1",
    ]
    report = diagnose(logs_from_texts({"logs/rank-000.log": "\n".join(r0), "logs/rank-002.log": "\n".join(r2)}))
    s = report.nccl
    assert s.versions == {"rank 0": "2.21.5+cuda12.4", "rank 2": "2.21.5"}
    assert s.bootstrap == {"a": ("eth0:10.0.0.1<0>",), "b": ("eth0:10.0.0.2<0>",)}
    assert s.net["a"] == ("IB [0]mlx5_0:1/IB [1]mlx5_1:1/RoCE ; OOB eth0:10.0.0.1<0>",)
    assert s.net["b"] == ("Socket [0]eth0:10.0.0.2<0> [1]eth1:10.1.0.2<0>",)
    assert s.network == {"a": "IB", "b": "Socket"}
    assert s.transports == {"P2P": 2, "NET/IB": 2, "SHM": 1, "NET/Socket": 1}
    assert s.transport_details["P2P/IPC"] == 1 and s.transport_details["NET/IB/0/GDRDMA"] == 2
    assert s.transports_by_host == {"a": {"P2P": 2, "NET/IB": 2, "SHM": 1}, "b": {"NET/Socket": 1}}
    assert s.init_complete == (0, 2) and s.nranks == (3,)
    assert s.env == {"a": {"NCCL_IB_GID_INDEX": "3"}}
    assert report.first_error is None and report.group("N14") is None  # same numeric version


def test_corpus_summary_of_a_two_node_run():
    report = diagnose_run(CORPUS / "clean_two_nodes_ib")
    s = report.nccl
    assert set(s.versions) == {"rank 0", "rank 1", "rank 2", "rank 3"}
    assert s.transports == {"P2P": 8, "NET/IB": 8}
    assert s.network == {"worker-5": "IB", "worker-6": "IB"}
    assert s.env["worker-6"]["NCCL_SOCKET_IFNAME"] == "eno1"
    assert report.expected_world_size == 4


def test_mixed_nccl_versions_across_ranks_are_detected():
    files = {
        "logs/rank-000.log": nccl("w5", 1, 0, "NCCL version 2.18.1+cuda12.1"),
        "logs/rank-001.log": "[rank1]:[I1122 02:07:58.1 P.cpp:914] [PG 0 Rank 1] ProcessGroupNCCL environments: NCCL version: 2.18.1",
        "logs/rank-002.log": "[rank2]:[I1122 02:07:59.1 P.cpp:914] [PG 0 Rank 2] ProcessGroupNCCL environments: NCCL version: 2.21.5",
    }
    report = diagnose(logs_from_texts(files))
    first = report.first_error
    assert first.id == "N14" and first.rank == 2
    assert "2.18.1 on ranks 0-1" in first.detail and "2.21.5 on rank 2" in first.detail
    assert {e.file for e in first.evidence} == {"logs/rank-000.log", "logs/rank-002.log"}


def test_each_node_forming_its_own_world():
    report = diagnose_run(CORPUS / "r5_each_node_own_world")
    first = report.first_error
    assert first.id == "R5"
    assert "global rank 0 exists on worker-5, worker-6" in first.detail and "the job has 4 ranks" in first.detail
    # from ranks/*.json alone, with the expected size from the caller
    logs = logs_from_texts({"logs/rank-000.log": "hello"}, ranks={0: {"host": "w", "world_size": 2}})
    assert diagnose(logs, DiagnoseContext(expected_world_size=8)).first_error.id == "R5"
    assert diagnose(logs, DiagnoseContext(expected_world_size=2)).first_error is None


# ---------------------------------------------------------------------------------------- flight recorder


def fr_dump(rank, enqueued, completed, version="2.21.5"):
    entries = [{"record_id": i, "pg_id": 0, "process_group": ("0", "default_pg"), "collective_seq_id": i,
                "profiling_name": "nccl:all_reduce", "state": "completed" if i <= completed else "scheduled",
                "input_sizes": [[1024]], "timeout_ms": 600000, "frames": [{"name": "main", "filename": "t.py", "line": 3}]}
               for i in range(1, enqueued + 1)]
    return {"version": "2.4", "comm_lib_version": version, "pg_config": {"0": {"name": "0", "desc": "default_pg", "ranks": "[0, 1, 2]"}},
            "pg_status": {"0": {"last_enqueued_collective": enqueued, "last_started_collective": enqueued,
                                "last_completed_collective": completed}},
            "entries": entries}


class _Boom:
    def __reduce__(self):
        return (Path.touch, (Path(__import__("tempfile").gettempdir()) / "clusterkit-fr-pwned",))


def test_flight_recorder_dumps_name_the_rank_that_never_arrived(tmp_path):
    run = tmp_path / "run"
    (run / "logs").mkdir(parents=True)
    (run / "logs" / "rank-000.log").write_text(c10(0, "02:18:11", WATCHDOG.format(r=0)) + "\n")
    (run / "comm_traces").mkdir()
    (run / "comm_traces" / "rank_0").write_bytes(pickle.dumps(fr_dump(0, 9, 8)))
    (run / "comm_traces" / "rank_1").write_bytes(pickle.dumps(fr_dump(1, 9, 8)))
    (run / "comm_traces" / "rank_2").write_bytes(pickle.dumps(fr_dump(2, 8, 8)))
    (run / "comm_traces" / "rank_3").write_bytes(pickle.dumps(_Boom()))  # not data: refused, never called
    (run / "ranks").mkdir()
    (run / "ranks" / "rank-002.json").write_text(json.dumps({"rank": 2, "host": "worker-6", "pid": 9}))
    marker = Path(__import__("tempfile").gettempdir()) / "clusterkit-fr-pwned"
    marker.unlink(missing_ok=True)
    report = diagnose_run(run)
    fr = report.flight_recorder
    assert fr.pg == "0" and fr.stuck_seq == 9 and fr.stuck_op == "nccl:all_reduce"
    assert fr.missing_ranks == (2,) and fr.behind_ranks == ()
    assert [t.rank for t in fr.ranks] == [0, 1, 2] and fr.ranks[2].host == "worker-6"
    assert fr.ranks[0].nccl_version == "2.21.5"
    assert not marker.exists()
    assert any("rank_3" in n and "refusing" in n for n in report.notes)
    json.dumps(report.to_dict())


def test_flight_recorder_parses_json_and_torch_pickler_tags():
    assert parse_flight_record(json.dumps(fr_dump(0, 2, 1)).encode())["pg_status"]["0"]["last_completed_collective"] == 1
    # torch's C++ pickler wraps containers in torch.jit._pickle helpers; they must load without torch
    tagged = (b"\x80\x02ctorch.jit._pickle\nrestore_type_tag\n}X\x01\x00\x00\x00aK\x01s"
              b"X\x0e\x00\x00\x00Dict[str, int]\x86R.")
    assert parse_flight_record(tagged) == {"a": 1}
    with pytest.raises(pickle.UnpicklingError, match="refusing os.system"):
        parse_flight_record(b"cos\nsystem\n(S'true'\ntR.")
    with pytest.raises(TypeError):
        parse_flight_record(pickle.dumps([1, 2]))


# ---------------------------------------------------------------------------------------- loading, context, output


def test_load_files_errors_and_loose_files(tmp_path):
    with pytest.raises(NotFound):
        diagnose_files([tmp_path / "nope.log"])
    with pytest.raises(NotFound):
        diagnose_run(tmp_path / "no-run")
    loose = tmp_path / "job.out"
    loose.write_text("srun: error: worker-6: task 0: User defined signal 2\n")
    assert diagnose_files([loose]).first_error.id == "R7"


def test_context_from_inventory_marks_consumer_gpus():
    from clusterkit.inventory import load_inventory

    context = context_from_inventory(load_inventory(REPO / "nodes.yaml"))
    assert context.hosts["worker-8"].p2p is False and "4090" in context.hosts["worker-8"].gpu
    assert context.hosts["worker-5"].p2p is True
    report = diagnose_files([CORPUS / "n08_consumer_gpu_p2p"], context)
    assert report.first_error.id == "N8" and "GeForce RTX 4090" in report.first_error.detail


def test_render_shows_cause_evidence_fix_and_tables():
    from rich.console import Console

    _spec, context = load_case(CORPUS / "n11_socket_ifname_missing")
    report = diagnose_files([CORPUS / "n11_socket_ifname_missing"], context)
    console = Console(record=True, width=240, color_system=None)
    render(report, console)
    text = console.export_text()
    assert "first error: N11" in text and "NCCL_SOCKET_IFNAME set by environment to eth2" in text
    assert "fix:" in text and "^lo,docker,veth,virbr" in text
    assert "NCCL per host" in text and "eth2:10.0.0.5<0>" in text
    console = Console(record=True, width=240, color_system=None)
    render(diagnose_files([CORPUS / "clean_4090_shm"]), console)
    text = console.export_text()
    assert "no error found" in text and "SHM/direct/direct 4" in text and "ranks 0-1" in text


def test_docs_catalogue_is_the_code_catalogue():
    doc = (REPO / "docs" / "troubleshooting-nccl.md").read_text()
    block = doc.split("<!-- catalogue:start -->\n", 1)[1].split("<!-- catalogue:end -->", 1)[0]
    assert block == sigs.render_catalogue_markdown(), (
        "regenerate the tables: python -c 'from clusterkit.diagnose.signatures import render_catalogue_markdown as r; print(r())'")
    for s in sigs.CATALOGUE:
        assert f"| {s.id} |" in doc
    assert "(launch.md" in doc


def test_diagnosis_does_not_import_torch():
    code = ("import sys, clusterkit.diagnose.logs as l, clusterkit.diagnose.signatures; "
            "l.diagnose(l.logs_from_texts({'a.log': 'x'})); assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
