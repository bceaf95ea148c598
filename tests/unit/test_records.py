import json
import sqlite3
import threading

import pytest

from clusterkit.errors import NotFound, UserError
from clusterkit.launch.records import Registry, RunRecord, atomic_write_json, atomic_write_text, new_run_id


def record(run_id, state="PENDING", created=1.0, tmp=None):
    return RunRecord(run_id=run_id, kind="collective", executor="local", nodes=("worker-5",),
                     job_ids=("local-1",), state=state, run_dir=(tmp or __import__("pathlib").Path("/r")) / run_id,
                     created_at=created, updated_at=created)


def test_registry_is_a_real_sqlite_file(tmp_path):
    reg = Registry(tmp_path / "runs")
    reg.add(record("20260101-000000-collective-aaaa", created=1.0))
    reg.add(record("20260101-000001-collective-bbbb", created=2.0))
    reg.update("20260101-000000-collective-aaaa", state="COMPLETED", job_ids=("77",), summary="fine")
    got = reg.get("20260101-000000-collective-aaaa")
    assert got.state == "COMPLETED" and got.job_ids == ("77",) and got.terminal
    assert [r.run_id for r in reg.list()] == ["20260101-000001-collective-bbbb", "20260101-000000-collective-aaaa"]
    with sqlite3.connect(tmp_path / "runs" / "registry.sqlite") as conn:  # readable by any sqlite client
        assert conn.execute("SELECT count(*) FROM runs").fetchone()[0] == 2


def test_prefix_lookup_and_errors(tmp_path):
    reg = Registry(tmp_path)
    reg.add(record("20260101-000000-collective-aaaa"))
    reg.add(record("20260101-000000-collective-aabb"))
    assert reg.get("20260101-000000-collective-aaa").run_id.endswith("aaaa")
    with pytest.raises(UserError, match="ambiguous"):
        reg.get("20260101-000000-collective-aa")
    with pytest.raises(NotFound, match="no run 'nope'"):
        reg.get("nope")
    with pytest.raises(NotFound):
        reg.get("2026%")  # LIKE wildcards in user input are literal


def test_concurrent_writers_lose_nothing(tmp_path):
    reg = Registry(tmp_path)
    errors = []

    def add(i):
        try:
            reg.add(record(f"r{i:03d}", created=float(i)))
        except Exception as exc:  # pragma: no cover - would fail the test below
            errors.append(exc)

    threads = [threading.Thread(target=add, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(reg.list()) == 40


def test_atomic_write_leaves_no_partial_file(tmp_path):
    target = tmp_path / "sub" / "x.json"
    atomic_write_json(target, {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1}

    class Boom:
        def __str__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        atomic_write_json(target, {"a": Boom()})
    assert json.loads(target.read_text()) == {"a": 1}  # old content intact
    assert [p.name for p in target.parent.iterdir()] == ["x.json"]  # no temp files left
    atomic_write_text(target, "☃")
    assert target.read_text() == "☃"


def test_run_ids_are_unique_and_safe():
    ids = {new_run_id("collective", now=0) for _ in range(50)}
    assert len(ids) > 45
    assert all(i.replace("-", "").isalnum() for i in ids)


def test_atomic_writes_get_a_plain_files_mode_and_private_ones_0600(tmp_path):
    import os

    from clusterkit.launch.records import atomic_write_json, atomic_write_text

    old = os.umask(0o022)
    try:
        import clusterkit.launch.records as records

        records.process_umask.cache_clear()
        atomic_write_text(tmp_path / "index.json", "{}")  # outputs are for sharing, like any new file
        atomic_write_json(tmp_path / "env.json", {"TOKEN": "x"}, private=True)
        (tmp_path / "plain").write_text("x")
        assert (tmp_path / "index.json").stat().st_mode & 0o777 == (tmp_path / "plain").stat().st_mode & 0o777 == 0o644
        assert (tmp_path / "env.json").stat().st_mode & 0o777 == 0o600
        assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    finally:
        os.umask(old)
        records.process_umask.cache_clear()
