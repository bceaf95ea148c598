"""The worked examples of docs/inference-modes.md, run exactly as written (tiny model, local
executor, ``--wait``): each makes the files and frame counts the doc promises (``check_mode``)."""

from __future__ import annotations

import pytest
from infer_testing import MODES, check_mode, decode, mode_examples

from opensora_core.inference.request import InferRequest

pytestmark = pytest.mark.integration
EXAMPLES = mode_examples()


@pytest.mark.parametrize("mode", MODES)
def test_doc_example_runs(cli, mode):
    code, out, err = cli(*EXAMPLES[mode], timeout=600)
    assert code == 0 and out["ok"], (out, err)
    result = out["result"]
    assert result["state"] == "COMPLETED"
    request = InferRequest.from_dict(result["request"])
    entries = result["videos"]
    check_mode(mode, request, entries)
    for entry in entries:
        assert decode(entry["path"]).shape[0] == entry["frames"]
