"""Frequency bands, per-area aggregation and the alert state machine (pure, clocked)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from control_plane.grid.frequency import FrequencyMonitor
from control_plane.grid.models import FrequencyBands, Level

T0 = datetime(2025, 11, 3, 8, 0, tzinfo=UTC)


def monitor(**kw) -> FrequencyMonitor:
    return FrequencyMonitor(
        bands=FrequencyBands(),
        area_of=kw.pop("area_of", {"a1": "AT", "a2": "AT", "a3": "AT", "d1": "DE_LU"}),
        default_area="AT",
        stale_after=timedelta(seconds=60),
        **kw,
    )


@pytest.mark.parametrize(
    ("hz", "level"),
    [
        (50.0, Level.NORMAL),
        (49.8, Level.NORMAL),  # the band's edge is inside
        (50.2, Level.NORMAL),
        (49.79, Level.WARN),
        (50.21, Level.WARN),
        (49.7, Level.WARN),
        (50.3, Level.WARN),
        (49.69, Level.ALARM),
        (50.31, Level.ALARM),
        (None, Level.UNKNOWN),
        (float("nan"), Level.UNKNOWN),
    ],
)
def test_levels_of_the_spec_bands(hz, level):
    assert FrequencyBands().level(hz) is level


def test_bands_must_nest():
    with pytest.raises(ValueError, match="alarm_low <= warn_low"):
        FrequencyBands(warn_low_hz=49.6)


def test_alert_once_per_crossing_escalation_rearm_and_clear():
    m = monitor()
    t = T0
    seen = []
    for hz in [50.0, 49.75, 49.76, 49.65, 49.6, 49.75, 49.65, 50.0, 50.01]:
        t += timedelta(seconds=1)
        seen += [(a.level, a.previous_level) for a in m.observe("a1", t, hz, now=t)]
    assert seen == [
        (Level.WARN, Level.NORMAL),
        (Level.ALARM, Level.WARN),
        (Level.ALARM, Level.WARN),  # alarm -> warn re-armed it
        (Level.NORMAL, Level.ALARM),  # cleared
    ]
    (excursion,) = m.excursions()
    assert excursion.level is Level.ALARM and excursion.extreme_hz == 49.6
    assert excursion.ended_at is not None


def test_area_is_the_median_of_fresh_sites_one_faulty_meter_does_not_alarm():
    m = monitor()
    assert m.observe("a1", T0, 50.01, now=T0) == []
    assert m.observe("a2", T0, 49.99, now=T0) == []
    assert m.observe("a3", T0, 48.0, now=T0) == []  # a broken meter
    f = m.frequency("AT", now=T0)
    assert f.frequency_hz == 49.99 and f.min_hz == 48.0 and f.max_hz == 50.01
    assert f.level is Level.NORMAL
    # another area is apart
    alerts = m.observe("d1", T0, 50.25, now=T0)
    assert [(a.area, a.level) for a in alerts] == [("DE_LU", Level.WARN)]
    assert m.frequency("AT", now=T0).level is Level.NORMAL


def test_stale_readings_do_not_count_and_do_not_clear():
    m = monitor()
    m.observe("a1", T0, 49.6, now=T0)
    later = T0 + timedelta(minutes=5)
    f = m.frequency("AT", now=later)
    assert f.frequency_hz is None and f.level is Level.UNKNOWN and f.sites[0].stale
    assert m.evaluate("AT", now=later) == []
    assert m.level("AT") is Level.ALARM  # no fresh reading: no false all-clear


def test_older_reading_and_unknown_site_area():
    m = monitor()
    m.observe("x", T0, 50.0, now=T0)  # not mapped: the default area
    assert m.area("x") == "AT"
    assert m.observe("x", T0 - timedelta(seconds=5), 49.0, now=T0) == []  # older: ignored
    assert m.frequency("AT", now=T0).frequency_hz == 50.0
