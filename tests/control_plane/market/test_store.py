"""The price store on SQLite and PostgreSQL: upsert counts, revisions with history, source
priority, sequences, resolutions, flags, migrations."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from control_plane.market.models import PricePoint, Resolution
from control_plane.market.store import PriceStore, UpsertResult, prices_table, revisions_table

T0 = datetime(2025, 1, 1, tzinfo=UTC)
FETCH_1 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
FETCH_2 = datetime(2025, 1, 1, 13, 0, tzinfo=UTC)
FETCH_3 = datetime(2025, 1, 1, 14, 0, tzinfo=UTC)


def pt(
    hour: float,
    price: float,
    *,
    source: str = "entsoe",
    resolution: Resolution = Resolution.PT60M,
    sequence: str = "",
    flag: str = "",
    zone: str = "AT",
) -> PricePoint:
    return PricePoint(
        zone=zone,
        start=T0 + timedelta(hours=hour),
        resolution=resolution,
        price_eur_per_mwh=price,
        source=source,
        sequence=sequence,
        flag=flag,
    )


@pytest.fixture
def store(engine: Engine) -> PriceStore:
    s = PriceStore(engine)
    assert s.migrate() == [1]
    assert s.migrate() == []  # idempotent
    return s


def test_insert_then_same_prices_are_a_no_op(store: PriceStore) -> None:
    points = [pt(h, 50.0 + h) for h in range(24)]
    assert store.upsert(points, FETCH_1) == UpsertResult(24, 0, 0)
    assert store.upsert(points, FETCH_2) == UpsertResult(0, 0, 24)
    with store.engine.connect() as conn:
        assert conn.scalar(sa.select(sa.func.count()).select_from(revisions_table)) == 24
        stored = conn.execute(sa.select(prices_table.c.updated_unix_ms).distinct()).scalars()
        assert list(stored) == [round(FETCH_1.timestamp() * 1000)]  # the no-op wrote nothing
    got = store.prices("AT", T0, T0 + timedelta(days=1))
    assert [p.price_eur_per_mwh for p in got] == [50.0 + h for h in range(24)]
    assert got[0] == points[0]
    assert store.upsert([], FETCH_2) == UpsertResult(0, 0, 0)


def test_a_republished_different_price_is_a_revision_with_history(store: PriceStore) -> None:
    store.upsert([pt(0, 40.0), pt(1, 41.0)], FETCH_1)
    assert store.upsert([pt(0, 40.0), pt(1, -5.5)], FETCH_2) == UpsertResult(0, 1, 1)
    assert store.upsert([pt(1, 42.0, flag="checked")], FETCH_3) == UpsertResult(0, 1, 0)
    [current] = store.prices("AT", T0 + timedelta(hours=1), T0 + timedelta(hours=2))
    assert (current.price_eur_per_mwh, current.flag) == (42.0, "checked")
    revisions = store.history("AT", T0 + timedelta(hours=1))
    assert [(r.revision, r.price_eur_per_mwh, r.flag) for r in revisions] == [
        (1, 41.0, ""),
        (2, -5.5, ""),
        (3, 42.0, "checked"),
    ]
    assert [(r.valid_from, r.valid_to) for r in revisions] == [
        (FETCH_1, FETCH_2),
        (FETCH_2, FETCH_3),
        (FETCH_3, None),
    ]
    assert [r.revision for r in store.history("AT", T0)] == [1]  # hour 0 never changed
    assert store.history("AT", T0 + timedelta(hours=5)) == []


def test_a_price_within_float_noise_is_unchanged(store: PriceStore) -> None:
    store.upsert([pt(0, 82.0199966430664)], FETCH_1)
    assert store.upsert([pt(0, 82.0199966430664 + 1e-12)], FETCH_2) == UpsertResult(0, 0, 1)
    assert store.upsert([pt(0, 82.03)], FETCH_2) == UpsertResult(0, 1, 0)


def test_a_key_repeated_in_one_batch_counts_once_and_its_last_value_wins(
    store: PriceStore,
) -> None:
    assert store.upsert([pt(0, 1.0), pt(0, 2.0)], FETCH_1) == UpsertResult(1, 0, 0)
    assert [p.price_eur_per_mwh for p in store.prices("AT", T0, T0 + timedelta(hours=1))] == [2.0]


def test_source_priority_picks_one_price_per_interval(engine: Engine) -> None:
    store = PriceStore(engine)
    store.migrate()
    store.upsert(
        [
            pt(0, 10.0, source="file:at.csv"),
            pt(0, 11.0, source="awattar"),
            pt(0, 12.0, source="entsoe"),
            pt(1, 20.0, source="file:at.csv"),
            pt(1, 21.0, source="awattar"),
            pt(2, 30.0, source="demo:be-shape"),
            pt(2, 31.0, source="file:at.csv"),
            pt(3, 40.0, source="demo:be-shape"),
        ],
        FETCH_1,
    )
    day = (T0, T0 + timedelta(days=1))
    got = store.prices("AT", *day)
    assert [(p.source, p.price_eur_per_mwh) for p in got] == [
        ("entsoe", 12.0),
        ("awattar", 21.0),
        ("file:at.csv", 31.0),
        ("demo:be-shape", 40.0),  # an unlisted family comes after the listed ones
    ]
    assert [p.price_eur_per_mwh for p in store.prices("AT", *day, source="file")] == [
        10.0,
        20.0,
        31.0,
    ]
    assert [p.price_eur_per_mwh for p in store.prices("AT", *day, source="file:at.csv")] == [
        10.0,
        20.0,
        31.0,
    ]
    assert store.prices("AT", *day, source="file:at") == []  # a family is the part before ':'
    configured = PriceStore(engine, priority=("file", "entsoe"))
    assert [p.source for p in configured.prices("AT", *day)][:2] == ["file:at.csv", "file:at.csv"]
    assert store.count("AT") == 8 and store.count("AT", "file") == 3


def test_sequences_are_kept_apart_and_sdac_wins(store: PriceStore) -> None:
    store.upsert(
        [pt(0, 55.0, sequence="EXAA"), pt(0, 50.0, sequence="SDAC"), pt(1, 60.0, sequence="EXAA")],
        FETCH_1,
    )
    got = store.prices("AT", T0, T0 + timedelta(hours=2))
    assert [(p.sequence, p.price_eur_per_mwh) for p in got] == [("SDAC", 50.0), ("EXAA", 60.0)]
    assert store.count("AT") == 3


def test_resolutions_are_kept_apart_and_none_gives_the_finest_without_overlap(
    store: PriceStore,
) -> None:
    hourly = [pt(h, 100.0 + h) for h in range(4)]
    quarters = [pt(2 + q / 4, 200.0 + q, resolution=Resolution.PT15M) for q in range(8)]
    store.upsert(hourly + quarters, FETCH_1)
    window = (T0, T0 + timedelta(hours=4))
    assert len(store.prices("AT", *window, Resolution.PT60M)) == 4
    assert len(store.prices("AT", *window, Resolution.PT15M)) == 8
    mixed = store.prices("AT", *window)
    assert [(p.start.hour, p.start.minute, p.resolution) for p in mixed] == [
        (0, 0, Resolution.PT60M),
        (1, 0, Resolution.PT60M),
        *[(2 + q // 4, 15 * (q % 4), Resolution.PT15M) for q in range(8)],
    ]


def test_zone_range_and_flags(store: PriceStore) -> None:
    flag = "outside plausibility bounds -500 .. 4000 EUR/MWh"
    store.upsert([pt(0, 5000.0, flag=flag), pt(1, 1.0), pt(0, 9.0, zone="DE_LU")], FETCH_1)
    assert [p.flag for p in store.prices("AT", T0, T0 + timedelta(hours=2))] == [flag, ""]
    # [start, end): the interval starting at `end` is not included
    assert len(store.prices("AT", T0, T0 + timedelta(hours=1))) == 1
    assert [p.zone for p in store.prices("DE_LU", T0, T0 + timedelta(days=1))] == ["DE_LU"]
    assert store.prices("CH", T0, T0 + timedelta(days=1)) == []


def test_naive_times_are_refused(store: PriceStore) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        store.prices("AT", datetime(2025, 1, 1), T0)  # naive: the point of the test
