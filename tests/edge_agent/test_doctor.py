"""``bess-edge doctor`` against real things on loopback: the hil Modbus server, Mosquitto (with
and without authentication), a gRPC server, SQLite files; and against things that are down.

Every run passes ``env`` explicitly (no BESS_* leaks in from the developer's shell) and short
timeouts, and checks that the whole doctor stays fast.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import paho.mqtt.publish as mqtt_publish
import pytest
import yaml

from edge_agent.doctor import (
    Check,
    DoctorOptions,
    DoctorReport,
    Status,
    check_clock,
    run_doctor,
)
from edge_agent.outbox import Outbox
from edge_agent.rest_ingest import RestIngestServer, RestIngestSettings
from hil.clock import SteppedClock
from hil.modbus_server import ModbusBatteryServer
from hil.model import BatterySpec
from hil.regmap import load_register_map
from hil.sim import Simulator

FAST = DoctorOptions(
    connect_timeout_s=1.0, request_timeout_s=0.5, mqtt_wait_s=1.5, uplink_timeout_s=1.5
)
KEY = "doctor-test-key-0123456789"


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1 (nothing listens there)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture
def sim() -> Simulator:
    return Simulator(BatterySpec(), SteppedClock(), soc_pct=57.3)


@contextlib.asynccontextmanager
async def hil(sim: Simulator, regmap: str) -> AsyncIterator[int]:
    async with ModbusBatteryServer(sim, load_register_map(regmap), port=0) as srv:
        yield srv.port


@contextlib.asynccontextmanager
async def grpc_server() -> AsyncIterator[int]:
    """A real gRPC server (no services: the doctor only needs the channel to get ready)."""
    server = grpc.aio.server()
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield port
    finally:
        await server.stop(None)


@contextlib.asynccontextmanager
async def closing_server() -> AsyncIterator[int]:
    """Accepts TCP and hangs up at once: something that is not the expected protocol."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        await server.wait_closed()


@contextlib.asynccontextmanager
async def silent_server() -> AsyncIterator[int]:
    """Accepts TCP and reads, never answers: a device that ignores the unit id asked for."""
    writers: list[asyncio.StreamWriter] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        with contextlib.suppress(ConnectionError):
            while await reader.read(1024):
                pass

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        for w in writers:
            w.close()
        server.close()
        await server.wait_closed()


def write_config(tmp_path: Path, **sections: Any) -> Path:
    data: dict[str, Any] = {
        "site_id": "doctor-1",
        "battery": {"capacity_kwh": 200, "max_charge_kw": 100, "max_discharge_kw": 100},
        "storage": {"data_dir": str(tmp_path / "data")},
    }
    sources = {k: sections.pop(k) for k in ("modbus", "mqtt", "rest") if k in sections}
    if sources:
        data["sources"] = sources
    data.update(sections)
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def modbus(port: int, preset: str = "sunspec", **extra: Any) -> dict[str, Any]:
    return {"host": "127.0.0.1", "port": port, "preset": preset, **extra}


def assert_row(report: DoctorReport, name: str, status: Status, *texts: str) -> Check:
    row = report.check(name)
    assert row is not None, report.table()
    assert row.status is status, report.table()
    for text in texts:
        assert text in row.detail + "\n" + row.hint, report.table()
    return row


@pytest.fixture
def topics(mqtt_broker: tuple[str, int]) -> Iterator[dict[str, str]]:
    """Retained values on a fresh topic prefix, cleared afterwards."""
    host, port = mqtt_broker
    prefix = f"doctor-{uuid.uuid4().hex[:8]}"
    values = {"soc": "57.3", "power": "-12.5", "temp": "24.0"}
    names = {k: f"{prefix}/{k}" for k in values}
    mqtt_publish.multiple(
        [(names[k], v, 1, True) for k, v in values.items()], hostname=host, port=port
    )
    yield names
    mqtt_publish.multiple([(t, "", 1, True) for t in names.values()], hostname=host, port=port)


def mqtt_section(broker: tuple[str, int], names: dict[str, str], **extra: Any) -> dict[str, Any]:
    return {
        "enabled": True,
        "host": broker[0],
        "port": broker[1],
        "topics": {
            "soc_pct": names["soc"],
            "active_power_kw": names["power"],
            "temperature_c": names["temp"],
        },
        "accept_retained_without_timestamp": True,
        **extra,
    }


# -- all fine -----------------------------------------------------------------------------------


@pytest.mark.integration
async def test_all_ok_against_hil_mosquitto_grpc(
    tmp_path: Path, sim: Simulator, mqtt_broker: tuple[str, int], topics: dict[str, str]
) -> None:
    (tmp_path / "data").mkdir()
    with Outbox(tmp_path / "data" / "outbox.sqlite") as outbox:
        outbox.append("telemetry", [(time.time(), b"x")] * 3)
    async with hil(sim, "sunspec") as port, grpc_server() as plane_port:
        path = write_config(
            tmp_path,
            modbus=modbus(port),
            mqtt=mqtt_section(mqtt_broker, topics),
            rest={"enabled": True, "port": free_port()},
            uplink={"target": f"127.0.0.1:{plane_port}", "token_env": "DOCTOR_TOKEN"},
        )
        started = time.monotonic()
        report = await run_doctor(
            path, env={"BESS_API_KEY": KEY, "DOCTOR_TOKEN": "t"}, options=FAST
        )
        elapsed = time.monotonic() - started
    not_ok = [c for c in report.checks if c.status is not Status.OK and c.name != "clock"]
    assert not_ok == [], report.table()
    assert report.exit_code == 0 and not report.failed
    assert_row(report, "config", Status.OK, "site doctor-1", "modbus (sunspec), mqtt, rest")
    assert_row(report, "modbus: unit id", Status.OK, "unit 1 answers")
    assert_row(report, "modbus: sunspec", Status.OK, "at 40000", "124 (storage controls)")
    assert_row(report, "modbus: points", Status.OK, "device: Phoenyra BESS-HIL-Simulator")
    assert_row(report, "modbus: telemetry", Status.OK, "soc_pct 57.3 %", "active_power_kw 0 kW")
    assert_row(report, "modbus: revert timeout", Status.OK, "after 60 s", "every 10 s")
    assert_row(report, "mqtt: broker", Status.OK, "(anonymous)")
    assert_row(report, "mqtt: messages", Status.OK, "soc_pct 57.3 %", "active_power_kw -12.5 kW")
    assert_row(report, "rest: port", Status.OK, "free to listen on")
    assert_row(report, "uplink: grpc", Status.OK, "ready")
    assert_row(report, "uplink: credentials", Status.OK, "token from $DOCTOR_TOKEN")
    assert_row(report, "disk: data dir", Status.OK, "writable")
    assert_row(report, "disk: outbox", Status.OK, "telemetry: 3 waiting")
    assert report.check("clock") is not None
    assert elapsed < 5.0  # the retained messages end the MQTT wait early
    table = report.table()
    assert table.splitlines()[0].split() == ["CHECK", "STATUS", "DETAIL"]


@pytest.mark.integration
async def test_generic_map_all_ok(tmp_path: Path, sim: Simulator) -> None:
    async with hil(sim, "generic") as port:
        report = await run_doctor(
            write_config(tmp_path, modbus=modbus(port, "generic")), env={}, options=FAST
        )
    assert_row(report, "modbus: points", Status.OK, "14 of 14 points read")
    assert_row(report, "modbus: telemetry", Status.OK, "soc_pct 57.3 %", "temperature_c")
    assert report.check("modbus: sunspec") is None  # a plain map has no discovery
    assert_row(report, "uplink", Status.SKIP, "no uplink configured")
    assert_row(report, "disk: data dir", Status.OK, "can be created")
    assert report.exit_code == 0


# -- Modbus failures --------------------------------------------------------------------------


async def test_connection_refused(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    report = await run_doctor(write_config(tmp_path, modbus=modbus(port)), env={}, options=FAST)
    assert_row(
        report,
        "modbus: connect",
        Status.FAIL,
        f"connection refused at 127.0.0.1:{port}",
        "is Modbus TCP enabled on the inverter, and the port right",
    )
    for name in ("modbus: unit id", "modbus: sunspec", "modbus: points"):
        assert_row(report, name, Status.SKIP, "no connection")
    assert report.exit_code == 1


@pytest.mark.integration
async def test_wrong_unit_id(tmp_path: Path, sim: Simulator) -> None:
    async with hil(sim, "sunspec") as port:
        report = await run_doctor(
            write_config(tmp_path, modbus=modbus(port, unit_id=7)), env={}, options=FAST
        )
    assert_row(report, "modbus: connect", Status.OK)
    assert_row(
        report,
        "modbus: unit id",
        Status.FAIL,
        "unit 7 does not answer",
        "check the unit id (SMA: 3, Victron GX: 100",
    )
    assert_row(report, "modbus: sunspec", Status.SKIP)
    assert report.exit_code == 1


async def test_unit_that_never_answers_times_out_fast(tmp_path: Path) -> None:
    async with silent_server() as port:
        started = time.monotonic()
        report = await run_doctor(
            write_config(tmp_path, modbus=modbus(port, "generic")), env={}, options=FAST
        )
    assert_row(
        report,
        "modbus: unit id",
        Status.FAIL,
        "no answer from unit 1 within 0.5 s",
        "check the unit id",
    )
    assert time.monotonic() - started < 3.0


@pytest.mark.integration
async def test_no_sunspec_marker(tmp_path: Path, sim: Simulator) -> None:
    async with hil(sim, "generic") as port:
        report = await run_doctor(
            write_config(tmp_path, modbus=modbus(port, "sunspec")), env={}, options=FAST
        )
    assert_row(report, "modbus: unit id", Status.OK, "unit 1 answers")
    row = assert_row(
        report,
        "modbus: sunspec",
        Status.FAIL,
        "SunSpec marker not found at 40000/0/50000",
        "is this a SunSpec device? try the vendor preset",
    )
    assert "bess-edge scan 127.0.0.1" in row.hint
    assert_row(report, "modbus: points", Status.SKIP, "no SunSpec map")


@pytest.mark.integration
async def test_plain_preset_that_does_not_fit(tmp_path: Path, sim: Simulator) -> None:
    async with hil(sim, "sunspec") as port:
        report = await run_doctor(
            write_config(tmp_path, modbus=modbus(port, "generic")), env={}, options=FAST
        )
    assert_row(report, "modbus: unit id", Status.OK, "exception 2")
    assert_row(report, "modbus: points", Status.FAIL, "0 of 14 points read", "check the preset")


@pytest.mark.integration
async def test_refresh_slower_than_the_devices_revert_timeout(
    tmp_path: Path, sim: Simulator
) -> None:
    async with hil(sim, "generic") as port:
        path = write_config(
            tmp_path, modbus=modbus(port, "generic"), executor={"refresh_interval_s": 90}
        )
        report = await run_doctor(path, env={}, options=FAST)
    assert_row(
        report,
        "modbus: revert timeout",
        Status.FAIL,
        "refresh_interval_s (90 s) must be well below the device's revert timeout (60 s)",
    )


async def test_unknown_preset(tmp_path: Path) -> None:
    report = await run_doctor(
        write_config(tmp_path, modbus=modbus(free_port(), "tesla")), env={}, options=FAST
    )
    assert_row(report, "modbus: preset", Status.FAIL, "no Modbus preset 'tesla'", "presets")


# -- MQTT -------------------------------------------------------------------------------------


async def test_broker_unreachable(tmp_path: Path) -> None:
    port = free_port()
    mqtt = {"enabled": True, "host": "127.0.0.1", "port": port}
    report = await run_doctor(write_config(tmp_path, mqtt=mqtt), env={}, options=FAST)
    assert_row(
        report,
        "mqtt: broker",
        Status.FAIL,
        f"connection refused at 127.0.0.1:{port}",
        "is the broker running, and the port right",
    )
    assert_row(report, "mqtt: subscribe", Status.SKIP)
    assert_row(report, "mqtt: messages", Status.SKIP)
    assert report.exit_code == 1


async def test_broker_name_that_does_not_resolve(tmp_path: Path) -> None:
    mqtt = {"enabled": True, "host": "no-such-broker.invalid", "port": 1883}
    report = await run_doctor(write_config(tmp_path, mqtt=mqtt), env={}, options=FAST)
    assert_row(
        report, "mqtt: broker", Status.FAIL, "cannot resolve the host name", "use the IP address"
    )


@pytest.mark.integration
async def test_silent_topics_warn(tmp_path: Path, mqtt_broker: tuple[str, int]) -> None:
    silent = {k: f"doctor-silent-{uuid.uuid4().hex[:8]}/{k}" for k in ("soc", "power", "temp")}
    options = DoctorOptions(mqtt_wait_s=0.5)
    path = write_config(tmp_path, mqtt=mqtt_section(mqtt_broker, silent))
    report = await run_doctor(path, env={}, options=options)
    assert_row(report, "mqtt: broker", Status.OK)
    assert_row(report, "mqtt: subscribe", Status.OK, silent["soc"])
    assert_row(report, "mqtt: messages", Status.WARN, "no message on", "is the device publishing?")
    assert report.exit_code == 0  # a warning is not a failure


@pytest.mark.integration
async def test_bad_payload_and_retained_without_timestamp(
    tmp_path: Path, mqtt_broker: tuple[str, int], topics: dict[str, str]
) -> None:
    host, port = mqtt_broker
    mqtt_publish.single(topics["temp"], "warm", qos=1, retain=True, hostname=host, port=port)
    section = mqtt_section(mqtt_broker, topics, accept_retained_without_timestamp=False)
    report = await run_doctor(write_config(tmp_path, mqtt=section), env={}, options=FAST)
    assert_row(report, "mqtt: messages", Status.FAIL, "payload 'warm'", "not a number")
    section["topics"].pop("temperature_c")
    report = await run_doctor(write_config(tmp_path, mqtt=section), env={}, options=FAST)
    assert_row(
        report,
        "mqtt: messages",
        Status.WARN,
        "soc_pct 57.3 %",
        "retained value without a timestamp",
    )


@pytest.fixture(scope="module")
def auth_broker() -> Iterator[tuple[str, int]]:
    """A Mosquitto that refuses anonymous clients; user 'agent', password 'right-password'."""
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    passwd = shutil.which("mosquitto_passwd")
    if not Path(exe).exists() or passwd is None:
        pytest.skip("needs mosquitto and mosquitto_passwd")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="mosquitto-auth-") as tmp:
        pwfile = Path(tmp) / "passwd"
        subprocess.run([passwd, "-b", "-c", str(pwfile), "agent", "right-password"], check=True)
        pwfile.chmod(0o644)
        Path(tmp).chmod(0o755)
        conf = Path(tmp) / "mosquitto.conf"
        conf.write_text(
            f"listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {pwfile}\n"
            "persistence false\nlog_dest stderr\n"
        )
        proc = subprocess.Popen(
            [exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            deadline = time.monotonic() + 10
            while True:
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)):
                    break
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("mosquitto with a password file did not start")
                time.sleep(0.05)
            yield "127.0.0.1", port
        finally:
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.mark.integration
@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_broker_refuses_wrong_password(
    tmp_path: Path, auth_broker: tuple[str, int], protocol: str
) -> None:
    host, port = auth_broker
    mqtt = {
        "enabled": True,
        "host": host,
        "port": port,
        "username": "agent",
        "protocol": protocol,
    }
    path = write_config(tmp_path, mqtt=mqtt)
    env = {"BESS_MQTT_PASSWORD": "wrong-password"}
    report = await run_doctor(path, env=env, options=FAST)
    row = assert_row(
        report,
        "mqtt: broker",
        Status.FAIL,
        "MQTT broker refused: not authorised",
        "check username/password",
    )
    assert "wrong-password" not in row.detail + row.hint
    env = {"BESS_MQTT_PASSWORD": "right-password"}
    report = await run_doctor(path, env=env, options=DoctorOptions(mqtt_wait_s=0.2))
    assert_row(report, "mqtt: broker", Status.OK, "as agent")
    assert_row(report, "mqtt: subscribe", Status.OK)


# -- REST, uplink, disk -------------------------------------------------------------------------


async def test_rest_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        path = write_config(tmp_path, rest={"enabled": True, "port": port})
        report = await run_doctor(path, env={"BESS_API_KEY": KEY}, options=FAST)
    assert_row(report, "rest: port", Status.FAIL, "in use by another program", "BESS_REST_PORT")


async def test_rest_port_held_by_a_running_agent(tmp_path: Path) -> None:
    settings = RestIngestSettings(enabled=True, port=0, api_key=KEY)  # type: ignore[arg-type]

    class Sink:
        def ingest(self, readings: object) -> None:
            pass

    async with RestIngestServer(settings, Sink()) as server:
        path = write_config(tmp_path, rest={"enabled": True, "port": server.port})
        report = await run_doctor(path, env={"BESS_API_KEY": KEY}, options=FAST)
    assert_row(report, "rest: port", Status.OK, "served by a running agent")


async def test_uplink_down_and_not_grpc(tmp_path: Path) -> None:
    port = free_port()
    path = write_config(tmp_path, uplink={"target": f"127.0.0.1:{port}"})
    report = await run_doctor(path, env={}, options=FAST)
    assert_row(report, "uplink: address", Status.OK, "127.0.0.1")
    assert_row(report, "uplink: connect", Status.FAIL, "connection refused", "control plane")
    assert_row(report, "uplink: credentials", Status.WARN, "no TLS", "no site token")
    assert_row(report, "uplink: grpc", Status.SKIP)
    async with closing_server() as not_grpc:
        path = write_config(tmp_path, uplink={"target": f"127.0.0.1:{not_grpc}"})
        report = await run_doctor(path, env={}, options=FAST)
    assert_row(report, "uplink: connect", Status.OK)
    assert_row(report, "uplink: grpc", Status.FAIL, "no gRPC (HTTP/2) channel", "EdgeLink port")


async def test_uplink_name_and_files(tmp_path: Path) -> None:
    uplink = {
        "target": "no-such-plane.invalid:50051",
        "tls": {"enabled": True, "ca_file": str(tmp_path / "missing-ca.pem")},
        "token_env": "DOCTOR_TOKEN",
    }
    report = await run_doctor(write_config(tmp_path, uplink=uplink), env={}, options=FAST)
    assert_row(report, "uplink: address", Status.FAIL, "cannot resolve", "BESS_UPLINK_TARGET")
    assert_row(report, "uplink: credentials", Status.FAIL, "tls.ca_file", "missing-ca.pem")
    assert_row(report, "uplink: connect", Status.SKIP)


async def test_corrupt_outbox_fails(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "outbox.sqlite").write_bytes(b"this is not sqlite" * 100)
    report = await run_doctor(write_config(tmp_path), env={}, options=FAST)
    assert_row(report, "disk: outbox", Status.FAIL, "not a usable outbox", "move the file aside")
    assert_row(report, "disk: data dir", Status.OK, "writable")


async def test_data_dir_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "data").write_text("oops")
    report = await run_doctor(write_config(tmp_path), env={}, options=FAST)
    assert_row(report, "disk: data dir", Status.FAIL, "is not a directory", "BESS_DATA_DIR")


# -- config and overall -----------------------------------------------------------------------


async def test_bad_config_is_one_fail_row_with_every_problem(tmp_path: Path) -> None:
    path = tmp_path / "site.yaml"
    path.write_text(
        "site_id: s\nbattery: {capacity_kwh: 10, max_charge_kw: 5, max_discharge_kw: 5}\n"
        "limits: {min_soc_pct: 150}\nlimts: {}\n"
    )
    report = await run_doctor(path, env={}, options=FAST)
    assert [c.name for c in report.checks] == ["config"]
    row = assert_row(report, "config", Status.FAIL, "2 problem(s)", "bess-edge init")
    assert "limits.min_soc_pct = 150: Input should be less than or equal to 100" in row.detail
    assert "limts: unknown field" in row.detail
    assert report.exit_code == 1


async def test_env_overrides_are_reported(tmp_path: Path) -> None:
    port = free_port()
    report = await run_doctor(
        write_config(tmp_path, modbus=modbus(1)),
        env={"BESS_MODBUS_PORT": str(port)},
        options=FAST,
    )
    assert_row(report, "config", Status.OK, "from the environment: BESS_MODBUS_PORT")
    assert_row(report, "modbus: connect", Status.FAIL, f"127.0.0.1:{port}")


async def test_everything_down_finishes_fast(tmp_path: Path) -> None:
    async with silent_server() as silent:
        path = write_config(
            tmp_path,
            modbus=modbus(silent),
            mqtt={"enabled": True, "host": "127.0.0.1", "port": free_port()},
            uplink={"target": f"127.0.0.1:{silent}"},  # TCP works, gRPC never gets ready
        )
        started = time.monotonic()
        report = await run_doctor(path, env={}, options=DoctorOptions())  # the CLI's defaults
        elapsed = time.monotonic() - started
    assert report.exit_code == 1
    assert_row(report, "modbus: unit id", Status.FAIL)
    assert_row(report, "mqtt: broker", Status.FAIL)
    assert_row(report, "uplink: grpc", Status.FAIL)
    assert elapsed < 4.0, elapsed


def test_table_layout_and_exit_code() -> None:
    report = DoctorReport(
        "site.yaml",
        (
            Check("config", Status.OK, "fine"),
            Check("modbus: connect", Status.FAIL, "connection refused at h:502", "is it on?"),
            Check("clock", Status.WARN, "not synchronised"),
        ),
        elapsed_s=0.42,
    )
    lines = report.table(width=80).splitlines()
    assert lines[0].startswith("CHECK") and "STATUS" in lines[0] and "DETAIL" in lines[0]
    assert lines[2].split()[:4] == ["modbus:", "connect", "FAIL", "connection"]
    assert lines[3].strip() == "→ is it on?"
    assert lines[-1] == "1 FAIL, 1 WARN, 1 OK in 0.4 s"
    assert report.exit_code == 1
    assert report.as_dict()["checks"][1] == {
        "check": "modbus: connect",
        "status": "FAIL",
        "detail": "connection refused at h:502",
        "hint": "is it on?",
    }
    ok = DoctorReport("x", (Check("config", Status.OK, "fine"),), 0.1)
    assert ok.exit_code == 0 and ok.table().splitlines()[-1] == "all 1 checks OK in 0.1 s"


def test_clock_check_never_fails() -> None:
    assert check_clock().status in (Status.OK, Status.WARN, Status.SKIP)
