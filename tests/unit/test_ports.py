import socket

import pytest

from clusterkit.errors import LaunchError, UserError
from clusterkit.launch.ports import (
    DEFAULT_PORT_RANGE, TORCH_DEFAULT_PORTS, choose_port, first_candidate, port_is_free, validate_range,
)


def test_first_candidate_is_deterministic_and_in_range():
    a = first_candidate("12345", 0)
    assert a == first_candidate("12345", 0)
    assert DEFAULT_PORT_RANGE[0] <= a < DEFAULT_PORT_RANGE[1]


def test_requeue_changes_the_port():
    # a requeued attempt must not join the store its dead predecessor may still hold
    assert first_candidate("12345", 0) != first_candidate("12345", 1)


def test_different_jobs_spread_over_the_range():
    ports = {first_candidate(str(job), 0) for job in range(1000, 1200)}
    assert len(ports) > 190  # 200 jobs, 9000 ports: collisions are rare


def test_torch_defaults_are_never_chosen_even_when_the_range_contains_them():
    for job in range(300):
        port = first_candidate(str(job), 0, (29399, 29402))
        assert port not in TORCH_DEFAULT_PORTS
        choice = choose_port(str(job), 0, (29499, 29502), is_free=lambda p: True)
        assert choice.port not in TORCH_DEFAULT_PORTS


def test_steps_to_next_port_when_busy():
    start = first_candidate("77", 0)
    busy = {start, start + 1}
    choice = choose_port("77", 0, is_free=lambda p: p not in busy)
    assert choice.port == start + 2
    assert choice.tried == (start, start + 1)
    assert choice.first_candidate == start


def test_wraps_inside_the_range():
    low, high = 20000, 20010
    job = next(str(j) for j in range(100) if first_candidate(str(j), 0, (low, high)) > low)
    start = first_candidate(job, 0, (low, high))
    busy = set(range(start, high))  # everything from the candidate to the top is taken
    choice = choose_port(job, 0, (low, high), is_free=lambda p: p not in busy)
    assert choice.port == low
    assert choice.tried == tuple(range(start, high))


def test_all_busy_is_a_clear_error():
    with pytest.raises(LaunchError, match="no free rendezvous port in 20000-20004"):
        choose_port("1", 0, (20000, 20005), is_free=lambda p: False)


def test_real_bound_socket_is_detected_and_skipped():
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    holder.bind(("0.0.0.0", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        assert not port_is_free(port)
        choice = choose_port("x", 0, (port, port + 50))  # real probe, real collision
        assert choice.port != port
        assert port_is_free(choice.port)
    finally:
        holder.close()


@pytest.mark.parametrize("bad", [(0, 100), (30000, 30000), (40000, 30000), (1024, 70000)])
def test_bad_ranges_are_user_errors(bad):
    with pytest.raises(UserError, match="port range"):
        validate_range(bad)
