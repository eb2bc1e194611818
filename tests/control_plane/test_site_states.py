"""FleetSiteStates: the SoC check's view of a site, from the fleet store (both backends)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy.engine import Engine

from control_plane.fleet.models import Hello, Ratings, TelemetrySample
from control_plane.fleet.store import FleetStore
from control_plane.site_states import FleetSiteStates

T0 = datetime(2026, 3, 29, 0, 0, tzinfo=UTC)


def _store(engine: Engine) -> FleetStore:
    store = FleetStore(engine)
    store.migrate()
    return store


def test_unknown_site_is_none(engine: Engine) -> None:
    assert FleetSiteStates(_store(engine)).site_state("nowhere") is None


def test_ratings_and_newest_reading(engine: Engine) -> None:
    store = _store(engine)
    store.register(Hello("s1", "1.0", ratings=Ratings(5000, 2500, 2000)), session_id="a", now=T0)
    older = TelemetrySample(seq=2, timestamp=T0, soc_pct=40.0)
    newer = TelemetrySample(seq=1, timestamp=T0 + timedelta(seconds=5), soc_pct=41.5)
    store.ingest_samples("s1", [older, newer], now=T0)  # newest by time, not by seq

    state = FleetSiteStates(store).site_state("s1")

    assert state is not None
    assert (state.capacity_kwh, state.max_charge_kw, state.max_discharge_kw) == (5000, 2500, 2000)
    assert state.soc_pct == 41.5
    assert state.measured_at == T0 + timedelta(seconds=5)


def test_unreported_ratings_and_no_reading_are_unknown(engine: Engine) -> None:
    store = _store(engine)
    store.register(Hello("s2", "1.0", ratings=Ratings(0, 0, 0)), session_id="a", now=T0)

    state = FleetSiteStates(store).site_state("s2")

    assert state is not None
    assert state.capacity_kwh is None and state.max_charge_kw is None
    assert state.soc_pct is None and state.measured_at is None
