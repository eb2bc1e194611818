"""The CSV price import: the shared Belgian file exactly as its README describes, and the
local-time rules on small files."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from control_plane.market.csv_import import CsvFormat, read_price_csv
from control_plane.market.models import DocumentError, Resolution, UnitError, UnknownZoneError

SHARED = Path(__file__).resolve().parents[4] / "shared" / "data" / "be_dayahead_2022_2023.csv"


@pytest.mark.skipif(not SHARED.exists(), reason=f"shared data not found at {SHARED}")
def test_the_shared_belgian_file_gives_17520_hourly_utc_intervals() -> None:
    result = read_price_csv(SHARED, zone_code="BE")
    points = result.points
    assert len(points) == 17_520
    assert points[0].start == datetime(2021, 12, 31, 23, tzinfo=UTC)
    assert points[-1].start == datetime(2023, 12, 31, 22, tzinfo=UTC)
    assert all(b.start - a.start == timedelta(hours=1) for a, b in itertools.pairwise(points))
    assert points[0].price_eur_per_mwh == pytest.approx(82.0199966430664)  # EUR/kWh x 1000
    assert min(p.price_eur_per_mwh for p in points) == pytest.approx(-120.0)  # kept
    assert max(p.price_eur_per_mwh for p in points) == pytest.approx(871.0)
    assert not any(p.flag for p in points)
    assert len(result.dropped) == 2  # the two spring-forward hours
    assert {p.zone for p in points} == {"BE"}


def _file(tmp_path: Path, rows: str) -> Path:
    path = tmp_path / "prices.csv"
    path.write_text("time,DAM_price\n" + rows)
    return path


def test_fall_back_hour_twice_is_summer_then_winter_time(tmp_path: Path) -> None:
    path = _file(
        tmp_path,
        "30oct2022 01:00:00,.1\n30oct2022 02:00:00,.2\n30oct2022 02:00:00,.3\n"
        "30oct2022 03:00:00,.4\n",
    )
    starts = [p.start.hour for p in read_price_csv(path, zone_code="BE").points]
    assert starts == [23, 0, 1, 2]  # 01:00 CEST = 23Z, 02:00 CEST = 0Z, 02:00 CET = 1Z


def test_a_third_occurrence_or_a_repeated_ordinary_hour_is_refused(tmp_path: Path) -> None:
    path = _file(tmp_path, "05jan2022 01:00:00,.1\n05jan2022 01:00:00,.1\n")
    with pytest.raises(DocumentError, match="line 3: '05jan2022 01:00:00' appears more often"):
        read_price_csv(path, zone_code="BE")


def test_spring_forward_hour_with_a_price_is_refused(tmp_path: Path) -> None:
    path = _file(tmp_path, "27mar2022 01:00:00,.1\n27mar2022 02:00:00,.2\n")
    with pytest.raises(DocumentError, match="does not exist in Europe/Brussels"):
        read_price_csv(path, zone_code="BE")


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ("01jan2022 00:00:00,abc\n", "line 2: price 'abc' is not a number"),
        ("01jan2022 00:00:00,\n", "line 2: the price is empty"),
        ("2022-01-01 00:00,.1\n", "does not match the format"),
        ("01jan2022 00:00:00,.1\n01jan2022 02:00:00,.1\n", "a gap, a duplicate"),
        ("01jan2022 00:00:00,nan\n", "not finite"),
        ("", "no price rows"),
    ],
)
def test_bad_rows_name_the_line_and_the_problem(tmp_path: Path, rows: str, message: str) -> None:
    with pytest.raises(DocumentError, match=message):
        read_price_csv(_file(tmp_path, rows), zone_code="BE")


def test_iso_times_ct_per_kwh_and_flagged_outliers(tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    path.write_text("start;price\n2025-10-01T00:00:00Z;10\n2025-10-01T00:15:00+00:00;-60\n")
    fmt = CsvFormat(
        time_column="start",
        price_column="price",
        time_format="iso",
        unit="ct/kWh",
        resolution=Resolution.PT15M,
        delimiter=";",
    )
    points = read_price_csv(path, zone_code="AT", fmt=fmt).points
    assert [p.price_eur_per_mwh for p in points] == [100.0, -600.0]
    assert points[0].flag == "" and "outside plausibility bounds" in points[1].flag


def test_configuration_errors(tmp_path: Path) -> None:
    path = _file(tmp_path, "01jan2022 00:00:00,.1\n")
    with pytest.raises(UnknownZoneError, match="unknown bidding zone 'XX'"):
        read_price_csv(path, zone_code="XX")
    with pytest.raises(UnitError, match="unknown price unit 'EUR/GWh'"):
        read_price_csv(path, zone_code="BE", fmt=CsvFormat(unit="EUR/GWh"))
    with pytest.raises(DocumentError, match="no column 'price'"):
        read_price_csv(path, zone_code="BE", fmt=CsvFormat(price_column="price"))
    with pytest.raises(DocumentError, match="unknown time zone"):
        read_price_csv(path, zone_code="BE", fmt=CsvFormat(timezone="Mars/Olympus"))
    with pytest.raises(DocumentError, match="No such file"):
        read_price_csv(tmp_path / "missing.csv", zone_code="BE")
