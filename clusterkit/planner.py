"""Plan Open-Sora 1.2 jobs: for every node, every legal layout and setting, predicted memory and
time (``costmodel``), the best feasible choice, or why none fits and what would.

``plan(inventory, request) -> Plan`` is pure: no I/O, no environment, no torch. ``choose`` picks
the node a submit should use and raises a ``UserError`` with the alternatives when none fits.

A candidate is a layout (GPUs used = replicas x CFG split x sequence-parallel degree) plus the
precision, attention backend, T5 placement and VAE micro-batch. Every rejected candidate keeps
its reason, so a layout the planner refuses can always be explained.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from clusterkit import costmodel as cm
from clusterkit.calibration import EXECUTORS, Calibration, Configuration, pick
from clusterkit.errors import InvalidChoice, UserError
from clusterkit.gpus import GPUSpec
from opensora_core import geometry
from opensora_core.parallel.layout import SP_SCHEMES

TASKS = ("infer", "train")
OBJECTIVES = ("latency", "throughput")
#: Candidates within this fraction of the best objective count as tied. Among tied candidates the
#: planner prefers a comfortable peak (at most COMFORTABLE x usable memory: the memory terms are
#: estimates and the allocator fragments, performance_facts §2.7), then fewer GPUs, then the objective.
NEAR_TIE = 0.03
COMFORTABLE = 0.85
VAE_MICRO_BATCHES = (4, 2, 1)
_LENGTH_NAMES = {51: "2s", 102: "4s", 204: "8s", 408: "16s", 816: "32s"}
_PINS = ("t5", "vae_micro_batch", "dtype", "attention", "sp", "cfg_parallel", "gpus")
_FLAGS = {"t5": "--t5", "vae_micro_batch": "--vae-micro-batch", "dtype": "--dtype", "attention": "--attention",
          "sp": "--sp", "cfg_parallel": "--cfg-parallel", "gpus": "--gpus"}


# ---------------------------------------------------------------------------- the request


@dataclass(frozen=True)
class PlanRequest:
    """What to plan. Pinned fields (``gpus`` … ``vae_micro_batch``) fix a choice instead of letting
    the planner pick; a pin a node cannot honour makes that node infeasible, with the reason."""

    resolution: str
    """A resolution table: 144p … 4k, or an image table (256, 512, …)."""
    frames: str | int
    """An official length key (2s, 4s, …, 1x, 2x, …) or a positive frame count (1 = image)."""
    task: str = "infer"
    aspect_ratio: str = "9:16"
    """H:W string as in Open-Sora ("9:16" is landscape) or a table key ("0.56")."""
    num_videos: int = 1
    """Prompts to generate; caps the useful number of replicas and sets videos per hour."""
    nodes: str | tuple[str, ...] = "all"
    """"all", "a,b", or a tuple of node names."""
    objective: str | None = None
    """latency: fastest per video; throughput: most videos (training: samples) per hour. None: latency
    for inference, throughput for training (a training plan should use the node's GPUs)."""
    gpus: int | None = None
    """GPUs to use on the node (all replicas together)."""
    sp: int | None = None
    cfg_parallel: bool | None = None
    dtype: str | None = None
    attention: str | None = None
    t5: str | None = None
    vae_micro_batch: int | None = None
    sp_scheme: str | None = None
    """Which SP scheme the job will run (its all-to-alls are what the communication term charges);
    None: the default (``scheme``). Inference only."""
    steps: int = cm.SAMPLING_STEPS
    num_frames: int = field(init=False)
    height: int = field(init=False)
    width: int = field(init=False)
    warnings: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        _one_of("task", self.task, TASKS)
        if self.objective is None:
            object.__setattr__(self, "objective", "throughput" if self.task == "train" else "latency")
        _one_of("objective", self.objective, OBJECTIVES)
        height, width = geometry.get_image_size(self.resolution, self.aspect_ratio)
        num_frames = _parse_frames(self.frames)
        for name in ("num_videos", "steps"):
            _positive(name, getattr(self, name))
        for name in ("gpus", "vae_micro_batch"):
            if getattr(self, name) is not None:
                _positive(name, getattr(self, name))
        if self.sp is not None and self.sp not in cm.SP_DEGREES:
            raise InvalidChoice("--sp", self.sp, cm.SP_DEGREES, suggestion=None, hint=(
                f"sequence parallelism splits STDiT3's {cm.NUM_HEADS} attention heads, so its degree must divide "
                f"{cm.NUM_HEADS}; {self.sp} ranks crash or hang in NCCL (the seed's 6-GPU timeout)"))
        if self.cfg_parallel not in (None, True, False):
            raise InvalidChoice("--cfg-parallel", self.cfg_parallel, ["true", "false"])
        if self.sp_scheme is not None:
            _one_of("--sp-scheme", self.sp_scheme, SP_SCHEMES)
        for name, choices in (("dtype", cm.DTYPES), ("attention", cm.ATTENTION), ("t5", cm.T5_PLACEMENTS)):
            if getattr(self, name) is not None:
                _one_of(f"--{name}", getattr(self, name), choices)
        if self.task == "train" and ((self.sp or 1) > 1 or self.cfg_parallel or self.sp_scheme is not None):
            raise UserError("Open-Sora 1.2 training has no sequence or CFG parallelism (report_03; issue #439); "
                            "training plans use data parallelism",
                            hint="drop --sp / --cfg-parallel / --sp-scheme for train")
        object.__setattr__(self, "num_frames", num_frames)
        object.__setattr__(self, "height", height)
        object.__setattr__(self, "width", width)
        object.__setattr__(self, "warnings", _warnings(self))

    @property
    def scheme(self) -> str:
        """The SP scheme planned: ``sp_scheme``, or the default (DSP)."""
        return self.sp_scheme or cm.SP_SCHEME

    def describe(self) -> str:
        """E.g. "720p 9:16 4s (102 frames)"."""
        name = self.frames if isinstance(self.frames, str) and not self.frames.strip().isdigit() else None
        length = f"{name} ({self.num_frames} frames)" if name else _frames_text(self.num_frames)
        return f"{self.resolution} {self.aspect_ratio} {length}"

    def pins(self) -> dict[str, object]:
        """The pinned choices, by field name."""
        return {name: getattr(self, name) for name in _PINS if getattr(self, name) is not None}

    def with_changes(self, **changes: object) -> PlanRequest:
        """A copy with some fields replaced (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["warnings"] = list(self.warnings)
        if not isinstance(self.nodes, str):
            data["nodes"] = list(self.nodes)
        return data


def _parse_frames(value: str | int) -> int:
    try:
        return geometry.get_num_frames(value.strip() if isinstance(value, str) else value)
    except InvalidChoice:
        raise InvalidChoice("frames", value, [*geometry.NUM_FRAMES_MAP, "a positive integer (1 = image)"],
                            suggestion=None) from None


def _frames_text(num_frames: int) -> str:
    if num_frames == 1:
        return "image (1 frame)"
    name = _LENGTH_NAMES.get(num_frames)
    return f"{name} ({num_frames} frames)" if name else f"{num_frames} frames"


def _warnings(request: PlanRequest) -> tuple[str, ...]:
    out = []
    n = request.num_frames
    if not geometry.is_trained_length(n):
        trained = ", ".join(_frames_text(f) for f in geometry.TRAINED_NUM_FRAMES)
        out.append(f"{n} frames is not a length Open-Sora 1.2 was trained on ({trained}); it runs as {n} frames "
                   f"({geometry.latent_frames(n)} latent frames) but quality is untested")
    if (request.resolution, n) in geometry.UNTRAINED_LENGTHS:
        out.append(f"{request.resolution} {_LENGTH_NAMES[n]} was never trained (report_03 marks 480p 16s and "
                   "720p 8s/16s as untested); expect weaker results than at shorter lengths")
    if request.task == "infer" and request.objective == "throughput" and request.num_videos == 1:
        out.append("--objective throughput with 1 video is the same as latency; pass --num-videos N for a sweep")
    return tuple(out)


def _one_of(what: str, value: object, choices: tuple) -> None:
    if value not in choices:
        raise InvalidChoice(what, value, choices)


def _positive(what: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidChoice(what, value, ["a positive integer"], suggestion=None)


# ---------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class Layout:
    """How a node's GPUs are used: ``replicas`` groups of ``sp`` (x2 with the CFG split) GPUs."""

    gpus: int
    sp: int
    cfg_parallel: bool
    replicas: int

    def to_dict(self) -> dict:
        return {"gpus": self.gpus, "sp": self.sp, "cfg_parallel": self.cfg_parallel, "replicas": self.replicas}


@dataclass(frozen=True)
class Candidate:
    """One evaluated choice on one kind of node; ``reason`` says why it was rejected (None = feasible)."""

    layout: Layout
    settings: cm.Settings
    memory: cm.Memory
    timing: cm.Timing
    usable_gib: float
    videos_per_hour: float
    reason: str | None = None

    @property
    def feasible(self) -> bool:
        return self.reason is None

    @property
    def seconds(self) -> float:
        return self.timing.total

    @property
    def budget_gib(self) -> float:
        """Usable memory less the headroom kept free (cm.MEMORY_HEADROOM): the feasibility limit."""
        return self.usable_gib * (1 - cm.MEMORY_HEADROOM)

    @property
    def comfortable(self) -> bool:
        """Peak at most COMFORTABLE x usable memory."""
        return self.memory.peak <= self.usable_gib * COMFORTABLE


@dataclass(frozen=True)
class Alternative:
    """A concrete change that makes an infeasible node feasible."""

    summary: str
    changes: dict
    peak_gib_per_gpu: float
    seconds_per_video: float

    def to_dict(self) -> dict:
        return {"summary": self.summary, "changes": dict(self.changes),
                "peak_gib_per_gpu": round(self.peak_gib_per_gpu, 1),
                "seconds_per_video": round(self.seconds_per_video, 1)}


@dataclass(frozen=True)
class NodePlan:
    """The verdict for one node. ``chosen`` is the best feasible candidate, or for an infeasible node
    the leanest one tried (its peak is what the node would need); ``candidates`` lists every one."""

    name: str
    gpu: GPUSpec
    gpu_count: int
    feasible: bool
    chosen: Candidate | None
    reasons: tuple[str, ...]
    alternatives: tuple[Alternative, ...]
    options: tuple = ()  # (layout, rate, estimates) per layout: compact, shared by nodes with equal facts
    pins: dict = field(default_factory=dict)
    calibration: Calibration | None = None
    """The ``clusterkit bench infer`` calibration that speaks for this node (``calibration.pick``), or None."""
    calibration_differs: tuple[str, ...] = ()
    """What of the planned configuration the calibration's bench did not run (``Calibration.differences``)."""
    calibration_notes: tuple[str, ...] = ()
    """Calibrations of this node that the plan does not use, and why (a local bench in a Slurm plan)."""

    @property
    def timing(self) -> cm.Timing | None:
        """The planner's estimate of the chosen candidate: the cost model's, scaled by the calibration
        when there is one (collectives only when the bench ran the same SP/CFG layout). None when the
        node has no candidate."""
        if self.chosen is None:
            return None
        if self.calibration is None:
            return self.chosen.timing
        return self.chosen.timing.calibrated(self.calibration.ratios,
                                             scale_comm="layout" not in self.calibration_differs)

    @property
    def seconds(self) -> float | None:
        """Estimated seconds per video (per step of one sample when training) of the chosen candidate."""
        return self.timing.total if self.chosen is not None else None

    @property
    def videos_per_hour(self) -> float:
        """Estimated videos (training: samples) per hour of the chosen candidate on this node."""
        if self.chosen is None:
            return 0.0
        return self.chosen.videos_per_hour * self.chosen.seconds / self.seconds

    @property
    def candidates(self) -> tuple[Candidate, ...]:
        """Every evaluated candidate, each rejected one with its reason."""
        return tuple(_candidate(layout, rate, found, self.gpu.usable_gib)
                     for layout, rate, estimates in self.options for found in estimates)

    def to_dict(self) -> dict:
        """The JSON contract of ``clusterkit plan`` for one node (``result.nodes[i]``)."""
        c = self.chosen
        settings = c.settings if c else None
        return {
            "name": self.name,
            "gpu_model": self.gpu.key,
            "feasible": self.feasible,
            "layout": c.layout.to_dict() if c else None,
            "dtype": settings.dtype if c else self.pins.get("dtype"),
            "attention": settings.attention if c else self.pins.get("attention"),
            "t5": settings.t5 if c else self.pins.get("t5"),
            "vae_micro_batch": settings.vae_micro_batch if c else self.pins.get("vae_micro_batch"),
            "predicted": {
                "peak_gib_per_gpu": round(c.memory.peak, 1) if c else None,
                "usable_gib_per_gpu": self.gpu.usable_gib,
                "seconds_per_video": round(c.seconds, 1) if c and self.feasible else None,
                "videos_per_hour": round(c.videos_per_hour, 2) if c and self.feasible else 0.0,
            },
            "reasons": list(self.reasons),
            "alternatives": [a.to_dict() for a in self.alternatives],
            "estimate": self._estimate_dict(),
        }

    def _estimate_dict(self) -> dict:
        """``result.nodes[i].estimate``: the figure the planner ranks by, and where it comes from."""
        feasible = self.chosen is not None and self.feasible
        c = self.calibration
        out = {
            "seconds_per_video": round(self.seconds, 1) if feasible else None,
            "videos_per_hour": round(self.videos_per_hour, 2) if feasible else 0.0,
            "source": "calibrated" if c is not None else "model",
            "calibration": None,
            "notes": list(self.calibration_notes),
        }
        if c is not None:
            out["calibration"] = {
                "source": c.source, "run_id": c.run_id, "when": c.when, "created_at": c.created_at,
                "preset": c.preset, "scope": c.scope, "bench_node": c.node, "gpu_model": c.gpu_model,
                "device": c.device, "device_name": c.device_name, "host": c.host, "executor": c.executor,
                "measured": dict(c.measured), "model": {k: round(v, 6) for k, v in c.predicted.items()},
                "ratios": {k: round(v, 4) for k, v in c.ratios.items()},
                "factor": round(self.seconds / self.chosen.seconds, 4) if feasible else None,
                "bench": dict(c.bench),
                "measured_at": c.measured_at,
                "same_configuration": not self.calibration_differs,
                "differs": list(self.calibration_differs),
                "communication_scaled": "layout" not in self.calibration_differs,
            }
        return out


@dataclass(frozen=True)
class Plan:
    """Per-node verdicts for one request, in the order the nodes were selected."""

    request: PlanRequest
    nodes: tuple[NodePlan, ...]
    executor: str = "slurm"
    """Where the planned ranks run (``slurm`` or ``local``): decides which calibrations apply."""

    @property
    def warnings(self) -> tuple[str, ...]:
        return self.request.warnings

    def best(self) -> NodePlan | None:
        """The feasible node that best meets the objective (first in order on ties), or None."""
        feasible = [n for n in self.nodes if n.feasible]
        if not feasible:
            return None
        return min(feasible, key=lambda n: _objective_value(n, self.request.objective))

    def to_dict(self) -> dict:
        best = self.best()
        return {"request": self.request.to_dict(), "warnings": list(self.warnings), "executor": self.executor,
                "best": best.name if best else None, "nodes": [n.to_dict() for n in self.nodes]}


# ---------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class NodeFacts:
    """What the plan of a node depends on; nodes with equal facts get equal plans."""

    gpu: GPUSpec
    count: int
    fabric: str
    fabric_note: str | None = None


def plan(inventory, request: PlanRequest, calibrations: Sequence[Calibration] = (), executor: str = "slurm") -> Plan:
    """Plan ``request`` on the nodes it selects from ``inventory``. Pure; no I/O. ``calibrations``
    (``clusterkit bench infer`` records of the preset planned for, ``clusterkit.calibration``) scale
    the estimate of each inference node they speak for in a plan whose ranks run through
    ``executor`` (``calibration.pick``: a local bench only for a local plan); training ignores them."""
    _one_of("executor", executor, EXECUTORS)
    calibrations = tuple(calibrations) if request.task == "infer" else ()
    work = cm.Workload.of(request.task, request.num_frames, request.height, request.width, request.steps)
    estimates = _Estimates()
    verdicts: dict[NodeFacts, tuple] = {}
    specs: dict[str, GPUSpec] = {}
    pins = request.pins()
    nodes = []
    for node in inventory.select(request.nodes):
        if node.gpu.model not in specs:
            specs[node.gpu.model] = node.gpu.spec
        facts = node_facts(node, specs[node.gpu.model])
        if facts not in verdicts:
            verdicts[facts] = _plan_node(facts, request, work, estimates)
        verdict = verdicts[facts]
        nodes.append(NodePlan(node.name, facts.gpu, facts.count, *verdict, pins=pins,
                              **_calibration(calibrations, node.name, facts.gpu.key, executor,
                                             _target(request, verdict[1]))))
    return Plan(request, tuple(nodes), executor)


def _target(request: PlanRequest, chosen: Candidate | None) -> Configuration:
    """The planned configuration a calibration is compared with: the video and the chosen group layout."""
    layout = chosen.layout if chosen is not None else None
    return Configuration(request.height, request.width, request.num_frames, layout.sp if layout else None,
                         layout.cfg_parallel if layout else None, request.scheme)


def _calibration(calibrations: tuple[Calibration, ...], node: str, gpu_model: str, executor: str,
                 target: Configuration) -> dict:
    """The NodePlan fields of the calibration that speaks for ``node``, what it did not measure, and a
    note for a local bench of this node that a non-local plan leaves out."""
    if not calibrations:
        return {}
    found = pick(calibrations, node, gpu_model, executor, target)
    notes = ()
    local = pick(calibrations, node, gpu_model, "local", target) if executor != "local" else None
    if local is not None and local.node == node and local != found:  # a note on the node it named only
        notes = (f"bench run {local.run_id} ({local.when}, {local.preset}, {local.device_name}) measured locally on "
                 f"host {local.host or '?'}; not used for {executor} plans (--executor local uses it)",)
    return {"calibration": found, "calibration_differs": found.differences(target) if found else (),
            "calibration_notes": notes}


def choose(plan: Plan, node: str | None = None) -> NodePlan:
    """The node plan a submit should use: ``node``'s, or the best node's. Raises ``UserError`` naming
    the reasons and the alternatives when that node (or every node) is infeasible."""
    what = plan.request.describe()
    if node is not None:
        names = [n.name for n in plan.nodes]
        if node not in names:
            raise InvalidChoice("node", node, names, hint="the plan covers only the nodes it was asked for")
        chosen = plan.nodes[names.index(node)]
        if not chosen.feasible:
            raise UserError(f"{node} cannot run {what}: {'; '.join(chosen.reasons)}", hint=_try(chosen.alternatives))
        return chosen
    best = plan.best()
    if best is None:
        why = "; ".join(f"{n.name}: {n.reasons[0]}" for n in plan.nodes if n.reasons)
        options = [a for n in plan.nodes for a in n.alternatives]
        raise UserError(f"no node can run {what}: {why}", hint=_try(options))
    return best


def _try(alternatives) -> str | None:
    unique = list(dict.fromkeys(a.summary for a in alternatives))
    return ("try " + " | ".join(unique[:4])) if unique else None


def node_facts(node, spec: GPUSpec | None = None) -> NodeFacts:
    """GPU, GPU count and interconnect fabric of an inventory node (unknown fabric: PCIe via host memory).
    ``spec`` is the node's catalog entry when the caller has already looked it up."""
    spec = spec or node.gpu.spec
    ic = node.interconnect
    if ic.type == "nvswitch":
        return NodeFacts(spec, node.gpu.count, "nvswitch")
    if ic.type == "nvlink-bridge":
        return NodeFacts(spec, node.gpu.count, "nvlink-bridge")
    if ic.p2p is True:
        return NodeFacts(spec, node.gpu.count, "pcie-p2p")
    if ic.p2p is False or spec.p2p_pcie is False:
        return NodeFacts(spec, node.gpu.count, "pcie-shm")
    if ic.type is None and spec.variant_known and "NVSwitch" in (spec.nvlink or ""):
        return NodeFacts(spec, node.gpu.count, "nvswitch", "NVSwitch assumed from the GPU model (SXM)")
    note = ("interconnect unknown (nodes.yaml): SP time assumes PCIe through host memory, "
            f"{cm.alltoall_gbs('pcie-shm', 4):g} GB/s all-to-all; `clusterkit preflight` measures it")
    return NodeFacts(spec, node.gpu.count, "pcie-shm", note)


@dataclass(frozen=True)
class _Estimate:
    """What one group setting costs on one GPU model and fabric, whatever the node's GPU count."""

    settings: cm.Settings
    memory: cm.Memory
    timing: cm.Timing
    reason: str | None


class _Estimates:
    """Cost-model results memoised for one ``plan`` call. Memory and time depend on the workload, the
    settings, the GPU model and the fabric, never on how many GPUs a node has (training: the data-
    parallel size), so nodes that differ only in GPU count share them: this keeps 10,000 nodes fast."""

    def __init__(self) -> None:
        self._tables: dict = {}
        self._memory: dict = {}  # memory does not depend on the GPU model or fabric at all

    def memory(self, work: cm.Workload, settings: cm.Settings, data_parallel: int) -> cm.Memory:
        key = (work, settings, data_parallel)
        if key not in self._memory:
            self._memory[key] = (cm.train_memory(work, settings, data_parallel) if work.task == "train"
                                 else cm.memory(work, settings))
        return self._memory[key]

    def table(self, work: cm.Workload, facts: NodeFacts) -> dict:
        """The memo for one workload on one GPU model and fabric: group settings -> estimates."""
        key = (work, facts.gpu.key, facts.fabric)
        if key not in self._tables:
            self._tables[key] = {}
        return self._tables[key]


def _estimate(estimates: _Estimates, work: cm.Workload, facts: NodeFacts, key: tuple, data_parallel: int) -> _Estimate:
    """Memory, time and rejection reason of ``key`` = (sp, cfg_parallel, dtype, attention, t5, vae_micro_batch,
    sp_scheme)."""
    settings = cm.Settings(*key)
    memory = estimates.memory(work, settings, data_parallel)
    if work.task == "train":
        timing = cm.train_timing(work, settings, facts.gpu, facts.fabric, data_parallel)
    else:
        timing = cm.timing(work, settings, facts.gpu, facts.fabric)
    return _Estimate(settings, memory, timing, _rejection(work, facts, settings, memory))


def _rejection(work: cm.Workload, facts: NodeFacts, settings: cm.Settings, memory: cm.Memory) -> str | None:
    budget = facts.gpu.usable_gib * (1 - cm.MEMORY_HEADROOM)
    if settings.sp > work.rows * work.cols:
        tokens = work.rows * work.cols
        return f"--sp {settings.sp} exceeds the {tokens} tokens of a frame: some ranks would hold only padding"
    if memory.peak > budget:
        return _memory_reason(memory, settings, facts.gpu, budget)
    return None


def _plan_node(facts: NodeFacts, request: PlanRequest, work: cm.Workload, estimates: _Estimates) -> tuple:
    """(feasible, chosen, reasons, alternatives, options) for one kind of node."""
    options, blockers = _options(facts, request, work, estimates)
    usable = facts.gpu.usable_gib
    best = _pick(options, request.objective, usable)
    if best is not None:
        chosen = _candidate(*best, usable)
        return True, chosen, _notes(facts, chosen, request), (), tuple(options)
    alternatives = _alternatives(facts, request, estimates)
    leanest = min(((layout, rate, found) for layout, rate, found_all in options for found in found_all),
                  key=lambda option: option[2].memory.peak, default=None)
    if leanest is None:  # the pins exclude every candidate: the blockers say why
        return False, None, tuple(blockers), alternatives, ()
    return False, _candidate(*leanest, usable), (leanest[2].reason,), alternatives, tuple(options)


def _options(facts: NodeFacts, request: PlanRequest, work: cm.Workload,
             estimates: _Estimates) -> tuple[list[tuple[Layout, float, list[_Estimate]]], list[str]]:
    """Per layout the pins allow: (layout, rate, estimates of every setting), where videos (training:
    samples) per hour = rate / seconds; or node-level reasons when the pins allow nothing."""
    choices, blockers = _choices(facts, request)
    if blockers:
        return [], blockers
    layouts = _layouts(facts.count, request)
    if not layouts:
        return [], [_no_layout_reason(facts, request)]
    table = estimates.table(work, facts)
    keys = tuple((d, a, t, m) for d in choices["dtype"] for a in choices["attention"] for t in choices["t5"]
                 for m in choices["vae_micro_batch"])
    out = []
    for layout in layouts:
        data_parallel = layout.gpus if work.task == "train" else 1
        group = (layout.sp, layout.cfg_parallel, data_parallel, request.scheme, keys)
        if group not in table:  # the same group settings recur for every GPU count: estimate them once
            table[group] = [_estimate(estimates, work, facts, (layout.sp, layout.cfg_parallel, *key, request.scheme),
                                      data_parallel)
                            for key in keys]
        out.append((layout, _rate(request, layout), table[group]))
    return out, []


def _rate(request: PlanRequest, layout: Layout) -> float:
    """Videos per hour x seconds per video: num_videos over the rounds the replicas need (training:
    one sample per GPU per step)."""
    if request.task == "train":
        return layout.gpus * 3600
    return request.num_videos * 3600 / math.ceil(request.num_videos / layout.replicas)


def _candidate(layout: Layout, rate: float, found: _Estimate, usable_gib: float) -> Candidate:
    return Candidate(layout, found.settings, found.memory, found.timing, usable_gib, rate / found.timing.total,
                     found.reason)


def _choices(facts: NodeFacts, request: PlanRequest) -> tuple[dict[str, tuple], list[str]]:
    """The values each setting may take on this GPU, and the reasons pinned values are impossible."""
    spec = facts.gpu
    blockers = []
    if request.gpus is not None and request.gpus > facts.count:
        blockers.append(f"--gpus {request.gpus}: the node has {facts.count} GPUs")
    if not spec.bf16 and (request.dtype == "bf16" or request.t5 == "gpu-bf16"):
        blockers.append(f"bf16 requested but {_gpu_name(spec)} ({spec.sm}) has no bf16 (Turing/Volta): use fp16"
                        + (", and --t5 gpu-fp32 or offload" if request.t5 == "gpu-bf16" else ""))
    if request.attention == "fused" and not spec.flash_attn2:
        blockers.append(f"--attention fused: {_gpu_name(spec)} ({spec.sm}) has no FlashAttention-2 (needs sm_80+); "
                        "use --attention unfused")
    # Ties keep this order: bf16 on the GPU (what training uses), upstream's fp32, then offload.
    t5_default = ("gpu-bf16", "gpu-fp32", "offload") if spec.bf16 else ("gpu-fp32", "offload")
    return {
        "dtype": (request.dtype,) if request.dtype else ("bf16" if spec.bf16 else "fp16",),
        "attention": (request.attention,) if request.attention else ("fused" if spec.flash_attn2 else "unfused",),
        "t5": (request.t5,) if request.t5 else t5_default,
        "vae_micro_batch": (request.vae_micro_batch,) if request.vae_micro_batch else VAE_MICRO_BATCHES,
    }, blockers


def _layouts(count: int, request: PlanRequest) -> list[Layout]:
    """Layouts of 1..count GPUs (or exactly --gpus): replicas x groups of sp GPUs (x2 when the CFG pair
    is split), never more replicas than videos. Training is data parallel: one replica per GPU."""
    counts = (request.gpus,) if request.gpus else range(1, count + 1)
    if request.task == "train":
        return [Layout(gpus, 1, False, gpus) for gpus in counts]
    out = []
    for cfg in (request.cfg_parallel,) if request.cfg_parallel is not None else (False, True):
        for sp in (request.sp,) if request.sp else cm.SP_DEGREES:
            group = sp * (2 if cfg else 1)
            for replicas in range(1, min(request.num_videos, count // group) + 1):
                if request.gpus in (None, replicas * group):
                    out.append(Layout(replicas * group, sp, cfg, replicas))
    return sorted(out, key=lambda layout: layout.gpus)


def _no_layout_reason(facts: NodeFacts, request: PlanRequest) -> str:
    gpus = f"exactly {request.gpus}" if request.gpus else f"1-{facts.count}"
    pinned = [f"{_FLAGS[k]} {v}" for k, v in request.pins().items() if k in ("sp", "cfg_parallel")]
    return (f"no layout of {gpus} GPUs fits {' '.join(pinned) or 'the request'}: a group (sp, x2 with the CFG "
            f"split) must divide the GPUs, with at most {request.num_videos} replica(s) for "
            f"{request.num_videos} video(s) (--num-videos)")


def _memory_reason(memory: cm.Memory, settings: cm.Settings, spec: GPUSpec, budget: float) -> str:
    terms = []
    if memory.t5:
        terms.append(f"T5 {settings.t5.removeprefix('gpu-')} {memory.t5:.1f}")
    terms.append(f"weights {memory.weights:.1f}")
    terms.append(f"misc {memory.misc:.1f}")
    if memory.binding == "text encoder":
        terms = [f"T5 encode phase {memory.t5_phase:.1f}"]
    elif memory.binding == "VAE":
        terms.append(f"VAE decode (micro-batch {settings.vae_micro_batch}) {memory.vae:.1f}")
    else:
        naive = f", naive attention {memory.attention:.1f}" if memory.attention >= 0.5 else ""
        terms.append(f"DiT activations {memory.activations:.1f}{naive}")
    return (f"needs {memory.peak:.1f} GiB/GPU, over the {budget:.1f} GiB budget of a {_gpu_name(spec)} "
            f"({spec.usable_gib:g} usable, {cm.MEMORY_HEADROOM:.0%} kept free): {' + '.join(terms)}")


def _pick(options, objective: str, usable_gib: float) -> tuple[Layout, float, _Estimate] | None:
    """Best feasible (layout, rate, estimate): best objective; near ties (NEAR_TIE) go to a comfortable
    peak (COMFORTABLE), then to fewer GPUs. None when nothing is feasible."""
    feasible = [(layout, rate, found) for layout, rate, estimates in options for found in estimates
                if found.reason is None]
    if not feasible:
        return None

    def value(option) -> float:  # smaller is better
        seconds = option[2].timing.total
        return seconds if objective == "latency" else -option[1] / seconds

    best = min(value(option) for option in feasible)
    limit = best + abs(best) * NEAR_TIE
    comfortable = usable_gib * COMFORTABLE
    return min((option for option in feasible if value(option) <= limit),
               key=lambda option: (option[2].memory.peak > comfortable, option[0].gpus, value(option)))


def _objective_value(node: NodePlan, objective: str) -> float:
    """Smaller is better: estimated seconds per video, or minus videos per hour."""
    return node.seconds if objective == "latency" else -node.videos_per_hour


def _notes(facts: NodeFacts, chosen: Candidate, request: PlanRequest) -> tuple[str, ...]:
    """Why a feasible plan looks the way it does, where that is not obvious."""
    spec, s, notes, task = facts.gpu, chosen.settings, [], request.task
    if s.dtype == "fp16" and not spec.bf16:
        notes.append(f"fp16: {_gpu_name(spec)} ({spec.sm}) has no bf16; fp16 overflow in this bf16-trained "
                     "model is UNVERIFIED")
    if s.attention == "unfused" and not spec.flash_attn2:
        notes.append(f"unfused attention: no FlashAttention-2 on {spec.sm} (needs sm_80+); naive spatial "
                     f"attention costs {chosen.memory.attention:.1f} GiB/GPU and {chosen.timing.attention:.0f} s")
    if s.sp > 1 and facts.fabric_note:
        notes.append(facts.fabric_note)
    idle = facts.count - chosen.layout.gpus
    if task == "infer" and idle and request.gpus is None and chosen.layout.replicas == request.num_videos:
        largest = max(sp * 2 for sp in cm.SP_DEGREES if sp * 2 <= facts.count)
        notes.append(f"{idle} of {facts.count} GPUs idle: one video splits over at most {largest} GPUs here "
                     f"(--sp must divide the {cm.NUM_HEADS} attention heads, x2 with the CFG split); more videos "
                     "(--num-videos, a prompts file) use the rest as replicas")
    if task == "train" and s.t5 == "offload":
        notes.append("T5 offload in training means precomputed text embeddings (no T5 on the GPU)")
    return tuple(notes)


# ---------------------------------------------------------------------------- alternatives


def _alternatives(facts: NodeFacts, request: PlanRequest, estimates: _Estimates) -> tuple[Alternative, ...]:
    """Concrete changes that fit: drop one pin, drop all pins; then, with the planner choosing freely,
    the longest shorter trained length and the highest lower resolution that fit."""
    out: list[Alternative] = []
    pins = request.pins()
    relaxations = [{name: None} for name in pins] + ([dict.fromkeys(pins)] if len(pins) > 1 else [])
    for change in relaxations:
        found = _best_for(facts, request.with_changes(**change), estimates)
        if found:
            out.append(_describe(found, request, {}))
    free = request.with_changes(**dict.fromkeys(pins))
    for kind in ("frames", "resolution"):
        for change in _smaller_videos(request, kind):
            found = _best_for(facts, free.with_changes(**change), estimates)
            if found:
                out.append(_describe(found, request, change))
                break
    unique = {a.summary: a for a in out}
    return tuple(unique.values())[:4]


def _best_for(facts: NodeFacts, request: PlanRequest, estimates: _Estimates) -> Candidate | None:
    work = cm.Workload.of(request.task, request.num_frames, request.height, request.width, request.steps)
    options, _ = _options(facts, request, work, estimates)
    best = _pick(options, request.objective, facts.gpu.usable_gib)
    return None if best is None else _candidate(*best, facts.gpu.usable_gib)


def _smaller_videos(request: PlanRequest, kind: str):
    """Shorter trained lengths at this resolution (kind "frames"), or lower resolutions, largest first."""
    if kind == "frames":
        for frames in sorted((f for f in geometry.TRAINED_NUM_FRAMES if 1 < f < request.num_frames), reverse=True):
            yield {"frames": _LENGTH_NAMES[frames]}
    elif request.resolution in geometry.RESOLUTIONS:
        lower = geometry.RESOLUTIONS[: geometry.RESOLUTIONS.index(request.resolution)]
        for resolution in reversed(lower):
            yield {"resolution": resolution}


def _describe(found: Candidate, request: PlanRequest, workload_change: dict) -> Alternative:
    changes = dict(workload_change)
    s, layout = found.settings, found.layout
    chosen = {"gpus": layout.gpus, "sp": s.sp, "cfg_parallel": s.cfg_parallel, "dtype": s.dtype,
              "attention": s.attention, "t5": s.t5, "vae_micro_batch": s.vae_micro_batch}
    for name, value in request.pins().items():
        if chosen[name] != value:
            changes[name] = chosen[name]
    for name in ("t5", "vae_micro_batch"):  # the settings that usually decide memory: always say them
        changes.setdefault(name, chosen[name])
    words = []
    if "resolution" in changes or "frames" in changes:
        words.append(f"{changes.get('resolution', request.resolution)} {changes.get('frames', request.frames)}")
    for name, value in changes.items():
        if name in _FLAGS:
            words.append(_flag_text(name, value))
    summary = (f"{' '.join(words)} ({found.memory.peak:.1f} GiB/GPU, {found.seconds:.0f} s/video, "
               f"{describe_layout(layout)})")
    return Alternative(summary, changes, found.memory.peak, found.seconds)


def describe_layout(layout: Layout) -> str:
    """E.g. "8 GPUs: cfg+sp4", "6 GPUs: 3x sp2", "1 GPU"."""
    if layout.gpus == 1:
        return "1 GPU"
    parts = [p for p in ("cfg" if layout.cfg_parallel else "", f"sp{layout.sp}" if layout.sp > 1 else "") if p]
    replicas = f"{layout.replicas}x " if layout.replicas > 1 else ""
    return f"{layout.gpus} GPUs: {replicas}{'+'.join(parts) or '1'}"


def _flag_text(name: str, value: object) -> str:
    if name == "cfg_parallel":
        return "--cfg-parallel" if value else "--no-cfg-parallel"
    return f"{_FLAGS[name]} {value}"


def _gpu_name(spec: GPUSpec) -> str:
    return spec.name.removeprefix("NVIDIA ")
