"""Live control of a running simulator: fault injection, power, status.

A tiny loopback endpoint speaking newline-delimited JSON over TCP (no dependencies; ``nc``
works as a client). One request object per line, one response object per line::

    {"cmd": "inject", "kind": "modbus_exception", "params": {"code": 4}, "duration_s": 30}
    {"cmd": "clear"}                      # all faults;  {"cmd": "clear", "kind": "freeze"}
    {"cmd": "set_power", "kw": -50}       # + discharge, - charge
    {"cmd": "status"}                     # measurements, active faults, server statistics
    {"cmd": "ping"}

``demo_controller`` is a stand-in for a real controller (``bess-hil serve --demo-controller``):
it keeps writing a slow sine of charge and discharge so that a demo has something to show.

Responses are ``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}``. The endpoint has no
authentication, so it binds 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import socket
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any

from .config import iso_utc, make_fault
from .faults import Fault, FaultKind
from .sim import Simulator

log = logging.getLogger(__name__)

DEFAULT_CONTROL_PORT = 5021
MAX_REQUEST_BYTES = 64 * 1024
COMMANDS = ("inject", "clear", "set_power", "status", "ping")

StatsProvider = Callable[[], Mapping[str, Any]]


class ControlError(Exception):
    """A control request that cannot be carried out (bad command, bad parameters, no server)."""


def fault_to_dict(fault: Fault, now: float) -> dict[str, Any]:
    end = (
        None if fault.duration_s is None or fault.start is None else fault.start + fault.duration_s
    )
    return {
        "kind": fault.kind.value,
        "params": fault.params,
        "start": None if fault.start is None else iso_utc(fault.start),
        "duration_s": fault.duration_s,
        "active": fault.active(now),
        "remaining_s": None if end is None else max(0.0, end - now),
    }


def _expired(fault: Fault, now: float) -> bool:
    return (
        fault.start is not None
        and fault.duration_s is not None
        and now >= fault.start + fault.duration_s
    )


class ControlService:
    """The commands, without I/O: ``handle(request) -> response``."""

    def __init__(self, sim: Simulator, stats: Mapping[str, StatsProvider] | None = None) -> None:
        self.sim = sim
        self.stats = dict(stats or {})

    def handle(self, request: Any) -> dict[str, Any]:
        try:
            if not isinstance(request, dict):
                raise ControlError('a request is a JSON object such as {"cmd": "status"}')
            cmd = request.get("cmd")
            if cmd == "inject":
                return self._inject(request)
            if cmd == "clear":
                return self._clear(request)
            if cmd == "set_power":
                return self._set_power(request)
            if cmd == "status":
                return self.status()
            if cmd == "ping":
                return {"ok": True}
            raise ControlError(f"unknown command {cmd!r}; commands: {', '.join(COMMANDS)}")
        except (ControlError, ValueError, TypeError) as exc:
            return {"ok": False, "error": str(exc)}

    def _inject(self, req: dict[str, Any]) -> dict[str, Any]:
        params = req.get("params") or {}
        if not isinstance(params, dict):
            raise ControlError("params must be an object of name: value")
        duration = req.get("duration_s")
        delay = float(req.get("start_in_s") or 0.0)
        if delay < 0:
            raise ControlError(f"start_in_s must be >= 0 (got {delay})")
        self.sim.sync()
        now = self.sim.state.timestamp
        fault = make_fault(
            str(req.get("kind")),
            params,
            start=now + delay,
            duration_s=None if duration is None else float(duration),
        )
        self.sim.inject(fault)
        return {"ok": True, "fault": fault_to_dict(fault, now)}

    def _clear(self, req: dict[str, Any]) -> dict[str, Any]:
        kind_text = req.get("kind")
        kind: FaultKind | None = None
        if kind_text not in (None, "", "all"):
            try:
                kind = FaultKind(str(kind_text))
            except ValueError:
                kinds = ", ".join(k.value for k in FaultKind)
                raise ControlError(f"unknown fault {kind_text!r}; choose all or: {kinds}") from None
        self.sim.sync()
        cleared = self.sim.faults.clear(kind)
        log.warning("faults cleared: %s (%d)", kind.value if kind else "all", cleared)
        return {"ok": True, "cleared": cleared}

    def _set_power(self, req: dict[str, Any]) -> dict[str, Any]:
        kw = req.get("kw")
        if isinstance(kw, bool) or not isinstance(kw, int | float) or not math.isfinite(kw):
            raise ControlError(f"kw must be a finite number (+ discharge, - charge), got {kw!r}")
        self.sim.command_power_kw(float(kw))
        return {"ok": True, "setpoint_kw": float(kw)}

    def status(self) -> dict[str, Any]:
        m = self.sim.measure()
        measurements: dict[str, Any] = {
            "time": iso_utc(m.timestamp),
            "soc_pct": m.soc_pct,
            "power_kw": m.power_kw,
            "setpoint_kw": m.setpoint_kw,
            "temperature_c": m.temperature_c,
            "frequency_hz": m.frequency_hz,
            "voltage_v": m.voltage_v,
            "soh_pct": m.soh_pct,
            "charged_kwh": m.charged_kwh,
            "discharged_kwh": m.discharged_kwh,
            "status": m.status.value,
            "alarms": sorted(a.value for a in m.alarms),
        }
        state = self.sim.state
        physics = {  # the truth, whatever measurement faults report
            "soc_pct": state.soc_pct(self.sim.spec),
            "power_kw": state.power_kw,
            "temperature_c": state.temperature_c,
            "energy_kwh": state.energy_kwh,
        }
        faults = [
            fault_to_dict(f, m.timestamp)
            for f in self.sim.faults.all()
            if not _expired(f, m.timestamp)
        ]
        servers: dict[str, Any] = {}
        for name, provider in self.stats.items():
            try:
                servers[name] = dict(provider())
            except Exception as exc:  # a broken provider must not break status
                servers[name] = {"error": str(exc)}
        return {
            "ok": True,
            "measurements": measurements,
            "physics": physics,
            "faults": faults,
            "servers": servers,
            "clock_speed": self.sim.clock.speed,
        }


class ControlServer:
    """``async with ControlServer(sim, port=5021) as ctl``; ``ctl.port`` is the bound port."""

    def __init__(
        self,
        sim: Simulator,
        *,
        host: str = "127.0.0.1",
        port: int = DEFAULT_CONTROL_PORT,
        stats: Mapping[str, StatsProvider] | None = None,
    ) -> None:
        self.service = ControlService(sim, stats)
        self.host = host
        self._requested_port = port
        self._server: asyncio.Server | None = None
        self.port = port
        self.requests = 0

    def add_stats(self, name: str, provider: StatsProvider) -> None:
        self.service.stats[name] = provider

    async def __aenter__(self) -> ControlServer:
        self._server = await asyncio.start_server(
            self._serve_client, self.host, self._requested_port, limit=MAX_REQUEST_BYTES
        )
        sockets = self._server.sockets
        if sockets:
            self.port = int(sockets[0].getsockname()[1])
        if self.host not in ("127.0.0.1", "::1", "localhost"):
            log.warning("control endpoint on %s:%d has no authentication", self.host, self.port)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _serve_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            while True:
                try:
                    line = await reader.readline()
                except (ValueError, asyncio.LimitOverrunError):
                    await self._reply(writer, {"ok": False, "error": "request line too long"})
                    break
                if not line:
                    break
                if not line.strip():
                    continue
                self.requests += 1
                try:
                    request = json.loads(line)
                except json.JSONDecodeError as exc:
                    response: dict[str, Any] = {"ok": False, "error": f"not JSON: {exc}"}
                else:
                    response = self.service.handle(request)
                await self._reply(writer, response)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    @staticmethod
    async def _reply(writer: asyncio.StreamWriter, response: dict[str, Any]) -> None:
        writer.write(json.dumps(response, default=str).encode() + b"\n")
        await writer.drain()


def request(
    payload: dict[str, Any],
    *,
    host: str = "127.0.0.1",
    port: int = DEFAULT_CONTROL_PORT,
    timeout_s: float = 5.0,
) -> dict[str, Any]:
    """Send one command to a running ``bess-hil serve`` and return its response (blocking)."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            sock.sendall(json.dumps(payload).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
    except ConnectionRefusedError:
        raise ControlError(
            f"no simulator control endpoint at {host}:{port} (is 'bess-hil serve' running, "
            "with that --control-port?)"
        ) from None
    except TimeoutError:
        raise ControlError(f"the control endpoint at {host}:{port} did not answer") from None
    except OSError as exc:
        raise ControlError(f"cannot reach the control endpoint at {host}:{port}: {exc}") from None
    if not data:
        raise ControlError(f"the control endpoint at {host}:{port} closed without answering")
    response = json.loads(data)
    if not isinstance(response, dict):
        raise ControlError(f"unexpected answer from {host}:{port}: {data[:200]!r}")
    return response


async def demo_controller(
    sim: Simulator,
    *,
    period_s: float = 600.0,
    amplitude_fraction: float = 0.8,
    refresh_s: float = 5.0,
) -> None:
    """Write ``amplitude x rating x sin(2 pi t / period)`` every ``refresh_s`` (simulated)."""
    speed = sim.clock.speed or 1.0
    amplitude = amplitude_fraction * min(sim.spec.max_charge_kw, sim.spec.max_discharge_kw)
    t0 = sim.clock.now()
    log.info("demo controller: +/-%.0f kW sine, period %.0f s", amplitude, period_s)
    while True:
        t = sim.clock.now() - t0
        kw = round(amplitude * math.sin(2 * math.pi * t / period_s), 1)
        sim.command_power_kw(kw)  # refreshed well within any revert timeout
        await asyncio.sleep(max(0.02, refresh_s / speed))
