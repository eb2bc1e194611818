"""The auto-submission switch store on SQLite and PostgreSQL: upsert, read, list, migrations."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy.engine import Engine

from control_plane.optimiser.store import AutoSubmitStore, AutoSubmitSwitch

T = datetime(2025, 11, 3, 8, 0, 0, 123000, tzinfo=UTC)


def test_switches_are_created_replaced_and_listed(engine: Engine) -> None:
    store = AutoSubmitStore(engine)
    assert store.migrate() == [1]
    assert store.migrate() == []  # idempotent
    assert store.get("desk") is None
    assert store.list() == []

    on = AutoSubmitSwitch(portfolio="desk", enabled=True, updated_at=T, updated_by="risk (api_key)")
    store.set(on)
    store.set(AutoSubmitSwitch(portfolio="alpha", enabled=False, updated_at=T, updated_by="a"))
    assert store.get("desk") == on  # millisecond times round-trip exactly
    assert [s.portfolio for s in store.list()] == ["alpha", "desk"]

    later = T + timedelta(hours=1)
    off = AutoSubmitSwitch(portfolio="desk", enabled=False, updated_at=later, updated_by="b")
    store.set(off)
    assert store.get("desk") == off
    assert len(store.list()) == 2  # replaced, not added


def test_a_reopened_store_keeps_the_switches(engine: Engine) -> None:
    first = AutoSubmitStore(engine)
    first.migrate()
    first.set(AutoSubmitSwitch(portfolio="desk", enabled=True, updated_at=T, updated_by="x"))
    second = AutoSubmitStore(engine)
    assert second.migrate() == []
    found = second.get("desk")
    assert found is not None and found.enabled and found.updated_by == "x"
