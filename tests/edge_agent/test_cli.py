"""``bess-edge``, run in-process through ``main(argv)`` (one subprocess test for ``python -m``).

Commands that talk Modbus run ``asyncio.run`` themselves, so the hil server for them runs on
its own event loop in a thread (``hil_in_thread``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import types
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from edge_agent import cli
from edge_agent.cli import main, parse_time, render_site_template
from edge_agent.config import ENV_VARS, SiteConfig, load_config, parse_config
from edge_agent.modbus_source import BUILTIN_PRESETS, load_preset
from edge_agent.rest_ingest import RestIngestError
from edge_agent.schedule_store import ScheduleSource, ScheduleStore
from hil.clock import SteppedClock
from hil.modbus_server import ModbusBatteryServer
from hil.model import BatterySpec
from hil.regmap import load_register_map
from hil.sim import Simulator

T0 = datetime(2030, 6, 1, 10, 7, tzinfo=UTC).timestamp()  # 7 minutes into a quarter hour
# Test values that must never be printed.
SECRET_KEY = "cli-test-api-key-0123456789"  # noqa: S105
SECRET_PW = "cli-test-mqtt-password"  # noqa: S105


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No BESS_* variable of the developer's shell may change what a test sees."""
    for name in [*os.environ]:
        if name.startswith("BESS_"):
            monkeypatch.delenv(name)


@contextlib.contextmanager
def hil_in_thread(regmap: str) -> Iterator[int]:
    """The hil Modbus server on its own loop in a thread; yields its port."""
    loop = asyncio.new_event_loop()
    started = threading.Event()
    port: list[int] = []
    errors: list[BaseException] = []

    def serve() -> None:
        asyncio.set_event_loop(loop)
        sim = Simulator(BatterySpec(), SteppedClock(), soc_pct=57.3)
        server = ModbusBatteryServer(sim, load_register_map(regmap), port=0)
        try:
            loop.run_until_complete(server.start())
            port.append(server.port)
        except BaseException as exc:
            errors.append(exc)
            return
        finally:
            started.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(server.stop())
            loop.close()

    thread = threading.Thread(target=serve, name=f"hil-{regmap}", daemon=True)
    thread.start()
    assert started.wait(10), "the hil server did not start"
    if errors:
        raise errors[0]
    try:
        yield port[0]
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def site_file(tmp_path: Path, **sources: Any) -> Path:
    data: dict[str, Any] = {
        "site_id": "cli-1",
        "battery": {"capacity_kwh": 200, "max_charge_kw": 100, "max_discharge_kw": 80},
        "storage": {"data_dir": str(tmp_path / "data")},
    }
    if sources:
        data["sources"] = sources
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


# -- init -------------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", BUILTIN_PRESETS)
def test_init_writes_a_loadable_config_for_every_preset(
    preset: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "site.yaml"
    code, out, err = run(
        capsys, "init", "--preset", preset, "--site-id", "plant-7", "--host", "10.1.2.3", "-o",
        str(path),
    )  # fmt: skip
    assert code == 0 and out == ""
    assert f"wrote {path}" in err and "bess-edge doctor" in err
    cfg = load_config(path, env={})
    assert cfg.site_id == "plant-7"
    assert cfg.sources.modbus is not None
    assert cfg.sources.modbus.preset == preset
    assert cfg.sources.modbus.host == "10.1.2.3"
    assert cfg.sources.modbus.unit_id == load_preset(preset).unit_id
    assert cfg.uplink is None  # commented out until a target is given
    text = path.read_text()
    assert text.count("#") > 60  # every section explained
    assert "{{" not in text
    for var in ("BESS_MODBUS_HOST", "BESS_API_KEY", "BESS_MQTT_PASSWORD", "BESS_UPLINK_TARGET"):
        assert var in text


def test_init_names_every_env_var_next_to_its_field() -> None:
    text = render_site_template(preset="generic", site_id="s", host="10.0.0.1")
    for var in ENV_VARS:
        assert var.name in text, var.name
    assert "BESS_MODBUS_ENABLED" in text


def test_init_secrets_only_as_env_references() -> None:
    text = render_site_template(preset="sunspec", site_id="s", host="h", uplink="plane:50051")
    cfg = parse_config(text, env={})
    assert cfg.sources.mqtt.password is None and cfg.sources.rest.api_key is None
    assert cfg.uplink is not None and cfg.uplink.token_env == "BESS_UPLINK_TOKEN"  # noqa: S105
    assert cfg.uplink.token_file is None
    for line in text.splitlines():
        code = line.split("#", 1)[0]
        assert "password" not in code and "api_key" not in code, line


def test_init_with_uplink_and_numeric_site_id(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "init", "--site-id", "12345", "--uplink", "plane.example.com:50051")
    assert code == 0
    cfg = parse_config(out, env={})  # stdout by default
    assert cfg.site_id == "12345"  # quoted, not read as a number
    assert cfg.uplink is not None and cfg.uplink.target == "plane.example.com:50051"
    assert cfg.uplink.tls.enabled
    assert cfg.sources.modbus is not None and cfg.sources.modbus.preset == "sunspec"


def test_init_refuses_to_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "site.yaml"
    path.write_text("keep me\n")
    code, _, err = run(capsys, "init", "-o", str(path))
    assert code == 2
    assert err.strip() == f"bess-edge: error: {path} exists already; use --force to overwrite it"
    assert path.read_text() == "keep me\n"
    code, _, _ = run(capsys, "init", "--preset", "sma", "-o", str(path), "--force")
    assert code == 0
    cfg = load_config(path, env={})
    assert cfg.sources.modbus is not None and cfg.sources.modbus.unit_id == 3


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--site-id", "bad id!"], "--site-id 'bad id!'"),
        (["--host", "a b"], "--host 'a b' is not an IP address or host name"),
        (["--uplink", "plane"], "--uplink 'plane': give host:port"),
    ],
)
def test_init_bad_input(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "init", *args)
    assert code == 2 and out == ""
    assert message in err


def test_unknown_preset_choice_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "init", "--preset", "tesla")
    assert code == 2 and "invalid choice: 'tesla'" in err


# -- presets ----------------------------------------------------------------------------------


def test_presets_list(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "presets")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["NAME", "UNIT", "CONTROL", "VERIFIED"]
    rows = {line.split()[0]: line for line in lines[1 : 1 + len(BUILTIN_PRESETS)]}
    assert set(rows) == set(BUILTIN_PRESETS)
    assert rows["sma"].split()[1] == "3" and rows["victron_gx"].split()[1] == "100"
    assert "hil simulator" in rows["generic"]
    assert "fake device" in rows["victron_gx"] and "no hardware" in rows["victron_gx"]
    assert "sunspec_storage (window)" in rows["fronius"]


def test_presets_show_plain(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "presets", "show", "sma")
    assert code == 0
    assert "control: setpoint — writes WSpt" in out and "WCtlComCfg = 802" in out
    row = next(line for line in out.splitlines() if line.startswith("30849"))
    assert row.split()[:6] == ["30849", "Bat_TmpVal", "int32", "x0.1", "C", "temperature_c"]
    setpoint = next(line for line in out.splitlines() if line.startswith("40149"))
    assert " rw " in setpoint


def test_presets_show_sunspec(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "presets", "show", "sunspec")
    assert code == 0
    assert "control: sunspec_storage, strategy rate" in out
    assert "model 124 (storage)" in out and "model 103/102/101 (inverter)" in out
    row = next(line for line in out.splitlines() if line.startswith("+10 "))
    assert row.split()[:6] == ["+10", "OutWRte", "int16", "SF", "InOutWRte_SF", "%"]
    assert "soc_pct (fallback)" in out


def test_presets_show_unknown(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "presets", "show", "powerwall")
    assert code == 2 and out == ""
    assert "no Modbus preset 'powerwall'" in err and "Tesla Powerwall has no Modbus" in err


# -- scan and read against the hil server -------------------------------------------------------


@pytest.mark.integration
def test_scan_finds_the_sunspec_models(capsys: pytest.CaptureFixture[str]) -> None:
    with hil_in_thread("sunspec") as port:
        code, out, _ = run(capsys, "scan", "127.0.0.1", "--port", str(port))
    assert code == 0
    assert f"Modbus TCP 127.0.0.1:{port}, unit id 1" in out
    assert "SunSpec map at 40000, 4 model(s)" in out
    assert "storage controls" in out and "ChaState = 57.3 %" in out


@pytest.mark.integration
def test_scan_of_a_plain_device_and_of_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    with hil_in_thread("generic") as port:
        code, out, _ = run(capsys, "scan", "127.0.0.1", "--port", str(port))
    assert code == 1 and "SunSpec marker not found at 40000/0/50000" in out
    code, out, _ = run(capsys, "scan", "127.0.0.1", "--port", str(port), "--timeout", "0.5")
    assert code == 1 and "not connected" in out


def test_scan_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "scan", "h", "--port", "70000")
    assert code == 2 and "port 70000 is outside 1..65535" in err
    code, _, err = run(capsys, "scan", "h", "--unit-id", "x")
    assert code == 2 and "'x' is not a unit id" in err


@pytest.mark.integration
def test_read_generic_shows_raw_and_decoded(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with hil_in_thread("generic") as port:
        path = site_file(tmp_path, modbus={"host": "127.0.0.1", "port": port, "preset": "generic"})
        code, out, _ = run(capsys, "read", "-c", str(path))
    assert code == 0, out
    assert f"Modbus 127.0.0.1:{port}, unit id 1, preset generic" in out
    soc = next(line for line in out.splitlines() if line.startswith("soc "))
    # raw register, value with units, the scale used, the quantity
    assert soc.split()[:8] == ["soc", "0", "uint16", "0x023D", "57.3", "%", "x0.1", "soc_pct"]
    assert "decoded, as the agent reads it:" in out
    assert "  soc_pct 57.3 %" in out
    assert "revert timeout of the device: 60 s" in out


@pytest.mark.integration
def test_read_sunspec_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with hil_in_thread("sunspec") as port:
        modbus = {"host": "127.0.0.1", "port": port, "preset": "sunspec"}
        code, out, _ = run(capsys, "read", "-c", str(site_file(tmp_path, modbus=modbus)), "--json")
    assert code == 0
    data = json.loads(out)
    assert data["sunspec"] == {"base": 40000, "models": [1, 103, 124, 802]}
    points = {p["name"]: p for p in data["points"]}
    cha = points["storage.ChaState"]
    assert cha["registers"] == [573] and cha["sf_raw"] == -1 and cha["sf"] == "storage.ChaState_SF"
    assert cha["value"] == pytest.approx(57.3) and cha["quantity"] == "soc_pct"
    assert points["common.Mn"]["value"] == "Phoenyra"
    assert data["readings"]["soc_pct"] == pytest.approx(57.3)
    assert data["revert_timeout_s"] == 60


@pytest.mark.integration
def test_read_reports_errors_per_point(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    preset = tmp_path / "mine.yaml"
    preset.write_text(
        yaml.safe_dump(
            {
                "name": "mine",
                "layout": "plain",
                "points": [
                    {"name": "soc", "address": 0, "type": "uint16", "scale": 0.1,
                     "units": "%", "quantity": "soc_pct"},
                    {"name": "ghost", "address": 300, "type": "uint16"},
                ],
            }
        )
    )  # fmt: skip
    with hil_in_thread("generic") as port:
        modbus = {"host": "127.0.0.1", "port": port, "preset": str(preset)}
        code, out, _ = run(capsys, "read", "-c", str(site_file(tmp_path, modbus=modbus)))
    assert code == 0
    ghost = next(line for line in out.splitlines() if line.startswith("ghost"))
    assert "exception 2 (illegal data address)" in ghost
    assert "  soc_pct 57.3 %" in out


def test_read_nothing_listening(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = site_file(tmp_path, modbus={"host": "127.0.0.1", "port": 1, "preset": "generic"})
    code, out, _ = run(capsys, "read", "-c", str(path))
    assert code == 1
    assert "error: connection refused at 127.0.0.1:1" in out
    assert "hint: is Modbus TCP enabled on the inverter" in out


def test_read_without_modbus(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "read", "-c", str(site_file(tmp_path)))
    assert code == 2 and "has no Modbus source (sources.modbus)" in err


# -- doctor -----------------------------------------------------------------------------------


@pytest.mark.integration
def test_doctor_cli_table_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with hil_in_thread("generic") as port:
        path = site_file(tmp_path, modbus={"host": "127.0.0.1", "port": port, "preset": "generic"})
        code, out, _ = run(capsys, "doctor", "-c", str(path))
        assert code == 0, out
        assert out.startswith(f"bess-edge doctor: {path} (site cli-1)")
        assert any(line.split()[:3] == ["modbus:", "points", "OK"] for line in out.splitlines())
        code, out, _ = run(capsys, "doctor", "-c", str(path), "--json")
    data = json.loads(out)
    assert code == 0 and data["ok"] is True and data["site_id"] == "cli-1"
    assert {"check": "modbus: unit id", "status": "OK", "detail": "unit 1 answers"} in data[
        "checks"
    ]


def test_doctor_exit_code_1_on_fail(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = site_file(tmp_path, modbus={"host": "127.0.0.1", "port": 1})
    code, out, _ = run(capsys, "doctor", "-c", str(path))
    assert code == 1
    assert "connection refused at 127.0.0.1:1" in out
    assert out.rstrip().splitlines()[-1].startswith("1 FAIL")


# -- schedule ---------------------------------------------------------------------------------


@pytest.fixture
def frozen_now(monkeypatch: pytest.MonkeyPatch) -> float:
    monkeypatch.setattr(cli, "_now", lambda: T0)
    return T0


def test_schedule_set_show_clear(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], frozen_now: float
) -> None:
    path = str(site_file(tmp_path))
    code, out, _ = run(capsys, "schedule", "-c", path, "show")
    assert code == 0 and "no schedules yet" in out
    code, out, _ = run(capsys, "schedule", "-c", path, "set", "--kw", "50", "--until", "+1h")
    assert code == 0, out
    # now is 10:07: the current quarter hour starts the schedule, the end is rounded up.
    assert "cli schedule v1: 50 kW discharge, 2030-06-01 10:00 UTC → 2030-06-01 11:15 UTC" in out
    assert "5 interval(s) of 15 min" in out
    cfg = load_config(path, env={})
    with ScheduleStore(cfg.storage.schedules_path, site_id="cli-1") as store:
        current = store.current(T0)
        assert current is not None
        assert (current.source, current.version) == (ScheduleSource.CLI, 1)
        assert current.setpoint_at(T0) == 50.0 and len(current.intervals) == 5
        assert current.origin.startswith("bess-edge schedule set by ")
    code, out, _ = run(
        capsys, "schedule", "set", "-c", path, "--kw", "-30", "--from", "2030-06-01T12:30+02:00",
        "--until", "2030-06-01T11:00Z",
    )  # fmt: skip
    assert code == 0, out
    assert "cli schedule v2: 30 kW charge, 2030-06-01 10:30 UTC → 2030-06-01 11:00 UTC" in out
    code, out, _ = run(capsys, "schedule", "-c", path, "show")
    assert code == 0
    assert "in force: cli v1 — 50 kW discharge now" in out
    assert "v2    received" in out and "v1    active" in out
    code, out, _ = run(capsys, "schedule", "-c", path, "clear")
    assert code == 0
    assert "cancelled cli v2 (was received)" in out and "cancelled cli v1 (was active)" in out
    assert "in force now: nothing" in out
    with ScheduleStore(cfg.storage.schedules_path, site_id="cli-1") as store:
        assert store.current(T0) is None
    code, out, _ = run(capsys, "schedule", "-c", path, "clear")
    assert code == 0 and "no local (cli or file) schedule to clear" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--kw", "90", "--until", "+1h"], "90 kW discharge is beyond the battery's rating "
         "(battery.max_discharge_kw = 80 kW)"),
        (["--kw", "-150", "--until", "+1h"], "150 kW charge is beyond the battery's rating "
         "(battery.max_charge_kw = 100 kW)"),
        (["--kw", "10", "--until", "2030-06-01T10:10Z"], "2030-06-01T10:10Z is not on a quarter "
         "hour: schedules run in 15-minute intervals — use 2030-06-01T10:00+00:00 or "
         "2030-06-01T10:15+00:00"),
        (["--kw", "10", "--until", "2030-06-01T11:00"], "has no UTC offset"),
        (["--kw", "10", "--until", "tomorrow"], "'tomorrow' is not a time: use now, +15m"),
        (["--kw", "10", "--from", "+2h", "--until", "+1h"], "must be after --from"),
        (["--kw", "10", "--from", "2030-06-01T08:00Z", "--until", "2030-06-01T09:00Z"],
         "has passed already"),
        (["--kw", "10", "--until", "+8d"], "longer than a local override may run"),
        (["--kw", "fast", "--until", "+1h"], "'fast' is not a power in kW"),
        (["--kw", "nan", "--until", "+1h"], "not a finite power"),
    ],
)  # fmt: skip
def test_schedule_set_refuses_bad_input(
    args: list[str],
    message: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    frozen_now: float,
) -> None:
    code, out, err = run(capsys, "schedule", "-c", str(site_file(tmp_path)), "set", *args)
    assert code == 2 and out == ""
    assert message in err, err
    assert not (tmp_path / "data" / "schedules.sqlite").exists()  # refused before any write


def test_schedule_notes_the_guards_limit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], frozen_now: float
) -> None:
    path = site_file(tmp_path)
    data = yaml.safe_load(path.read_text())
    data["limits"] = {"discharge_limit_kw": 40}
    path.write_text(yaml.safe_dump(data))
    code, out, _ = run(capsys, "schedule", "-c", str(path), "set", "--kw", "60", "--until", "+15m")
    assert code == 0
    assert "the safety guard limits discharge to 40 kW (limits.discharge_limit_kw)" in out


def test_parse_time() -> None:
    now = T0
    q = 900
    assert parse_time("now", now=now, end=False) == T0 - 7 * 60
    assert parse_time("now", now=now, end=True) == T0 + 8 * 60
    assert parse_time("+15m", now=now, end=True) == T0 - 7 * 60 + 2 * q
    assert parse_time("+ 2h", now=now, end=True) == T0 - 7 * 60 + 9 * q
    assert parse_time("+90s", now=now, end=False) == T0 - 7 * 60
    assert parse_time("+1d", now=now, end=False) == T0 - 7 * 60 + 96 * q
    assert parse_time("2030-06-01T12:15+02:00", now=now, end=False) == T0 + 8 * 60
    assert parse_time("2030-06-01T10:15:00Z", now=now, end=True) == T0 + 8 * 60


# -- config, env, run ---------------------------------------------------------------------------


def test_config_prints_effective_values_with_secrets_masked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = site_file(tmp_path, mqtt={"enabled": True, "username": "agent"})
    monkeypatch.setenv("BESS_REST_ENABLED", "true")
    monkeypatch.setenv("BESS_API_KEY", SECRET_KEY)
    monkeypatch.setenv("BESS_MQTT_PASSWORD", SECRET_PW)
    monkeypatch.setenv("BESS_MQTT_PORT", "8883")
    code, out, err = run(capsys, "config", "-c", str(path))
    assert code == 0
    assert SECRET_KEY not in out + err and SECRET_PW not in out + err
    assert "# sources.rest.api_key from BESS_API_KEY" in out
    assert "# sources.mqtt.port from BESS_MQTT_PORT" in out
    data = yaml.safe_load(out)
    assert data["sources"]["rest"]["api_key"] == "********"
    assert data["sources"]["mqtt"]["password"] == "********"  # noqa: S105
    assert data["sources"]["mqtt"]["port"] == 8883
    assert data["sources"]["mqtt"]["username"] == "agent"
    assert data["site_id"] == "cli-1"
    code, out, _ = run(capsys, "config", "-c", str(path), "--json")
    data = json.loads(out)
    assert SECRET_KEY not in out and data["config"]["sources"]["rest"]["api_key"] == "********"
    assert data["from_environment"]["sources.rest.api_key"] == "BESS_API_KEY"


def test_env_lists_every_variable_and_hides_secrets(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BESS_API_KEY", SECRET_KEY)
    monkeypatch.setenv("BESS_MODBUS_HOST", "10.0.0.5")
    code, out, _ = run(capsys, "env")
    assert code == 0 and SECRET_KEY not in out
    rows = {line.split()[0]: line for line in out.splitlines() if line.startswith("BESS_")}
    assert {v.name for v in ENV_VARS} <= set(rows)
    assert "sources.rest.api_key (secret)" in rows["BESS_API_KEY"]
    assert rows["BESS_API_KEY"].endswith("set (hidden)")
    assert rows["BESS_MODBUS_HOST"].endswith("'10.0.0.5'")
    assert rows["BESS_UPDATE_INTERVAL"].split()[1:3] == ["telemetry.interval_s", "number"]


BAD_FILES = {
    "contradiction": (
        "site_id: s\nbattery: {capacity_kwh: 10, max_charge_kw: 5, max_discharge_kw: 5}\n"
        "limits: {min_soc_pct: 95, max_soc_pct: 90}\n",
        "limits.min_soc_pct (95) must be below limits.max_soc_pct (90)",
    ),
    "yaml": ("site_id: s\nbattery: [1,\n", "not valid YAML at line 3, column 1"),
    "unknown field": ("site_id: s\nbatery: {}\n", "batery: unknown field"),
}


@pytest.mark.parametrize("command", ["run", "read", "config", "schedule"])
@pytest.mark.parametrize("case", BAD_FILES)
def test_bad_config_exits_2_with_the_problems(
    command: str, case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text, problem = BAD_FILES[case]
    path = tmp_path / "site.yaml"
    path.write_text(text)
    argv = [command, "-c", str(path)] + (["show"] if command == "schedule" else [])
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert err.startswith(f"bess-edge: {path} cannot be used:\n")
    assert f"  - {problem}" in err


def test_missing_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "run", "-c", str(tmp_path / "nope.yaml"))
    assert code == 2
    assert "file not found (create one with `bess-edge init > site.yaml`)" in err


def test_run_hands_over_to_the_agent_and_stops_on_sigterm(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, Any] = {}

    async def run_agent(config: SiteConfig, *, stop: asyncio.Event | None = None) -> int:
        import logging

        assert stop is not None
        seen["site"] = config.site_id
        logging.getLogger("edge_agent.agent").info("agent running")
        os.kill(os.getpid(), signal.SIGTERM)  # what systemd sends on stop
        await asyncio.wait_for(stop.wait(), 5)
        seen["stopped"] = True
        return 0

    fake = types.ModuleType("edge_agent.agent")
    fake.run_agent = run_agent  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "edge_agent.agent", fake)
    path = site_file(tmp_path)
    data = yaml.safe_load(path.read_text())
    data["logging"] = {"format": "json", "level": "INFO"}
    path.write_text(yaml.safe_dump(data))
    code, _, err = run(capsys, "run", "-c", str(path))
    assert code == 0
    assert seen == {"site": "cli-1", "stopped": True}
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert any(r["message"] == "agent running" and r["level"] == "INFO" for r in lines), err
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers removed again


def test_run_start_up_problem_is_one_plain_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    async def run_agent(config: SiteConfig, *, stop: asyncio.Event | None = None) -> int:
        raise RestIngestError("cannot listen for REST telemetry on 127.0.0.1:9520: in use")

    fake = types.ModuleType("edge_agent.agent")
    fake.run_agent = run_agent  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "edge_agent.agent", fake)
    path = site_file(tmp_path)
    code, _, err = run(capsys, "run", "-c", str(path))
    assert code == 1
    assert "bess-edge: the agent cannot run: cannot listen for REST telemetry" in err
    assert f"`bess-edge doctor -c {path}`" in err


def test_python_m_edge_agent_help() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "edge_agent", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: bess-edge")
    for command in ("init", "presets", "doctor", "read", "scan", "schedule", "run", "config"):
        assert command in result.stdout


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys)
    assert code == 2 and "required" in err


def test_schedule_load_csv_and_yaml_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], frozen_now: float
) -> None:
    path = str(site_file(tmp_path))
    csv_file = tmp_path / "plan.csv"
    csv_file.write_text(
        "start,power_kw\n"
        "2030-06-01T12:00+02:00,-40\n"
        "2030-06-01T12:15+02:00,-40\n"
        "2030-06-01T12:30+02:00,25.5\n"
    )
    code, out, _ = run(capsys, "schedule", "-c", path, "load", str(csv_file))
    assert code == 0, out
    assert "file schedule v1: 3 interval(s) of 15 min" in out
    cfg = load_config(path, env={})
    with ScheduleStore(cfg.storage.schedules_path, site_id="cli-1") as store:
        current = store.current(T0)
        assert current is not None and current.source is ScheduleSource.FILE
        assert current.setpoint_at(T0) == -40.0  # 10:07 UTC is in the 12:00+02:00 quarter
        assert current.setpoint_at(T0 + 23 * 60) == 25.5
    yaml_file = tmp_path / "plan.yaml"
    yaml_file.write_text("valid_from: '2030-06-01T10:00Z'\npower_kw: [10, 20, 30, 40]\n")
    code, out, _ = run(capsys, "schedule", "-c", path, "load", str(yaml_file))
    assert code == 0, out
    assert "file schedule v2: 4 interval(s)" in out
    code, out, _ = run(capsys, "schedule", "-c", path, "clear")
    assert code == 0 and "cancelled file v2" in out and "cancelled file v1" in out


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("a.csv", "when,kw\n", "the first line must be the header start,power_kw"),
        ("b.csv", "start,power_kw\n2030-06-01T10:00Z,lots\n", "line 2: 'lots' is not a power"),
        ("c.csv", "start,power_kw\n2030-06-01T10:00Z,500\n", "beyond the battery's rating"),
        ("d.csv", "start,power_kw\n2030-06-01T10:05Z,5\n", "line 2: 2030-06-01T10:05Z is not on"),
        ("e.yaml", "power_kw: [1]\n", "expected a mapping with valid_from"),
        ("f.yaml", "valid_from: '2030-06-01T10:00Z'\npower_kw: [1, x]\n", "power_kw[1]"),
        ("g.yaml", "valid_from: '2030-06-01T08:00Z'\npower_kw: [1]\n", "ended already"),
    ],
)  # fmt: skip
def test_schedule_load_refuses_bad_files(
    name: str,
    content: str,
    message: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    frozen_now: float,
) -> None:
    bad = tmp_path / name
    bad.write_text(content)
    code, _out, err = run(capsys, "schedule", "-c", str(site_file(tmp_path)), "load", str(bad))
    assert code == 2
    assert message in err, err
