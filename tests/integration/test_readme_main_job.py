"""The README's main-job command works as written (the part after the install step): the tiny
text-to-video job on the local executor writes a 51-frame 144x256 mp4 and reports its stages."""

import shlex
import sys

import pytest

from ck_testing import ROOT
from infer_testing import check_readme_result

pytestmark = pytest.mark.integration


def test_readme_main_job(cli):
    sys.path.insert(0, str(ROOT / "tests" / "unit"))
    from test_readme import setup_commands

    command = setup_commands()[0].split("&&", 1)[1].strip()
    argv = shlex.split(command)
    assert argv[:3] == ["clusterkit", "submit", "infer"]
    code, out, err = cli(*argv[1:], timeout=600)
    assert code == 0, err
    result = check_readme_result(out)
    assert result["executor"] == "local"
