"""The training loop (upstream ``scripts/train.py``, facts §9), one instance per rank.

Per step: decode the micro-batch this rank's sampler position names; VAE-encode the video and
T5-encode the captions under ``no_grad``; draw frame masks, logit-normal times shifted for the
batch's resolution and length, and noise; predict the velocity under bf16 autocast; the loss is the
MSE to (x0 - noise) over the noised frames, averaged over the valid samples; clip, step AdamW
(eps 1e-15), step the warm-up schedule, update the fp32 EMA. Every ``ckpt_every`` steps, at the
end, and when SIGUSR2 (Slurm's warning before the time limit, or a preemption) or SIGTERM reached
any rank, all ranks save a checkpoint; after a signal they stop (and Slurm requeues the job).

Everything random comes from state that is saved with the checkpoint (the training generators,
torch/numpy/python RNGs per rank, the sampler position), and per-sample randomness from
(seed, epoch, row), so a run resumed from step N continues bit for bit like one never stopped.
"""

from __future__ import annotations

import dataclasses
import math
import os
import resource
import signal
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from clusterkit.errors import UserError
from clusterkit.launch.records import atomic_write_json, atomic_write_text, read_json
from clusterkit.train_metrics import METRICS

from ..models.stdit3 import STDiT3, STDiT3Config
from ..models.text_encoder import T5TextEncoder
from ..models.vae import TemporalVAEConfig, VideoVAE, VideoVAEConfig
from ..presets import checkpoint_paths, get_preset
from ..schedulers import rectified_flow as rf
from . import checkpoint_files as files
from .buckets import Bucket, BucketBatchSampler, explain_unassigned
from .checkpoint import CheckpointManager, capture_rng, export_ema, load_ema_file, load_rng, read_json_file, restore_rng
from .config import TrainConfig
from .data import VideoTextDataset, build_loader
from .ema import EMA
from .masks import MaskGenerator
from .parallel import build_plugin
from .samples import default_probe_cache, load_samples

PROGRESS = "progress.json"
ATTEMPTS = "train_attempts.json"
PROGRESS_EVERY_S = 0.5


@dataclass(frozen=True)
class RankContext:
    """Where this process is: rank, world, device, and the run folder it writes into."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    run_dir: Path
    attempt: int = 0
    job_id: str = ""

    @property
    def is_main(self) -> bool:
        return self.rank == 0


@dataclass
class TrainState:
    """The counters a checkpoint stores next to the tensors."""

    step: int = 0
    epoch: int = 0
    steps_in_epoch: int = 0
    samples_seen: int = 0
    bad_samples: int = 0


def log(message: str) -> None:
    print(f"[train] {message}", flush=True)


class Trainer:
    def __init__(self, config: TrainConfig, ctx: RankContext, *, resume_from: Path | None = None,
                 allow_dp_change: bool = False, fault: Callable[[str, int], None] | None = None) -> None:
        self.config = config
        self.ctx = ctx
        self.fault = fault or (lambda where, step: None)
        self.resume_from = resume_from
        self.allow_dp_change = allow_dp_change
        self.state = TrainState()
        self.stop_requested = False
        self.notes: list[str] = []
        self.resumed: dict | None = None
        self._progress_written = 0.0
        self.metrics_path = ctx.run_dir / METRICS
        self.checkpoint_root = ctx.run_dir / files.CHECKPOINTS
        self.dtype = torch.bfloat16 if config.dtype == "bf16" else torch.float32

    # ------------------------------------------------------------------ signals
    def install_signal_handler(self) -> None:
        """SIGUSR2 (Slurm's ``--signal=USR2@S`` before the time limit, or a preemption) and SIGTERM
        (scancel, a preemption, ``clusterkit cancel``): save a checkpoint at the end of the current
        step, then stop. All ranks agree on it through the step's all-reduce, so they save the same
        step even when the signal reaches them at different moments."""

        def handler(signum, _frame):
            if not self.stop_requested:
                log(f"caught {signal.Signals(signum).name}: saving a checkpoint at the end of this step, then stopping")
            self.stop_requested = True

        for sig in (signal.SIGUSR2, signal.SIGTERM):
            signal.signal(sig, handler)

    # ------------------------------------------------------------------ building
    def build(self) -> None:
        cfg, ctx = self.config, self.ctx
        self.progress("reading the data")
        self._build_data()  # first: bad data is reported before minutes of model loading
        self._check_epoch_plan()
        self.progress("loading models")
        preset = get_preset(cfg.model)
        self.preset = preset
        torch.manual_seed(cfg.seed)  # the same initial weights on every rank
        self.vae, self.text_encoder = self._build_frozen(preset)
        stdit3_config = STDiT3Config(**{**preset.stdit3_config, "freeze_y_embedder": cfg.freeze_y_embedder})
        self.model_config = stdit3_config.to_dict()
        model = self._build_stdit3(stdit3_config)
        model.gradient_checkpointing = cfg.grad_checkpoint
        model.train()
        self.plugin = build_plugin(cfg.plugin, ctx.device, dtype=cfg.dtype, grad_clip=cfg.grad_clip)
        self.optimizer = self.plugin.setup(model, lr=cfg.lr, weight_decay=cfg.weight_decay, eps=cfg.adam_eps)
        warmup = cfg.warmup_steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: (step + 1) / (warmup + 1) if step < warmup else 1.0)
        self.ema = EMA(self.plugin.ema_sources())
        self.masks = MaskGenerator(cfg.mask_ratios)
        self.generator = torch.Generator(device=ctx.device)
        self.mask_generator = torch.Generator()
        self._seed_rngs(step=0)
        self.checkpoints = CheckpointManager(self.checkpoint_root, rank=ctx.rank, world_size=ctx.world_size,
                                             keep_last=cfg.keep_last, attempt=str(ctx.attempt), fault=self.fault)

    def _build_frozen(self, preset):
        """The VAE and T5 from ckpt_dir (or the tiny preset's seeded random weights), frozen."""
        cfg, device = self.config, self.ctx.device
        frozen_dtype = self.dtype if device.type == "cuda" else torch.float32
        paths = checkpoint_paths(cfg.ckpt_dir or self._tiny_components(preset))
        from ..inference.models import read_spatial_vae_config

        vae_config = VideoVAEConfig(spatial=read_spatial_vae_config(paths.vae2d),
                                    temporal=TemporalVAEConfig(**preset.temporal_vae_config),
                                    micro_batch_size=cfg.vae_micro_batch)
        vae = VideoVAE.from_pretrained(paths.vae3d, vae_config, dtype=frozen_dtype, device=device)
        text_encoder = T5TextEncoder.from_pretrained(paths.t5, dtype=frozen_dtype, device=device,
                                                     max_length=preset.stdit3_config.get("model_max_length", 300))
        vae.requires_grad_(False).eval()
        return vae, text_encoder

    def _tiny_components(self, preset) -> Path:
        """The tiny preset's random frozen parts (seeded: the same files every time), written once by
        rank 0 into the run folder (transformers only saves on rank 0 of a process group)."""
        folder = self.ctx.run_dir / "tiny-components"
        if self.ctx.is_main and not folder.is_dir():
            from ..inference.models import save_random_checkpoint

            tmp = Path(tempfile.mkdtemp(prefix=".tiny-components-", dir=self.ctx.run_dir))
            save_random_checkpoint(tmp, preset)
            os.rename(tmp, folder)
        if dist.is_initialized():
            dist.barrier()
        return folder

    def _build_stdit3(self, stdit3_config: STDiT3Config) -> STDiT3:
        cfg = self.config
        if cfg.init == "random":
            return STDiT3(stdit3_config)
        path = Path(cfg.ckpt_dir) / "dit" if cfg.init == "pretrained" else Path(cfg.init)
        log(f"initial weights from {path}")
        return STDiT3.from_pretrained(path, stdit3_config, dtype=torch.float32)

    def _build_data(self) -> None:
        """Rank 0 reads the CSV and probes; every rank gets the same table (one broadcast)."""
        cfg, ctx = self.config, self.ctx
        payload = [None]
        if ctx.is_main:
            try:
                csv_path = Path(cfg.data).expanduser()
                cache = Path(cfg.probe_cache) if cfg.probe_cache else default_probe_cache(csv_path, ctx.run_dir)
                samples, report = load_samples(csv_path, cache_path=cache)
                payload = [("ok", samples, report)]
            except UserError as exc:
                payload = [("error", exc.message, exc.hint)]
        if dist.is_initialized():
            dist.broadcast_object_list(payload, src=0)
        kind, *rest = payload[0]
        if kind == "error":
            raise UserError(rest[0], hint=rest[1])
        samples, report = rest
        self.load_report = report
        if ctx.is_main:
            log(f"data {cfg.data}: {report.summary()}")
        if not samples:
            raise UserError(f"no usable sample in {cfg.data}: {report.summary()}")
        self.samples = samples
        self.bucket = Bucket(cfg.bucket_table)
        self.dataset = VideoTextDataset(samples, frame_interval=cfg.frame_interval, seed=cfg.seed)
        self.sampler = BucketBatchSampler(
            [(s.num_frames, s.height, s.width) for s in samples], self.bucket, num_replicas=ctx.world_size,
            rank=ctx.rank, seed=cfg.seed, frame_interval=cfg.frame_interval)

    def _seed_rngs(self, step: int) -> None:
        """Fresh per-rank RNG streams (a new run, or a resume across a data-parallel size change)."""
        import random

        import numpy as np

        base = self.config.seed * 1_000_003 + step * 1009 + self.ctx.rank
        torch.manual_seed(base)
        np.random.seed(base % 2**32)
        random.seed(base)
        self.generator.manual_seed(base + 1)
        self.mask_generator.manual_seed(base + 2)

    def _generators(self) -> dict[str, torch.Generator]:
        return {"train": self.generator, "masks": self.mask_generator}

    # ------------------------------------------------------------------ resume
    def resume(self) -> None:
        """Continue from this run's newest complete checkpoint, else from ``resume_from``."""
        own, skipped = files.latest_checkpoint(self.checkpoint_root)
        for message in skipped:
            log(message)
        if own is not None:
            info = own
        elif self.resume_from is not None:
            info, skipped = files.resolve_resume_path(self.resume_from)
            for message in skipped:
                log(message)
        else:
            self._start_metrics(None)
            return
        self._load(info)

    def _load(self, info: files.CheckpointInfo) -> None:
        started = time.perf_counter()
        ctx, state = self.ctx, info.state
        log(f"resuming from {info.path} (step {info.step}, epoch {state['epoch']}, "
            f"written by {state['world_size']} ranks with {state.get('plugin')})")
        self.plugin.load(info.path / files.DCP_DIR)
        self.ema.load_full(load_ema_file(info.path), self.plugin.shard_like)
        self.scheduler.load_state_dict(read_json_file(info.path, files.LR_SCHEDULER))
        self.state = TrainState(step=info.step, epoch=int(state["epoch"]), steps_in_epoch=int(state["steps_in_epoch"]),
                                samples_seen=int(state.get("samples_seen", 0)),
                                bad_samples=int(state.get("bad_samples", 0)))
        sampler_state = read_json_file(info.path, files.SAMPLER)
        if info.world_size == ctx.world_size:
            self.sampler.load_state_dict(sampler_state)
            restore_rng(load_rng(info.path, ctx.rank), self._generators())
        elif self.allow_dp_change:
            note = (f"DATA-PARALLEL SIZE CHANGED {info.world_size} -> {ctx.world_size}: the sampler restarts epoch "
                    f"{self.state.epoch} from its first batch and the RNG streams are reseeded; weights, EMA, "
                    f"optimizer, LR schedule and step {info.step} are kept")
            log("WARNING: " + note)
            self.notes.append(note)
            self.sampler.reset_position(self.state.epoch)
            self.state.steps_in_epoch = 0
            self._seed_rngs(step=info.step)
        else:
            raise UserError(
                f"{info.path} was written by {info.world_size} ranks and this run has {ctx.world_size}; the sampler "
                "position and the per-rank RNG streams cannot carry over",
                hint="resume on the same number of nodes x GPUs, or pass --allow-dp-change")
        load_s = time.perf_counter() - started
        log(f"loaded step {info.step} in {load_s:.2f}s")
        self.resumed = {"checkpoint": str(info.path), "step": info.step, "load_s": round(load_s, 3)}
        self._start_metrics(info)

    # ------------------------------------------------------------------ metrics and progress
    def _start_metrics(self, info: files.CheckpointInfo | None) -> None:
        """metrics.jsonl holds exactly one line per step done: after a resume from step N, the lines
        up to N (from the checkpoint's run when it is another one) and nothing past it."""
        if not self.ctx.is_main:
            return
        lines: list[str] = []
        if info is not None:
            source = info.path.parent.parent / METRICS
            if source.exists():
                import json

                for line in source.read_text().splitlines():
                    if line.strip() and json.loads(line)["step"] <= info.step:
                        lines.append(line)
        atomic_write_text(self.metrics_path, "".join(line + "\n" for line in lines))
        self._record_attempt(resumed_from=info)

    def _record_attempt(self, *, resumed_from=None, end: dict | None = None) -> None:
        attempts = read_json(self.ctx.run_dir / ATTEMPTS, default=[]) or []
        if end is None:
            attempts.append({"attempt": self.ctx.attempt, "job_id": self.ctx.job_id, "started_at": time.time(),
                             "world_size": self.ctx.world_size, "plugin": self.config.plugin,
                             "resumed_from": str(resumed_from.path) if resumed_from else None,
                             "start_step": resumed_from.step if resumed_from else 0,
                             "load_s": self.resumed["load_s"] if self.resumed else None})
        elif attempts:
            attempts[-1].update(end)
        atomic_write_json(self.ctx.run_dir / ATTEMPTS, attempts)

    def progress(self, stage: str, force: bool = True, **extra) -> None:
        if not self.ctx.is_main:
            return
        now = time.monotonic()
        if force or now - self._progress_written >= PROGRESS_EVERY_S:
            atomic_write_json(self.ctx.run_dir / PROGRESS, {"stage": stage, "time": time.time(), **extra})
            self._progress_written = now

    # ------------------------------------------------------------------ one step
    def train_step(self, batch: dict) -> dict:
        cfg, device = self.config, self.ctx.device
        video = batch["video"].to(device, non_blocking=True)
        valid = batch["valid"].to(device)
        autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16,
                                  enabled=cfg.dtype == "bf16" and self.plugin.autocast_enabled)
        with torch.no_grad(), autocast:
            x = self.vae.encode(video.to(self.vae.scale.dtype), generator=self.generator).float()
            y, text_mask = self.text_encoder.encode(batch["text"])
        size = x.shape[0]
        meta = dict(device=device, dtype=self.dtype)
        height = torch.full((size,), batch["height"], **meta)
        width = torch.full((size,), batch["width"], **meta)
        num_frames = torch.full((size,), batch["num_frames"], **meta)
        fps = batch["fps"].to(**meta)
        x_mask = None
        if self.masks.enabled:
            x_mask = self.masks.get_masks(size, x.shape[2], self.mask_generator).to(device)
        t = rf.training_timesteps(size, height=height, width=width, num_frames=num_frames,
                                  transform_scale=cfg.transform_scale, generator=self.generator, device=device)
        noise = torch.randn(x.shape, generator=self.generator, device=device, dtype=x.dtype)
        x_t = rf.noisy_latents(x, noise, t, x_mask)
        with autocast:
            out = self.plugin.model(x_t, t, y, mask=text_mask, x_mask=x_mask, fps=fps, height=height, width=width)
        per_sample = rf.training_loss(out[:, : x.shape[1]], x, noise, x_mask)
        weights = valid.float()
        loss = (per_sample * weights).sum() / weights.sum().clamp(min=1.0)
        self.plugin.backward(loss)
        grad_norm = self.plugin.step(cfg.grad_clip)
        self.scheduler.step()
        self.ema.update(self.plugin.ema_sources(), cfg.ema_decay)
        return {"loss_sum": float((per_sample.detach() * weights).sum()), "valid": float(weights.sum()),
                "samples": size, "grad_norm": grad_norm}

    def _agree(self, out: dict) -> dict:
        """One all-reduce per step: the global loss and counts, and whether any rank got SIGUSR2."""
        device = self.ctx.device
        stats = torch.tensor([out["loss_sum"], out["valid"], out["samples"], out["samples"] - out["valid"],
                              float(self.stop_requested)], dtype=torch.float64, device=device)
        if dist.is_initialized():
            dist.all_reduce(stats)
        loss_sum, valid, samples, bad, stop = stats.tolist()
        return {"loss": loss_sum / valid if valid else float("nan"), "valid": int(valid), "samples": int(samples),
                "bad": int(bad), "stop": stop > 0}

    # ------------------------------------------------------------------ the loop
    def train(self) -> dict:
        cfg, ctx = self.config, self.ctx
        started = time.time()
        steps_per_epoch = self._check_epoch_plan().steps
        # without max_steps the run ends after `epochs`; epochs differ in length (each one draws its
        # buckets anew), so the product is only the progress bar's estimate
        max_steps = cfg.max_steps or math.inf
        shown_total = cfg.max_steps or cfg.epochs * steps_per_epoch
        stopped = "max_steps" if self.state.step >= max_steps else None
        log(f"{cfg.name}: {cfg.model} with {cfg.plugin} on {ctx.world_size} rank(s) ({ctx.device}, {cfg.dtype}); "
            f"{steps_per_epoch} steps per epoch; step {self.state.step} -> "
            f"{cfg.max_steps or f'{cfg.epochs} epochs'}")
        last_saved = self.state.step if self.resumed else None
        while stopped is None:
            self.sampler.set_epoch(self.state.epoch)
            plan = self._check_epoch_plan()
            if ctx.is_main and self.sampler.start_step == 0:
                self._log_epoch(plan)
            loader = build_loader(self.dataset, self.sampler, num_workers=cfg.num_workers, seed=cfg.seed)
            tick = time.perf_counter()
            for batch in loader:
                for error in batch["errors"]:
                    log(f"skipped a sample: {error}")
                out = self.train_step(batch)
                if cfg.min_step_s:
                    time.sleep(max(0.0, cfg.min_step_s - (time.perf_counter() - tick)))
                agreed = self._agree(out)
                step_s = time.perf_counter() - tick
                self.state.step += 1
                self.state.steps_in_epoch += 1
                self.state.samples_seen += agreed["valid"]
                self.state.bad_samples += agreed["bad"]
                self._record_step(agreed, out["grad_norm"], step_s, batch, shown_total)
                due = self.state.step % cfg.ckpt_every == 0 or self.state.step >= max_steps or agreed["stop"]
                if due:
                    self.save()
                    last_saved = self.state.step
                if agreed["stop"]:
                    stopped = "signal"
                elif self.state.step >= max_steps:
                    stopped = "max_steps"
                if stopped:
                    break
                tick = time.perf_counter()
            else:
                self.state.epoch += 1
                self.state.steps_in_epoch = 0
                if self.state.epoch >= cfg.epochs and cfg.max_steps is None:
                    stopped = "epochs"
        if last_saved != self.state.step:
            self.save()
        return self._finish(stopped, started)

    def _check_epoch_plan(self):
        """The current epoch's plan; an epoch without a single batch is an error saying why."""
        self.sampler.set_epoch(self.state.epoch)
        plan = self.sampler.plan()
        if plan.steps == 0:
            reasons = explain_unassigned(self.bucket, self.sampler.samples, self.config.frame_interval, plan.dropped)
            raise UserError(f"no batch can be made from {self.config.data} with these buckets: "
                            f"{len(self.samples)} usable samples, {plan.dropped} fit no bucket ({reasons})",
                            hint="check the bucket table's resolutions and frame counts against the data")
        return plan

    def _log_epoch(self, plan) -> None:
        shown = ", ".join(f"{res} {frames}f {ar}: {n}" for (res, frames, ar), n in sorted(plan.buckets.items()))
        log(f"epoch {plan.epoch}: {plan.steps} steps; buckets {shown}")
        if plan.dropped:
            log(f"epoch {plan.epoch}: {plan.dropped} samples fit no bucket "
                f"({explain_unassigned(self.bucket, self.sampler.samples, self.config.frame_interval, plan.dropped)})")

    def _record_step(self, agreed: dict, grad_norm: float, step_s: float, batch: dict, max_steps: int) -> None:
        if not self.ctx.is_main:
            return
        import json

        memory = _memory_bytes(self.ctx.device)
        record = {"step": self.state.step, "epoch": self.state.epoch, "loss": agreed["loss"],
                  "lr": self.scheduler.get_last_lr()[0], "grad_norm": grad_norm, "step_s": step_s,
                  "samples": agreed["valid"], "samples_per_s": agreed["valid"] / step_s if step_s else None,
                  "bad_samples": agreed["bad"], "memory_bytes": memory, "time": time.time(),
                  "bucket": [batch["num_frames"], batch["height"], batch["width"]]}
        with open(self.metrics_path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        if self.state.step % self.config.log_every == 0 or self.state.step == 1:
            log(f"step {self.state.step}/{max_steps} epoch {self.state.epoch} loss {agreed['loss']:.5f} "
                f"lr {record['lr']:.3g} grad_norm {grad_norm:.4g} step {step_s:.3f}s "
                f"{record['samples_per_s']:.2f} samples/s memory {memory / 2**30:.2f} GiB")
        self.progress("training", force=False, step=self.state.step, max_steps=max_steps, loss=agreed["loss"],
                      epoch=self.state.epoch)

    # ------------------------------------------------------------------ saving and the end
    def save(self) -> Path:
        self.progress("saving", step=self.state.step)
        state = dataclasses.asdict(self.state)
        state.update(plugin=self.config.plugin, dtype=self.config.dtype, seed=self.config.seed, name=self.config.name,
                     run_dir=str(self.ctx.run_dir), attempt=self.ctx.attempt)
        path = self.checkpoints.save(
            self.state.step, plugin=self.plugin, ema=self.ema, train_state=state,
            sampler_state=self.sampler.state_dict(self.state.steps_in_epoch),
            lr_state=self.scheduler.state_dict(), model_config=self.model_config, rng=capture_rng(self._generators()))
        if self.ctx.is_main:
            log(f"saved {path}")
        return path

    def _finish(self, stopped: str, started: float) -> dict:
        latest, _ = files.latest_checkpoint(self.checkpoint_root)
        export = None
        if self.ctx.is_main and latest is not None and stopped != "signal":
            export = self._export(latest.path)
        found, _ = files.scan_checkpoints(self.checkpoint_root)
        end = {"finished_at": time.time(), "stopped": stopped, "end_step": self.state.step}
        if self.ctx.is_main:
            self._record_attempt(end=end)
        self.progress("done" if stopped != "signal" else "stopped by signal", step=self.state.step)
        return {
            "ok": True, "name": self.config.name, "model": self.config.model, "plugin": self.config.plugin,
            "dtype": self.config.dtype, "device": str(self.ctx.device), "world_size": self.ctx.world_size,
            "step": self.state.step, "epoch": self.state.epoch, "stopped": stopped,
            "checkpoints": [str(c.path) for c in found], "latest_checkpoint": str(latest.path) if latest else None,
            "written_this_attempt": [str(p) for p in self.checkpoints.written], "export": export,
            "metrics": str(self.metrics_path), "attempts": read_json(self.ctx.run_dir / ATTEMPTS, default=[]),
            "samples_seen": self.state.samples_seen, "bad_samples": self.state.bad_samples,
            "data": self.load_report.to_dict(), "notes": self.notes, "seconds": round(time.time() - started, 3),
            "torch": torch.__version__,
        }

    def _export(self, checkpoint: Path) -> str:
        """The final EMA as a checkpoint folder inference reads (``--ckpt-dir``)."""
        out = self.ctx.run_dir / "export" / checkpoint.name
        if self.config.ckpt_dir:
            export_ema(checkpoint, out, components=Path(self.config.ckpt_dir))
        else:  # tiny: the random frozen parts this run wrote
            export_ema(checkpoint, out, components=self.ctx.run_dir / "tiny-components")
        log(f"exported the EMA of {checkpoint.name} to {out} (clusterkit submit infer --ckpt-dir {out})")
        return str(out)


def _memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # peak RSS (Linux: KiB)

