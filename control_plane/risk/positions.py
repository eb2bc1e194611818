"""Open positions per portfolio and delivery quarter, from trades and scheduled dispatch,
marked to the latest prices of each market's bidding zone.

**Trades**: the exchange store's trades delivering from the running quarter on, summed per
(market, quarter) by `control_plane.exchange.exposure.portfolio_exposure` (the PositionBook's
arithmetic), so an hour block counts in its four quarters.

**Scheduled dispatch**: a site belongs to the portfolio (and market) of its newest exchange
order that names it (orders carry `site` and `portfolio`); a site that never traded has no
portfolio and is left out. The site's current schedule (newest version, not rejected,
superseded or expired) adds, per quarter, the energy it will discharge (+, long: energy the
portfolio will hold and sell) or charge (-, short: energy to buy). A quarter whose discharge
is already sold forward nets to zero: that is the hedge.

**Marks**: the zone's stored price for the delivery quarter (`delivery`), else the newest
stored price of the same quarter of the UTC day within `MARK_LOOKBACK` (`latest`), else none.
Mark-to-market PnL = proceeds - cost + traded energy x mark (schedules carry no cash).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Final, Protocol

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from control_plane.exchange.exposure import portfolio_exposure
from control_plane.exchange.models import QUARTER_MINUTES, DeliveryPeriod, Trade
from control_plane.exchange.store import orders as orders_table
from control_plane.fleet.models import ScheduleStatus
from control_plane.fleet.store import FleetStore
from control_plane.market.models import PricePoint
from control_plane.market.service import zone_of_market

from .history import slot_of
from .models import PortfolioPositions, PositionLine

__all__ = [
    "MARK_LOOKBACK",
    "Dispatch",
    "FleetDispatch",
    "NoDispatch",
    "PriceSource",
    "TradeSource",
    "build_positions",
    "quarter_start",
]

MARK_LOOKBACK: Final = timedelta(days=7)
_ZERO: Final = Decimal(0)
_KILO: Final = Decimal(1000)
_BLOCK_LEAD: Final = timedelta(minutes=45)
"""An hour block starting this long before the running quarter still delivers in it."""


class TradeSource(Protocol):
    """The exchange's store (`SqlOrderStore`) as far as risk reads it."""

    def list_trades(
        self,
        *,
        portfolio: str | None = None,
        delivery_from: datetime | None = None,
    ) -> list[Trade]: ...


class PriceSource(Protocol):
    """`PriceStore.prices` (or an in-memory history)."""

    def prices(self, zone: str, start: datetime, end: datetime) -> list[PricePoint]: ...


class Dispatch(Protocol):
    """Scheduled energy per (market, quarter start) of a portfolio's sites, MWh (+ discharge)."""

    def scheduled(self, portfolio: str, since: datetime) -> dict[tuple[str, datetime], Decimal]: ...

    def portfolios(self) -> set[str]: ...


class NoDispatch:
    """No fleet: positions come from trades only."""

    def scheduled(self, portfolio: str, since: datetime) -> dict[tuple[str, datetime], Decimal]:
        return {}

    def portfolios(self) -> set[str]:
        return set()


class FleetDispatch:
    """Schedules from the fleet store, sites mapped to portfolios by their newest order."""

    _OUT: Final = frozenset(
        {ScheduleStatus.REJECTED, ScheduleStatus.SUPERSEDED, ScheduleStatus.EXPIRED}
    )

    def __init__(self, fleet: FleetStore, exchange_engine: Engine) -> None:
        self._fleet = fleet
        self._engine = exchange_engine

    def _site_books(self) -> dict[str, tuple[str, str]]:
        """site -> (portfolio, market) of its newest order."""
        t = orders_table.c
        newest = (
            sa.select(t.site, sa.func.max(t.order_id).label("order_id"))
            .where(t.site.is_not(None))
            .group_by(t.site)
            .subquery()
        )
        query = sa.select(t.site, t.portfolio, t.market).join(
            newest, t.order_id == newest.c.order_id
        )
        with self._engine.connect() as conn:
            return {row.site: (row.portfolio, row.market) for row in conn.execute(query)}

    def portfolios(self) -> set[str]:
        return {portfolio for portfolio, _ in self._site_books().values()}

    def scheduled(self, portfolio: str, since: datetime) -> dict[tuple[str, datetime], Decimal]:
        out: dict[tuple[str, datetime], Decimal] = defaultdict(Decimal)
        for site, (owner, market) in self._site_books().items():
            if owner != portfolio:
                continue
            record = self._fleet.latest_schedule(site)
            if record is None or record.status in self._OUT:
                continue
            schedule = record.schedule
            if schedule.valid_until <= since:
                continue
            length = timedelta(minutes=schedule.interval_minutes)
            for interval in schedule.intervals:
                begin = max(interval.start, since, schedule.valid_from)
                end = min(interval.start + length, schedule.valid_until)
                mw = Decimal(repr(interval.power_kw)) / _KILO
                while begin < end:  # split the interval at quarter boundaries
                    quarter = quarter_start(begin)
                    piece_end = min(end, quarter + timedelta(minutes=QUARTER_MINUTES))
                    hours = Decimal((piece_end - begin).total_seconds()) / 3600
                    out[(market, quarter)] += mw * hours
                    begin = piece_end
        return dict(out)


def quarter_start(moment: datetime) -> datetime:
    utc = moment.astimezone(UTC)
    return utc.replace(minute=utc.minute - utc.minute % QUARTER_MINUTES, second=0, microsecond=0)


def build_positions(
    portfolio: str,
    *,
    now: datetime,
    trades: TradeSource,
    dispatch: Dispatch,
    prices: PriceSource | None,
    extra_trades: Iterable[Trade] = (),
) -> PortfolioPositions:
    """The portfolio's open positions from the running quarter on (module doc).

    `extra_trades` are added as if committed: the pre-trade check's worst-case fill."""
    inputs = load_inputs(portfolio, now=now, trades=trades, dispatch=dispatch)
    return positions_from(inputs, prices=prices, extra_trades=extra_trades)


@dataclass(frozen=True, slots=True)
class PositionInputs:
    """What positions are built from, read once: the portfolio's trades delivering from the
    running quarter on and its sites' scheduled energy (the pre-trade check builds the
    positions before and after an order from one read)."""

    portfolio: str
    now: datetime
    trades: tuple[Trade, ...]
    scheduled: dict[tuple[str, datetime], Decimal]


def load_inputs(
    portfolio: str, *, now: datetime, trades: TradeSource, dispatch: Dispatch
) -> PositionInputs:
    first = quarter_start(now)
    found = trades.list_trades(portfolio=portfolio, delivery_from=first - _BLOCK_LEAD)
    return PositionInputs(portfolio, now, tuple(found), dispatch.scheduled(portfolio, first))


def positions_from(
    inputs: PositionInputs, *, prices: PriceSource | None, extra_trades: Iterable[Trade] = ()
) -> PortfolioPositions:
    portfolio, now = inputs.portfolio, inputs.now
    first = quarter_start(now)
    exposure = portfolio_exposure(portfolio, [*inputs.trades, *extra_trades])
    lines: dict[tuple[str, datetime], list[Decimal]] = {}
    for pos in exposure.positions:
        if pos.delivery.start < first:
            continue
        lines[(pos.market, pos.delivery.start)] = [pos.net_energy_mwh, _ZERO, pos.net_cash_eur]
    for key, mwh in inputs.scheduled.items():
        if key[1] >= first and mwh != 0:
            lines.setdefault(key, [_ZERO, _ZERO, _ZERO])[1] += mwh
    marks = _marks(sorted(lines), prices)
    result = []
    for (market, start), (traded, scheduled, cash) in sorted(lines.items()):
        if traded == 0 and scheduled == 0 and cash == 0:
            continue
        mark, source = marks.get((market, start), (None, "none"))
        result.append(
            PositionLine(
                market=market,
                zone=zone_of_market(market),
                delivery=DeliveryPeriod.quarter(start),
                traded_mwh=traded,
                scheduled_mwh=scheduled,
                net_cash_eur=cash,
                mark_eur_per_mwh=mark,
                mark_source=source,
            )
        )
    return PortfolioPositions(portfolio, now, tuple(result))


def _marks(
    keys: list[tuple[str, datetime]], prices: PriceSource | None
) -> dict[tuple[str, datetime], tuple[Decimal, str]]:
    if prices is None or not keys:
        return {}
    by_zone: dict[str, list[tuple[str, datetime]]] = defaultdict(list)
    for market, start in keys:
        zone = zone_of_market(market)
        if zone is not None:
            by_zone[zone].append((market, start))
    out: dict[tuple[str, datetime], tuple[Decimal, str]] = {}
    for zone, wanted in by_zone.items():
        first = min(start for _, start in wanted)
        last = max(start for _, start in wanted) + timedelta(minutes=QUARTER_MINUTES)
        exact: dict[datetime, float] = {}
        latest: dict[int, float] = {}  # slot -> newest price before `last`
        for point in prices.prices(zone, first - MARK_LOOKBACK, last):
            for offset in range(0, point.resolution.minutes, QUARTER_MINUTES):
                moment = point.start + timedelta(minutes=offset)
                exact[moment] = point.price_eur_per_mwh
                latest[slot_of(moment)] = point.price_eur_per_mwh  # points come oldest first
        for market, start in wanted:
            if start in exact:
                out[(market, start)] = (_money(exact[start]), "delivery")
            elif slot_of(start) in latest:
                out[(market, start)] = (_money(latest[slot_of(start)]), "latest")
    return out


def _money(price: float) -> Decimal:
    return Decimal(repr(price)).quantize(Decimal("0.001"))
