"""Parallel inference equals one process: real torchrun, gloo on CPU, the tiny STDiT3 in fp32.

``workloads/parallel_parity.py`` runs every layout of 2 and 4 ranks (replicas x cfg x sp, both
SP schemes) through the pipeline's model function and compares, on every rank, the noise
prediction (with and without conditioning frames) and the latents after 3 sampler steps with
the one-process result, on a clip whose 5 x 7 patch grid needs padding for 2 and 4 ranks (and
5 frames for DSP), and on an image (DSP falls back to head sharding). It also counts the bytes
each rank sends in one step and the formula the planner uses must agree exactly.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ck_testing import ROOT, WORKLOADS

pytestmark = pytest.mark.integration

TOLERANCE = 1e-5  # fp32; in practice every layout is bit for bit equal on CPU (see the report)
REQUIRED = {  # (replicas, cfg, sp, scheme) each world size must cover
    2: {(2, 1, 1, "dsp"), (1, 1, 2, "dsp"), (1, 1, 2, "ulysses"), (1, 2, 1, "dsp")},
    4: {(4, 1, 1, "dsp"), (1, 1, 4, "dsp"), (1, 1, 4, "ulysses"), (1, 2, 2, "dsp"), (1, 2, 2, "ulysses"),
        (2, 1, 2, "dsp"), (2, 2, 1, "dsp")},
}


def run_parity(world: int, tmp_path) -> dict:
    out = tmp_path / f"parity-{world}.json"
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(world),
            str(WORKLOADS / "parallel_parity.py"), str(out)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(out.read_text())


@pytest.fixture(scope="module", params=[2, 4])
def report(request, tmp_path_factory):
    return run_parity(request.param, tmp_path_factory.mktemp("parity"))


def test_every_layout_matches_one_process(report):
    seen = set()
    for row in report["layouts"]:
        layout = row["layout"]
        seen.add((layout["replicas"], layout["cfg"], layout["sp"], layout["sp_scheme"]))
        assert len(row["ranks"]) == report["world"]
        for rank, cases in enumerate(row["ranks"]):
            assert set(cases) == {"clip_padded", "image"}
            for case, result in cases.items():
                for what, diff in result["max_abs_diff"].items():
                    assert diff <= TOLERANCE, (row["describe"], rank, case, what, diff)
    assert REQUIRED[report["world"]] <= seen


def test_counted_bytes_equal_the_formula(report):
    for row in report["layouts"]:
        for cases in row["ranks"]:
            for case, result in cases.items():
                counted, formula = result["counted"], result["formula"]
                for kind in ("attention", "gather", "cfg"):
                    assert counted.get(kind, 0.0) == pytest.approx(formula[kind], rel=1e-12, abs=0), (
                        row["describe"], case, kind)
                layout = row["layout"]
                if layout["sp"] > 1:
                    # two all-to-all calls per spatial block (tiny has 2 blocks) and one gather
                    assert result["calls"]["attention"] == formula["alltoalls"] == 4
                    assert result["calls"]["gather"] == 1


def test_dsp_sends_less_than_ulysses_and_padding_is_exercised(report):
    by_layout = {(r["layout"]["replicas"], r["layout"]["cfg"], r["layout"]["sp"], r["layout"]["sp_scheme"]):
                 r["ranks"][0] for r in report["layouts"]}
    sp = report["world"]
    dsp, ulysses = by_layout[(1, 1, sp, "dsp")], by_layout[(1, 1, sp, "ulysses")]
    assert dsp["clip_padded"]["counted"]["attention"] < ulysses["clip_padded"]["counted"]["attention"]
    # an image has fewer frames than ranks: DSP uses head sharding, the same traffic as ulysses
    assert dsp["image"]["counted"] == ulysses["image"]["counted"]
    assert (5 * 7) % sp != 0  # the clip's 35 tokens per frame are padded for 2 and 4 ranks
