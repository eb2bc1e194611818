"""The exchange's view of the fleet: `SiteStates` for the SoC pre-trade check, read from the
fleet's store (nameplate from the agent's Hello, SoC from the newest stored reading).

It sits between the two services so that neither imports the other. `site_state` is
synchronous because the checks run in the matching engine's worker thread; it does two indexed
queries per order that names a site. A rating the agent did not report (0 or absent) is
passed on as unknown, so the check refuses the order instead of guessing.
"""

from __future__ import annotations

from control_plane.exchange.checks import SiteState
from control_plane.fleet.store import FleetStore, ratings_of


class FleetSiteStates:
    """`SiteStates` backed by the fleet store."""

    def __init__(self, store: FleetStore) -> None:
        self._store = store

    def site_state(self, site_id: str) -> SiteState | None:
        rows = self._store.site_rows(site_id)
        if not rows:
            return None
        ratings = ratings_of(rows[0])
        latest = self._store.latest_sample(site_id)
        return SiteState(
            capacity_kwh=_known(ratings.capacity_kwh if ratings else None),
            soc_pct=latest.soc_pct if latest is not None else None,
            measured_at=latest.timestamp if latest is not None else None,
            max_charge_kw=_known(ratings.max_charge_kw if ratings else None),
            max_discharge_kw=_known(ratings.max_discharge_kw if ratings else None),
        )


def _known(value: float | None) -> float | None:
    return value if value is not None and value > 0 else None
