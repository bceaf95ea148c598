"""Memory and time model of Open-Sora 1.2 on one GPU of a layout.

Pure arithmetic on the constants below; no torch, no I/O. The planner enumerates layouts and
asks two questions of each: how much memory does one GPU need at its peak (``memory``), and how
long does one video take (``timing``). ``docs/planner.md`` derives every constant and compares
the predictions with every published point.

Sources are tagged as in ``performance_facts.md``: [SRC] read from the cited source, [DERIVED]
computed from sourced inputs, [FIT] chosen to match the published single-H100 table (README
v1.2, "Gradio Demo": 30 steps, T5 fp32 on the GPU), UNVERIFIED an estimate nobody has measured.

Units: memory in GiB (2**30 bytes), time in seconds, bandwidth in GB/s (1e9 bytes/s).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache, cached_property

from clusterkit.gpus import GPUSpec
from opensora_core import geometry
from opensora_core.parallel import volume
from opensora_core.parallel.layout import DEFAULT_SP_SCHEME, legal_sp_degrees

GIB = 2**30

# ---------------------------------------------------------------- model facts [SRC]
# STDiT3-XL/2 (opensora/models/stdit/stdit3.py, STDiT3Config; opensora_core's STDiT3Config agrees).
HIDDEN_SIZE = 1152
DEPTH = 28  # spatial blocks; there are as many temporal blocks
NUM_HEADS = 16
TEXT_TOKENS = 300  # model_max_length; the FLOP count charges the full 300 (performance_facts §3.2)
#: Sequence-parallel degrees: SP scatters the 16 heads, so the degree must divide 16 (§8.3 of the
#: v1.2 facts: 6 ranks get 3,3,3,3,2,2 heads, a shape error on some ranks and an NCCL timeout on the
#: rest). The rule lives with the layout (opensora_core.parallel.layout), which refuses it before launch.
SP_DEGREES = legal_sp_degrees(NUM_HEADS)
SAMPLING_STEPS = 30  # rflow num_sampling_steps of the v1.2 inference config
DIT_PARAMS = 1.21e9  # 4.84 GB fp32 safetensors / 4 B [SRC HF file listing]
T5_PARAMS = 4.762e9  # T5-XXL encoder, ~19 GB fp32 checkpoint (performance_facts §4.1, UNVERIFIED)
VAE_PARAMS = 393.3e6  # 83.65M SDXL 2D VAE + 309.69M temporal VAE (opensora_v12_facts §2.1)
#: Hidden-sized tensors moved by all-to-all per spatial block: v1.2's own SP moves 6 (qkv, attention
#: out, cross-attn q and out); ours 4 (ulysses) or 2 (dsp, the default) (opensora_core.parallel.volume).
SP_ALLTOALLS_PER_BLOCK = volume.ALLTOALLS_PER_SPATIAL_BLOCK["upstream"]
#: The scheme the job runs unless told otherwise, and so the one the planner charges.
SP_SCHEME = DEFAULT_SP_SCHEME
#: Final-layer outputs per token (patch volume 4 x 8 output channels): what SP gathers every step.
OUT_PER_TOKEN = 4 * 8
LATENT_CHANNELS = 4
VAE_MICRO_BATCH_DEFAULT = 4  # OpenSoraVAE_V1_2(micro_batch_size=4) [SRC vae.py]

DTYPES = ("bf16", "fp16")
ATTENTION = ("fused", "unfused")  # fused = FlashAttention-2 for spatial self-attention
T5_PLACEMENTS = ("gpu-fp32", "gpu-bf16", "offload")

# ---------------------------------------------------------------- memory [FIT unless noted]
#: CUDA context, cuBLAS workspaces, text embeddings, allocator rounding. [FIT] to the H100 image
#: column (24/24/27 GB), whose activations are negligible.
MISC_GIB = 1.5
#: Live DiT activations per token of the batch on one GPU (CFG doubles the batch). [FIT] to the
#: 720p/480p/360p 8s and 16s columns; ≈13 hidden-sized bf16 tensors (1152 × 2 B = 2,304 B each).
ACTIVATION_BYTES_PER_TOKEN = 30e3
#: Naive attention (q@kᵀ, fp32 cast, fp32 softmax) keeps ~10 bytes per score live: bf16 scores,
#: their fp32 copy and the fp32 softmax (performance_facts §4.2 gives 8-10). Temporal attention
#: always takes this path in v1.2; spatial attention does when unfused. [DERIVED, FIT at 10]
NAIVE_ATTENTION_BYTES_PER_SCORE = 10
#: Transient of the 2D VAE decoding one micro-batch, per output pixel per frame. [FIT] to the 2s
#: and 4s columns (720p +16-18 GB, 480p +6-7 GB, 360p +3 GB over the resident weights).
VAE_DECODE_BYTES_PER_PIXEL = 5e3
#: The decoded video stays on the GPU as 3 bf16 channels until it is saved (one GPU). [DERIVED]
DECODED_BYTES_PER_PIXEL = 3 * 2
#: A group shares the decode (opensora_core.parallel.shared): each rank converts its frames to uint8
#: and the first rank gathers them: 3 bytes per pixel, no floating-point copy of the video. [DERIVED]
SHARED_DECODED_BYTES_PER_PIXEL = 3
#: Fraction of usable memory kept free for allocator fragmentation (performance_facts §2.7 budgets
#: 10-25% slack for *reserved* memory; the fitted peaks already sit near nvidia-smi figures, and the
#: seed's 4x A6000 720p 8s run, which fit, needs this to be <= ~9%). UNVERIFIED.
MEMORY_HEADROOM = 0.05

# ---------------------------------------------------------------- time
#: DiT model FLOPs per second as a fraction of the dense tensor peak, end to end. [FIT] to the 12
#: video points of the H100 table (performance_facts §2.1 finds 10.6-13.3%); used for every GPU.
DIT_EFFICIENCY = 0.134
#: Decode FLOPs of the VAE per output pixel per frame: ≈8.5 TFLOP (2D) + ≈1.5 (temporal) per 720p
#: frame (performance_facts §3.2, UNVERIFIED estimate from layer counts).
VAE_FLOPS_PER_PIXEL = 10.0e12 / (720 * 1280)
VAE_EFFICIENCY = 0.25  # convolutions; gives §3.4's "10-30 s" VAE decode on an A6000 (UNVERIFIED)
#: Time factor per halving of the VAE micro-batch below 4 ("slightly lower speed", README). UNVERIFIED.
VAE_MICRO_BATCH_PENALTY = 0.05
T5_FLOPS = 2 * T5_PARAMS * TEXT_TOKENS  # one prompt through the encoder [DERIVED]
T5_EFFICIENCY = 0.25  # UNVERIFIED; the T5 term is < 1 s on every GPU, so it barely matters
#: fp32 matmuls run on CUDA cores (PyTorch leaves TF32 off for matmuls): 1/2 to 1/15 of the dense
#: tensor rate depending on the SKU; a middle value. UNVERIFIED.
FP32_SLOWDOWN = 8
#: Bytes of memory traffic per naive attention score: write bf16, read, write fp32, softmax read
#: and write fp32, cast read/write, read for @v. [DERIVED]
NAIVE_ATTENTION_TRAFFIC_PER_SCORE = 24
BANDWIDTH_EFFICIENCY = 0.7  # achieved / peak DRAM bandwidth of large elementwise kernels. UNVERIFIED
#: Per video: sampler set-up, Python, writing the mp4. [FIT] to the H100 image column.
FIXED_SECONDS = 1.0
#: Host <-> GPU copies (pageable memory, PCIe Gen3/Gen4 x16) for T5 offload. UNVERIFIED.
HOST_LINK_GBS = 12.0
COLLECTIVE_LATENCY_S = 30e-6  # small-message NCCL latency on one node. UNVERIFIED
#: Per-rank bus bandwidth of all-to-all inside one node, by fabric and group size (performance_facts
#: §5 and §3.5: PCIe without P2P goes through host shared memory, 12-18 GB/s at 4 GPUs, lower across
#: two sockets; with P2P ~20-24; a 2-way NVLink bridge helps only 2-GPU groups; NVSwitch ~150).
ALLTOALL_GBS: dict[str, dict[int, float]] = {
    "pcie-shm": {2: 15.0, 4: 15.0, 8: 11.5, 16: 8.0},
    "pcie-p2p": {2: 22.5, 4: 22.0, 8: 17.0, 16: 12.0},
    "nvlink-bridge": {2: 45.0, 4: 22.0, 8: 17.0, 16: 12.0},
    "nvswitch": {2: 150.0, 4: 150.0, 8: 150.0, 16: 150.0},
}
FABRICS = tuple(ALLTOALL_GBS)

# ---------------------------------------------------------------- training (UNVERIFIED throughout)
#: Forward + backward (2x) + activation recompute (1x) with gradient checkpointing.
TRAIN_FLOPS_FACTOR = 4
#: Model FLOPs / (peak x wall time): performance_facts §2.6 derives 5-9% of H100 dense from the
#: configs' 12-20 s/it comments; includes the online VAE/T5 encode.
TRAIN_EFFICIENCY = 0.07
#: ZeRO-2 shards fp32 master weights (4 B), Adam moments (8 B) and fp32 gradients (4 B) over the
#: data-parallel group; the fp32 EMA (4 B) is sharded too (model_sharding in train.py).
SHARDED_BYTES_PER_PARAM = 16 + 4
#: Gradient checkpointing keeps every block's input: 56 blocks x 1152 x 2 B per token. [DERIVED]
CHECKPOINT_BYTES_PER_TOKEN = 2 * DEPTH * HIDDEN_SIZE * 2
#: One block's forward+backward working set while recomputing, per token. UNVERIFIED (≈2x inference).
RECOMPUTE_BYTES_PER_TOKEN = 2 * ACTIVATION_BYTES_PER_TOKEN


@dataclass(frozen=True)
class Workload:
    """One video (or training sample) in tokens and pixels; hardware-independent."""

    task: str  # "infer" | "train"
    num_frames: int
    height: int
    width: int
    temporal: int  # T: latent frames (patch size 1 in time)
    rows: int  # H_p: patch rows
    cols: int  # W_p: patch columns
    steps: int = SAMPLING_STEPS

    @classmethod
    def of(cls, task: str, num_frames: int, height: int, width: int, steps: int = SAMPLING_STEPS) -> Workload:
        """The workload of ``num_frames`` frames of ``height`` x ``width`` pixels (geometry's sizes)."""
        grid = geometry.video_geometry(num_frames, height, width).patches
        return cls(task, num_frames, height, width, grid[0], grid[1], grid[2], steps)

    def spatial_tokens(self, sp: int = 1) -> int:
        """S per frame, padded for SP of degree ``sp`` (geometry.sp_spatial_tokens)."""
        return _sp_spatial_tokens(self.rows, self.cols, sp)

    def tokens(self, sp: int = 1) -> int:
        """N = T x S per sample, padding included."""
        return self.temporal * self.spatial_tokens(sp)

    @property
    def pixels(self) -> int:
        """Output pixels per frame."""
        return self.height * self.width


@cache
def _sp_spatial_tokens(rows: int, cols: int, sp: int) -> int:
    return geometry.sp_spatial_tokens(rows, cols, sp)  # pure; memoised because the planner asks thousands of times


@dataclass(frozen=True)
class Settings:
    """One candidate configuration of a group of GPUs that makes one video at a time."""

    sp: int = 1
    cfg_parallel: bool = False
    dtype: str = "bf16"
    attention: str = "fused"
    t5: str = "gpu-fp32"
    vae_micro_batch: int = VAE_MICRO_BATCH_DEFAULT
    sp_scheme: str = SP_SCHEME  # which all-to-alls SP sends (opensora_core.parallel: dsp | ulysses)

    @property
    def group(self) -> int:
        """GPUs in one group: sp, doubled when the CFG pair is split."""
        return self.sp * (2 if self.cfg_parallel else 1)

    @property
    def batch(self) -> int:
        """Samples one GPU's DiT forward carries: the CFG pair (2), or one half of it."""
        return 1 if self.cfg_parallel else 2


@dataclass(frozen=True)
class Memory:
    """Peak memory of one GPU, by term (GiB)."""

    t5: float
    weights: float  # DiT + VAE (+ optimizer shards when training)
    misc: float
    activations: float  # DiT activations incl. naive attention scores, per GPU
    attention: float  # the naive-attention part of ``activations``
    vae: float  # VAE decode (inference) or encode (training) transient
    t5_phase: float  # peak while the prompt is encoded

    @property
    def resident(self) -> float:
        return self.t5 + self.weights + self.misc

    @cached_property
    def peak(self) -> float:
        return max(self.t5_phase, self.resident + max(self.activations, self.vae))

    @property
    def binding(self) -> str:
        """The phase that sets the peak: "text encoder", "DiT" or "VAE"."""
        if self.t5_phase >= self.resident + max(self.activations, self.vae):
            return "text encoder"
        return "DiT" if self.activations >= self.vae else "VAE"


@dataclass(frozen=True)
class Timing:
    """Seconds per video (inference) or per step of one sample (training), by term."""

    text: float
    dit: float  # compute at DIT_EFFICIENCY
    attention: float  # naive-attention memory traffic
    comm: float  # sequence/CFG-parallel collectives
    vae: float
    fixed: float

    @cached_property
    def total(self) -> float:
        return self.text + self.dit + self.attention + self.comm + self.vae + self.fixed

    @property
    def denoising(self) -> float:
        """The sampling loop: DiT compute, naive-attention traffic and collectives (every step)."""
        return self.dit + self.attention + self.comm

    def calibrated(self, ratios: dict, scale_comm: bool = True) -> Timing:
        """This timing scaled by measured / predicted per stage (``clusterkit bench infer``,
        ``clusterkit.calibration``): ``text_s`` scales the text term, ``step_s`` the denoising terms
        (DiT, attention traffic and, with ``scale_comm``, collectives), ``decode_s`` the VAE decode
        and ``write_s`` the fixed per-video term (set-up and writing the file). The planner passes
        ``scale_comm=False`` when the bench ran another SP/CFG layout: its step measured other
        collectives (or none), so they keep the model's figure."""
        step = ratios["step_s"]
        return Timing(text=self.text * ratios["text_s"], dit=self.dit * step, attention=self.attention * step,
                      comm=self.comm * (step if scale_comm else 1.0), vae=self.vae * ratios["decode_s"],
                      fixed=self.fixed * ratios["write_s"])


def dit_forward_flops(work: Workload, sp: int = 1) -> float:
    """Forward FLOPs of STDiT3 for one sample: 28·N·C·(56C + 4S + 4T + 8L) (performance_facts §3.2)."""
    s = work.spatial_tokens(sp)
    n = work.temporal * s
    c = HIDDEN_SIZE
    return DEPTH * n * c * (56 * c + 4 * s + 4 * work.temporal + 8 * TEXT_TOKENS)


def naive_scores(work: Workload, sp: int, batch: int, attention: str) -> tuple[float, float]:
    """(temporal, spatial) attention scores one GPU materialises in one block's attention call.

    Temporal attention is always naive in v1.2 (it calls flash-attn only when the sequence is longer
    than the batch, never true for B·S sequences of length T); spatial attention is naive when unfused.
    """
    s = work.spatial_tokens(sp)
    t = work.temporal
    temporal = batch * (s / sp) * NUM_HEADS * t * t
    spatial = batch * t * (NUM_HEADS / sp) * s * s if attention == "unfused" else 0.0
    return temporal, spatial


def t5_gib(placement: str) -> float:
    """T5 weights resident on the GPU while the DiT and VAE run."""
    return {"gpu-fp32": 4, "gpu-bf16": 2, "offload": 0}[placement] * T5_PARAMS / GIB


def memory(work: Workload, settings: Settings) -> Memory:
    """Peak memory of one GPU of an inference group (training: ``train_memory``)."""
    weights = (DIT_PARAMS + VAE_PARAMS) * 2 / GIB  # bf16/fp16, replicated on every rank (v1.2)
    scores = max(naive_scores(work, settings.sp, settings.batch, settings.attention))  # one block at a time
    tokens = settings.batch * work.tokens(settings.sp) / settings.sp
    block = (tokens * ACTIVATION_BYTES_PER_TOKEN + scores * NAIVE_ATTENTION_BYTES_PER_SCORE) / GIB
    return Memory(
        t5=t5_gib(settings.t5),
        weights=weights,
        misc=MISC_GIB,
        activations=block,
        attention=scores * NAIVE_ATTENTION_BYTES_PER_SCORE / GIB,
        vae=vae_transient_gib(work, settings.vae_micro_batch, settings.group),
        t5_phase=_encode_gib(settings.t5, settings.dtype) + weights + MISC_GIB,
    )


def vae_transient_gib(work: Workload, micro_batch: int, group: int = 1) -> float:
    """The VAE decode transient of one micro-batch (the same on every rank, whatever the group) plus
    the decoded video held: bf16 on one GPU; shared by a group, the first rank's uint8 frames and
    the buffer it gathers every rank's uint8 frames into (the busiest rank: the peak)."""
    decoding = min(micro_batch, work.num_frames) * work.pixels * VAE_DECODE_BYTES_PER_PIXEL
    if group == 1:
        return (decoding + work.num_frames * work.pixels * DECODED_BYTES_PER_PIXEL) / GIB
    own = -(-_micro_batches(work, micro_batch) // group) * min(micro_batch, work.num_frames)  # frames
    return (decoding + (group + 1) * own * work.pixels * SHARED_DECODED_BYTES_PER_PIXEL) / GIB


def _micro_batches(work: Workload, micro_batch: int) -> int:
    return -(-work.num_frames // micro_batch)


def _encode_gib(placement: str, dtype: str) -> float:
    """T5 on the GPU while encoding; an offloaded T5 encodes in bf16, or fp32 where bf16 is missing."""
    if placement != "offload":
        return t5_gib(placement)
    return t5_gib("gpu-bf16" if dtype == "bf16" else "gpu-fp32")


def timing(work: Workload, settings: Settings, gpu: GPUSpec, fabric: str) -> Timing:
    """Seconds for one video on one group of ``settings.group`` GPUs (replicas run side by side)."""
    peak = _peak_flops(gpu, settings.dtype)
    ranks = settings.group
    dit = work.steps * 2 * dit_forward_flops(work, settings.sp) / (ranks * peak * DIT_EFFICIENCY)
    scores = sum(naive_scores(work, settings.sp, settings.batch, settings.attention))  # both blocks of a pair
    traffic = work.steps * DEPTH * scores * NAIVE_ATTENTION_TRAFFIC_PER_SCORE
    attention = traffic / (gpu.bandwidth_gbs * 1e9 * BANDWIDTH_EFFICIENCY)
    return Timing(
        text=_text_seconds(settings, gpu),
        dit=dit,
        attention=attention,
        comm=work.steps * _comm_per_step(work, settings, fabric),
        vae=_vae_seconds(work, settings, peak, fabric),
        fixed=FIXED_SECONDS,
    )


def _peak_flops(gpu: GPUSpec, dtype: str) -> float:
    tflops = gpu.tflops_bf16 if dtype == "bf16" else gpu.tflops_fp16
    assert tflops, f"{gpu.key} has no {dtype} rate; the planner filters such candidates"
    return tflops * 1e12


def _text_seconds(settings: Settings, gpu: GPUSpec) -> float:
    """Encode one prompt; with "offload" the job then moves T5 to host memory once (what
    ``opensora_core.inference.pipeline`` does after encoding every prompt; the gpu-* placements keep
    it resident). Charged per video, so a job of several videos is slightly over-counted."""
    fp32 = settings.t5 == "gpu-fp32" or (settings.t5 == "offload" and settings.dtype != "bf16")
    rate = gpu.tflops_fp16 * 1e12 * T5_EFFICIENCY / (FP32_SLOWDOWN if fp32 else 1)
    seconds = T5_FLOPS / rate
    if settings.t5 == "offload":
        seconds += T5_PARAMS * (4 if fp32 else 2) / (HOST_LINK_GBS * 1e9)
    return seconds


def _comm_per_step(work: Workload, settings: Settings, fabric: str) -> float:
    """All-to-alls of the spatial blocks and the output gather (SP), and the exchange of the CFG
    halves' velocity, per sampling step."""
    step = step_volume(work, settings)
    seconds = 0.0
    if settings.cfg_parallel:
        seconds += COLLECTIVE_LATENCY_S + step.cfg / (alltoall_gbs(fabric, 2) * 1e9)
    if settings.sp == 1:
        return seconds
    calls = step.alltoalls + 1  # + the gather of the final layer's output
    sent = step.attention + step.gather
    return seconds + sent / (alltoall_gbs(fabric, settings.sp) * 1e9) + calls * COLLECTIVE_LATENCY_S


def step_volume(work: Workload, settings: Settings, scheme: str | None = None) -> volume.StepVolume:
    """Bytes one rank sends per sampling step with our SP ``scheme`` (opensora_core.parallel.volume;
    the benchmark checks the formula against counted bytes), bf16 activations."""
    return volume.step_volume(
        scheme=scheme or settings.sp_scheme, sp=settings.sp, cfg=2 if settings.cfg_parallel else 1, videos=1, frames=work.temporal,
        spatial_tokens=work.rows * work.cols, hidden=HIDDEN_SIZE, depth=DEPTH, out_dim=OUT_PER_TOKEN,
        latent_elements=LATENT_CHANNELS * work.temporal * 2 * work.rows * 2 * work.cols, elem_bytes=2,
    )


def sp_bytes_per_step(work: Workload, settings: Settings, scheme: str | None = None) -> float:
    """Bytes one rank sends per sampling step for sequence parallelism (all-to-alls and the output
    gather). ``scheme="upstream"``: v1.2's own SP, 6 all-to-alls of a hidden-sized bf16 tensor per
    spatial block, each keeping 1/p of it local (performance_facts §3.5), for comparison."""
    if scheme == "upstream":
        p = settings.sp
        held = settings.batch * work.tokens(p) * HIDDEN_SIZE * 2 / p
        return DEPTH * SP_ALLTOALLS_PER_BLOCK * held * (p - 1) / p
    step = step_volume(work, settings, scheme)
    return step.attention + step.gather


def alltoall_gbs(fabric: str, group: int) -> float:
    """Per-rank all-to-all bus bandwidth of ``group`` GPUs on ``fabric`` (GB/s)."""
    table = ALLTOALL_GBS[fabric]
    return table[min((g for g in table if g >= group), default=max(table))]


def _vae_seconds(work: Workload, settings: Settings, peak: float, fabric: str = "pcie-shm") -> float:
    """The decode, shared by the ranks of a group micro-batch by micro-batch (up to one each), plus
    gathering the uint8 frames on the first rank."""
    flops = VAE_FLOPS_PER_PIXEL * work.pixels * work.num_frames
    penalty = 1 + VAE_MICRO_BATCH_PENALTY * max(0.0, VAE_MICRO_BATCH_DEFAULT / settings.vae_micro_batch - 1)
    seconds = flops / (peak * VAE_EFFICIENCY) * penalty
    if settings.group == 1:
        return seconds
    sharing = min(settings.group, _micro_batches(work, settings.vae_micro_batch))
    gathered = work.num_frames * work.pixels * SHARED_DECODED_BYTES_PER_PIXEL
    gather = gathered / (alltoall_gbs(fabric, settings.group) * 1e9)
    return seconds / sharing + gather


# ---------------------------------------------------------------- training


def train_memory(work: Workload, settings: Settings, data_parallel: int) -> Memory:
    """Peak memory of one GPU training on one sample per step (bf16, grad checkpointing, ZeRO-2)."""
    states = (DIT_PARAMS * 2 + DIT_PARAMS * SHARDED_BYTES_PER_PARAM / data_parallel) / GIB
    weights = states + VAE_PARAMS * 2 / GIB
    scores = max(naive_scores(work, 1, 1, settings.attention))
    tokens = work.tokens()
    per_token = CHECKPOINT_BYTES_PER_TOKEN + RECOMPUTE_BYTES_PER_TOKEN
    activations = (tokens * per_token + 2 * scores * NAIVE_ATTENTION_BYTES_PER_SCORE) / GIB
    return Memory(
        t5=t5_gib(settings.t5),
        weights=weights,
        misc=MISC_GIB,
        activations=activations,
        attention=2 * scores * NAIVE_ATTENTION_BYTES_PER_SCORE / GIB,
        vae=vae_transient_gib(work, settings.vae_micro_batch),
        t5_phase=0.0,  # text embeddings are computed inside the step; "offload" = precomputed features
    )


def train_timing(work: Workload, settings: Settings, gpu: GPUSpec, fabric: str, data_parallel: int) -> Timing:
    """Seconds per optimizer step with one sample per GPU; ZeRO-2 reduce-scatter + all-gather of bf16."""
    peak = _peak_flops(gpu, settings.dtype)
    dit = TRAIN_FLOPS_FACTOR * dit_forward_flops(work) / (peak * TRAIN_EFFICIENCY)
    scores = sum(naive_scores(work, 1, 1, settings.attention))
    traffic = TRAIN_FLOPS_FACTOR * DEPTH * scores * NAIVE_ATTENTION_TRAFFIC_PER_SCORE
    comm = 0.0
    if data_parallel > 1:
        sent = 2 * DIT_PARAMS * 2 * (data_parallel - 1) / data_parallel
        comm = sent / (alltoall_gbs(fabric, data_parallel) * 1e9)
    return Timing(
        text=0.0,  # the online T5 encode is inside TRAIN_EFFICIENCY
        dit=dit,
        attention=traffic / (gpu.bandwidth_gbs * 1e9 * BANDWIDTH_EFFICIENCY),
        comm=comm,
        vae=0.0,  # the online VAE encode is inside TRAIN_EFFICIENCY
        fixed=0.0,
    )
