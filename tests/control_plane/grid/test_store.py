"""Grid constraints in SQLite and PostgreSQL: CRUD, validity windows, exact limits."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from control_plane.grid.models import (
    ConstraintKind,
    ConstraintSpec,
    InvalidConstraintError,
    UnknownConstraintError,
)
from control_plane.grid.store import GridStore

T0 = datetime(2025, 11, 3, 8, 0, tzinfo=UTC)
H = timedelta(hours=1)


def spec(**kw) -> ConstraintSpec:
    base = dict(
        kind=ConstraintKind.CAPACITY_LIMIT,
        site_id="s1",
        limit_kw=Decimal("250.5"),
        valid_from=T0,
        valid_to=T0 + 2 * H,
        reason="DSO transformer work",
    )
    base.update(kw)
    return ConstraintSpec(**base)


@pytest.fixture
def store(engine) -> GridStore:
    s = GridStore(engine)
    assert s.migrate() == [1]
    assert s.migrate() == []
    return s


def test_crud_round_trips_exactly(store):
    created = store.add(spec(), now=T0)
    assert created.spec == spec()
    assert created.spec.limit_kw == Decimal("250.5")
    assert store.get(created.constraint_id) == created
    changed = store.replace(created.constraint_id, spec(limit_kw=Decimal(100)), now=T0 + H)
    assert changed.spec.limit_kw == Decimal(100) and changed.updated_at == T0 + H
    assert changed.created_at == T0
    assert store.delete(created.constraint_id) == changed
    with pytest.raises(UnknownConstraintError, match=f"no grid constraint {created.constraint_id}"):
        store.get(created.constraint_id)
    with pytest.raises(UnknownConstraintError):
        store.replace(created.constraint_id, spec(), now=T0)


def test_windows_targets_and_kinds(store):
    a = store.add(spec(), now=T0)  # s1, T0 .. T0+2h
    b = store.add(
        spec(kind=ConstraintKind.MAINTENANCE, limit_kw=None, valid_from=T0 + 3 * H, valid_to=None),
        now=T0,
    )  # s1, open-ended
    c = store.add(spec(site_id=None, area="AT", valid_from=T0 - H), now=T0)
    ids = lambda found: [x.constraint_id for x in found]  # noqa: E731
    assert ids(store.list()) == [c.constraint_id, a.constraint_id, b.constraint_id]
    # [T0+2h, T0+3h): a ended (valid_to exclusive), b not begun, c ended
    assert store.list(start=T0 + 2 * H, end=T0 + 3 * H) == []
    assert ids(store.list(start=T0 + 100 * H, end=T0 + 101 * H)) == [b.constraint_id]
    assert ids(store.list(start=T0, end=T0 + H, site_ids=["s1"])) == [a.constraint_id]
    assert ids(store.list(start=T0, end=T0 + H, site_ids=["s1"], areas=["AT"])) == [
        c.constraint_id,
        a.constraint_id,
    ]
    assert ids(store.list(kind=ConstraintKind.MAINTENANCE)) == [b.constraint_id]
    assert b.spec.effective_limit_kw == Decimal(0)


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"area": "AT"}, "exactly one of site_id"),
        ({"site_id": None}, "exactly one of site_id"),
        ({"valid_to": T0}, "must be after valid_from"),
        ({"valid_from": datetime(2025, 11, 3, 8)}, "must carry a timezone"),
        ({"limit_kw": None}, "capacity_limit needs limit_kw"),
        ({"limit_kw": Decimal(-1)}, "limit_kw must be 0"),
        ({"kind": ConstraintKind.MAINTENANCE}, "maintenance constraint takes no limit_kw"),
    ],
)
def test_invalid_constraints_say_what_is_wrong(kw, message):
    with pytest.raises(InvalidConstraintError, match=message):
        spec(**kw)


def test_redispatch_without_limit_is_informational():
    s = spec(kind=ConstraintKind.REDISPATCH, limit_kw=None)
    assert s.effective_limit_kw is None
