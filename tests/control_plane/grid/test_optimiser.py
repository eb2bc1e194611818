"""Grid constraints feed the optimiser: its battery's grid limit is clamped to them."""

from __future__ import annotations

from datetime import datetime

import pytest

from control_plane.exchange.checks import MemorySiteStates
from control_plane.optimiser.backtest import InMemoryPriceHistory
from control_plane.optimiser.service import OptimiseRequest, OptimiserService, SiteNotReadyError

from ..optimiser.test_service import NOW, SITE, UTC, Sink, quarter_prices, state


def service(limit_kw: float | None, seen: list[tuple[str, datetime, datetime]]) -> OptimiserService:
    history = InMemoryPriceHistory(quarter_prices(datetime(2025, 6, 2, 8, tzinfo=UTC), 24))

    def grid_limit(site: str, start: datetime, end: datetime) -> float | None:
        seen.append((site, start, end))
        return limit_kw

    return OptimiserService(
        sites=MemorySiteStates({SITE: state()}),
        prices=lambda: history,
        schedules=Sink(),
        clock=lambda: NOW,
        grid_limit_kw=grid_limit,
    )


async def test_plan_respects_the_constraint_over_its_horizon():
    seen: list[tuple[str, datetime, datetime]] = []
    stored = await service(120.0, seen).optimise(
        OptimiseRequest(site_id=SITE, zone="AT", horizon_hours=24)
    )
    assert seen == [
        (SITE, datetime(2025, 6, 2, 8, tzinfo=UTC), datetime(2025, 6, 3, 8, tzinfo=UTC))
    ]
    plan = stored.plan
    assert plan.problem.battery.grid_limit_kw == 120.0
    assert max(abs(p) for p in plan.power_kw) <= 120.0 + 1e-6
    assert max(abs(p) for p in plan.power_kw) > 100  # it still trades, up to the limit
    unconstrained = await service(None, []).optimise(
        OptimiseRequest(site_id=SITE, zone="AT", horizon_hours=24)
    )
    assert max(abs(p) for p in unconstrained.plan.power_kw) > 120.0


async def test_zero_limit_cannot_be_scheduled():
    with pytest.raises(SiteNotReadyError, match="grid constraint of 0 kW"):
        await service(0.0, []).optimise(OptimiseRequest(site_id=SITE, zone="AT", horizon_hours=4))
