from pathlib import Path

import pytest

from clusterkit.errors import InvalidChoice, UserError
from clusterkit.launch.envprofiles import load_profiles, parse_env_assignments, resolve_env

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def profiles():
    return load_profiles(ROOT / "env" / "nccl.yaml")


def test_shipped_profiles(profiles):
    assert {"default", "debug", "no-p2p"} <= set(profiles)
    default = profiles["default"].env
    assert default["NCCL_DEBUG"] == "WARN"
    assert default["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "3"
    debug = profiles["debug"].env
    # the seed's debugging set, with today's names
    for key in ("CUDA_LAUNCH_BLOCKING", "TORCH_NCCL_BLOCKING_WAIT", "TORCH_NCCL_ASYNC_ERROR_HANDLING",
                "TORCH_DISTRIBUTED_DEBUG", "NCCL_P2P_DISABLE", "NCCL_P2P_LEVEL"):
        assert key in debug
    assert debug["NCCL_DEBUG"] == "INFO"
    assert profiles["no-p2p"].env["NCCL_P2P_DISABLE"] == "1"
    for profile in profiles.values():  # no deprecated pre-2.2 names anywhere
        assert not any(k.startswith("NCCL_") and k.endswith(("ASYNC_ERROR_HANDLING", "BLOCKING_WAIT"))
                       for k in profile.env)


def test_precedence_profile_node_cli_profile_env(profiles):
    resolved = resolve_env(
        profiles, base_profile="default", node_name="worker-8",
        node_env={"NCCL_P2P_DISABLE": "1", "NCCL_DEBUG": "VERSION"},
        cli_profile=None, cli_env={"NCCL_DEBUG": "TRACE"}, run_dir="/runs/r1",
    )
    assert resolved.env["NCCL_P2P_DISABLE"] == "1" and resolved.source["NCCL_P2P_DISABLE"] == "node:worker-8"
    assert resolved.env["NCCL_DEBUG"] == "TRACE" and resolved.source["NCCL_DEBUG"] == "--env"
    assert resolved.env["TORCH_NCCL_DEBUG_INFO_TEMP_FILE"] == "/runs/r1/comm_traces/rank_"
    assert resolved.source["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "profile:default"


def test_cli_profile_wins_over_node_and_says_so(profiles):
    resolved = resolve_env(
        profiles, base_profile="default", node_name="worker-8", node_env={"NCCL_P2P_DISABLE": "1"},
        cli_profile="debug", cli_env={}, run_dir="/r",
    )
    assert resolved.env["NCCL_P2P_DISABLE"] == "0"
    assert resolved.source["NCCL_P2P_DISABLE"] == "profile:debug (--nccl-profile)"
    assert any("worker-8" in w and "NCCL_P2P_DISABLE" in w for w in resolved.warnings)


def test_base_profile_does_not_override_node_facts(profiles):
    # diagnose uses debug as its *base*: a 4090 node's P2P_DISABLE=1 must survive
    resolved = resolve_env(profiles, base_profile="debug", node_name="worker-8",
                           node_env={"NCCL_P2P_DISABLE": "1"}, run_dir="/r")
    assert resolved.env["NCCL_P2P_DISABLE"] == "1"
    assert resolved.env["NCCL_DEBUG_FILE"] == "/r/nccl/%h.%p.log"
    assert not resolved.warnings


def test_unknown_profile_lists_choices(profiles):
    with pytest.raises(InvalidChoice, match="debg.*valid choices: debug, default, no-p2p.*Did you mean 'debug'"):
        resolve_env(profiles, base_profile="default", node_name="n", node_env={}, cli_profile="debg", run_dir="/r")


def test_env_assignments_keep_values_verbatim():
    hostile = "a b'c\"$(rm -rf /)`x`;\n☃="
    assert parse_env_assignments([f"FOO={hostile}", "EMPTY="]) == {"FOO": hostile, "EMPTY": ""}


@pytest.mark.parametrize("item, message", [
    ("NOVALUE", "expected KEY=VALUE"),
    ("1BAD=x", "not a valid environment variable name"),
    ("NCCL_ASYNC_ERROR_HANDLING=1", "use TORCH_NCCL_ASYNC_ERROR_HANDLING"),
    ("NCCL_BLOCKING_WAIT=1", "use TORCH_NCCL_BLOCKING_WAIT"),
])
def test_bad_env_assignments(item, message):
    with pytest.raises(UserError, match=message):
        parse_env_assignments([item])


def test_profile_file_errors(tmp_path):
    bad = tmp_path / "nccl.yaml"
    bad.write_text("profiles:\n  a:\n    extends: b\n  b:\n    extends: a\n")
    with pytest.raises(UserError, match="loop"):
        load_profiles(bad)
    bad.write_text("profiles:\n  a:\n    env: {NCCL_DESYNC_DEBUG: '1'}\n")
    with pytest.raises(UserError, match="TORCH_NCCL_DESYNC_DEBUG"):
        load_profiles(bad)
    bad.write_text("profiles:\n  a:\n    envs: {}\n")
    with pytest.raises(UserError, match="unknown keys"):
        load_profiles(bad)
    with pytest.raises(UserError, match="not found"):
        load_profiles(tmp_path / "missing.yaml")
