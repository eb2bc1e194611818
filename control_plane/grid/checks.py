"""The exchange's pre-trade grid check: a site under a power constraint cannot be traded
beyond it.

`GridCapacity(limits=..., committed=store)` is a `PreTradeCheck` (`name`, `__call__(order)
-> str | None`), run by the engine under its lock in a worker thread. An order without a site
is financial and passes. For an order with a site, in every quarter-hour of its delivery:

- the limit is the tightest active constraint on the site or its area (`GridService.limits`;
  maintenance = 0 kW);
- the site's committed net power P (MW, > 0 charging) = its orders' filled MW (BUY +, SELL -)
  + the remaining MW of its open orders of the order's direction (worst case: they may still
  fill), read from the exchange's order store like the SoC check reads it;
- a BUY passes if P + MW <= limit, a SELL if P - MW >= -limit. One connection carries the
  net power, so an order that reduces the flow (selling while charging is committed) passes.

Decimal arithmetic: an order exactly at the limit passes, one kW more fails, and the reason
names the constraint, the quarter, the limit, the committed power and the excess.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Final, Protocol

from control_plane.exchange.checks import CommittedEnergy, site_commitments
from control_plane.exchange.models import Order, Side

from .service import ActiveLimit

_KILO: Final = Decimal(1000)

Limits = Callable[[str, datetime, datetime], list[ActiveLimit]]


class _HasLimits(Protocol):
    def limits(self, site_id: str, start: datetime, end: datetime) -> list[ActiveLimit]: ...


class GridCapacity:
    """Refuses an order that would push its site beyond an active grid constraint."""

    name = "grid_capacity"

    def __init__(self, *, grid: _HasLimits, committed: CommittedEnergy) -> None:
        self._grid = grid
        self._committed = committed

    def __call__(self, order: Order) -> str | None:
        if order.site is None:
            return None
        site = order.site
        delivery = order.delivery
        limits = self._grid.limits(site, delivery.start, delivery.end)
        if not limits:
            return None
        quarters = site_commitments(
            self._committed, site=site, start=delivery.start, end=delivery.end
        )
        sign = 1 if order.side is Side.BUY else -1
        for quarter in delivery.quarters():
            q_start, q_end = quarter.start, quarter.end
            active = [a for a in limits if a.constraint.spec.overlaps(q_start, q_end)]
            if not active:
                continue
            tightest = min(active, key=lambda a: a.limit_kw)
            committed = quarters[q_start].committed_mw(order.side)
            # in the order's direction, kW
            before_kw = sign * committed * _KILO
            after_kw = before_kw + order.quantity_mw * _KILO
            if after_kw > tightest.limit_kw:
                verb = "charging" if order.side is Side.BUY else "discharging"
                return (
                    f"{self.name}: {order.side.value} {_fmt(order.quantity_mw)} MW for site "
                    f"{site} in {quarter.product_id} would mean {_fmt(after_kw, 0)} kW "
                    f"{verb}, beyond the {_fmt(tightest.limit_kw, 0)} kW allowed by "
                    f"{tightest.constraint.describe()} ({_fmt(before_kw, 0)} kW already "
                    f"committed); over by {_fmt(after_kw - tightest.limit_kw, 0)} kW"
                )
        return None


def _fmt(value: Decimal, places: int = 3) -> str:
    value = value.quantize(Decimal(1).scaleb(-places)) + 0
    return f"{value:.{places}f}"
