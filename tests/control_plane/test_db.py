"""control_plane.db: the SQLite durability setting and migrations racing between replicas."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from control_plane import db

SERVICE = "race"


def _open(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], Engine]:
    """A factory of engines (one per replica) on the same fresh store of `backend`."""
    dsn = request.getfixturevalue("postgres_schema_dsn") if backend == "postgresql" else None
    path = tmp_path / "plane.sqlite3"
    return lambda: db.create_engine(database_url=dsn, sqlite_path=path)


@pytest.mark.parametrize(("synchronous", "level"), [("FULL", 2), ("NORMAL", 1)])
def test_sqlite_synchronous_is_applied_to_every_connection(
    tmp_path: Path, synchronous: db.SqliteSynchronous, level: int
) -> None:
    engine = db.create_engine(
        database_url=None, sqlite_path=tmp_path / "p.sqlite3", sqlite_synchronous=synchronous
    )
    try:
        with engine.connect() as one, engine.connect() as two:
            for conn in (one, two):
                assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == level
                assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    finally:
        engine.dispose()


def test_sqlite_synchronous_defaults_to_full_and_refuses_other_levels(tmp_path: Path) -> None:
    engine = db.create_engine(database_url=None, sqlite_path=tmp_path / "p.sqlite3")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2
    engine.dispose()
    with pytest.raises(db.StoreError, match="sqlite_synchronous must be FULL or NORMAL, got 'OFF'"):
        db.create_engine(
            database_url=None,
            sqlite_path=tmp_path / "p.sqlite3",
            sqlite_synchronous="OFF",  # type: ignore[arg-type]
        )


def _wait_for_rival(conn: Connection) -> None:
    """Hold migration 1 open until the other replica has provably reached the migration lock.

    PostgreSQL shows it: a backend waiting for an advisory lock. SQLite's writer waits in its
    busy handler, invisible from here, so the window is simply kept open for a moment; without
    the lock the other replica then reads 'nothing applied' and runs migration 1 too.
    """
    if conn.dialect.name != "postgresql":
        time.sleep(0.3)
        return
    deadline = time.monotonic() + 10
    waiting = sa.text(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
        "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    )
    while not conn.execute(waiting).scalar():
        if time.monotonic() > deadline:
            raise AssertionError("the other replica never waited for the migration lock")
        time.sleep(0.01)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_replicas_migrating_at_once_run_every_migration_once(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    new_engine = _open(backend, request, tmp_path)

    def step(version: int) -> Callable[[Connection], None]:
        def apply(conn: Connection) -> None:
            if version == 1:
                _wait_for_rival(conn)
                conn.exec_driver_sql("CREATE TABLE race_runs (version INTEGER NOT NULL)")
            conn.execute(sa.text("INSERT INTO race_runs (version) VALUES (:v)"), {"v": version})

        return apply

    migrations = [db.Migration(v, f"step {v}", step(v)) for v in (1, 2, 3)]
    start = threading.Barrier(2, timeout=10)
    results: dict[int, list[int]] = {}
    errors: list[BaseException] = []

    def replica(index: int) -> None:
        engine = new_engine()
        try:
            start.wait()
            results[index] = db.migrate(engine, SERVICE, migrations)
        except BaseException as exc:
            errors.append(exc)
        finally:
            engine.dispose()

    threads = [threading.Thread(target=replica, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    assert len(results) == 2
    assert sorted(v for applied in results.values() for v in applied) == [1, 2, 3]
    engine = new_engine()
    try:
        with engine.connect() as conn:
            runs = conn.execute(sa.text("SELECT version FROM race_runs ORDER BY version"))
            assert [r[0] for r in runs] == [1, 2, 3]
            assert db._applied(conn, SERVICE) == {1, 2, 3}
        assert db.migrate(engine, SERVICE, migrations) == []  # a third replica: nothing to do
    finally:
        engine.dispose()


def test_writers_queue_instead_of_failing_on_a_stale_read_snapshot(tmp_path: Path) -> None:
    """Read-then-write transactions through `for_writes` wait for each other (BEGIN IMMEDIATE).

    A deferred transaction that read before another connection committed cannot upgrade to a
    writer: SQLite refuses at once with "database is locked", whatever the busy timeout (the
    e2e test met it under load). The first half shows that failure, the second that
    `for_writes` turns it into a wait.
    """
    engine = db.create_engine(database_url=None, sqlite_path=tmp_path / "w.sqlite3")
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE t (n INTEGER)")

        def insert_one() -> None:
            with db.for_writes(engine).begin() as conn:
                conn.exec_driver_sql("INSERT INTO t VALUES (1)")

        with engine.connect() as stale, pytest.raises(sa.exc.OperationalError, match="locked"):
            with stale.begin():
                stale.exec_driver_sql("SELECT count(*) FROM t").scalar()  # snapshot taken
                insert_one()  # another connection commits
                stale.exec_driver_sql("INSERT INTO t VALUES (2)")  # cannot upgrade

        other = threading.Thread(target=insert_one)
        with db.for_writes(engine).connect() as first, first.begin():
            count = first.exec_driver_sql("SELECT count(*) FROM t").scalar()
            other.start()  # blocks in BEGIN IMMEDIATE until `first` commits
            first.exec_driver_sql("INSERT INTO t VALUES (3)")
        other.join(timeout=30)
        assert not other.is_alive()
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT count(*) FROM t").scalar() == count + 2
    finally:
        engine.dispose()
