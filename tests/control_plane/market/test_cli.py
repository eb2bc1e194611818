"""`bess-plane prices` on a real SQLite store: the shared Belgian file (17,520 hours), show,
demo prices, fetch without sources; plus the file source and the source registry."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from control_plane import db
from control_plane.cli import main
from control_plane.config import PlaneSettings
from control_plane.market.demo import DEMO_FLAG, demo_prices, hourly_shape
from control_plane.market.models import NoDataError, PricePoint, Resolution, zone
from control_plane.market.sources import (
    SOURCE_FACTORIES,
    FileSource,
    PriceSource,
    build_sources,
    configured_source_names,
)
from control_plane.market.store import PriceStore

BELGIAN = Path(__file__).resolve().parents[4] / "shared" / "data" / "be_dayahead_2022_2023.csv"
if not BELGIAN.is_file():  # a worktree sits one level deeper than the main checkout
    BELGIAN = Path("/work/shared/data/be_dayahead_2022_2023.csv")


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("BESS_PLANE_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("ENTSOE_TOKEN", raising=False)
    return tmp_path


def _store(data_dir: Path) -> PriceStore:
    return PriceStore(db.create_engine(database_url=None, sqlite_path=data_dir / "plane.sqlite3"))


@pytest.mark.skipif(not BELGIAN.is_file(), reason="the shared Belgian price file is not here")
def test_import_the_belgian_file_then_show_a_dst_day(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["prices", "import", str(BELGIAN), "--zone", "BE"]) == 0
    out = capsys.readouterr().out
    assert "stored 17520 BE prices" in out and "17520 new" in out
    assert out.count("left out:") == 2  # the two spring-forward hours, empty in the file
    store = _store(data_dir)
    assert store.count("BE") == 17520
    span = store.prices("BE", datetime(2021, 12, 1, tzinfo=UTC), datetime(2024, 1, 1, tzinfo=UTC))
    assert len(span) == 17520
    assert any(p.price_eur_per_mwh < 0 for p in span)  # negative prices kept
    assert main(["prices", "import", str(BELGIAN), "--zone", "BE"]) == 0
    assert "0 new, 0 revised, 17520 unchanged" in capsys.readouterr().out
    assert main(["prices", "show", "--zone", "BE", "--day", "2022-03-27"]) == 0
    shown = capsys.readouterr().out
    assert "23 intervals, BE, 2022-03-27 (Europe/Brussels)" in shown
    assert "2022-03-27 03:00  2022-03-27 01:00Z PT60M" in shown


def test_import_errors_name_the_problem(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("time,DAM_price\n01jan2022 00:00:00,x\n")
    assert main(["prices", "import", str(bad), "--zone", "BE"]) == 1
    assert "line 2: price 'x' is not a number" in capsys.readouterr().err
    assert main(["prices", "import", str(bad), "--zone", "Narnia"]) == 2
    assert "unknown bidding zone 'Narnia'" in capsys.readouterr().err
    assert main(["prices", "show", "--zone", "AT", "--day", "2025-01-01"]) == 0
    assert "no AT prices stored for 2025-01-01" in capsys.readouterr().out


def test_fetch_needs_a_configured_source(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["prices", "fetch", "--zone", "AT", "--start", "2025-01-01", "--end", "2025-01-02"]
    assert main(args) == 1
    assert "no price source configured" in capsys.readouterr().err
    assert main([*args[:-1], "2025-01-01T00:00"]) == 1
    assert "has no UTC offset" in capsys.readouterr().err


@pytest.mark.skipif(not BELGIAN.is_file(), reason="the shared Belgian price file is not here")
def test_demo_prices_are_labelled_and_cover_today_and_tomorrow(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["prices", "demo", "--zone", "AT", "--shape", str(BELGIAN)]) == 0
    assert "synthetic AT quarter-hours (source demo:shape-of-be_dayahead_2022_2023" in (
        capsys.readouterr().out
    )
    now = datetime.now(UTC)
    points = _store(data_dir).prices("AT", now - timedelta(days=2), now + timedelta(days=3))
    assert 184 <= len(points) <= 200  # two local days of quarter-hours (DST: 92 or 100)
    assert {p.source for p in points} == {"demo:shape-of-be_dayahead_2022_2023"}
    assert {p.flag for p in points} == {DEMO_FLAG}
    assert points[0].start <= now < points[-1].end


def test_demo_curve_follows_the_shape_across_a_dst_day() -> None:
    shape = [float(h) for h in range(24)]
    now = datetime(2025, 10, 26, 12, 0, tzinfo=UTC)  # Vienna falls back: 25 hours
    points = demo_prices(shape, zone_code="AT", now=now, label="t", days=1)
    assert len(points) == 100
    assert points[0].start == datetime(2025, 10, 25, 22, 0, tzinfo=UTC)
    assert [p.price_eur_per_mwh for p in points[:5]] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert points[-1].price_eur_per_mwh == 23 + (0 - 23) * 3 / 4  # towards midnight's value
    assert {p.resolution for p in points} == {Resolution.PT15M}
    hourly = [
        PricePoint(
            zone="BE",
            start=now + timedelta(hours=h),
            resolution=Resolution.PT60M,
            price_eur_per_mwh=float(h % 24),
            source="f",
        )
        for h in range(48)
    ]
    assert hourly_shape(hourly, "UTC") == [float((h - 12) % 24) for h in range(24)]
    with pytest.raises(ValueError, match="no prices for local hours"):
        hourly_shape(hourly[:5], "UTC")


async def test_file_source_serves_its_zone_and_window(tmp_path: Path) -> None:
    path = tmp_path / "at.csv"
    path.write_text("time,p\n2025-01-01T00:00:00Z,1\n2025-01-01T01:00:00Z,2\n")
    from control_plane.market.csv_import import CsvFormat

    source = FileSource(
        path, zone_code="AT", fmt=CsvFormat(price_column="p", time_format="iso", unit="EUR/MWh")
    )
    assert isinstance(source, PriceSource)
    start = datetime(2025, 1, 1, tzinfo=UTC)
    got = await source.fetch(zone("AT"), start, start + timedelta(hours=1))
    assert [(p.price_eur_per_mwh, p.source) for p in got] == [(1.0, "file:at.csv")]
    with pytest.raises(NoDataError, match="not DE_LU"):
        await source.fetch(zone("DE_LU"), start, start + timedelta(hours=1))
    with pytest.raises(NoDataError, match="no AT prices"):
        await source.fetch(zone("AT"), start + timedelta(days=1), start + timedelta(days=2))


def test_sources_from_the_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    plain = PlaneSettings(data_dir=tmp_path)
    assert configured_source_names(plain) == [] and build_sources(plain) == []
    with_token = PlaneSettings(data_dir=tmp_path, entsoe_token="t" * 36)
    fake = FileSource(tmp_path / "x.csv", zone_code="AT", name="entsoe")
    monkeypatch.setitem(SOURCE_FACTORIES, "entsoe", lambda settings: fake)
    assert configured_source_names(with_token) == ["entsoe"]
    assert build_sources(with_token) == [fake]
    assert "t" * 36 not in repr(with_token)  # the token stays masked


def test_market_settings_validation(tmp_path: Path) -> None:
    s = PlaneSettings(data_dir=tmp_path, market_zones=["at", "DE-LU", "AT"])
    assert s.market_zones == ["AT", "DE_LU"]
    with pytest.raises(ValueError, match="unknown bidding zone 'XX'"):
        PlaneSettings(data_dir=tmp_path, market_zones=["XX"])
    with pytest.raises(ValueError, match="not a source name"):
        PlaneSettings(data_dir=tmp_path, market_sources=["ENTSO-E"])
    with pytest.raises(ValueError, match="greater than or equal to 10"):
        PlaneSettings(data_dir=tmp_path, update_interval_s=1)


def test_market_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from control_plane.config import load_settings

    monkeypatch.setenv("UPDATE_INTERVAL", "60")
    monkeypatch.setenv("BESS_PLANE_MARKET_ZONES", "AT,de_lu")
    monkeypatch.setenv("BESS_PLANE_MARKET_SOURCES", '["entsoe", "awattar"]')
    monkeypatch.setenv("ENTSOE_TOKEN", "k" * 36)
    s = load_settings()
    assert (s.update_interval_s, s.market_zones) == (60, ["AT", "DE_LU"])
    assert s.market_sources == ["entsoe", "awattar"]
    assert s.entsoe_token is not None and s.entsoe_token.get_secret_value() == "k" * 36
