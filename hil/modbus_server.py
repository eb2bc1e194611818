"""The simulated battery over Modbus TCP: a pymodbus 3.16 server built on ``SimDevice``.

Registers come from a ``RegisterMap`` (``hil/maps/*.yaml``). The device's async ``action``
runs before pymodbus touches its register store, so:

- on a **read** it refreshes the requested range from ``Simulator.measure()`` (scale factors
  are registers of the same range, so a value and its SF always come from one snapshot);
- on a **write** it decodes the written registers, checks them (read-only or partly written
  point -> exception 2, value out of range -> exception 3, nothing applied) and drives the
  battery through ``command_power_kw`` / ``write_heartbeat`` / ``set_revert_timeout_s``.

Communication faults from ``sim.faults`` (checked on every request and by a watcher task):

- ``modbus_exception``: every request is answered with exception ``code``, without effect;
- ``no_response``: requests are dropped unanswered and without effect (the client times out);
- ``drop_connections``: every open connection is closed, once per injected fault;
- ``refuse_connections``: the listening socket is closed (connects are refused; open
  connections stay) until the fault ends, then the server listens on the same port again.

Requests to another unit id are answered with exception 0x0B (gateway target failed to
respond), as a Modbus TCP gateway does.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from types import TracebackType
from typing import Any, TypeVar, cast

from pymodbus.constants import ExcCodes
from pymodbus.pdu import ExceptionResponse, ModbusPDU
from pymodbus.server import ModbusTcpServer
from pymodbus.server.base import ModbusBaseServer
from pymodbus.simulator import DataType, SimData, SimDevice

from .faults import Fault, FaultKind
from .regmap import (
    ControlKind,
    Point,
    RegisterMap,
    Value,
    condition_holds,
    measured_value,
    spec_value,
)
from .sim import Measurements, Simulator

log = logging.getLogger(__name__)

READ_FUNCTIONS = frozenset({1, 2, 3, 4, 23})
WRITE_FUNCTIONS = frozenset({5, 6, 15, 16, 22, 23})
BIT_FUNCTIONS = frozenset({1, 2, 5, 15})
LIVE_BINDINGS = frozenset({"measure", "spec", "state", "alarms", "control"})
NA_AVOIDING_BINDINGS = frozenset({"measure", "spec", "control"})
RATE_LIMIT_PCT = 100.0
TOLERANCE = 1e-9


@dataclass
class ServerStats:
    """Counters for the CLI's live view and the bench."""

    requests: int = 0  # requests received
    reads: int = 0
    writes: int = 0
    responses: int = 0  # responses sent (exceptions included)
    exceptions: int = 0  # exception responses sent
    unanswered: int = 0  # requests dropped by a no_response / drop_connections fault
    connections_total: int = 0  # connections accepted
    connections_dropped: int = 0  # closed by a drop_connections fault
    commands: int = 0  # power commands sent to the battery

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class _Live:
    """A point whose registers change: its value getter and its precomputed encoder."""

    point: Point
    value: Callable[[Measurements], Value | None]
    encode: Callable[[Value | None], list[int]]


_T = TypeVar("_T")


def _overlapping(
    index: tuple[list[int], list[Point], list[_T]], address: int, count: int
) -> list[_T]:
    """Items whose points overlap [address, address + count); points sorted, disjoint."""
    ends, points, items = index
    i = bisect.bisect_right(ends, address)  # first point ending after `address`
    found = []
    while i < len(points) and points[i].address < address + count:
        found.append(items[i])
        i += 1
    return found


class ModbusBatteryServer:
    """``async with ModbusBatteryServer(sim, regmap, port=0) as srv:`` serves ``srv.port``."""

    def __init__(
        self,
        sim: Simulator,
        regmap: RegisterMap,
        *,
        host: str = "127.0.0.1",
        port: int = 502,
        unit_id: int | None = None,
        fault_poll_s: float = 0.05,
    ) -> None:
        self.sim = sim
        self.regmap = regmap
        self.host = host
        self.unit_id = regmap.unit_id if unit_id is None else unit_id
        if not 0 <= self.unit_id <= 255:
            raise ValueError(f"unit id must be within 0..255 (got {self.unit_id})")
        self.fault_poll_s = fault_poll_s
        self.stats = ServerStats()
        self._requested_port = port
        self._port = 0
        self._listening = False
        self._server: ModbusTcpServer | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._dropped_for: list[Fault] = []  # drop_connections faults already acted on
        # Scale factors are fixed for the server's lifetime (computed from the nameplate).
        self._sf = regmap.resolve_sf(sim.spec)
        self._multiplier = {p.name: p.multiplier(self._sf) for p in regmap.points}
        self._index: dict[str, tuple[list[int], list[Point], list[Point]]] = {}
        self._live: dict[str, tuple[list[int], list[Point], list[_Live]]] = {}
        for table in ("holding", "input"):
            points = sorted(regmap.table(table), key=lambda p: p.address)
            self._index[table] = ([p.end for p in points], points, points)
            live = [self._compile(p) for p in points if _is_live(p)]
            self._live[table] = (
                [x.point.end for x in live],
                [x.point for x in live],
                live,
            )
        # Control state (SunSpec 124) and accepted-but-inert values.
        self._storctl_mod = 0
        self._in_pct = 0.0
        self._out_pct = 0.0
        self._stored = {
            p.name: p.initial
            for p in regmap.points
            if p.binding is not None and p.binding.control is ControlKind.STORE
        }

    # -- lifecycle ------------------------------------------------------------------------
    async def __aenter__(self) -> ModbusBatteryServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        """The bound TCP port (the real one when started with ``port=0``)."""
        return self._port

    @property
    def listening(self) -> bool:
        return self._listening

    @property
    def open_connections(self) -> int:
        return len(self._server.active_connections) if self._server else 0

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("server already started")
        server = ModbusTcpServer(
            self._devices(),
            address=(self.host, self._requested_port),
            trace_packet=self._trace_packet,
            trace_pdu=self._trace_pdu,
            trace_connect=self._trace_connect,
        )
        try:
            await server.serve_forever(background=True)
        except RuntimeError:
            await server.shutdown()  # type: ignore[no-untyped-call]  # unannotated in pymodbus
            raise OSError(
                f"cannot listen on {self.host}:{self._requested_port} "
                f"(address in use, or not allowed)"
            ) from None
        self._server = server
        self._listening = True
        listener = cast(asyncio.Server, server.transport)
        self._port = int(listener.sockets[0].getsockname()[1])
        # Re-listen on the port actually bound (matters when started with port 0).
        server.comm_params.source_address = (self.host, self._port)
        server.init_setup_connect_listen(self.host, self._port)
        self._watcher = asyncio.create_task(self._watch_faults(), name="modbus-fault-watcher")
        log.info(
            "Modbus TCP battery (%s map, unit %d) on %s:%d",
            self.regmap.name,
            self.unit_id,
            self.host,
            self._port,
        )

    async def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None
        server, self._server = self._server, None
        if server is not None:
            await server.shutdown()  # type: ignore[no-untyped-call]  # unannotated in pymodbus
            if ModbusBaseServer.active_server is server:
                ModbusBaseServer.active_server = None
            self._listening = False
            # Let the transports run their connection_lost callbacks and close their sockets.
            for _ in range(3):
                await asyncio.sleep(0)

    def _devices(self) -> list[SimDevice]:
        m = self.sim.measure()
        tables: dict[str, list[SimData]] = {}
        for table in ("holding", "input"):
            data = [
                SimData(
                    address=p.address,
                    values=self._encode(p, m),
                    datatype=DataType.REGISTERS,
                    readonly=p.access == "r",
                )
                for p in self._index[table][2]
            ]
            # pymodbus needs one entry per table; an INVALID one answers exception 2.
            tables[table] = data or [SimData(address=0, datatype=DataType.INVALID)]
        no_bits = [SimData(address=0, values=[False] * 16, datatype=DataType.BITS)]
        battery = SimDevice(
            id=self.unit_id,
            simdata=(no_bits, list(no_bits), tables["holding"], tables["input"]),
            action=self._action,
        )
        if self.unit_id == 0:
            return [battery]
        # Device id 0 is pymodbus' "any other unit id": answer like a gateway without target.
        others = SimDevice(
            id=0,
            simdata=[SimData(address=0, count=65536, datatype=DataType.REGISTERS)],
            action=self._wrong_unit,
        )
        return [battery, others]

    # -- faults ---------------------------------------------------------------------------
    async def _watch_faults(self) -> None:
        while True:
            try:
                await self.check_faults()
            except Exception:  # the watcher must survive anything and keep serving
                log.exception("fault watcher failed")
            await asyncio.sleep(self.fault_poll_s)

    async def check_faults(self) -> None:
        """Apply connection faults now (the watcher calls this every ``fault_poll_s``)."""
        if self._server is None:
            return
        now = self.sim.clock.now()
        refuse = self.sim.faults.active(FaultKind.REFUSE_CONNECTIONS, now) is not None
        if refuse and self._listening:
            self._stop_listening()
        elif not refuse and not self._listening:
            await self._start_listening()
        self._apply_drop(now)

    def _stop_listening(self) -> None:
        if self._server is None:
            return
        # asyncio.Server.close() closes the listening socket only; open connections stay.
        self._server.transport.close()
        self._listening = False
        log.warning("Modbus: refusing connections on port %d", self._port)

    async def _start_listening(self) -> None:
        if self._server is None:
            return
        try:
            self._server.transport = await self._server.call_create()
        except OSError as exc:
            log.warning("Modbus: cannot listen on port %d again yet: %s", self._port, exc)
            return
        self._listening = True
        log.warning("Modbus: accepting connections on port %d again", self._port)

    def _apply_drop(self, now: float) -> bool:
        """Close every open connection once per active drop fault; True if it did."""
        faults = self.sim.faults
        current = faults.all()
        self._dropped_for = [f for f in self._dropped_for if any(f is g for g in current)]
        fault = faults.active(FaultKind.DROP_CONNECTIONS, now)
        if fault is None or any(fault is f for f in self._dropped_for):
            return False
        self._dropped_for.append(fault)
        if self._server is not None:
            connections = list(self._server.active_connections.values())
            for connection in connections:
                connection.close()
            self.stats.connections_dropped += len(connections)
            log.warning("Modbus: dropped %d connection(s)", len(connections))
        return True

    def _exception_code(self) -> int | None:
        fault = self.sim.faults.active(FaultKind.MODBUS_EXCEPTION, self.sim.clock.now())
        if fault is None:
            return None
        try:
            code = int(fault.param("code"))
        except (TypeError, ValueError):
            return int(ExcCodes.DEVICE_FAILURE)
        return code if 1 <= code <= 255 else int(ExcCodes.DEVICE_FAILURE)

    def _no_response(self) -> bool:
        return self.sim.faults.active(FaultKind.NO_RESPONSE, self.sim.clock.now()) is not None

    # -- pymodbus hooks -------------------------------------------------------------------
    def _trace_pdu(self, sending: bool, pdu: ModbusPDU) -> ModbusPDU:
        if not sending:
            self.stats.requests += 1
            if pdu.function_code in READ_FUNCTIONS:
                self.stats.reads += 1
            if pdu.function_code in WRITE_FUNCTIONS:
                self.stats.writes += 1
            return pdu
        code = self._exception_code()
        if code is not None and not (
            isinstance(pdu, ExceptionResponse) and pdu.exception_code == code
        ):
            pdu = ExceptionResponse(
                pdu.function_code & 0x7F,
                code,
                device_id=pdu.dev_id,
                transaction=pdu.transaction_id,
            )
        if pdu.function_code & 0x80:
            self.stats.exceptions += 1
        return pdu

    def _trace_packet(self, sending: bool, data: bytes) -> bytes:
        if sending:
            if self._no_response():
                self.stats.unanswered += 1
                return b""  # nothing goes on the wire
            self.stats.responses += 1
        return data

    def _trace_connect(self, connected: bool) -> None:
        if connected:
            self.stats.connections_total += 1

    async def _wrong_unit(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        current_registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        return ExcCodes.GATEWAY_NO_RESPONSE

    async def _action(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        current_registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        now = self.sim.clock.now()
        if self._no_response() or self._apply_drop(now):
            self.stats.unanswered += 1
            # Cancelling the request's task is how a handler drops it: pymodbus sends nothing.
            raise asyncio.CancelledError
        if self._exception_code() is not None:
            return ExcCodes.DEVICE_FAILURE  # replaced by the fault's code in _trace_pdu
        if function_code in BIT_FUNCTIONS:
            return ExcCodes.ILLEGAL_FUNCTION
        table = "input" if function_code == 4 else "holding"
        if set_values is None:
            # Constant points were encoded at start-up; only live ones need a fresh snapshot.
            live = _overlapping(self._live[table], address, count)
            if live:
                m = self.sim.measure()
                for x in live:
                    offset = x.point.address - start_address
                    current_registers[offset : offset + x.point.size] = x.encode(x.value(m))
            return None
        points = _overlapping(self._index[table], address, count)
        return self._write(points, address, [int(v) for v in set_values])

    # -- reading --------------------------------------------------------------------------
    def _compile(self, p: Point) -> _Live:
        b = p.binding
        if b is None:
            raise ValueError(f"{p.name} has no binding")
        factor, sim = p.unit_factor, self.sim
        measure, nameplate, control = b.measure, b.spec, b.control

        def value(m: Measurements) -> Value | None:
            if measure is not None:
                return measured_value(measure, m, sim.spec) * factor
            if nameplate is not None:
                return spec_value(nameplate, sim.spec) * factor
            if control is not None:
                return self._control_value(p, control, m) * factor
            return self.value_of(p, m)  # state, alarm bits

        return _Live(point=p, value=value, encode=p.encoder(**self._encoding(p)))

    def _encoding(self, p: Point) -> dict[str, Any]:
        # Saturated measurements steer clear of SunSpec's "not implemented" markers; constants,
        # states and alarm bits (model ids, the 0xFFFF end marker) are served as the map says.
        scaled = p.binding is not None and p.binding.kind in NA_AVOIDING_BINDINGS
        return {
            "multiplier": self._multiplier[p.name],
            "avoid_na": scaled and self.regmap.avoid_na,
        }

    def _encode(self, p: Point, m: Measurements) -> list[int]:
        return p.encode(self.value_of(p, m), **self._encoding(p))

    def value_of(self, p: Point, m: Measurements) -> Value | None:
        """The engineering value a point shows now; None = not implemented."""
        b = p.binding
        if b is None:
            return None
        if b.measure is not None:
            return measured_value(b.measure, m, self.sim.spec) * p.unit_factor
        if b.spec is not None:
            return spec_value(b.spec, self.sim.spec) * p.unit_factor
        if b.const is not None:
            return b.const
        if b.server is not None:
            return self.unit_id
        if b.state is not None:
            return next((v for c, v in b.state.items() if condition_holds(c, m)), None)
        if b.alarms is not None:
            bits = 0
            for condition, bit in b.alarms.items():
                if condition_holds(condition, m):
                    bits |= 1 << bit
            return bits
        if b.control is not None:
            return self._control_value(p, b.control, m) * p.unit_factor
        return self._sf.get(p.name)

    def _control_value(self, p: Point, kind: ControlKind, m: Measurements) -> float:
        if kind is ControlKind.STORCTL_MOD:
            return float(self._storctl_mod)
        if kind is ControlKind.IN_W_RTE:
            return self._in_pct
        if kind is ControlKind.OUT_W_RTE:
            return self._out_pct
        if kind is ControlKind.REVERT_TIMEOUT:
            return self.sim.spec.revert_timeout_s
        if kind is ControlKind.HEARTBEAT:
            return float(self.sim.controller_heartbeat)
        if kind is ControlKind.POWER_SETPOINT:
            return m.setpoint_kw
        return self._stored[p.name]

    # -- writing --------------------------------------------------------------------------
    def storage_command_kw(self) -> float:
        """SunSpec 124: (OutWRte if bit 1) - (InWRte if bit 0), in % of WChaMax."""
        wchamax = self.sim.spec.max_charge_kw
        kw = 0.0
        if self._storctl_mod & 0b10:
            kw += self._out_pct / 100.0 * wchamax
        if self._storctl_mod & 0b01:
            kw -= self._in_pct / 100.0 * wchamax
        return kw

    def _write(self, points: list[Point], address: int, values: list[int]) -> ExcCodes | None:
        end = address + len(values)
        changes: list[tuple[Point, ControlKind, float]] = []
        for p in points:
            kind = p.binding.control if p.binding is not None else None
            if p.access != "rw" or kind is None or p.address < address or p.end > end:
                return ExcCodes.ILLEGAL_ADDRESS
            decoded = p.decode(
                values[p.address - address : p.end - address],
                multiplier=self._multiplier[p.name],
            )
            if isinstance(decoded, str) or not math.isfinite(decoded):
                return ExcCodes.ILLEGAL_VALUE
            if p.range is not None and not _within(decoded, *p.range):
                return ExcCodes.ILLEGAL_VALUE
            value = decoded / p.unit_factor
            if not self._acceptable(kind, value):
                return ExcCodes.ILLEGAL_VALUE
            changes.append((p, kind, value))
        storage_written = False
        for p, kind, value in changes:
            if kind is ControlKind.STORCTL_MOD:
                self._storctl_mod = round(value)
                storage_written = True
            elif kind is ControlKind.IN_W_RTE:
                self._in_pct = value
                storage_written = True
            elif kind is ControlKind.OUT_W_RTE:
                self._out_pct = value
                storage_written = True
            elif kind is ControlKind.REVERT_TIMEOUT:
                self.sim.set_revert_timeout_s(value)
            elif kind is ControlKind.HEARTBEAT:
                self.sim.write_heartbeat(round(value))
            elif kind is ControlKind.POWER_SETPOINT:
                self.sim.command_power_kw(value)
                self.stats.commands += 1
            else:
                self._stored[p.name] = value
        if storage_written:
            self.sim.command_power_kw(self.storage_command_kw())
            self.stats.commands += 1
        return None

    def _acceptable(self, kind: ControlKind, value: float) -> bool:
        spec = self.sim.spec
        if kind is ControlKind.STORCTL_MOD:
            return value in (0, 1, 2, 3)
        if kind in (ControlKind.IN_W_RTE, ControlKind.OUT_W_RTE):
            return _within(value, -RATE_LIMIT_PCT, RATE_LIMIT_PCT)
        if kind is ControlKind.REVERT_TIMEOUT:
            return value >= 0
        if kind is ControlKind.POWER_SETPOINT:
            return _within(value, -spec.max_charge_kw, spec.max_discharge_kw)
        return True


def _is_live(p: Point) -> bool:
    return p.binding is not None and p.binding.kind in LIVE_BINDINGS


def _within(value: float, low: float, high: float) -> bool:
    slack = TOLERANCE * max(1.0, abs(low), abs(high))
    return low - slack <= value <= high + slack
