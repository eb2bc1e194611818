"""The grid service with a fake load/flow source: latest complete values, net tie-line flow,
caching, errors shown with their reason, and alerts to the sink."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from control_plane.fleet.store import FleetStore
from control_plane.grid.models import FlowPoint, LoadPoint, TieLine
from control_plane.grid.service import GridConfig, GridService
from control_plane.grid.store import GridStore
from control_plane.market.models import SourceError

NOW = datetime(2025, 11, 3, 8, 20, tzinfo=UTC)
Q = timedelta(minutes=15)


class FakeSource:
    name = "fake"

    def __init__(self) -> None:
        self.calls = 0
        self.fail = False

    async def load(self, zone_code, start, end):
        self.calls += 1
        if self.fail:
            raise SourceError("ENTSO-E: HTTP 503 after 5 attempt(s)", retryable=True)
        base = datetime(2025, 11, 3, 7, 45, tzinfo=UTC)
        # 08:15 is still running at 08:20: the latest complete quarter is 08:00
        return [
            LoadPoint(zone=zone_code, start=base + i * Q, minutes=15, load_mw=6000 + i)
            for i in range(3)
        ]

    async def flows(self, from_zone, to_zone, start, end):
        self.calls += 1
        mw = 700.0 if from_zone == "AT" else 250.0
        at = datetime(2025, 11, 3, 7, tzinfo=UTC)
        return [FlowPoint(from_zone=from_zone, to_zone=to_zone, start=at, minutes=60, flow_mw=mw)]

    async def aclose(self):
        return None


@pytest.fixture
async def grid(engine):
    fleet = FleetStore(engine)
    fleet.migrate()
    clock = {"now": NOW}
    alerts: list[tuple[str, dict]] = []
    service = GridService(
        store=GridStore(engine),
        fleet_store=fleet,
        config=GridConfig(default_area="AT", tie_lines=(TieLine(a="AT", b="CZ"),)),
        source=FakeSource(),
        clock=lambda: clock["now"],
        on_alert=lambda t, d: alerts.append((t, dict(d))),
    )
    await service.open()
    return service, clock, alerts


async def test_load_flows_cache_and_errors(grid):
    service, clock, _ = grid
    state = await service.state()
    (area,) = state.areas
    assert (area.load.status, area.load.value_mw, area.load.at) == (
        "ok",
        6001,
        datetime(2025, 11, 3, 8, tzinfo=UTC),
    )
    (line,) = state.tie_lines
    assert line.flow.value_mw == 450.0  # AT->CZ 700 minus CZ->AT 250
    calls = service.source.calls
    await service.state()
    assert service.source.calls == calls  # cached
    service.source.fail = True
    clock["now"] = NOW + timedelta(minutes=16)  # past the refresh
    (area,) = (await service.state()).areas
    assert area.load.status == "error" and "HTTP 503" in area.load.detail
    assert area.load.value_mw is None


async def test_telemetry_events_raise_alerts(grid):
    service, _, alerts = grid
    service.observe_telemetry({"site_id": "s1", "timestamp": NOW, "grid_frequency_hz": 50.25})
    service.observe_telemetry({"site_id": "s1", "timestamp": NOW, "grid_frequency_hz": None})
    service.observe_telemetry({"site_id": "s1", "timestamp": NOW + Q, "grid_frequency_hz": 50.26})
    assert [(t, d["level"]) for t, d in alerts] == [("grid.alert", "warn")]
