"""The price store: day-ahead prices of every zone and source, with their revisions, on the
plane's shared engine (SQLite or PostgreSQL; SQLAlchemy Core, migrations via control_plane.db).

Two tables:

- `market_prices`: the current value per key (zone, source, resolution, sequence, delivery
  start), with its flag, the revision number and when it was first and last stored;
- `market_price_revisions`: every value a key ever had, numbered from 1, each with the fetch
  time it arrived (`valid_from`) and the one that replaced it (`valid_to`, NULL = current).

`upsert(points, fetched_at)` compares each point with the current value: a new key is inserted
(revision 1), a different price or flag is a revision (the current row is updated, the old
value stays in the history), the same price and flag changes nothing (a feed re-fetching the
same window every five minutes writes nothing). Prices compare equal within 1e-9 EUR/MWh: the
sources publish at most two decimals, and a unit conversion may leave float noise.

Reading (`prices`, the `PriceHistory` protocol of the forecasts and the optimiser): the points
of a zone whose delivery starts in [start, end), oldest first, one per interval. When several
sources have the same interval the **source priority** decides: by default
`entsoe > awattar > file` (the part of the source name before `:`, so `file:be.csv` is a
`file`; families not in the list come after it, alphabetically, so `demo:...` comes last);
configurable per store (the plane's `market_source_priority`). Within
a source, sequence `SDAC` (the EU-wide auction) wins over an unnamed one, which wins over any
other (e.g. `EXAA`). With `resolution=None` the series mixes no overlapping intervals: for each
stretch of time the finest resolution stored is used (15-minute data since October 2025,
hourly before), so a consumer never sees one hour twice.

Times are `*_unix_ms` BIGINT, as in the fleet store. Blocking calls: the async callers run
them in a worker thread. A single writer per zone is expected (the plane's feed); two replicas
inserting the same new key at the same moment make one transaction fail, and its feed run is
retried later.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, NamedTuple

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from control_plane import db
from control_plane.db import Migration, migrate

from .models import PricePoint, Resolution

__all__ = [
    "DEFAULT_SOURCE_PRIORITY",
    "MIGRATIONS",
    "PriceRevision",
    "PriceStore",
    "UpsertResult",
    "source_family",
]

SERVICE = "market"
DEFAULT_SOURCE_PRIORITY: Final = ("entsoe", "awattar", "file")
SEQUENCE_PRIORITY: Final = ("SDAC", "")
PRICE_TOLERANCE_EUR_PER_MWH: Final = 1e-9
_QUARTER_MS: Final = 15 * 60 * 1000

metadata = sa.MetaData()

_KEY = ("zone", "source", "resolution", "sequence", "start_unix_ms")


def _key_columns() -> list[sa.Column[Any]]:
    return [
        sa.Column("zone", sa.String(32), primary_key=True),
        sa.Column("source", sa.String(128), primary_key=True),
        sa.Column("resolution", sa.String(8), primary_key=True),
        sa.Column("sequence", sa.String(32), primary_key=True),
        sa.Column("start_unix_ms", sa.BigInteger, primary_key=True, autoincrement=False),
    ]


prices_table = sa.Table(
    "market_prices",
    metadata,
    *_key_columns(),
    sa.Column("price_eur_per_mwh", sa.Float, nullable=False),
    sa.Column("flag", sa.Text, nullable=False, server_default=""),
    sa.Column("revision", sa.Integer, nullable=False),
    sa.Column("first_stored_unix_ms", sa.BigInteger, nullable=False),
    sa.Column("updated_unix_ms", sa.BigInteger, nullable=False),
    sa.Index("ix_market_prices_zone_start", "zone", "start_unix_ms"),
)

revisions_table = sa.Table(
    "market_price_revisions",
    metadata,
    *_key_columns(),
    sa.Column("revision", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("price_eur_per_mwh", sa.Float, nullable=False),
    sa.Column("flag", sa.Text, nullable=False, server_default=""),
    sa.Column("valid_from_unix_ms", sa.BigInteger, nullable=False),
    sa.Column("valid_to_unix_ms", sa.BigInteger),
    sa.Index("ix_market_price_revisions_zone_start", "zone", "start_unix_ms"),
)


def _create_v1(conn: Connection) -> None:
    metadata.create_all(conn, checkfirst=True)


MIGRATIONS: tuple[Migration, ...] = (Migration(1, "market prices and revisions", _create_v1),)


class UpsertResult(NamedTuple):
    inserted: int
    revised: int
    unchanged: int


@dataclass(frozen=True, slots=True, kw_only=True)
class PriceRevision:
    """One value a stored price had; `valid_to` None = the current one."""

    zone: str
    source: str
    resolution: Resolution
    sequence: str
    start: datetime
    revision: int
    price_eur_per_mwh: float
    flag: str
    valid_from: datetime
    valid_to: datetime | None


def source_family(source: str) -> str:
    """`file:be.csv` -> `file`; `entsoe` -> `entsoe`."""
    return source.split(":", 1)[0]


def _ms(moment: datetime) -> int:
    if moment.tzinfo is None:
        raise ValueError(f"a timezone-aware time is needed, got {moment!r}")
    return round(moment.timestamp() * 1000)


def _from_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


class PriceStore:
    """Blocking persistence of prices; every method is one short transaction."""

    def __init__(
        self, engine: Engine, *, priority: Sequence[str] = DEFAULT_SOURCE_PRIORITY
    ) -> None:
        self.engine = engine
        self._writer = db.for_writes(engine)  # BEGIN IMMEDIATE on SQLite: see db.for_writes
        self.priority = tuple(priority)

    def migrate(self) -> list[int]:
        return migrate(self.engine, SERVICE, MIGRATIONS)

    # -- writing -------------------------------------------------------------------------

    def upsert(self, points: Iterable[PricePoint], fetched_at: datetime) -> UpsertResult:
        """Store the points: (inserted, revised, unchanged). A point repeated in the batch
        counts once, its last value wins."""
        batch: dict[tuple[str, str, str, str, int], PricePoint] = {}
        for p in points:
            batch[(p.zone, p.source, p.resolution.value, p.sequence, _ms(p.start))] = p
        if not batch:
            return UpsertResult(0, 0, 0)
        now_ms = _ms(fetched_at)
        inserted: list[dict[str, Any]] = []
        revised: list[tuple[dict[str, Any], int]] = []
        unchanged = 0
        with self._writer.begin() as conn:  # reads, then writes: take the lock first
            current = self._current(conn, batch)
            for key, p in batch.items():
                values = dict(zip(_KEY, key, strict=True))
                found = current.get(key)
                if found is None:
                    inserted.append(
                        {**values, "price_eur_per_mwh": p.price_eur_per_mwh, "flag": p.flag}
                    )
                    continue
                price, flag, revision = found
                same_price = abs(price - p.price_eur_per_mwh) <= PRICE_TOLERANCE_EUR_PER_MWH
                if same_price and flag == p.flag:
                    unchanged += 1
                    continue
                revised.append(
                    ({**values, "price_eur_per_mwh": p.price_eur_per_mwh, "flag": p.flag}, revision)
                )
            if inserted:
                conn.execute(
                    prices_table.insert(),
                    [
                        {
                            **row,
                            "revision": 1,
                            "first_stored_unix_ms": now_ms,
                            "updated_unix_ms": now_ms,
                        }
                        for row in inserted
                    ],
                )
                conn.execute(
                    revisions_table.insert(),
                    [{**row, "revision": 1, "valid_from_unix_ms": now_ms} for row in inserted],
                )
            if revised:
                self._revise(conn, revised, now_ms)
        return UpsertResult(len(inserted), len(revised), unchanged)

    def _current(
        self, conn: Connection, batch: dict[tuple[str, str, str, str, int], PricePoint]
    ) -> dict[tuple[str, str, str, str, int], tuple[float, str, int]]:
        """The stored (price, flag, revision) of the batch's keys, read by zone and time range."""
        found: dict[tuple[str, str, str, str, int], tuple[float, str, int]] = {}
        by_zone_source: dict[tuple[str, str], list[int]] = {}
        for zone_id, source, _, _, start_ms in batch:
            by_zone_source.setdefault((zone_id, source), []).append(start_ms)
        t = prices_table.c
        for (zone_id, source), starts in by_zone_source.items():
            rows = conn.execute(
                sa.select(
                    t.zone,
                    t.source,
                    t.resolution,
                    t.sequence,
                    t.start_unix_ms,
                    t.price_eur_per_mwh,
                    t.flag,
                    t.revision,
                ).where(
                    t.zone == zone_id,
                    t.source == source,
                    t.start_unix_ms >= min(starts),
                    t.start_unix_ms <= max(starts),
                )
            )
            for row in rows:
                key = (row.zone, row.source, row.resolution, row.sequence, row.start_unix_ms)
                if key in batch:
                    found[key] = (row.price_eur_per_mwh, row.flag, row.revision)
        return found

    def _revise(
        self, conn: Connection, revised: list[tuple[dict[str, Any], int]], now_ms: int
    ) -> None:
        def where(table: sa.Table) -> list[sa.ColumnElement[bool]]:
            return [table.c[name] == sa.bindparam(f"k_{name}") for name in _KEY]

        def keys(row: dict[str, Any]) -> dict[str, Any]:
            return {f"k_{name}": row[name] for name in _KEY}

        conn.execute(
            prices_table.update()
            .where(*where(prices_table))
            .values(
                price_eur_per_mwh=sa.bindparam("new_price"),
                flag=sa.bindparam("new_flag"),
                revision=sa.bindparam("new_revision"),
                updated_unix_ms=now_ms,
            ),
            [
                {
                    **keys(row),
                    "new_price": row["price_eur_per_mwh"],
                    "new_flag": row["flag"],
                    "new_revision": revision + 1,
                }
                for row, revision in revised
            ],
        )
        conn.execute(
            revisions_table.update()
            .where(*where(revisions_table), revisions_table.c.revision == sa.bindparam("old"))
            .values(valid_to_unix_ms=now_ms),
            [{**keys(row), "old": revision} for row, revision in revised],
        )
        conn.execute(
            revisions_table.insert(),
            [
                {**row, "revision": revision + 1, "valid_from_unix_ms": now_ms}
                for row, revision in revised
            ],
        )

    # -- reading -------------------------------------------------------------------------

    def prices(
        self,
        zone: str,
        start: datetime,
        end: datetime,
        resolution: Resolution | None = None,
        source: str | None = None,
    ) -> list[PricePoint]:
        """One point per interval starting in [start, end), oldest first (see the module doc:
        source priority, sequence, finest resolution when `resolution` is None). `source` is
        a full name (`file:be.csv`) or a family (`file`)."""
        t = prices_table.c
        query = sa.select(prices_table).where(
            t.zone == zone, t.start_unix_ms >= _ms(start), t.start_unix_ms < _ms(end)
        )
        if resolution is not None:
            query = query.where(t.resolution == resolution.value)
        if source is not None:
            query = query.where(
                sa.or_(t.source == source, t.source.startswith(source + ":", autoescape=True))
            )
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        best: dict[tuple[str, int], tuple[tuple[int, str, int, str], PricePoint]] = {}
        for row in rows:
            point = PricePoint(
                zone=row.zone,
                start=_from_ms(row.start_unix_ms),
                resolution=Resolution(row.resolution),
                price_eur_per_mwh=row.price_eur_per_mwh,
                source=row.source,
                sequence=row.sequence,
                flag=row.flag,
            )
            rank = (*self._source_rank(row.source), *_sequence_rank(row.sequence))
            slot = (row.resolution, row.start_unix_ms)
            held = best.get(slot)
            if held is None or rank < held[0]:
                best[slot] = (rank, point)
        chosen = [p for _, p in best.values()]
        if resolution is None:
            chosen = _finest_without_overlap(chosen)
        return sorted(chosen, key=lambda p: (p.start, p.resolution.minutes))

    def _source_rank(self, source: str) -> tuple[int, str]:
        family = source_family(source)
        if family in self.priority:
            return (self.priority.index(family), source)
        return (len(self.priority), source)

    def history(self, zone: str, start: datetime) -> list[PriceRevision]:
        """Every value stored for the intervals of `zone` starting at `start`: by source,
        resolution, sequence, then revision (oldest first)."""
        t = revisions_table.c
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(revisions_table)
                .where(t.zone == zone, t.start_unix_ms == _ms(start))
                .order_by(t.source, t.resolution, t.sequence, t.revision)
            ).all()
        return [
            PriceRevision(
                zone=row.zone,
                source=row.source,
                resolution=Resolution(row.resolution),
                sequence=row.sequence,
                start=_from_ms(row.start_unix_ms),
                revision=row.revision,
                price_eur_per_mwh=row.price_eur_per_mwh,
                flag=row.flag,
                valid_from=_from_ms(row.valid_from_unix_ms),
                valid_to=None if row.valid_to_unix_ms is None else _from_ms(row.valid_to_unix_ms),
            )
            for row in rows
        ]

    def count(self, zone: str, source: str | None = None) -> int:
        """How many intervals are stored for `zone` (and `source`, a name or a family)."""
        t = prices_table.c
        query = sa.select(sa.func.count()).select_from(prices_table).where(t.zone == zone)
        if source is not None:
            query = query.where(
                sa.or_(t.source == source, t.source.startswith(source + ":", autoescape=True))
            )
        with self.engine.connect() as conn:
            return int(conn.scalar(query) or 0)


def _sequence_rank(sequence: str) -> tuple[int, str]:
    if sequence in SEQUENCE_PRIORITY:
        return (SEQUENCE_PRIORITY.index(sequence), sequence)
    return (len(SEQUENCE_PRIORITY), sequence)


def _finest_without_overlap(points: list[PricePoint]) -> list[PricePoint]:
    """Finest resolution first; a coarser point only where it overlaps no point taken."""
    taken: set[int] = set()
    result = []
    for p in sorted(points, key=lambda p: (p.resolution.minutes, p.start)):
        first = _ms(p.start) // _QUARTER_MS
        quarters = range(first, first + max(1, p.resolution.minutes // 15))
        if any(q in taken for q in quarters):
            continue
        taken.update(quarters)
        result.append(p)
    return result
