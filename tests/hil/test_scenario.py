"""Scenarios as data: the shipped ones pass fast, failures are reported, bad files explained."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hil.scenario import (
    ScenarioError,
    load_scenario,
    parse_scenario,
    run_scenario,
    shipped_scenarios,
)

SHIPPED = shipped_scenarios()
MAX_WALL_S = 3.0  # a simulated day must run in well under this


def test_the_required_scenarios_are_shipped() -> None:
    names = {p.stem for p in SHIPPED}
    assert {
        "day_cycle",
        "bms_limits",
        "frequency_dip",
        "revert_timeout",
        "thermal_runaway",
    } <= names


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_scenario_passes_fast(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = run_scenario(path)
    with capsys.disabled():
        print(
            f"\n  {path.stem}: {report.simulated_s / 3600:.1f} h simulated in "
            f"{report.wall_time_s:.3f} s ({len(report.checks)} checks)",
            end="",
        )
    assert report.checks, "a shipped scenario must check something"
    assert report.passed, report.format()
    assert report.wall_time_s < MAX_WALL_S


def test_day_cycle_covers_a_day_and_checks_energy() -> None:
    report = run_scenario("day_cycle")
    assert report.simulated_s == 24 * 3600
    checked = {c.quantity for c in report.checks}
    assert {"soc_pct", "charged_kwh", "discharged_kwh", "energy_kwh"} <= checked
    # 140 kWh in, 140 kWh out, 20 % -> 12.75 %: the round-trip losses show in the SoC.
    assert report.final["charged_kwh"] == pytest.approx(140.0, abs=0.01)
    assert report.final["soc_pct"] == pytest.approx(20.0 - (140 / 0.95 - 140 * 0.95) / 2, abs=0.1)


SIMPLE = """
name: simple
initial: {soc_pct: 50}
events:
  - {at: 0, setpoint_kw: -60, refresh_every: 30s}
expect:
  - at: 10m
    soc_pct: {between: [54, 55]}
    power_kw: {eq: -60, tol: 0.01}
    alarms: {empty: true}
    status: charging
"""


def test_a_failing_expectation_is_reported_as_failed() -> None:
    wrong = SIMPLE.replace("between: [54, 55]", "between: [80, 90]")
    report = run_scenario(parse_scenario(wrong, "wrong.yaml"))
    assert not report.passed
    (failed,) = report.failed
    assert failed.quantity == "soc_pct"
    assert failed.expected == "between 80 and 90"
    assert failed.actual == pytest.approx(54.75, abs=0.01)  # 50 % + 60 kW x 10 min x 0.95
    text = report.format()
    assert "FAIL  soc_pct" in text
    assert "FAILED: 3 passed, 1 failed" in text
    data = json.loads(report.to_json())
    assert data["passed"] is False
    assert [c["passed"] for c in data["checks"]] == [False, True, True, True]


def test_events_and_expectations_at_the_same_offset_see_the_event() -> None:
    text = """
events:
  - {at: 1m, fault: {kind: out_of_range, params: {quantity: soc_pct, value: -5}}}
expect:
  - {at: 1m, soc_pct: -5, faults: out_of_range}
"""
    report = run_scenario(parse_scenario(text))
    assert report.passed, report.format()


def test_a_setpoint_without_refresh_is_reverted_after_the_timeout() -> None:
    text = """
battery: {revert_timeout_s: 60}
events:
  - {at: 0, setpoint_kw: 10}
expect:
  - {at: 59s, power_kw: 10}
  - {at: 2m, power_kw: 0, alarms: setpoint_reverted}
"""
    assert run_scenario(parse_scenario(text)).passed


def test_a_scenario_file_can_be_loaded_by_path_and_by_name(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text(SIMPLE.replace("name: simple\n", ""))
    assert load_scenario(path).name == "mine"  # defaults to the file name
    assert run_scenario(path).passed
    assert load_scenario("bms_limits").name == "bms_limits"
    with pytest.raises(FileNotFoundError, match="shipped scenarios: bms_limits, day_cycle"):
        load_scenario("no_such_scenario")


# -- malformed files ------------------------------------------------------------------------


def problems_of(text: str) -> list[str]:
    with pytest.raises(ScenarioError) as err:
        parse_scenario(text, "bad.yaml")
    return err.value.problems


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "events:\n  - at: 1m\n    fault: {kind: fire}\n",
            "bad.yaml:3: events[0].fault.kind: Input should be 'drop_connections', "
            "'refuse_connections', 'no_response', 'modbus_exception', 'freeze', 'out_of_range', "
            "'frequency_event' or 'temperature_runaway' (got 'fire')",
        ),
        (
            "events:\n  - at: soon\n    setpoint_kw: 5\n",
            "bad.yaml:2: events[0].at: 'soon' is not a duration; give a number of seconds or a "
            "duration such as 90s, 10m, 1h30m, 2d",
        ),
        (
            "events:\n  - {at: 0, setpoint_kw: fast}\n",
            "bad.yaml:2: events[0].setpoint_kw: Input should be a valid number, unable to parse "
            "string as a number (got 'fast')",
        ),
        (
            "events:\n  - at: 0\n    fault: {kind: modbus_exception, params: {cod: 4}}\n",
            "bad.yaml:3: events[0].fault: fault 'modbus_exception' does not take ['cod']; "
            "it takes code (default 4)",
        ),
        (
            "battery:\n  capacity_kwh: 100\n  max_kw: 50\n",
            "bad.yaml:2: battery: unknown battery setting ['max_kw']; allowed: capacity_kwh, "
            "max_charge_kw, max_discharge_kw,",
        ),
        (
            "battery: {charge_efficiency: 1.5}\n",
            "bad.yaml:1: battery: invalid battery spec: charge_efficiency must be in (0, 1] "
            "(got 1.5)",
        ),
        (
            "initial: {soc_pct: 120}\n",
            "bad.yaml:1: initial.soc_pct: Input should be less than or equal to 100 (got 120)",
        ),
        (
            "expect:\n  - at: 1h\n    soc: {gt: 5}\n",
            "bad.yaml:2: expect[0]: unknown quantity 'soc'; allowed: at, note, soc_pct, power_kw,",
        ),
        (
            "expect:\n  - at: 1h\n    alarms: {contains: soc_ful}\n",
            "bad.yaml:2: expect[0]: alarms: unknown ['soc_ful']; allowed: soc_full, soc_empty,",
        ),
        (
            "expect:\n  - at: 1h\n    power_kw: {contains: x}\n",
            "bad.yaml:2: expect[0]: power_kw: contains does not apply; use eq, tol, between, gt,",
        ),
        (
            "expect:\n  - at: 1h\n    status: sleeping\n",
            "bad.yaml:2: expect[0]: status: 'sleeping' is not a status; allowed: idle, charging,",
        ),
        (
            "events:\n  - {at: 0, setpoint_kw: 5, clear_fault: all}\n",
            "bad.yaml:2: events[0]: an event does exactly one of setpoint_kw (with optional "
            "refresh_every), stop_refresh, fault, clear_fault, frequency; this one has "
            "['setpoint_kw', 'clear_fault']",
        ),
        (
            "events:\n  - {at: 0, clear_fault: everything}\n",
            "bad.yaml:2: events[0].clear_fault: 'everything' is not a fault kind; allowed: all, "
            "drop_connections,",
        ),
        (
            "evnts: []\n",
            "bad.yaml:1: (top level): unknown key 'evnts'; allowed: battery, description, "
            "duration, events, expect, grid, initial, map, name, start, step_s",
        ),
        (
            "duration: 1h\nexpect:\n  - {at: 2h, soc_pct: 50}\n",
            "bad.yaml:1: (top level): duration 1h ends before the last event or expectation at 2h",
        ),
        ("events: [1\n", "bad.yaml:2: not valid YAML: expected ',' or ']'"),
        ("- just\n- a list\n", "bad.yaml: a scenario is a YAML mapping"),
    ],
)
def test_a_malformed_scenario_names_line_path_value_and_what_is_allowed(
    text: str, expected: str
) -> None:
    problems = problems_of(text)
    assert any(p.startswith(expected) for p in problems), problems


def test_every_problem_in_a_file_is_reported_at_once() -> None:
    text = "initial: {soc_pct: -1}\nstep_s: 0\nevents:\n  - {at: x, setpoint_kw: 1}\n"
    problems = problems_of(text)
    assert [p.split(": ")[1] for p in problems] == ["initial.soc_pct", "step_s", "events[0].at"]
