"""The exchange's pre-trade checks, built from the policy (`control_plane.exchange.policy`).

Each check is a small class with a `name` and `__call__(order) -> str | None` (the engine's
`PreTradeCheck`): None lets the order through, a reason rejects it. A reason starts with the
check's name and says by how much the order failed. `checks_from_policy` builds the list the
engine runs, in this order:

1. `Throttle` — a token bucket per market (`throttle` in the policy). It runs first, so a
   flood is refused before the costlier checks touch the store; every placement that reaches
   it takes a token, also one a later check rejects.
2. `SocFeasibility` — can the delivering site physically deliver the order (DESIGN 5)?

There is no maximum-order-size check: the market's `max_quantity_mw` is enforced by the
engine's validation (an `InvalidQuantityError`, nothing stored).

**SoC feasibility, energy-based.** For an order with a `site` (without one it is a purely
financial position and passes, unless `soc.require_site`):

- stored energy now E0 = SoC % x capacity (the latest reading; refused, failing closed, if the
  site is unknown, has no capacity, power rating or SoC reading, or the reading is older than
  `soc.max_telemetry_age_s`);
- per delivery quarter q from the one running now up to and including the order's period, the
  site's committed net power P_q (MW, > 0 charging) = its orders' filled MW (BUY +, SELL -;
  this is its trades: an order's fill is the sum of its trades, and a cancelled order still
  counts with what it traded) + the remaining MW of its *open* orders of the order's direction
  (worst case: they may still fill; open orders of the other direction may not, so they do not
  count in the order's favour). One battery has one setpoint, so buys and sells of the same
  quarter net before the efficiencies apply;
- a quarter's energy change is P_q x h x eta_charge when charging, P_q x h / eta_discharge
  when discharging; projected energy E = E0 + the sum over the quarters;
- BUY is feasible if E with the order <= max_pct x capacity, SELL if E with the order >=
  min_pct x capacity. With nothing opposite committed, the order's own effect is exactly
  MW x h x eta_charge (BUY) or MW x h / eta_discharge (SELL);
- power: in every quarter of the order, order MW + committed MW of its direction must not
  exceed the site's max charge (BUY) / discharge (SELL) power.

Quarters after the order's period are not projected: orders for them were checked when
placed, with the commitments known then. Arithmetic is in `Decimal`, so an order exactly at a
limit passes and 1 kW more fails.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Final, Protocol

from control_plane.exchange.models import (
    QUARTER_MINUTES,
    DeliveryPeriod,
    Order,
    Side,
)
from control_plane.exchange.policy import Policy
from control_plane.exchange.service import Clock, PreTradeCheck, utc_now

__all__ = [
    "CommittedEnergy",
    "MemorySiteStates",
    "QuarterCommitment",
    "SiteState",
    "SiteStates",
    "SocFeasibility",
    "Throttle",
    "checks_from_policy",
    "site_commitments",
]

_ZERO: Final = Decimal(0)
_KILO: Final = Decimal(1000)


@dataclass(frozen=True, slots=True)
class SiteState:
    """What the SoC check needs to know about a site; None = not known (the check refuses)."""

    capacity_kwh: float | None
    soc_pct: float | None
    measured_at: datetime | None
    """When `soc_pct` was measured (timezone-aware)."""
    max_charge_kw: float | None
    max_discharge_kw: float | None


class SiteStates(Protocol):
    """The latest state of a site (the plane's fleet implements it); None = unknown site."""

    def site_state(self, site_id: str) -> SiteState | None: ...


class CommittedEnergy(Protocol):
    """A site's committing orders; `Exchange` and every `OrderStore` provide it."""

    def site_orders(
        self, *, site: str, delivery_from: datetime, delivery_to: datetime
    ) -> list[Order]: ...


class MemorySiteStates:
    """`SiteStates` from a dict: for tests, and for a plane without a fleet."""

    def __init__(self, states: dict[str, SiteState] | None = None) -> None:
        self.states: dict[str, SiteState] = dict(states or {})

    def site_state(self, site_id: str) -> SiteState | None:
        return self.states.get(site_id)


# -- throttle ---------------------------------------------------------------------------------


class Throttle:
    """Token bucket per market: `burst` placements at once, refilled at `orders_per_second`."""

    name = "throttle"

    def __init__(self, policy: Policy, clock: Clock = utc_now) -> None:
        self._policy = policy.throttle
        self._clock = clock
        self._buckets: dict[str, tuple[float, datetime]] = {}
        """market -> (tokens, when they were counted)."""
        self._lock = threading.Lock()

    def __call__(self, order: Order) -> str | None:
        rate = self._policy.rate(order.market)
        now = self._clock()
        with self._lock:
            tokens, then = self._buckets.get(order.market, (float(rate.burst), now))
            # a clock that steps back refills nothing (and takes nothing away)
            elapsed = max((now - then).total_seconds(), 0.0)
            tokens = min(float(rate.burst), tokens + elapsed * rate.orders_per_second)
            if tokens >= 1.0:
                self._buckets[order.market] = (tokens - 1.0, now)
                return None
            self._buckets[order.market] = (tokens, now)
        retry_s = (1.0 - tokens) / rate.orders_per_second
        return (
            f"throttle: market {order.market} allows {rate.orders_per_second:g} orders/s "
            f"(burst {rate.burst}); retry in {max(retry_s, 0.01):.2f} s"
        )


# -- SoC feasibility --------------------------------------------------------------------------


@dataclass(slots=True)
class QuarterCommitment:
    filled_mw: Decimal = _ZERO  # signed: BUY +, SELL -
    open_buy_mw: Decimal = _ZERO
    open_sell_mw: Decimal = _ZERO

    def committed_mw(self, side: Side) -> Decimal:
        """Net charging power (> 0) counting the open orders of `side`, worst case."""
        if side is Side.BUY:
            return self.filled_mw + self.open_buy_mw
        return self.filled_mw - self.open_sell_mw


def site_commitments(
    committed: CommittedEnergy, *, site: str, start: datetime, end: datetime
) -> dict[datetime, QuarterCommitment]:
    """Per quarter start in [start, end) (`start` on a quarter): the site's filled MW (BUY +,
    SELL -) and its open orders' remaining MW per side, from one read of its orders. The SoC
    and the grid capacity checks both count committed power this way."""
    quarters: dict[datetime, QuarterCommitment] = {}
    moment = start
    while moment < end:
        quarters[moment] = QuarterCommitment()
        moment += timedelta(minutes=QUARTER_MINUTES)
    for other in committed.site_orders(site=site, delivery_from=start, delivery_to=end):
        for q in other.delivery.quarters():
            acc = quarters.get(q.start)
            if acc is None:
                continue
            sign = 1 if other.side is Side.BUY else -1
            acc.filled_mw += sign * other.filled_mw
            if other.is_open and other.side is Side.BUY:
                acc.open_buy_mw += other.remaining_mw
            elif other.is_open:
                acc.open_sell_mw += other.remaining_mw
    return quarters


class SocFeasibility:
    """Refuses an order its site cannot deliver within the SoC window and power rating."""

    name = "soc_feasibility"

    def __init__(
        self,
        policy: Policy,
        *,
        sites: SiteStates,
        committed: CommittedEnergy,
        clock: Clock = utc_now,
    ) -> None:
        soc = policy.soc
        self._policy = soc
        self._min = _dec(soc.min_pct) / 100
        self._max = _dec(soc.max_pct) / 100
        self._eta_c = _dec(soc.charge_efficiency)
        self._eta_d = _dec(soc.discharge_efficiency)
        self._max_age = timedelta(seconds=soc.max_telemetry_age_s)
        self._sites = sites
        self._committed = committed
        self._clock = clock

    def __call__(self, order: Order) -> str | None:
        if order.site is None:
            if self._policy.require_site:
                return (
                    f"{self.name}: the order names no delivering site and the policy requires "
                    "one (soc.require_site): set the order's site"
                )
            return None
        site = order.site
        now = self._clock().astimezone(UTC)
        state = self._sites.site_state(site)
        refused = self._unusable(site, state, now)
        if refused is not None:
            return refused
        assert state is not None and state.capacity_kwh is not None  # noqa: S101 (_unusable)
        assert state.soc_pct is not None  # noqa: S101
        capacity = _dec(state.capacity_kwh) / _KILO
        stored = _dec(state.soc_pct) / 100 * capacity
        quarters = self._commitments(order, now)
        side, mw, hours = order.side, order.quantity_mw, order.delivery.duration_h
        power = self._power_reason(order, state, quarters)
        if power is not None:
            return power

        without = sum((self._energy(q.committed_mw(side)) for q in quarters.values()), _ZERO)
        mine = {q.start for q in order.delivery.quarters()}
        sign = 1 if side is Side.BUY else -1
        with_order = sum(
            (
                self._energy(q.committed_mw(side) + (sign * mw if start in mine else _ZERO))
                for start, q in quarters.items()
            ),
            _ZERO,
        )
        needed = abs(with_order - without)
        context = (
            f"(SoC {_pct(_dec(state.soc_pct))} % of {_fmt(capacity)} MWh, "
            f"{_fmt(without, 3, sign=True)} MWh already committed)"
        )
        what = f"{side.value} {_fmt(mw)} MW for {_fmt(hours, 2)} h"
        if side is Side.BUY:
            limit = self._max * capacity
            room = limit - stored - without
            if stored + with_order > limit:
                return (
                    f"{self.name}: {what} needs {_fmt(needed)} MWh of headroom below max SoC "
                    f"{_pct(self._max * 100)} % but site {site} has {_fmt(room)} MWh "
                    f"{context}; short by {_kwh(needed - room)}"
                )
        else:
            limit = self._min * capacity
            room = stored + without - limit
            if stored + with_order < limit:
                return (
                    f"{self.name}: {what} needs {_fmt(needed)} MWh above min SoC "
                    f"{_pct(self._min * 100)} % but site {site} has {_fmt(room)} MWh "
                    f"{context}; short by {_kwh(needed - room)}"
                )
        return None

    def _unusable(self, site: str, state: SiteState | None, now: datetime) -> str | None:
        """Why the site's state cannot be trusted (fail closed), or None."""
        if state is None:
            return f"{self.name}: site {site} is unknown to the plane (no state reported)"
        missing = [
            label
            for label, value in (
                ("capacity", state.capacity_kwh),
                ("max charge power", state.max_charge_kw),
                ("max discharge power", state.max_discharge_kw),
            )
            if value is None or not value > 0
        ]
        if missing:
            return f"{self.name}: site {site} has no known {' or '.join(missing)}"
        if state.soc_pct is None or state.measured_at is None:
            return f"{self.name}: site {site} has no SoC reading"
        if state.measured_at.tzinfo is None:
            return f"{self.name}: site {site}'s SoC reading has a naive timestamp"
        age = (now - state.measured_at).total_seconds()
        if age > self._max_age.total_seconds():
            return (
                f"{self.name}: site {site}'s SoC reading is {age:.0f} s old (limit "
                f"{self._policy.max_telemetry_age_s:g} s, soc.max_telemetry_age_s)"
            )
        return None

    def _commitments(self, order: Order, now: datetime) -> dict[datetime, QuarterCommitment]:
        """Per quarter start from the running quarter to the order's end: what is committed."""
        assert order.site is not None  # noqa: S101
        return site_commitments(
            self._committed, site=order.site, start=_quarter_start(now), end=order.delivery.end
        )

    def _energy(self, net_mw: Decimal) -> Decimal:
        """Stored-energy change (MWh) of one quarter at net power `net_mw` (> 0 charging)."""
        energy = net_mw * Decimal("0.25")
        return energy * self._eta_c if energy > 0 else energy / self._eta_d

    def _power_reason(
        self, order: Order, state: SiteState, quarters: dict[datetime, QuarterCommitment]
    ) -> str | None:
        side = order.side
        rating_kw = state.max_charge_kw if side is Side.BUY else state.max_discharge_kw
        assert rating_kw is not None  # noqa: S101
        rating = _dec(rating_kw) / _KILO
        sign = 1 if side is Side.BUY else -1
        worst: tuple[Decimal, DeliveryPeriod] | None = None
        for q in order.delivery.quarters():
            committed = sign * quarters[q.start].committed_mw(side)  # in the order's direction
            if worst is None or committed > worst[0]:
                worst = committed, q
        assert worst is not None  # noqa: S101
        committed, quarter = worst
        if order.quantity_mw + committed <= rating:
            return None
        verb = "charge" if side is Side.BUY else "discharge"
        free = rating - committed
        return (
            f"{self.name}: {side.value} {_fmt(order.quantity_mw)} MW exceeds site "
            f"{order.site}'s free {verb} power of {_fmt(free)} MW in {quarter.product_id} "
            f"(max {verb} {_fmt(rating)} MW, {_fmt(committed)} MW already committed); "
            f"over by {_fmt((order.quantity_mw - free) * _KILO, 0)} kW"
        )


def checks_from_policy(
    policy: Policy,
    *,
    sites: SiteStates,
    committed: CommittedEnergy,
    clock: Clock = utc_now,
) -> list[PreTradeCheck]:
    """The pre-trade checks of `policy`, in the order the engine must run them.

    `committed` is the exchange's store (or the `Exchange` itself): the checks run under the
    engine's lock, when the store holds every committed placement.
    """
    checks: Sequence[PreTradeCheck] = (
        Throttle(policy, clock),
        SocFeasibility(policy, sites=sites, committed=committed, clock=clock),
    )
    return list(checks)


# -- helpers ----------------------------------------------------------------------------------


def _dec(value: float) -> Decimal:
    """A float as the Decimal of its shortest repr (0.95 -> Decimal('0.95'))."""
    return Decimal(repr(float(value)))


def _quarter_start(now: datetime) -> datetime:
    return now.replace(minute=now.minute - now.minute % QUARTER_MINUTES, second=0, microsecond=0)


def _fmt(value: Decimal, places: int = 3, *, sign: bool = False) -> str:
    value = value.quantize(Decimal(1).scaleb(-places)) + 0  # + 0: no "-0.000"
    return f"{value:{'+' if sign else ''}.{places}f}"


def _pct(value: Decimal) -> str:
    """A percentage without trailing zeros: 90, 84.8."""
    return f"{value.quantize(Decimal('0.1')).normalize():f}"


def _kwh(mwh: Decimal) -> str:
    """A small energy in kWh, as precise as it needs (1 kW over for 0.25 h = 0.25 kWh)."""
    kwh = (mwh * _KILO).quantize(Decimal("0.001")).normalize()
    return f"{kwh:f} kWh"
