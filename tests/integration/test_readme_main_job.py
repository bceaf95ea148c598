"""The README's main-job command works as written (the part after the install step)."""

import shlex
import sys

import pytest

from ck_testing import ROOT

pytestmark = pytest.mark.integration


def test_readme_main_job(cli):
    sys.path.insert(0, str(ROOT / "tests" / "unit"))
    from test_readme import setup_commands

    command = setup_commands()[0].split("&&", 1)[1].strip()
    argv = shlex.split(command)
    assert argv[0] == "clusterkit"
    code, out, err = cli(*argv[1:])
    assert code == 0, err
    assert out["result"]["ok"] and out["result"]["world_size"] == 4
