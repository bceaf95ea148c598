"""The catalogue of known distributed-job failure signatures (NCCL, rendezvous, Slurm, Open-Sora SP).

Each ``Signature`` says what a message looks like (regexes written from the documented
message texts in ``orchestration_facts.md`` §4a-4c and ``opensora_v12_facts.md`` §8.4), why it
usually happens and what to change. ``clusterkit.diagnose.logs`` reads a run's logs, finds
the lines these patterns match, orders them in time and picks the first error.

Three flags decide how a match counts:

* ``severity``: ``error`` can be the reason a job failed; ``warning`` is worth fixing but
  did not kill anything; ``info`` explains what happened (a requeue, a cancel).
* ``first_error``: False for messages that are only ever the *consequence* of an earlier
  error (N3 "Some NCCL operations have failed", N6 "peer died", torchrun's ChildFailedError).
  They become the first error only when nothing else explains the failure.
* ``generic``: a wrapper or catch-all (N5 "unhandled system error", an unrecognised Python
  exception). A specific signature a few lines later in the same file (NCCL's "Last error:")
  is the real cause and wins.

``derived`` signatures (N8, N14, R5) have no single message: ``logs.py`` detects them from
many lines (transports per host, NCCL versions per rank, world sizes). N9 has both.

Pure data and pure functions: no I/O, no torch.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

SEVERITIES = ("error", "warning", "info")
GROUPS = ("nccl", "rendezvous", "slurm", "opensora", "generic")

#: STDiT3-XL/2: 16 attention heads of 72 channels (hidden 1152) - opensora_v12_facts §1.1, §8.3.
STDIT3_HEADS = 16
STDIT3_HEAD_DIM = 72


@dataclass(frozen=True)
class Variant:
    """A refinement of a signature: when ``when(match)`` holds, its cause and fix replace the
    signature's (e.g. N1 with ``SeqNum=1``: the communicator never worked at all)."""

    name: str
    cause: str
    fix: str
    when: Callable[[re.Match[str]], bool] = field(compare=False, repr=False)
    env: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Signature:
    id: str
    title: str
    group: str
    severity: str
    #: the documented message text(s), verbatim fragments; shown in docs and reports
    message: str
    cause: str
    fix: str
    #: regexes matched against one log line (``re.search``); empty for derived signatures
    patterns: tuple[str, ...] = ()
    first_error: bool = True
    generic: bool = False
    derived: bool = False
    variants: tuple[Variant, ...] = ()
    #: extra check on a regex match; gets the match and the job's world size (None = unknown)
    accept: Callable[[re.Match[str], int | None], bool] | None = field(default=None, compare=False, repr=False)
    #: lines that are useful evidence when found before the match in the same file
    #: (e.g. ``NCCL_SOCKET_IFNAME set by environment to eth2`` for N11)
    related: tuple[str, ...] = ()
    #: environment settings that are the fix, as (name, value); what ``--apply`` may write
    env: tuple[tuple[str, str], ...] = ()
    source: str = ""

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"signature {self.id}: severity {self.severity!r} not in {SEVERITIES}")
        if self.group not in GROUPS:
            raise ValueError(f"signature {self.id}: group {self.group!r} not in {GROUPS}")
        if not self.derived and not self.patterns:
            raise ValueError(f"signature {self.id}: a non-derived signature needs at least one pattern")

    @cached_property
    def compiled(self) -> tuple[re.Pattern[str], ...]:
        return tuple(re.compile(p) for p in self.patterns)

    @cached_property
    def compiled_related(self) -> tuple[re.Pattern[str], ...]:
        return tuple(re.compile(p) for p in self.related)

    def search(self, text: str, world_size: int | None = None) -> re.Match[str] | None:
        """The first pattern match in ``text`` that ``accept`` agrees with, or None."""
        for pattern in self.compiled:
            match = pattern.search(text)
            if match and (self.accept is None or self.accept(match, world_size)):
                return match
        return None

    def variant_for(self, match: re.Match[str] | None) -> Variant | None:
        if match is None:
            return None
        for variant in self.variants:
            if variant.when(match):
                return variant
        return None

    def to_dict(self) -> dict:
        return {
            "id": self.id, "title": self.title, "group": self.group, "severity": self.severity,
            "message": self.message, "cause": self.cause, "fix": self.fix,
            "first_error": self.first_error, "generic": self.generic, "derived": self.derived,
            "env": dict(self.env), "source": self.source,
            "variants": [{"name": v.name, "cause": v.cause, "fix": v.fix, "env": dict(v.env)} for v in self.variants],
        }


def _group_int(match: re.Match[str], name: str) -> int | None:
    try:
        value = match.group(name)
    except IndexError:
        return None
    return int(value) if value is not None and value.isdigit() else None


def _seq_at_start(match: re.Match[str]) -> bool:
    seq = _group_int(match, "seq")
    return seq is not None and seq <= 1


def _more_workers_than_world(match: re.Match[str], _world: int | None) -> bool:
    workers, world = _group_int(match, "workers"), _group_int(match, "world")
    return workers is not None and world is not None and workers > world


def _uneven_sp_shape(match: re.Match[str], world_size: int | None) -> bool:
    """``shape '[30, 600, 1152]' is invalid for input of size 23328000`` is STDiT3's uneven head
    split when the buffer holds a whole number of 72-channel heads other than 16 (here 18 =
    6 ranks x 3 heads), or when the job's world size does not divide the 16 heads."""
    try:
        dims = [int(d) for d in match.group("shape").replace(" ", "").split(",") if d]
        size = int(match.group("size"))
    except (IndexError, ValueError):
        return False
    if world_size is not None and world_size > 1 and STDIT3_HEADS % world_size != 0:
        return True
    if not dims or dims[-1] != STDIT3_HEADS * STDIT3_HEAD_DIM:
        return False
    rows = 1
    for d in dims[:-1]:
        rows *= d
    per_head = rows * STDIT3_HEAD_DIM
    return per_head > 0 and size % per_head == 0 and size // per_head != STDIT3_HEADS


# ------------------------------------------------------------------------------------------- NCCL (§4a)

N1 = Signature(
    id="N1", title="Collective timeout: a rank never joined (NCCL watchdog)", group="nccl", severity="error",
    message=("Watchdog caught collective operation timeout: WorkNCCL(SeqNum=…, OpType=ALLREDUCE…, NumelIn=…, "
             "Timeout(ms)=600000) ran for 600076 milliseconds before timing out / failure detected by watchdog "
             "at work sequence id: N … last enqueued work: N, last completed work: N-1"),
    cause=("One rank did not join a collective the others entered: (a) desync - a rank skipped or added a "
           "collective (rank-0-only eval or checkpoint code, data-dependent branches, uneven batches); (b) a rank is "
           "stuck or dead (dataloader, I/O, a crash or OOM on another GPU - look for an earlier error on another "
           "rank); (c) a very slow or broken link. Open-Sora with 6 GPUs: one rank crashed in the uneven head "
           "split (O1) and the others waited."),
    fix=("Find the rank that never arrived: rerun with the flight recorder (TORCH_NCCL_TRACE_BUFFER_SIZE=2000, "
         "TORCH_NCCL_DUMP_ON_TIMEOUT=1 - clusterkit's default profile) and read comm_traces/ with "
         "`torchfrtrace <run>/comm_traces --prefix rank_`; add TORCH_NCCL_DESYNC_DEBUG=1 and "
         "TORCH_DISTRIBUTED_DEBUG=DETAIL (`--nccl-profile debug`). Wrap rank-0-only work in barriers; use a longer "
         "timeout for init and checkpoint phases."),
    patterns=(
        r"Watchdog caught collective operation timeout: WorkNCCL\(SeqNum=(?P<seq>\d+), OpType=(?P<op>\w+)",
        r"failure detected by watchdog at work sequence id: (?P<seq>\d+)",
        r"Timeout at NCCL work: (?P<seq>\d+), last enqueued NCCL work: \d+, last completed NCCL work: -?\d+",
        # TORCH_DISTRIBUTED_DEBUG=DETAIL turns barriers into monitored barriers that name the missing ranks
        r"Ranks? (?P<missing>[\d, ]+) failed to pass monitoredBarrier",
    ),
    variants=(Variant(
        name="SeqNum=1",
        cause=("The very first collective (SeqNum=1) timed out: the communicator or the network never worked "
               "(bootstrap to the wrong interface, a blocked port, NICs that cannot reach each other), or a rank "
               "never reached its first collective."),
        fix=("Check the fabric before the job: `clusterkit diagnose nccl --nodes <same nodes>` (or nccl-tests "
             "all_reduce_perf -b 8 -e 1G -f 2 across the same nodes); pin NCCL_SOCKET_IFNAME to a NIC that is up on "
             "every node (nodes.yaml nccl_env); look for NCCL WARN lines with NCCL_DEBUG=INFO."),
        when=_seq_at_start,
    ),),
    source="orchestration_facts §4a N1",
)

N2 = Signature(
    id="N2", title="Flight recorder disabled: no stack of the failed collective", group="nccl", severity="info",
    message=("Stack trace of the failed collective not found, potentially because FlightRecorder is disabled. "
             "You can enable it by setting TORCH_NCCL_TRACE_BUFFER_SIZE to a non-zero value."),
    cause="The flight recorder (per-collective trace ring) was off, so the timeout left no dump to compare ranks.",
    fix=("Set TORCH_NCCL_TRACE_BUFFER_SIZE=2000 (TORCH_FR_BUFFER_SIZE on new torch) and TORCH_NCCL_DUMP_ON_TIMEOUT=1 "
         "with TORCH_NCCL_DEBUG_INFO_TEMP_FILE=<run>/comm_traces/rank_; clusterkit's `default` profile does this - "
         "check that the job did not override it."),
    patterns=(r"Stack trace of the failed collective not found, potentially because FlightRecorder is disabled",),
    first_error=False,
    env=(("TORCH_NCCL_TRACE_BUFFER_SIZE", "2000"), ("TORCH_NCCL_DUMP_ON_TIMEOUT", "1")),
    source="orchestration_facts §4a N2, §3.8",
)

N3 = Signature(
    id="N3", title="Teardown after an earlier NCCL failure", group="nccl", severity="error",
    message=("Some NCCL operations have failed or timed out. Due to the asynchronous nature of CUDA kernels, "
             "subsequent GPU operations might run on corrupted/incomplete data."),
    cause="A consequence: ProcessGroupNCCL tears the process down after an earlier timeout (N1) or NCCL error (N5).",
    fix="Not the cause - look for the first error across all ranks (the report orders every rank's lines by time).",
    patterns=(r"Some NCCL operations have failed or timed out\. Due to the asynchronous nature of CUDA kernels",),
    first_error=False,
    source="orchestration_facts §4a N3",
)

N4 = Signature(
    id="N4", title="ProcessGroupNCCL heartbeat monitor: the watchdog itself is stuck", group="nccl", severity="error",
    message=("Heartbeat monitor timed out! Process will be terminated after dumping debug info / ProcessGroupNCCL's "
             "watchdog got stuck for 480 (or 600) seconds without making progress in monitoring enqueued "
             "collectives … (TORCH_NCCL_HEARTBEAT_TIMEOUT_SEC) … (TORCH_NCCL_ENABLE_MONITORING=0)"),
    cause=("A CUDA or NCCL API call hangs and blocks the watchdog thread (another thread holding the GIL inside a "
           "CUDA call, a stuck cudaEventDestroy). Common at job end when the process group is never destroyed."),
    fix=("Call torch.distributed.destroy_process_group() before the process exits; look for threads that hold the "
         "GIL in CUDA calls. Raise TORCH_NCCL_HEARTBEAT_TIMEOUT_SEC only if it is a false positive."),
    patterns=(
        r"Heartbeat monitor timed out!",
        r"ProcessGroupNCCL's watchdog got stuck for \d+ seconds without making progress",
    ),
    source="orchestration_facts §4a N4",
)

N5 = Signature(
    id="N5", title="NCCL unhandled system error (an external call failed)", group="nccl", severity="error",
    message=("NCCL error in: …ProcessGroupNCCL.cpp:…, unhandled system error / ncclSystemError: System call "
             "(e.g. socket, malloc) or external library call failed or device error"),
    cause=("A system call NCCL depends on failed: a socket (wrong interface, firewall, peer died), /dev/shm "
           "exhausted, an IB or driver problem. The message itself does not say which."),
    fix=("Read the NCCL WARN line just before it (the report shows it when the logs have it); if there is none, "
         "rerun with NCCL_DEBUG=WARN or `--nccl-profile debug` (NCCL_DEBUG=INFO) and diagnose again - the WARN line "
         "matches one of N6-N13."),
    patterns=(
        r"NCCL error in: \S+, unhandled system error",
        r"ncclSystemError: System call \(e\.g\. socket, malloc\) or external library call failed or device error",
    ),
    generic=True,
    source="orchestration_facts §4a N5",
)

N6 = Signature(
    id="N6", title="Socket receive failed: the peer process died or the network dropped", group="nccl",
    severity="error",
    message=("ncclInternalError: Internal check failed. Last error: Socket recv failed while polling for opId=… "
             "/ [Service thread] Connection closed by localRank …"),
    cause=("Usually a consequence: the peer process died first (an OOM or an exception on another rank), or the "
           "network dropped. The real error is usually on another rank."),
    fix="Look at every rank's log for an earlier error (the report's first error); check that no node ran out of memory.",
    patterns=(
        r"Socket recv failed while polling for opId",
        r"\[Service thread\] Connection closed by localRank \d+",
        r"ncclRemoteError: A call failed possibly due to a network error or a remote process exiting prematurely",
        r"gloo/transport/tcp/\w+\.cc:\d+\] Connection closed by peer",  # the same for the gloo backend (CPU runs)
    ),
    first_error=False,
    source="orchestration_facts §4a N6",
)

N7 = Signature(
    id="N7", title="Two ranks on one GPU (duplicate GPU)", group="nccl", severity="error",
    message=("ncclInvalidUsage: This usually reflects invalid usage of NCCL library. Last error: Duplicate GPU "
             "detected : rank 1 and rank 0 both on CUDA device <busid>"),
    cause=("Two ranks selected the same GPU: LOCAL_RANK not used for torch.cuda.set_device; double remapping "
           "(CUDA_VISIBLE_DEVICES=<local_rank> and cuda:<local_rank> as well); more ranks than GPUs; Slurm GRES "
           "giving every task the same GPU."),
    fix=("Call torch.cuda.set_device(int(os.environ['LOCAL_RANK'])) and do not also remap CUDA_VISIBLE_DEVICES per "
         "rank; keep --gpus-per-node <= the node's GPU count (clusterkit refuses more). Check "
         "ranks/rank-NNN.json cuda_visible_devices in the run directory."),
    patterns=(r"Duplicate GPU detected : rank (?P<a>\d+) and rank (?P<b>\d+) both on CUDA device (?P<bus>\w+)",),
    source="orchestration_facts §4a N7",
)

N8 = Signature(
    id="N8", title="GPU peer-to-peer hang on a consumer GPU", group="nccl", severity="error",
    message=("(no error message) a hang right after `Init COMPLETE` with channels `via P2P/…`, on RTX 4090/5090 "
             "(GeForce) GPUs"),
    cause=("NCCL chose P2P between GPUs that do not support it: GeForce RTX 40-series has no supported P2P (RTX 5090 "
           "had a P2P bug with early drivers); where P2P is attempted anyway the first collective stalls. Detected "
           "from the channel transports on a node whose GPU has no P2P (nodes.yaml / GPU catalog), or from a hang "
           "after Init COMPLETE with P2P channels."),
    fix=("Set NCCL_P2P_DISABLE=1 on that node: in nodes.yaml `nccl_env: {NCCL_P2P_DISABLE: \"1\"}` and "
         "`interconnect: {p2p: false}` (`clusterkit diagnose nccl --apply` writes it), or `--nccl-profile no-p2p`. "
         "Traffic then goes through shared memory. Upgrading the driver fixed RTX 5090 P2P hangs."),
    derived=True,
    env=(("NCCL_P2P_DISABLE", "1"),),
    source="orchestration_facts §4a N8",
)

N9 = Signature(
    id="N9", title="P2P over PCIe hangs: ACS / IOMMU redirects peer traffic", group="nccl", severity="error",
    message=("(no NCCL message) a P2P hang or collapsed bandwidth on a PCIe node whose GPUs support P2P; kernel "
             "IOMMU faults in dmesg (`AMD-Vi: Event logged [IO_PAGE_FAULT …]`, `DMAR: [DMA Read] Request device …`)"),
    cause=("PCI Access Control Services (ACS) or the IOMMU (VT-d / AMD-Vi) send peer-to-peer traffic through the "
           "root complex: the first P2P collective hangs or crawls even though `nvidia-smi topo -p2p p` says OK. "
           "Also bad VM/container PCI passthrough."),
    fix=("Confirm with NCCL_P2P_DISABLE=1 (then SHM is used and it works). Check `sudo lspci -vvv | grep ACSCtl` "
         "(SrcValid+ = ACS on); disable VT-d/IOMMU in the BIOS or clear ACS with `setpci … ECAP_ACS+0x6.w=0000` "
         "(after every reboot). Until then keep NCCL_P2P_DISABLE=1 in that node's nodes.yaml nccl_env."),
    patterns=(r"AMD-Vi: Event logged \[IO_PAGE_FAULT", r"DMAR: \[DMA (?:Read|Write)[^\]]*\] Request device"),
    derived=True,
    env=(("NCCL_P2P_DISABLE", "1"),),
    source="orchestration_facts §4a N9 (kernel messages: Linux IOMMU drivers)",
)

N10 = Signature(
    id="N10", title="/dev/shm too small or full", group="nccl", severity="error",
    message=("Error while creating shared memory segment /dev/shm/nccl-XXXX (size N) / failed to extend "
             "/dev/shm/nccl-… : No space left on device / Call to posix_fallocate failed : No space left on device"),
    cause="The container's /dev/shm is 64 MB by default, or it is full of stale nccl-* segments from dead jobs.",
    fix=("Give the container more shared memory (docker `--shm-size=1g` or more, a Pyxis/enroot mount, k8s "
         "emptyDir medium: Memory); remove stale /dev/shm/nccl-* files; `clusterkit preflight NODE` checks free "
         "/dev/shm. Last resort: NCCL_SHM_DISABLE=1."),
    patterns=(
        r"Error while creating shared memory segment /dev/shm/",
        r"failed to extend /dev/shm/\S+",
        r"posix_fallocate failed\s*:\s*No space left on device",
        r"/dev/shm/nccl-\S+.*No space left on device",
    ),
    source="orchestration_facts §4a N10",
)

N11 = Signature(
    id="N11", title="NCCL_SOCKET_IFNAME names an interface that does not exist on this node", group="nccl",
    severity="error",
    message=("NCCL_SOCKET_IFNAME set to eth2, then ncclSocketInit: connecting to address with family … is "
             "neither AF_INET(2) nor AF_INET6(10) / Bootstrap : no socket interface found"),
    cause=("NCCL_SOCKET_IFNAME matched no interface on this node: node types name their NICs differently (eno1, "
           "eth0, enp…, ib0), and the `=` exact-match form is not honoured by some builds."),
    fix=("Use a prefix list (NCCL_SOCKET_IFNAME=eth,en,ib) or the exclusion form (NCCL_SOCKET_IFNAME=^lo,docker,"
         "veth,virbr), set per node in nodes.yaml nccl_env (or /etc/nccl.conf); check `ip -o -4 addr` on the node "
         "- `clusterkit preflight NODE` does."),
    patterns=(
        r"is neither AF_INET\(2\) nor AF_INET6\(10\)",
        r"no socket interface found",
    ),
    related=(r"NCCL_SOCKET_IFNAME set (?:by environment )?to \S+",),
    source="orchestration_facts §4a N11",
)

N12 = Signature(
    id="N12", title="NCCL bootstrap could not connect (refused / timed out / aborted)", group="nccl",
    severity="error",
    message=("socketStartConnect: Connect to <addr><port> failed : Software caused connection abort / Call to "
             "connect failed : Connection timed out / Connection refused in bootstrap (bootstrap.cc)"),
    cause=("NCCL picked an interface that is not routable between the nodes - a docker bridge or veth*, libvirt "
           "virbr*, an IPv6 link-local fe80:: address, a NIC on another subnet - or a firewall blocks the ports."),
    fix=("Pin NCCL_SOCKET_IFNAME to the fabric or management NIC every node shares (nodes.yaml nccl_env, e.g. "
         "NCCL_SOCKET_IFNAME=eno1 or ^docker,veth,virbr,lo); NCCL_SOCKET_FAMILY=AF_INET if fe80:: addresses show "
         "up; open the ephemeral port range between the nodes. The report's interface table shows what NCCL chose."),
    patterns=(
        r"socket(?:Start|Poll)?Connect: Connect to \S+ (?:failed|returned)",
        r"Call to connect (?:failed|returned)\b.*(?:timed out|refused|abort)",
        r"(?i:bootstrap)\w*(?:\.cc)?\b.*(?:Connection refused|Connection timed out|connection abort)",
    ),
    variants=(Variant(
        name="IPv6 link-local",
        cause="NCCL tried an IPv6 link-local (fe80::…%if) address, which is not routable between nodes.",
        fix="Set NCCL_SOCKET_FAMILY=AF_INET (and pin NCCL_SOCKET_IFNAME to the shared NIC).",
        when=lambda m: "fe80:" in m.string.lower(),
        env=(("NCCL_SOCKET_FAMILY", "AF_INET"),),
    ),),
    related=(r"Bootstrap : Using \S+", r"NCCL_SOCKET_IFNAME set (?:by environment )?to \S+"),
    source="orchestration_facts §4a N12",
)

N13 = Signature(
    id="N13", title="InfiniBand/RoCE transport retry counter exceeded (status 12)", group="nccl", severity="error",
    message=("NET/IB : Got completion from peer <ip><port> with status=12 opcode=… len=0 vendor err 129 (older: "
             "Got completion with error 12, opcode 0, len 0, vendor err 129)"),
    cause=("The IB/RoCE retry counter ran out (error 12 is a communication timeout). Right at startup: the NICs "
           "cannot reach each other (wrong RoCE GID index, routing, VLAN). Mid-run: congestion or a flapping link."),
    fix=("RoCEv2: NCCL_IB_GID_INDEX=3. Lossy fabric: raise NCCL_IB_TIMEOUT (and NCCL_IB_RETRY_CNT). Confirm IB is "
         "the culprit with NCCL_IB_DISABLE=1 (sockets); test the pair with `ib_write_bw`."),
    patterns=(
        r"Got completion from peer \S+ with status=12\b",
        r"Got completion with error 12\b",
    ),
    related=(r"NET/IB : Using \S+", r"NCCL_IB_GID_INDEX set (?:by environment )?to \S+"),
    source="orchestration_facts §4a N13",
)

N14 = Signature(
    id="N14", title="Mixed NCCL versions across ranks", group="nccl", severity="error",
    message="(no single message) the ranks report different `NCCL version 2.x.y` lines",
    cause=("Ranks load different libnccl builds (LD_LIBRARY_PATH, container vs host, different torch wheels per "
           "node). NCCL must be the same version on every rank (env vars may differ per node)."),
    fix=("Install the same torch/NCCL on every node (one env/requirements-*.txt), or run in one container image; "
         "record `nccl:` per node in nodes.yaml (`clusterkit preflight NODE` measures it) so mixed jobs are refused."),
    derived=True,
    source="orchestration_facts §4a N14",
)

N15 = Signature(
    id="N15", title="Deprecated NCCL_* variable name (renamed TORCH_NCCL_* in torch 2.2)", group="nccl",
    severity="warning",
    message=("Environment variable NCCL_ASYNC_ERROR_HANDLING is deprecated; use TORCH_NCCL_ASYNC_ERROR_HANDLING "
             "instead (also NCCL_BLOCKING_WAIT, NCCL_DESYNC_DEBUG, …)"),
    cause="An old variable name (renamed in torch 2.2, PR #114077); it still works today but only warns.",
    fix=("Use the TORCH_NCCL_* name given in the message (e.g. TORCH_NCCL_ASYNC_ERROR_HANDLING); clusterkit "
         "refuses the old names in profiles, nodes.yaml and --env, so the job's own script or shell set it."),
    patterns=(r"Environment variable (?P<old>NCCL_\w+) is deprecated; use (?P<new>TORCH_NCCL_\w+) instead",),
    source="orchestration_facts §4a N15",
)

# -------------------------------------------------------------------------------- rendezvous (§4b)

R1 = Signature(
    id="R1", title="Rendezvous port already in use (EADDRINUSE)", group="rendezvous", severity="error",
    message=("torch.distributed.DistNetworkError: The server socket has failed to listen on any local network "
             "address. port: 29500, useIpv6: false, code: -98, name: EADDRINUSE, message: address already in use "
             "(older: The server socket has failed to bind to [::]:29500 (errno: 98 - Address already in use))"),
    cause=("Another job (or a leftover process from a previous attempt) holds the rendezvous port on that node - "
           "typically two jobs using torchrun's defaults 29500 (static) / 29400 (c10d) or a hard-coded port."),
    fix=("Launch through clusterkit (single node: --standalone, the OS picks the port; multi-node: a per-job port "
         "hashed from SLURM_JOB_ID and the restart count, probed on the head node). For a hand-written launch: "
         "`--rdzv-endpoint localhost:0` on one node. Find the holder with `ss -ltnp 'sport = :<port>'` on the head."),
    patterns=(
        r"The server socket has failed to listen on any local network address",
        r"\bEADDRINUSE\b",
        r"\(errno: 98 - Address already in use\)",
        r"RuntimeError: Address already in use",
    ),
    source="orchestration_facts §4b R1, §3.9",
)

R2 = Signature(
    id="R2", title="Could not reach the rendezvous store (connect timed out)", group="rendezvous", severity="error",
    message=("RendezvousConnectionError: The connection to the C10d store has failed. See inner exception for "
             "details. / [c10d] The client socket has timed out after 60s while trying to connect to (<host>, "
             "<port>) / connect() timed out. Original timeout was 60000 ms"),
    cause=("The endpoint is not where rank 0's agent listens: a wrong host (the submit/login host, a hostname that "
           "resolves to 127.0.1.1, an IB-suffixed name), a blocked port, or rank 0 started late (slow srun, "
           "container pull)."),
    fix=("Resolve the head address on the head node itself (`srun -N1 -n1 -w <head> hostname --ip-address`; "
         "clusterkit publishes rendezvous-<restart>.json from the head); test with `nc -zv <head> <port>` from "
         "every node; raise `--rdzv-conf join_timeout=…,read_timeout=…` for slow starts."),
    patterns=(
        r"RendezvousConnectionError: The connection to the C10d store has failed",
        r"The client socket has timed out after \d+\w* while trying to connect to \((?P<host>[^,]+), (?P<port>\d+)\)",
        r"connect\(\) timed out\. Original timeout was \d+ ms",
    ),
    # "TCP client failed to connect/validate … The client socket has timed out" is R3's name-resolution case
    accept=lambda m, _ws: "connect/validate" not in m.string,
    source="orchestration_facts §4b R2",
)

R3 = Signature(
    id="R3", title="TCPStore client failed (connect/validate, broken pipe)", group="rendezvous", severity="error",
    message=("[c10d] TCP client failed to connect/validate to host <h>:<port> / DistStoreError / sendBytes failed "
             "… Broken pipe / waitForInput … timed out"),
    cause=("Name resolution differs between nodes (the \"connect/validate\" text), the store server died (broken "
           "pipe), or another job's store holds the port (a probe/bind race)."),
    fix=("Check that every hostname in the node list resolves to the same address on every node "
         "(`getent hosts <host>`); make the port unique per job (clusterkit hashes the job id); if the store died, "
         "the first error is on the head node's rank 0."),
    patterns=(
        r"TCP client failed to connect/validate to host (?P<host>\S+)",
        r"(?:^|\.)DistStoreError:",
        r"sendBytes failed\b.*Broken pipe",
        r"waitForInput\b.*timed out",
    ),
    source="orchestration_facts §4b R3",
)

R4 = Signature(
    id="R4", title="Two jobs joined one store (worker_count > world_size)", group="rendezvous", severity="error",
    message=("Timed out initializing process group in store based barrier on rank: 0, for key: "
             "store_based_barrier_key:1 (world_size=8, worker_count=16, timeout=0:30:00)"),
    cause=("More workers than the world size arrived at the barrier: two launches share one store (same "
           "MASTER_ADDR:MASTER_PORT) - a requeued attempt reusing the port while the old processes live, a port "
           "collision, or a duplicated srun."),
    fix=("Kill leftover processes before relaunching (`clusterkit cancel RUN`); make the port unique per attempt "
         "as well as per job (clusterkit hashes SLURM_JOB_ID and SLURM_RESTART_COUNT); run exactly one torchrun "
         "per node (ntasks-per-node=1)."),
    patterns=(
        r"Timed out initializing process group in store based barrier on rank:? ?\d+, for key: \S+ "
        r"\(world_size=(?P<world>\d+), worker_count=(?P<workers>\d+)",
    ),
    accept=_more_workers_than_world,
    source="orchestration_facts §4b R4",
)

R5 = Signature(
    id="R5", title="Each node formed its own world", group="rendezvous", severity="error",
    message=("(no error) world_size == nproc_per_node on every node, the same global rank on several hosts; the job "
             "\"works\" N times or hangs waiting for peers"),
    cause=("The rendezvous host fell back to localhost (scontrol missing in a container, `|| echo localhost` "
           "masking an error), or --rdzv-endpoint differs per node, so every node rendezvoused with itself."),
    fix=("Compute the endpoint once, outside the container, and pass the same one to every node (clusterkit's "
         "launch does: the head publishes rendezvous-<restart>.json); fail when the head host cannot be resolved; "
         "assert WORLD_SIZE == nnodes x nproc_per_node at startup."),
    derived=True,
    source="orchestration_facts §4b R5",
)

R6 = Signature(
    id="R6", title="Rendezvous timed out or closed: a node never joined", group="rendezvous", severity="error",
    message="RendezvousTimeoutError / RendezvousClosedError",
    cause=("A node never joined the rendezvous (a stuck srun step, a slow container import, mismatched --nnodes), "
           "or an elastic restart arrived after the rendezvous closed."),
    fix=("Use the same --nnodes/--nproc-per-node on every node (clusterkit renders one argv for all); raise the "
         "join timeout for large jobs (`--rdzv-conf join_timeout=…`); keep --max-restarts 0 when restarts go "
         "through Slurm requeue (clusterkit's default). Look at the missing node's node-<name>.log."),
    patterns=(
        r"(?:^|\.)RendezvousTimeoutError(?::|$)",
        r"(?:^|\.)RendezvousClosedError(?::|$)",
        r"Timed out initializing process group in store based barrier",
    ),
    source="orchestration_facts §4b R6",
)

R7 = Signature(
    id="R7", title="Preempted: a signal killed the job", group="rendezvous", severity="error",
    message="srun: error: <node>: task 0: User defined signal 2 / *** JOB N ON host CANCELLED AT … DUE TO PREEMPTION ***",
    cause=("The preemption (or time-limit warning) signal reached a process without a handler - torchrun "
           "workers or multiprocessing children when only the wrapper handles it - so the job died instead of "
           "checkpointing."),
    fix=("Install the handler in the process that receives the signal and forward it to the workers; send USR2 "
         "with `--signal=USR2@<seconds>` (submitit's choice, clusterkit's launch: signal_delay_s=120), never USR1 "
         "(NCCL catches SIGUSR1)."),
    patterns=(
        r"User defined signal 2",
        r"CANCELLED AT \S+ DUE TO PREEMPTION",
        r"User defined signal 1",
    ),
    variants=(Variant(
        name="SIGUSR1",
        cause="The job was signalled with USR1, which NCCL catches for itself: the handler never ran.",
        fix="Use `--signal=USR2@<seconds>` for preemption and checkpoint notices, never USR1.",
        when=lambda m: "signal 1" in m.group(0),
    ),),
    source="orchestration_facts §4b R7",
)

# ------------------------------------------------------------------------------------- Slurm (§4c)

S1 = Signature(
    id="S1", title="Slurm: requested node configuration is not available", group="slurm", severity="error",
    message="sbatch: error: Batch job submission failed: Requested node configuration is not available",
    cause=("The GRES type is spelled differently from gres.conf (Slurm compares it case-sensitively), or the "
           "request is larger than any node in the partition."),
    fix=("Copy the GRES string exactly from `sinfo -o %G` / `scontrol show node` into nodes.yaml "
         "`slurm: {gres_type: …}` (clusterkit emits it verbatim); ask for no more GPUs than the node has."),
    patterns=(r"Batch job submission failed: Requested node configuration is not available",),
    source="orchestration_facts §4c",
)

S2 = Signature(
    id="S2", title="Slurm: --gpus-per-task without --gpus or --ntasks", group="slurm", severity="error",
    message="sbatch: error: … --gpus-per-task or --tres-per-task used without either --gpus or -n/--ntasks is not allowed",
    cause="The GPU flags' rules differ between Slurm versions; this one needs a task count with per-task GPUs.",
    fix=("Request GPUs per node (`--gpus-per-node`, clusterkit's default) with one task per node; check "
         "`sinfo --version` (prefer --gpus-per-node on >= 24.11)."),
    patterns=(r"--gpus-per-task or --tres-per-task used without either --gpus or -n/--ntasks is not allowed",),
    source="orchestration_facts §4c",
)

S3 = Signature(
    id="S3", title="Slurm: invalid generic resource (gres) specification", group="slurm", severity="error",
    message="Invalid generic resource (gres) specification",
    cause="The GRES request does not parse for this Slurm version, or names a GRES type the cluster does not have.",
    fix=("Use the GRES names `sinfo -o %G` prints (nodes.yaml slurm.gres_type) or drop the type and ask for "
         "`--gpus-per-node=K`; check `sinfo --version`."),
    patterns=(r"Invalid generic resource \(gres\) specification",),
    source="orchestration_facts §4c",
)

S4 = Signature(
    id="S4", title="Slurm: step requested GRES not found in the job", group="slurm", severity="error",
    message="srun: error: Step requested GRES (gpu:(null)) not found in the job",
    cause="An untyped step-level --gpus-per-node inside a job allocated with typed GRES (gpu:a6000:8).",
    fix="Let the step inherit the job's GRES (no GPU flag on srun) when it uses all GPUs - clusterkit's launch does.",
    patterns=(r"Step requested GRES \(\S+\) not found in the job",),
    source="orchestration_facts §4c",
)

S5 = Signature(
    id="S5", title="Slurm requeue (expected during a requeue)", group="slurm", severity="info",
    message=("slurmstepd: error: *** JOB N ON host CANCELLED AT … DUE TO JOB REQUEUE *** + Failed to send "
             "MESSAGE_TASK_EXIT: Connection refused"),
    cause="The normal trace of a (submitit-initiated) requeue; the non-zero ranks then exit with code 1.",
    fix="Nothing to fix; make sure every rank exits before KillWait so the node is not drained.",
    patterns=(r"CANCELLED AT \S+ DUE TO JOB REQUEUE", r"Failed to send MESSAGE_TASK_EXIT: Connection refused"),
    first_error=False,
    source="orchestration_facts §4c",
)

S6 = Signature(
    id="S6", title="Slurm accounting disabled (sacct bypassed)", group="slurm", severity="info",
    message="Bypassing sacct error … Slurm accounting storage is disabled",
    cause="The cluster has no slurmdbd accounting, so sacct cannot answer.",
    fix="Nothing to fix: clusterkit falls back to squeue and the results/node-*.json files the job writes.",
    patterns=(r"Bypassing sacct error", r"Slurm accounting storage is disabled"),
    first_error=False,
    source="orchestration_facts §4c",
)

S7 = Signature(
    id="S7", title="Slurm: job hit its time limit", group="slurm", severity="error",
    message="slurmstepd: error: *** JOB N ON host CANCELLED AT … DUE TO TIME LIMIT ***",
    cause="The job ran past its --time: a hang that nothing else reported, or a limit too short for the work.",
    fix=("If the logs stop early (e.g. after NCCL Init COMPLETE) it was a hang - see the other matches; otherwise "
         "raise the time limit (the job preset's time_limit_min) or checkpoint and requeue."),
    patterns=(r"CANCELLED AT \S+ DUE TO TIME LIMIT",),
    source="Slurm slurmstepd message (same family as §4c requeue line)",
)

S8 = Signature(
    id="S8", title="Slurm: job cancelled", group="slurm", severity="info",
    message="slurmstepd: error: *** JOB N ON host CANCELLED AT <time> ***",
    cause="scancel (by a user, or by clusterkit cancelling a hung run) stopped the job.",
    fix="Nothing to fix if the cancel was intended; the first error before it says why the run was stopped.",
    patterns=(r"\*\*\* (?:JOB|STEP) \S+ ON \S+ CANCELLED AT \S+ \*\*\*",),
    first_error=False,
    source="Slurm slurmstepd message",
)

# ------------------------------------------------------------------------------ Open-Sora (§8.4)

O1 = Signature(
    id="O1", title="Sequence-parallel degree does not divide STDiT3's 16 heads (e.g. 6 GPUs)", group="opensora",
    severity="error",
    message=("AssertionError: The dimension to split (16) is not a multiple of world size (6) / RuntimeError: "
             "shape '[30, 600, 1152]' is invalid for input of size 23328000 (18 = 6x3 heads came back instead of 16)"),
    cause=("Open-Sora 1.2 inference makes the whole world one sequence-parallel group, and SP splits STDiT3's 16 "
           "attention heads across the ranks: 16 % 6 != 0, so the uneven head split crashes one rank and the "
           "others wait in the next collective until the NCCL watchdog fires (N1) - the seed's worker-5 6-GPU "
           "NCCL timeout."),
    fix=("Use 1, 2, 4 or 8 GPUs per inference job (torchrun --nproc-per-node 4 or 8; `clusterkit plan` refuses "
         "other SP degrees), and scale out with independent jobs instead."),
    patterns=(
        r"The dimension to split \((?P<dim>\d+)\) is not a multiple of world size \((?P<world>\d+)\)",
        r"shape '\[(?P<shape>[\d, ]+)\]' is invalid for input of size (?P<size>\d+)",
        r"assert\s+\(?\s*(?:self\.)?num_heads\s*%\s*\w+\s*==\s*0",
        r"(?i:heads?)\b[^\n]*\bnot divisible by\b[^\n]*(?i:sp_size|sp size|sequence parallel|world size)",
    ),
    accept=lambda m, ws: "shape" not in m.re.groupindex or _uneven_sp_shape(m, ws),
    variants=(Variant(
        name="sequence not divisible",
        cause=("The spatial token count of the resolution is not a multiple of the SP degree (Open-Sora 1.2.0 "
               "splits tokens without padding)."),
        fix=("Use 1, 2, 4 or 8 GPUs and a resolution whose patch grid divides evenly, or the final v1.2 code that "
             "pads patch rows."),
        when=lambda m: "dim" in m.re.groupindex and m.group("dim") != str(STDIT3_HEADS),
    ),),
    source="opensora_v12_facts §8.3-8.4 (issue #904)",
)

# --------------------------------------------------------------------------------- generic / extra

X1 = Signature(
    id="X1", title="Out of GPU memory", group="generic", severity="error",
    message="torch.OutOfMemoryError: CUDA out of memory. Tried to allocate …",
    cause=("A rank ran out of GPU memory; its peers then wait in the next collective (N1) or lose the connection "
           "(N6)."),
    fix=("Lower the per-GPU load (resolution, frames, batch size), offload T5/VAE, or run on a GPU with more "
         "memory; `clusterkit plan` estimates the peak per GPU."),
    patterns=(r"CUDA out of memory\. Tried to allocate", r"torch\.(?:cuda\.)?OutOfMemoryError"),
    source="torch error text (orchestration_facts §4a N1/N6 name OOM as a cause)",
)

X2 = Signature(
    id="X2", title="Process torn down after an earlier failure", group="generic", severity="error",
    message=("torch.distributed.elastic.multiprocessing.errors.ChildFailedError / failed (exitcode: 1) local_rank: 0 "
             "/ terminate called after throwing an instance of … / NCCL communicator was aborted on rank N"),
    cause="A consequence: torchrun, Slurm or ProcessGroupNCCL reporting that a rank already failed.",
    fix="Not the cause - read the first error (the earliest root error across ranks).",
    patterns=(
        r"(?:^|\.)ChildFailedError:",
        r"failed \(exitcode: -?\d+\) local_rank: \d+",
        r"terminate called after throwing an instance of",
        r"To avoid data inconsistency, we are taking the entire process down",
        r"NCCL communicator was aborted on rank",
        r"Process group watchdog thread terminated with exception",
        r"Signal \d+ \(SIG\w+\) received by PID",
        r"srun: error: \S+: task \d+: Exited with exit code",
    ),
    first_error=False,
    source="torch.distributed.elastic / Slurm messages",
)

X3 = Signature(
    id="X3", title="Unrecognised Python exception", group="generic", severity="error",
    message="<SomethingError>: … (any exception line the catalogue does not know)",
    cause="An exception that matches no known signature; it is still the earliest error, so it is shown as is.",
    fix="Read the traceback on that rank (the evidence lines); if it recurs, add a signature to the catalogue.",
    patterns=(r"^(?P<exc>(?:[A-Za-z_]\w*\.)*[A-Za-z_]\w*(?:Error|Exception))(?::|$)",),
    generic=True,
    source="fallback",
)

#: display order
CATALOGUE: tuple[Signature, ...] = (
    N1, N2, N3, N4, N5, N6, N7, N8, N9, N10, N11, N12, N13, N14, N15,
    R1, R2, R3, R4, R5, R6, R7,
    S1, S2, S3, S4, S5, S6, S7, S8,
    O1, X1, X2, X3,
)

#: match order: when several signatures match one line, the first here wins - specific messages
#: before the wrappers that quote them (N1 before X2's "watchdog thread terminated", R4 before
#: R6 and R3, everything before the generic N5 and X3).
MATCH_ORDER: tuple[Signature, ...] = (
    N1, N2, N3, N4, N7, N10, N11, N12, N13, N6, N15, N9,
    R1, R4, R2, R3, R6, R7,
    S1, S2, S3, S4, S5, S6, S7, S8,
    O1, X1, X2, N5, X3,
)

_BY_ID = {s.id: s for s in CATALOGUE}
assert len(_BY_ID) == len(CATALOGUE), "duplicate signature id"
assert {s.id for s in MATCH_ORDER} == {s.id for s in CATALOGUE if s.patterns}, "MATCH_ORDER must list every pattern"


def signature(sig_id: str) -> Signature:
    """The catalogue entry ``sig_id`` (e.g. "N1"); KeyError names the valid ids."""
    try:
        return _BY_ID[sig_id]
    except KeyError:
        raise KeyError(f"unknown signature {sig_id!r}; known: {', '.join(_BY_ID)}") from None


# Lines that quote an error torch or NCCL already recovered from: never a finding.
# c10d's TCPStore tries IPv6 first and, when a second agent on the same host already holds the
# port there, logs EADDRINUSE at INFO level before succeeding on IPv4.
BENIGN = re.compile(r"Failed to bind to ipv6 address, trying ipv4")


def match_line(text: str, world_size: int | None = None) -> tuple[Signature, re.Match[str]] | None:
    """The highest-priority signature matching one log line (``text`` without its timestamp or
    rank prefix works best for X3), or None."""
    if BENIGN.search(text):
        return None
    for sig in MATCH_ORDER:
        match = sig.search(text, world_size)
        if match:
            return sig, match
    return None


_GROUP_TITLES = (
    ("nccl", "NCCL / ProcessGroupNCCL (orchestration_facts §4a)"),
    ("rendezvous", "Rendezvous, TCPStore, ports, signals (orchestration_facts §4b)"),
    ("slurm", "Slurm (orchestration_facts §4c)"),
    ("opensora", "Open-Sora 1.2 (opensora_v12_facts §8.4)"),
    ("generic", "Generic (what the facts do not name, so the first error is never lost)"),
)


def render_catalogue_markdown() -> str:
    """The catalogue as the Markdown tables in docs/troubleshooting-nccl.md (a test keeps them equal)."""

    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    out = []
    for group, title in _GROUP_TITLES:
        out += [f"### {title}", "", "| id | severity | message (verbatim fragments) | cause | fix |", "|---|---|---|---|---|"]
        for s in CATALOGUE:
            if s.group != group:
                continue
            kind = s.severity + ("" if s.first_error else ", consequence") + (", derived" if s.derived else "")
            fix = s.fix + "".join(f" **{v.name}:** {v.cause} {v.fix}" for v in s.variants)
            if s.env:
                fix += " Env: " + ", ".join(f"`{k}={v}`" for k, v in s.env)
            out.append(f"| {s.id} | {kind} | {cell(s.message)} | {cell(s.cause)} | {cell(fix)} |")
        out.append("")
    return "\n".join(out)
