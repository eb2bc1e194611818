"""The grid settings: from the environment, defaults, and refusals that say how to fix them."""

from __future__ import annotations

import pytest

from control_plane.config import PlaneSettings, SettingsError, load_settings


def test_grid_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BESS_PLANE_GRID_SITE_AREAS", '{"s1": "AT", "s2": "DE_LU"}')
    monkeypatch.setenv("BESS_PLANE_GRID_TIE_LINES", "at>de-lu, AT>CZ")
    monkeypatch.setenv("BESS_PLANE_GRID_NORMAL_BAND_HZ", "[49.9, 50.1]")
    s = load_settings(None)
    assert s.grid_site_areas == {"s1": "AT", "s2": "DE_LU"}
    assert s.grid_tie_lines == ["AT>DE_LU", "AT>CZ"]
    assert s.grid_normal_band_hz == (49.9, 50.1)
    assert s.grid_area_default == "AT"  # the first market zone


def test_default_area() -> None:
    assert PlaneSettings(market_zones=[]).grid_area_default == "default"
    assert PlaneSettings(grid_default_area="north").grid_area_default == "north"


@pytest.mark.parametrize(
    ("env", "value", "message"),
    [
        ("BESS_PLANE_GRID_TIE_LINES", "AT-DE", "write two bidding zones as FROM>TO"),
        ("BESS_PLANE_GRID_TIE_LINES", "AT>XX", "write two bidding zones as FROM>TO"),
        ("BESS_PLANE_GRID_ALARM_BAND_HZ", "[49.9, 50.3]", "must contain grid_normal_band_hz"),
        ("BESS_PLANE_GRID_NORMAL_BAND_HZ", "[50.1, 50.2]", "must be low < 50 < high"),
    ],
)
def test_bad_grid_settings_are_refused(monkeypatch, env, value, message) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(SettingsError, match=message):
        load_settings(None)
