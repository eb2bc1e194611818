"""``bess-hil`` end to end: a served battery read by an independent Modbus client, live faults
through the control port, plain-language errors and exit codes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pymodbus.client import AsyncModbusTcpClient

from hil.cli import main
from hil.clock import AcceleratedClock, SteppedClock
from hil.control import ControlService, demo_controller
from hil.model import BatterySpec
from hil.sim import Simulator

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 15.0


def hil(*args: str, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
    """Run ``python -m hil ARGS`` and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "hil", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        check=False,
    )


@dataclass
class Served:
    proc: subprocess.Popen[str]
    modbus_port: int
    control_port: int
    banner: list[str]
    lines: queue.Queue[str | None] = field(default_factory=queue.Queue)

    @property
    def control(self) -> str:
        return f"127.0.0.1:{self.control_port}"


def _pump(stream: object, into: queue.Queue[str | None]) -> None:
    for line in stream:  # type: ignore[attr-defined]
        into.put(line.rstrip("\n"))
    into.put(None)


@contextlib.contextmanager
def serve(*args: str, stop_signal: int = signal.SIGINT) -> Iterator[Served]:
    """``bess-hil serve`` on free ports; yields once it printed ``Ready.``."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hil",
            "serve",
            "--port",
            "0",
            "--control-port",
            "0",
            "--no-live",
            "--speed",
            "60",
            *args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    lines: queue.Queue[str | None] = queue.Queue()
    threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True).start()
    banner: list[str] = []
    deadline = time.monotonic() + START_TIMEOUT_S
    try:
        while not banner or banner[-1] != "Ready. Ctrl-C to stop.":
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"serve did not get ready; printed {banner}")
            if line is None:
                pytest.fail(f"serve exited {proc.wait()}: {banner} {proc.stderr.read()}")  # type: ignore[union-attr]
            banner.append(line)
        text = "\n".join(banner)
        modbus = re.search(r"Modbus TCP\s+listening on 127\.0\.0\.1:(\d+)", text)
        control = re.search(r"Control\s+127\.0\.0\.1:(\d+)", text)
        assert modbus and control, text
        yield Served(proc, int(modbus[1]), int(control[1]), banner, lines)
    finally:
        if proc.poll() is None:
            proc.send_signal(stop_signal)
        try:
            rc = proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            pytest.fail("serve did not stop on its signal")
        err = proc.stderr.read()  # type: ignore[union-attr]
        assert rc == 0, err
        assert "Traceback" not in err, err


async def read_holding(port: int, address: int, count: int = 1) -> list[int] | int:
    """Registers, or the exception code the server answered with."""
    client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=2, retries=0)
    await client.connect()
    try:
        rr = await client.read_holding_registers(address, count=count, device_id=1)
    finally:
        client.close()
    if rr.isError():
        return int(rr.exception_code)
    return list(rr.registers)


# -- serve ----------------------------------------------------------------------------------


@pytest.mark.integration
async def test_serve_answers_modbus_and_takes_live_faults() -> None:
    with serve("--preset", "generic", "--soc", "57.3") as s:
        assert "address  table" in s.banner[1]  # the register map comes first
        assert any(re.search(r"^\s+0\s+holding\s+soc\s+uint16", line) for line in s.banner)
        assert await read_holding(s.modbus_port, 0) == [573]  # generic: SoC x0.1 %

        r = hil("fault", "inject", "modbus_exception", "code=4", "--control", s.control)
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == "injected modbus_exception code=4 until cleared"
        assert await read_holding(s.modbus_port, 0) == 4  # server device failure

        r = hil("status", "--json", "--control", s.control)
        status = json.loads(r.stdout)
        assert [f["kind"] for f in status["faults"]] == ["modbus_exception"]
        assert status["servers"]["modbus"]["exceptions"] >= 1

        r = hil("fault", "clear", "--control", s.control)
        assert (r.returncode, r.stdout.strip()) == (0, "cleared 1 fault(s)")
        assert await read_holding(s.modbus_port, 0) == [573]


@pytest.mark.integration
async def test_serve_sunspec_with_a_scheduled_fault_and_sigterm() -> None:
    with serve(
        "--preset", "sunspec", "--fault", "modbus_exception:code=6+1h", stop_signal=signal.SIGTERM
    ) as s:
        assert "Fault        modbus_exception code=6 for 3600 s" in s.banner
        assert await read_holding(s.modbus_port, 40000, 2) == 6  # device busy, from the start
        r = hil("fault", "clear", "modbus_exception", "--control", s.control)
        assert r.returncode == 0, r.stderr
        assert await read_holding(s.modbus_port, 40000, 2) == [0x5375, 0x6E53]  # "SunS"


@pytest.mark.integration
async def test_serve_publishes_to_mqtt(mqtt_broker: tuple[str, int]) -> None:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    host, port = mqtt_broker
    prefix = f"cli-{uuid.uuid4().hex[:10]}"
    got: queue.Queue[tuple[str, str]] = queue.Queue()
    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"sub-{prefix}")
    sub.on_message = lambda c, u, m: got.put((m.topic, m.payload.decode()))
    sub.connect(host, port)
    sub.subscribe(f"{prefix}/#", qos=1)
    sub.loop_start()
    try:
        with serve(
            "--preset",
            "generic",
            "--soc",
            "42",
            "--mqtt-broker",
            f"{host}:{port}",
            "--mqtt-topic-prefix",
            prefix,
            "--mqtt-interval-s",
            "10",
        ) as s:
            assert any(line.startswith("MQTT ") and f"{prefix}/soc" in line for line in s.banner)
            deadline = time.monotonic() + 3
            seen: dict[str, str] = {}
            while "soc" not in seen or "power" not in seen:
                topic, payload = got.get(timeout=max(0.01, deadline - time.monotonic()))
                seen[topic.removeprefix(f"{prefix}/")] = payload
            assert float(seen["soc"]) == pytest.approx(42.0, abs=0.01)
            assert seen.get("status", "online") == "online"
    finally:
        sub.publish(f"{prefix}/status", b"", qos=1, retain=True).wait_for_publish(1)
        sub.disconnect()
        sub.loop_stop()


def test_port_in_use_is_a_plain_error_with_exit_code_2() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = hil("serve", "--port", str(port), "--no-live")
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert r.stderr.strip() == (
        f"bess-hil: error: cannot listen for Modbus TCP on 127.0.0.1:{port}: the port is "
        "already in use (another bess-hil or device simulator?). Stop it or choose another "
        "with --port."
    )


# -- run-scenario ---------------------------------------------------------------------------


def test_run_scenario_exit_codes(tmp_path: Path) -> None:
    ok = hil("run-scenario", "bms_limits")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "PASSED: 13 passed, 0 failed" in ok.stdout

    failing = tmp_path / "failing.yaml"
    failing.write_text("expect:\n  - {at: 1m, soc_pct: {gt: 99}}\n")
    r = hil("run-scenario", str(failing), "--json")
    assert r.returncode == 1
    report = json.loads(r.stdout)
    assert report["passed"] is False
    assert report["checks"][0]["actual"] == pytest.approx(50.0, abs=0.01)

    broken = tmp_path / "broken.yaml"
    broken.write_text("events:\n  - {at: 1m, fault: {kind: fire}}\n")
    r = hil("run-scenario", str(broken))
    assert r.returncode == 2
    assert f"{broken}:2: events[0].fault.kind: Input should be 'drop_connections'" in r.stderr
    assert "Traceback" not in r.stderr

    r = hil("run-scenario", "no_such_file.yaml")
    assert r.returncode == 2
    assert "no scenario file 'no_such_file.yaml'; shipped scenarios: bms_limits" in r.stderr


# -- in-process: arguments, maps, clients without a server ----------------------------------


def run_main(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["serve", "--speed", "0"], "argument --speed: must be > 0 (got 0)"),
        (["serve", "--soc", "120"], "argument --soc: must be within 0..100 % (got 120)"),
        (["serve", "--port", "70000"], "argument --port: must be 0..65535"),
        (
            ["serve", "--fault", "fire"],
            "argument --fault: unknown fault 'fire'; choose one of: drop_connections,",
        ),
        (
            ["serve", "--fault", "modbus_exception:cod=4"],
            "argument --fault: fault 'modbus_exception' does not take ['cod']",
        ),
        (["serve", "--mqtt-format", "xml"], "argument --mqtt-format: invalid choice: 'xml'"),
        (["serve", "--preset", "nope"], "no register map 'nope': give a file path or one of"),
        (
            ["fault", "inject", "freeze", "quantities=soc"],
            "fault inject: unknown quantity ['soc']; choose from: soc_pct,",
        ),
        (["fault", "inject", "fire"], "fault inject: unknown fault 'fire'; choose one of:"),
        (["frobnicate"], "argument COMMAND: invalid choice: 'frobnicate'"),
    ],
)
def test_bad_arguments_name_the_argument_and_the_allowed_values(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code, _, err = run_main(capsys, *argv)
    assert code == 2
    assert message in err


def test_control_commands_without_a_simulator(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code, _, err = run_main(capsys, "status", "--control", f"127.0.0.1:{port}")
    assert code == 2
    assert f"no simulator control endpoint at 127.0.0.1:{port}" in err


def test_maps_lists_and_shows(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_main(capsys, "maps")
    assert code == 0
    assert re.search(r"^\s+generic\s+\d+ points", out, re.M)
    assert re.search(r"^\s+sunspec\s+\d+ points", out, re.M)
    code, out, _ = run_main(capsys, "maps", "show", "sunspec")
    assert code == 0
    assert "40000  holding  marker.SunS" in out


def test_scenarios_lists_the_shipped_ones(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_main(capsys, "scenarios")
    assert code == 0
    for name in ("day_cycle", "bms_limits", "frequency_dip", "revert_timeout", "thermal_runaway"):
        assert name in out
    assert "INVALID" not in out


def test_python_dash_m_hil_help() -> None:
    r = hil("--help")
    assert r.returncode == 0
    assert "serve" in r.stdout and "run-scenario" in r.stdout
    assert not r.stderr


# -- the control service without I/O --------------------------------------------------------


def control_service() -> tuple[ControlService, Simulator]:
    sim = Simulator(BatterySpec(), SteppedClock())
    return ControlService(sim, {"modbus": lambda: {"requests": 7}}), sim


@pytest.mark.parametrize(
    ("request_", "error"),
    [
        ({"cmd": "explode"}, "unknown command 'explode'; commands: inject, clear, set_power"),
        ([1, 2], "a request is a JSON object"),
        ({"cmd": "set_power", "kw": "lots"}, "kw must be a finite number"),
        ({"cmd": "inject", "kind": "fire"}, "unknown fault 'fire'; choose one of:"),
        (
            {"cmd": "inject", "kind": "modbus_exception", "params": {"code": 300}},
            "modbus_exception code must be an integer 1..255 (got 300)",
        ),
        ({"cmd": "inject", "kind": "freeze", "duration_s": -1}, "fault duration must be > 0"),
        ({"cmd": "clear", "kind": "fire"}, "unknown fault 'fire'; choose all or:"),
    ],
)
def test_control_service_refuses_bad_requests_plainly(request_: object, error: str) -> None:
    service, sim = control_service()
    answer = service.handle(request_)
    assert answer["ok"] is False
    assert error in answer["error"]
    assert sim.faults.all() == []


def test_control_service_injects_sets_power_and_reports() -> None:
    service, _ = control_service()
    answer = service.handle(
        {
            "cmd": "inject",
            "kind": "out_of_range",
            "params": {"quantity": "soc_pct"},
            "duration_s": 60,
        }
    )
    assert answer["ok"], answer
    assert service.handle({"cmd": "set_power", "kw": -25})["setpoint_kw"] == -25.0
    status = service.status()
    assert status["measurements"]["soc_pct"] == 250.0  # as reported ...
    assert status["physics"]["soc_pct"] == 50.0  # ... and as it is
    assert status["measurements"]["setpoint_kw"] == -25.0
    assert [f["kind"] for f in status["faults"]] == ["out_of_range"]
    assert status["servers"] == {"modbus": {"requests": 7}}
    assert service.handle({"cmd": "clear"}) == {"ok": True, "cleared": 1}


async def test_demo_controller_keeps_writing_a_sine() -> None:
    sim = Simulator(BatterySpec(), AcceleratedClock(speed=600.0))
    task = asyncio.create_task(demo_controller(sim, period_s=600.0, refresh_s=5.0))
    await asyncio.sleep(0.15)  # ~90 simulated seconds
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert 0 < sim.state.setpoint_kw <= 80.0
    assert sim.state.setpoint_written_at is not None
    assert sim.clock.now() - sim.state.setpoint_written_at < 60.0
