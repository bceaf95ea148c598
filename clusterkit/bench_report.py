"""The ``clusterkit bench infer`` report: the job's raw iterations -> statistics over the timed ones.

Pure: ``build_report(raw, context)`` reads only its arguments. The raw result is what the job's
rank 0 wrote (``opensora_core.inference.bench``): every iteration's stage times
(``StageClock.timings``), step times and peak memory, marked warm-up or eval. Warm-up iterations
are left out of every statistic (their totals are kept, to show the warm-up effect).

Every timed quantity is reported as ``{"mean", "min", "max", "values"}`` over the eval
iterations: the four stages (text encoding, denoising, VAE decode, write) and the iteration's
total; each denoising step (step k over the iterations); and the iteration's mean step time.
"""

from __future__ import annotations

import time

from clusterkit.errors import JobFailed

SCHEMA = "clusterkit/bench-infer/v1"
STAGES = ("text_encoding", "denoising", "decode", "write")
MEMORY_MEANING = {
    "cuda_max_memory_allocated": ("torch.cuda.max_memory_allocated on rank 0's GPU during each stage (reset when the "
                                  "stage begins); peak_bytes is the largest stage's; max over the eval iterations"),
    "cpu_rss": ("no GPU: resident set size of rank 0's process at the end of each stage (max over the eval "
                "iterations); peak_bytes is the process's maximum RSS (getrusage), model loading included"),
}


def stats(values: list[float]) -> dict:
    """Mean, min and max of ``values`` (at least one), with the values themselves."""
    if not values:
        raise ValueError("statistics of no values")
    return {"mean": round(sum(values) / len(values), 6), "min": min(values), "max": max(values),
            "values": list(values)}


def build_report(raw: dict, *, run_id: str, executor: str, inventory_gpu: dict, request: dict,
                 written_at: float | None = None) -> dict:
    """The report of one bench run. ``raw``: the job's result; ``inventory_gpu``: the benched node's
    GPU from nodes.yaml (``model`` catalog key, ``name``, ``count``); ``request``: what was asked
    (model, resolution, frames, aspect ratio, steps, prompt, seed, ...)."""
    evals = [it for it in raw["iterations"] if it["phase"] == "eval"]
    warmups = [it for it in raw["iterations"] if it["phase"] == "warmup"]
    if len(evals) != raw["eval"] or len(warmups) != raw["warmup"]:
        raise JobFailed(f"bench run {run_id} recorded {len(warmups)} warm-up and {len(evals)} eval iteration(s); "
                        f"{raw['warmup']} and {raw['eval']} were asked for")
    device = raw["device"]
    return {
        "schema": SCHEMA,
        "run_id": run_id,
        "node": raw["node"],
        "host": raw["host"],
        "executor": executor,
        "request": {**request, "dtype": raw["dtype"], "t5": raw["t5"], "vae_micro_batch": raw["vae_micro_batch"],
                    "flash_attn": raw["flash_attn"], "num_frames": raw["geometry"]["frames"],
                    "height": raw["geometry"]["height"], "width": raw["geometry"]["width"],
                    "video_tokens": raw["geometry"]["tokens"], "random_weights": raw["random_weights"]},
        "layout": dict(raw["layout"]),
        "iterations": {"warmup": raw["warmup"], "eval": raw["eval"],
                       "warmup_total_s": [it["total_s"] for it in warmups]},
        "load_s": raw["load_s"],
        "stages": stage_stats(evals),
        "memory": memory_stats(evals),
        "gpu": {
            "inventory_model": inventory_gpu["model"],
            "inventory_name": inventory_gpu["name"],
            "inventory_count": inventory_gpu["count"],
            "device": device["device"],
            "device_type": device["type"],
            "device_name": device["name"],
            "torch_name": device["torch_name"],
            "nvml_name": device["nvml_name"],
            "driver": device["driver"],
            "device_gpu_model": device["gpu_model"],
            "matches_inventory": device["gpu_model"] == inventory_gpu["model"],
            "memory_bytes": device["memory_bytes"],
            "compute_capability": device["compute_capability"],
            "cpu_threads": device["cpu_threads"],
        },
        "versions": dict(raw["versions"]),
        "timestamps": {
            "started": _iso(raw["started_at"]),
            "finished": _iso(raw["finished_at"]),
            "report_written": _iso(written_at if written_at is not None else time.time()),
            "started_at": raw["started_at"],
            "finished_at": raw["finished_at"],
        },
        "outputs": list(raw["outputs"]),
    }


def stage_stats(evals: list[dict]) -> dict:
    """Per-stage, per-step and per-iteration-mean-step statistics of the eval iterations."""
    timings = [it["timings"] for it in evals]
    out = {stage: stats([t[f"{stage}_s"] for t in timings]) for stage in STAGES}
    out["total"] = stats([it["total_s"] for it in evals])
    steps = {len(t["denoising_steps_s"]) for t in timings}
    if len(steps) != 1:
        raise JobFailed(f"the eval iterations ran different numbers of denoising steps: {sorted(steps)}")
    out["denoising_step"] = stats([t["denoising_step_mean_s"] for t in timings])
    out["denoising_steps"] = [{"step": k + 1, **stats([t["denoising_steps_s"][k] for t in timings])}
                              for k in range(steps.pop())]
    return out


def memory_stats(evals: list[dict]) -> dict:
    """Peak memory per stage (max over the eval iterations) and overall, and what was measured."""
    memories = [it["peak_memory"] for it in evals]
    kinds = {m["kind"] for m in memories}
    if len(kinds) != 1:
        raise JobFailed(f"the eval iterations measured memory differently: {sorted(kinds)}")
    kind = kinds.pop()
    by_stage = {stage: max(m["by_stage_bytes"].get(stage, 0) for m in memories) for stage in STAGES}
    return {"kind": kind, "measures": MEMORY_MEANING.get(kind, kind),
            "peak_bytes": max(m["peak_bytes"] for m in memories), "by_stage_bytes": by_stage}


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(epoch))
