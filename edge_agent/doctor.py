"""``bess-edge doctor``: every link the agent needs, checked once, explained in plain language.

``run_doctor(path)`` loads the site file and runs the checks; ``diagnose(config)`` runs them for
a config already loaded. Each returns rows of ``Check`` (name, OK / WARN / FAIL / SKIP, detail,
hint): FAIL means the agent cannot work as configured, WARN that it works with a caveat the
technician should know, SKIP that a check could not run because an earlier one failed.

What is checked, each group concurrently and each step with its own timeout, so the whole run
takes a few seconds even when everything is down:

- **config**: the file loads (every problem listed otherwise; nothing else runs then);
- **modbus**: TCP connect, the unit id answers, SunSpec discovery (SunSpec presets), every point
  of the preset read once (``read_points``, shared with ``bess-edge read``), the decoded
  telemetry and the device's revert timeout against the executor's refresh interval;
- **mqtt**: TCP connect, MQTT CONNECT (authentication), the subscription, and whether the
  configured topics deliver a usable message within a short wait. The probe uses its own
  client id and a clean session: it must never take over the running agent's session;
- **rest**: the ingest port can be bound (or a running agent already answers on it);
- **uplink**: DNS, TCP connect, TLS/token files readable, the gRPC channel gets ready (no Hello:
  the doctor must not open a session that would replace the running agent's);
- **disk**: data directory writable, free space, the outbox opens and how much waits in it;
- **clock**: the kernel's NTP synchronisation flag (``adjtimex``, Linux only), else skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import dataclasses
import errno
import math
import os
import shutil
import socket
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, cast

import grpc
import grpc.aio

from .certinfo import CertificateFormatError, read_pem_certificate
from .config import ENV_VARS, ConfigError, SiteConfig, load_config
from .executor import ExecutorConfigError, check_revert_timeout
from .modbus_client import (
    ConnectionLost,
    DeviceException,
    ModbusConnection,
    ModbusError,
    RegisterIO,
    RequestTimeout,
    Table,
)
from .modbus_codec import PointType, decode_raw
from .modbus_source import (
    QUANTITY_UNITS,
    Batch,
    MapPoint,
    ModbusSource,
    ModbusSourceSettings,
    PresetDef,
    PresetError,
    ResolvedMap,
    decode_point,
    load_preset,
    plan_batches,
    resolve_preset,
    split_batch,
)
from .mqtt_source import MqttSourceSettings, TopicSpec, parse_message
from .outbox import Outbox, OutboxError
from .readings import Quantity, Reading, ReadingError, check_plausible
from .rest_ingest import HEALTH_PATH, RestIngestSettings
from .sunspec import MODEL_NAMES, Discovery, discover, marker_missing_text
from .uplink import UplinkSettings

UNIT_ID_HINT = "check the unit id (SMA: 3, Victron GX: 100, Fronius and most SunSpec: 1)"
LOW_DISK_WARN_BYTES = 500 * 1024 * 1024
LOW_DISK_FAIL_BYTES = 50 * 1024 * 1024
OUTBOX_BACKLOG_WARN_S = 3600.0
STA_UNSYNC = 0x0040  # struct timex status: the kernel's clock is not synchronised
TIME_ERROR = 5  # adjtimex() return value: clock not synchronised


class Status(StrEnum):
    OK = "OK"
    WARN = "WARN"
    FAIL = "FAIL"
    SKIP = "SKIP"


@dataclass(frozen=True)
class Check:
    """One row of the report; ``hint`` says what to do about a WARN or FAIL."""

    name: str
    status: Status
    detail: str
    hint: str = ""

    def as_dict(self) -> dict[str, str]:
        return {"check": self.name, "status": self.status.value, "detail": self.detail} | (
            {"hint": self.hint} if self.hint else {}
        )


@dataclass(frozen=True)
class DoctorOptions:
    """Timeouts of the individual steps; the defaults keep a run within a few seconds."""

    connect_timeout_s: float = 1.5
    request_timeout_s: float = 1.0
    mqtt_wait_s: float = 2.0
    uplink_timeout_s: float = 2.0
    group_timeout_s: float = 8.0  # a whole group (modbus, mqtt, ...) at most


@dataclass(frozen=True)
class DoctorReport:
    source: str
    checks: tuple[Check, ...]
    elapsed_s: float
    site_id: str | None = None

    @property
    def failed(self) -> bool:
        return any(c.status is Status.FAIL for c in self.checks)

    @property
    def exit_code(self) -> int:
        """0 when nothing failed, 1 otherwise (warnings do not fail)."""
        return 1 if self.failed else 0

    def counts(self) -> dict[Status, int]:
        return {s: sum(1 for c in self.checks if c.status is s) for s in Status}

    def check(self, name: str) -> Check | None:
        return next((c for c in self.checks if c.name == name), None)

    def table(self, width: int = 100) -> str:
        name_w = max([len("CHECK"), *(len(c.name) for c in self.checks)])
        indent = name_w + 2 + 6 + 2
        text_w = max(30, width - indent)
        lines = [f"{'CHECK':<{name_w}}  STATUS  DETAIL"]
        for c in self.checks:
            body: list[str] = []
            for paragraph in c.detail.splitlines() or [""]:
                body += textwrap.wrap(paragraph, text_w, subsequent_indent="  ") or [""]
            if c.hint:
                for paragraph in c.hint.splitlines():
                    body += textwrap.wrap(
                        paragraph, text_w, initial_indent="→ ", subsequent_indent="  "
                    )
            lines.append(f"{c.name:<{name_w}}  {c.status.value:<6}  {body[0]}".rstrip())
            lines += [f"{'':<{indent}}{line}".rstrip() for line in body[1:]]
        n = self.counts()
        if self.failed or n[Status.WARN]:
            verdict = f"{n[Status.FAIL]} FAIL, {n[Status.WARN]} WARN, {n[Status.OK]} OK"
        else:
            verdict = f"all {n[Status.OK]} checks OK"
        lines.append("")
        lines.append(f"{verdict} in {self.elapsed_s:.1f} s")
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "site_id": self.site_id,
            "ok": not self.failed,
            "elapsed_s": round(self.elapsed_s, 3),
            "checks": [c.as_dict() for c in self.checks],
        }


def _skip(name: str, why: str) -> Check:
    return Check(name, Status.SKIP, f"not checked: {why}")


# -- entry points ---------------------------------------------------------------------------


async def run_doctor(
    path: str | Path,
    *,
    env: Mapping[str, str] | None = None,
    options: DoctorOptions | None = None,
) -> DoctorReport:
    """Load the site file and check everything it configures."""
    started = time.monotonic()
    environ = os.environ if env is None else env
    try:
        config = load_config(path, env=environ)
    except ConfigError as exc:
        detail = f"{exc.source}: {len(exc.problems)} problem(s)\n" + "\n".join(
            f"- {p}" for p in exc.problems
        )
        checks = [
            Check(
                "config",
                Status.FAIL,
                detail,
                "fix the file (or the BESS_* variable named); `bess-edge init` writes a "
                "commented example",
            )
        ]
        return DoctorReport(str(path), tuple(checks), time.monotonic() - started)
    overrides = [v.name for v in ENV_VARS if v.name in environ]
    if "BESS_MODBUS_ENABLED" in environ:
        overrides.insert(0, "BESS_MODBUS_ENABLED")
    first = Check("config", Status.OK, _describe_config(str(path), config, overrides))
    checks = [first, *await diagnose(config, options=options, env=environ)]
    return DoctorReport(str(path), tuple(checks), time.monotonic() - started, config.site_id)


def _describe_config(source: str, cfg: SiteConfig, overrides: Sequence[str]) -> str:
    b = cfg.battery
    used = []
    if cfg.sources.modbus is not None:
        used.append(f"modbus ({cfg.sources.modbus.preset})")
    if cfg.sources.mqtt.enabled:
        used.append("mqtt")
    if cfg.sources.rest.enabled:
        used.append("rest")
    text = (
        f"{source}: site {cfg.site_id}, battery {b.capacity_kwh:g} kWh, charge "
        f"{b.max_charge_kw:g} kW / discharge {b.max_discharge_kw:g} kW; sources: "
        f"{', '.join(used) or 'none'}; uplink: {cfg.uplink.target if cfg.uplink else 'none'}"
    )
    if overrides:
        text += f"; from the environment: {', '.join(overrides)}"
    return text


async def diagnose(
    config: SiteConfig,
    *,
    options: DoctorOptions | None = None,
    env: Mapping[str, str] | None = None,
) -> list[Check]:
    """Every check the config calls for, groups run concurrently; never raises."""
    opts = options or DoctorOptions()
    environ = os.environ if env is None else env
    groups: list[tuple[str, Callable[[], Awaitable[list[Check]]]]] = []
    modbus = config.sources.modbus
    if modbus is not None:
        groups.append(("modbus", lambda: check_modbus(modbus, config, opts)))
    else:
        groups.append(("modbus", _constant([_skip("modbus", "no Modbus source configured")])))
    mqtt = config.sources.mqtt
    if mqtt.enabled:
        groups.append(("mqtt", lambda: check_mqtt(mqtt, opts)))
    rest = config.sources.rest
    if rest.enabled:
        groups.append(("rest", lambda: check_rest(rest, opts)))
    uplink = config.uplink
    if uplink is not None:
        groups.append(
            ("uplink", lambda: check_uplink(uplink, opts, environ, site_id=config.site_id))
        )
    else:
        groups.append(("uplink", _constant([_skip("uplink", "no uplink configured")])))
    groups.append(("disk", lambda: check_disk(config, opts)))
    groups.append(("clock", lambda: _one(check_clock())))
    results = await asyncio.gather(
        *(_guarded(name, make, opts.group_timeout_s) for name, make in groups)
    )
    return [check for group in results for check in group]


def _constant(checks: list[Check]) -> Callable[[], Awaitable[list[Check]]]:
    async def make() -> list[Check]:
        return checks

    return make


async def _one(check: Check) -> list[Check]:
    return [check]


async def _guarded(
    name: str, make: Callable[[], Awaitable[list[Check]]], timeout_s: float
) -> list[Check]:
    try:
        async with asyncio.timeout(timeout_s):
            return await make()
    except TimeoutError:
        return [
            Check(name, Status.FAIL, f"the {name} checks did not finish within {timeout_s:g} s")
        ]
    except Exception as exc:  # a doctor reports, it does not crash
        return [Check(name, Status.FAIL, f"the check itself failed: {type(exc).__name__}: {exc}")]


# -- TCP --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TcpProbe:
    ok: bool
    detail: str
    hint: str = ""
    elapsed_ms: float = 0.0


SERVICE_HINTS: Mapping[str, str] = {
    "modbus": "is Modbus TCP enabled on the inverter, and the port right (usually 502)?",
    "mqtt": "is the broker running, and the port right (1883, or 8883 with TLS)?",
    "uplink": "is the control plane running, and uplink.target's port its EdgeLink port?",
}


async def tcp_probe(host: str, port: int, *, timeout_s: float, service: str) -> TcpProbe:
    """One TCP connect, translated into what a technician should check."""
    where = f"{host}:{port}"
    started = time.monotonic()
    try:
        async with asyncio.timeout(timeout_s):
            _, writer = await asyncio.open_connection(host, port)
    except TimeoutError:
        return TcpProbe(
            False,
            f"no answer from {where} within {timeout_s:g} s",
            "check the IP address, that the device is switched on and on this network, "
            "and firewalls",
        )
    except ConnectionRefusedError:
        return TcpProbe(False, f"connection refused at {where}", SERVICE_HINTS.get(service, ""))
    except socket.gaierror:
        return TcpProbe(
            False,
            f"cannot resolve the host name {host!r}",
            "check the spelling, the DNS settings of this box, or use the IP address",
        )
    except OSError as exc:
        if exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
            return TcpProbe(
                False,
                f"no route to {where} ({exc.strerror})",
                "check the cable, and that this box's IP address and subnet fit the device's",
            )
        return TcpProbe(False, f"cannot connect to {where}: {exc.strerror or exc}")
    elapsed_ms = (time.monotonic() - started) * 1000
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return TcpProbe(True, f"TCP {where} accepts connections ({elapsed_ms:.0f} ms)", "", elapsed_ms)


# -- Modbus -------------------------------------------------------------------------------------


def explain_modbus_error(exc: BaseException, unit_id: int) -> tuple[str, str]:
    """(detail, hint) for a Modbus failure, in a technician's words."""
    if isinstance(exc, DeviceException):
        if exc.code in (10, 11):
            return (
                f"unit {unit_id} does not answer: {exc.meaning} (Modbus exception {exc.code})",
                f"the device or its gateway has no unit {unit_id} — {UNIT_ID_HINT}",
            )
        if exc.code == 1:
            return (
                f"the device refuses the request: {exc.meaning}",
                "it does not support this table (holding/input): check the preset",
            )
        if exc.code in (2, 3):
            return (
                f"the device refuses the register range: {exc.meaning} ({exc.request})",
                "the register map does not fit this device: check the preset and the unit id",
            )
        return (
            f"the device answers with exception {exc.code} ({exc.meaning})",
            "check the device's own display or log; try again in a minute",
        )
    if isinstance(exc, RequestTimeout):
        return (f"no answer from unit {unit_id} within the timeout", UNIT_ID_HINT)
    if isinstance(exc, ConnectionLost):
        return (
            "the device closed the connection",
            "some devices allow only one Modbus client (is the agent already running?) or "
            "only listed IP addresses: check the device's Modbus settings",
        )
    return (str(exc), "")


@dataclass(frozen=True)
class PointReadout:
    """One point of the preset as read once: raw registers, value, what it means."""

    point: MapPoint
    registers: tuple[int, ...] | None = None
    value: float | str | None = None  # in the point's own units; None = n/a or not read
    sf_name: str | None = None
    sf_raw: int | None = None
    quantity_value: float | None = None  # in the quantity's unit, sign applied
    error: str | None = None  # the read failed
    note: str | None = None  # read, but: not implemented, implausible, SF missing

    @property
    def ok(self) -> bool:
        return self.error is None

    def scale_text(self) -> str:
        p = self.point
        if p.sf is not None:
            sf = "n/a" if self.sf_raw is None else f"{self.sf_raw:+d}"
            return f"SF {sf} ({p.sf})"
        if p.scale is not None and p.scale != 1:
            return f"x{p.scale:g}"
        return ""

    def value_text(self) -> str:
        if self.error is not None:
            return ""
        if self.value is None:
            return "n/a"
        if isinstance(self.value, str):
            return repr(self.value)
        units = f" {self.point.units}" if self.point.units else ""
        return f"{self.value:g}{units}"

    def raw_text(self) -> str:
        if self.registers is None:
            return ""
        if self.point.type is PointType.STRING:
            return f"({len(self.registers)} registers)"
        return " ".join(f"0x{r:04X}" for r in self.registers)

    def as_dict(self) -> dict[str, Any]:
        p = self.point
        return {
            "name": p.name,
            "address": p.address,
            "table": p.table,
            "unit_id": p.unit_id,
            "type": p.type.value,
            "access": p.access,
            "registers": list(self.registers) if self.registers is not None else None,
            "value": self.value,
            "units": p.units,
            "scale": p.scale,
            "sf": p.sf,
            "sf_raw": self.sf_raw,
            "quantity": p.quantity.value if p.quantity else None,
            "quantity_value": self.quantity_value,
            "error": self.error,
            "note": self.note,
        }


@dataclass(frozen=True)
class PointsReadout:
    """``read_points``: every point of the resolved map, and what the agent makes of them."""

    preset: PresetDef
    unit_id: int
    discovery: Discovery | None
    resolved: ResolvedMap
    points: tuple[PointReadout, ...]
    readings: tuple[Reading, ...] = ()
    readings_error: str | None = None
    revert_timeout_s: float | None = None
    connection_error: ModbusError | None = None  # the link failed part-way

    def reading(self, quantity: Quantity) -> Reading | None:
        return next((r for r in self.readings if r.quantity is quantity), None)

    def device_name(self) -> str:
        parts = [
            str(r.value)
            for r in self.points
            if r.point.name in ("common.Mn", "common.Md") and isinstance(r.value, str) and r.value
        ]
        return " ".join(parts)


async def read_points(
    io: RegisterIO,
    settings: ModbusSourceSettings,
    preset: PresetDef,
    *,
    discovery: Discovery | None = None,
) -> PointsReadout:
    """Read every point of the preset once (errors per point), then one agent-style poll.

    Raises ``PresetError`` for a map that does not fit (overrides, no SunSpec models) and
    ``ModbusError`` when SunSpec discovery itself fails; per-point failures are in the result.
    """
    unit = preset.unit_id if settings.unit_id is None else settings.unit_id
    if preset.layout == "sunspec":
        if discovery is None:
            discovery = await discover(io, unit_id=unit)
        if not discovery.found:
            raise PresetError(marker_missing_text(discovery.probed))
        resolved = resolve_preset(preset, unit_id=unit, discovery=discovery)
    else:
        resolved = resolve_preset(
            preset, unit_id=unit, register_overrides=settings.register_overrides()
        )
    max_gap = preset.max_gap if settings.max_gap is None else settings.max_gap
    points = list(resolved.points)
    regs_of: dict[str, tuple[int, ...]] = {}
    errors: dict[str, str] = {}
    link_error: ModbusError | None = None
    queue: list[Batch] = plan_batches(points, max_gap=max_gap, known=points)
    while queue:
        batch = queue.pop(0)
        if link_error is not None:
            for p in batch.points:
                errors[p.name] = f"not read: {explain_modbus_error(link_error, unit)[0]}"
            continue
        try:
            regs = await io.read_registers(
                batch.table, batch.address, batch.count, unit_id=batch.unit_id
            )
        except DeviceException as exc:
            if len(batch.points) > 1:
                queue[0:0] = split_batch(batch)  # find out which point the device refuses
                continue
            errors[batch.points[0].name] = f"exception {exc.code} ({exc.meaning})"
            continue
        except ConnectionLost as exc:
            link_error = exc
            queue.insert(0, batch)
            continue
        except ModbusError as exc:  # a timeout or a garbled answer: this range only
            for p in batch.points:
                errors[p.name] = explain_modbus_error(exc, unit)[0]
            continue
        for p in batch.points:
            regs_of[p.name] = tuple(regs[p.address - batch.address : p.end - batch.address])
    readouts = tuple(_decode_readout(p, regs_of, errors, resolved) for p in points)
    result = PointsReadout(preset, unit, discovery, resolved, readouts, connection_error=link_error)
    if link_error is not None:
        return result
    source = ModbusSource(settings, io=io, preset=preset)
    try:
        readings = await source.read()
    except ModbusError as exc:
        return _replace(result, readings_error=explain_modbus_error(exc, unit)[0])
    return _replace(result, readings=tuple(readings), revert_timeout_s=source.revert_timeout_s)


def _replace(readout: PointsReadout, **changes: Any) -> PointsReadout:
    return dataclasses.replace(readout, **changes)


def _decode_readout(
    p: MapPoint,
    regs_of: Mapping[str, tuple[int, ...]],
    errors: Mapping[str, str],
    resolved: ResolvedMap,
) -> PointReadout:
    if p.name in errors or p.name not in regs_of:
        return PointReadout(p, error=errors.get(p.name, "not read"))
    regs = regs_of[p.name]
    sf_raw: int | None = None
    note: str | None = None
    if p.sf is not None:
        sf_point = resolved.point(p.sf)
        sf_regs = regs_of.get(p.sf)
        if sf_point is None or sf_regs is None:
            note = f"scale factor {p.sf} could not be read"
        else:
            raw = decode_raw(list(sf_regs), sf_point.type)
            sf_raw = raw if isinstance(raw, int) else None
    value = decode_point(p, p.address, list(regs), sf_raw)
    quantity_value: float | None = None
    if value is None:
        note = note or "not implemented by the device (n/a marker)"
    elif p.quantity is not None and not isinstance(value, str):
        quantity_value = value * p.to_quantity_factor()
        try:
            check_plausible(Reading(p.quantity, quantity_value, 0.0, "modbus"))
        except ReadingError as exc:
            note = f"implausible, the agent drops it: {exc}"
    return PointReadout(
        p,
        registers=regs,
        value=value,
        sf_name=p.sf,
        sf_raw=sf_raw,
        quantity_value=quantity_value,
        note=note,
    )


def format_quantity(quantity: Quantity, value: float) -> str:
    unit = QUANTITY_UNITS.get(quantity, "")
    if quantity in (Quantity.STATUS_CODE, Quantity.ALARM_BITS):
        return f"{quantity.value} {value:g}"
    return f"{quantity.value} {value:.4g}{' ' + unit if unit else ''}"


async def check_modbus(
    settings: ModbusSourceSettings, config: SiteConfig, opts: DoctorOptions
) -> list[Check]:
    """connect, unit id, SunSpec (SunSpec presets), points, telemetry, revert timeout."""
    names = ["modbus: connect", "modbus: unit id"]
    try:
        preset = load_preset(settings.preset)
    except PresetError as exc:
        return [
            Check(
                "modbus: preset",
                Status.FAIL,
                str(exc),
                "`bess-edge presets` lists the built-in presets",
            )
        ]
    sunspec = preset.layout == "sunspec"
    if sunspec:
        names.append("modbus: sunspec")
    names += ["modbus: points", "modbus: telemetry", "modbus: revert timeout"]
    unit = preset.unit_id if settings.unit_id is None else settings.unit_id
    where = f"{settings.host}:{settings.port}"
    probe = await tcp_probe(
        settings.host,
        settings.port,
        timeout_s=min(opts.connect_timeout_s, settings.connect_timeout_s),
        service="modbus",
    )
    if not probe.ok:
        return [
            Check(names[0], Status.FAIL, probe.detail, probe.hint),
            *(_skip(n, f"no connection to {where}") for n in names[1:]),
        ]
    checks = [Check(names[0], Status.OK, probe.detail)]
    conn = ModbusConnection(
        settings.host,
        settings.port,
        request_timeout_s=min(settings.request_timeout_s, opts.request_timeout_s),
        connect_timeout_s=min(opts.connect_timeout_s, settings.connect_timeout_s),
    )
    try:
        if not await conn.try_connect():
            checks[0] = Check(
                names[0],
                Status.FAIL,
                f"TCP connects, but the Modbus client cannot connect to {where}",
                SERVICE_HINTS["modbus"],
            )
            return checks + [_skip(n, "no Modbus connection") for n in names[1:]]
        checks += await _modbus_connected(conn, settings, preset, unit, config, names[1:])
    finally:
        await conn.close()
    return checks


async def _modbus_connected(
    conn: ModbusConnection,
    settings: ModbusSourceSettings,
    preset: PresetDef,
    unit: int,
    config: SiteConfig,
    names: list[str],
) -> list[Check]:
    checks: list[Check] = []

    def rest(why: str) -> list[Check]:
        done = {c.name for c in checks}
        return checks + [_skip(n, why) for n in names if n not in done]

    # The unit id: one small read any device with this map must answer (with data or a
    # Modbus exception: either proves the unit is there).
    table: Table = "holding"
    address, count = 40000, 2
    if preset.layout != "sunspec":
        try:
            first = resolve_preset(
                preset, unit_id=unit, register_overrides=settings.register_overrides()
            ).points[0]
        except (PresetError, IndexError) as exc:
            checks.append(Check("modbus: points", Status.FAIL, f"the preset cannot be used: {exc}"))
            return rest("the preset cannot be used")
        table, address, count = first.table, first.address, first.size
    try:
        await conn.read_registers(table, address, count, unit_id=unit)
        checks.append(Check("modbus: unit id", Status.OK, f"unit {unit} answers"))
    except DeviceException as exc:
        if exc.code in (10, 11):
            detail, hint = explain_modbus_error(exc, unit)
            checks.append(Check("modbus: unit id", Status.FAIL, detail, hint))
            return rest(f"unit {unit} does not answer")
        checks.append(
            Check(
                "modbus: unit id",
                Status.OK,
                f"unit {unit} answers (with exception {exc.code} at {address}; the register "
                "map is checked below)",
            )
        )
    except RequestTimeout:
        checks.append(
            Check(
                "modbus: unit id",
                Status.FAIL,
                f"no answer from unit {unit} within {conn.request_timeout_s:g} s",
                UNIT_ID_HINT,
            )
        )
        return rest(f"unit {unit} does not answer")
    except ModbusError as exc:
        detail, hint = explain_modbus_error(exc, unit)
        checks.append(Check("modbus: unit id", Status.FAIL, detail, hint))
        return rest("the connection failed")

    discovery: Discovery | None = None
    if preset.layout == "sunspec":
        try:
            discovery = await discover(conn, unit_id=unit)
        except ModbusError as exc:
            detail, hint = explain_modbus_error(exc, unit)
            checks.append(Check("modbus: sunspec", Status.FAIL, detail, hint))
            return rest("SunSpec discovery failed")
        if not discovery.found:
            checks.append(
                Check(
                    "modbus: sunspec",
                    Status.FAIL,
                    marker_missing_text(discovery.probed),
                    f"`bess-edge scan {settings.host} --port {settings.port} --unit-id {unit}` "
                    "shows what the device answers",
                )
            )
            return rest("no SunSpec map")
        checks.append(_sunspec_check(discovery, preset))

    try:
        readout = await read_points(conn, settings, preset, discovery=discovery)
    except PresetError as exc:
        checks.append(Check("modbus: points", Status.FAIL, f"the preset does not fit: {exc}"))
        return rest("the preset does not fit")
    except ModbusError as exc:
        detail, hint = explain_modbus_error(exc, unit)
        checks.append(Check("modbus: points", Status.FAIL, detail, hint))
        return rest("reading failed")
    checks.append(_points_check(readout))
    checks.append(_telemetry_check(readout, config))
    checks.append(_revert_check(readout, config))
    return checks


def _sunspec_check(discovery: Discovery, preset: PresetDef) -> Check:
    ids = discovery.ids()
    listed = ", ".join(f"{i}" + (f" ({MODEL_NAMES[i]})" if i in (1, 124, 802) else "") for i in ids)
    detail = f"SunSpec map at {discovery.base}: models {listed}"
    problems = list(discovery.problems)
    if preset.control.mode == "sunspec_storage" and 124 not in ids:
        return Check(
            "modbus: sunspec",
            Status.WARN,
            detail,
            "no storage controls (model 124): the agent can read this device but not command "
            "its power",
        )
    if problems:
        return Check("modbus: sunspec", Status.WARN, detail + "\n" + "\n".join(problems))
    return Check("modbus: sunspec", Status.OK, detail)


def _points_check(readout: PointsReadout) -> Check:
    total = len(readout.points)
    failed = [r for r in readout.points if not r.ok]
    na = [r for r in readout.points if r.ok and r.value is None]
    odd = [r for r in readout.points if r.ok and r.value is not None and r.note]
    good = total - len(failed) - len(na)
    detail = f"{good} of {total} points read"
    if na:
        detail += f"; {len(na)} not implemented by the device ({_names(na)})"
    device = readout.device_name()
    if device:
        detail += f"; device: {device}"
    if readout.connection_error is not None or good == 0:
        error = readout.connection_error or (failed[0].error if failed else "no values")
        text, hint = (
            explain_modbus_error(readout.connection_error, readout.unit_id)
            if readout.connection_error
            else (str(error), "the register map does not fit this device: check the preset")
        )
        return Check("modbus: points", Status.FAIL, f"{detail}; {text}", hint)
    if failed:
        refused = "; ".join(f"{r.point.name}: {r.error}" for r in failed[:5])
        return Check(
            "modbus: points",
            Status.WARN,
            f"{detail}; failed: {refused}",
            "the device refuses some registers: check the preset fits this model and firmware "
            "(`bess-edge read` shows every point)",
        )
    if odd:
        notes = "; ".join(f"{r.point.name}: {r.note}" for r in odd[:5])
        return Check(
            "modbus: points",
            Status.WARN,
            f"{detail}; {notes}",
            "check the preset's scale, units and word order for these points",
        )
    return Check("modbus: points", Status.OK, detail)


def _names(readouts: Sequence[PointReadout], limit: int = 4) -> str:
    names = [r.point.name for r in readouts]
    more = f", +{len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _telemetry_check(readout: PointsReadout, config: SiteConfig) -> Check:
    if readout.readings_error is not None:
        return Check(
            "modbus: telemetry",
            Status.FAIL,
            f"the agent's poll reads nothing: {readout.readings_error}",
        )
    shown = [
        format_quantity(r.quantity, r.value)
        for r in sorted(readout.readings, key=lambda r: list(Quantity).index(r.quantity))
    ]
    detail = ", ".join(shown) or "no readings"
    missing = [
        q.value for q in (Quantity.SOC_PCT, Quantity.ACTIVE_POWER_KW) if readout.reading(q) is None
    ]
    power = readout.reading(Quantity.ACTIVE_POWER_KW)
    rating = max(config.battery.max_charge_kw, config.battery.max_discharge_kw)
    if power is not None and abs(power.value) > 1.5 * rating:
        return Check(
            "modbus: telemetry",
            Status.WARN,
            detail,
            f"power reads {power.value:g} kW but the battery is rated {rating:g} kW: check the "
            "preset's units (W or kW) and scale, and battery.max_*_kw",
        )
    if missing:
        others = config.sources.mqtt.enabled or config.sources.rest.enabled
        return Check(
            "modbus: telemetry",
            Status.WARN,
            f"{detail}; missing: {', '.join(missing)}",
            "the safety guard holds 0 kW without SoC and power"
            + (" unless MQTT/REST deliver them" if others else ""),
        )
    return Check("modbus: telemetry", Status.OK, detail)


def _revert_check(readout: PointsReadout, config: SiteConfig) -> Check:
    name = "modbus: revert timeout"
    if readout.preset.control.mode == "none":
        return Check(
            name, Status.WARN, f"preset {readout.preset.name!r} reads only: no power control"
        )
    revert = readout.revert_timeout_s
    if revert is None:
        return Check(
            name,
            Status.WARN,
            "the device's revert timeout is unknown",
            "if the agent stops, the battery may keep its last setpoint: set "
            "sources.modbus.revert_timeout_s to the device's fallback timeout",
        )
    if revert == 0:
        return Check(
            name,
            Status.WARN,
            "the device never reverts its setpoint (revert timeout 0)",
            "if the agent stops, the battery keeps its last setpoint: enable the device's "
            "fallback, or set sources.modbus.revert_timeout_s",
        )
    try:
        refresh = check_revert_timeout(config.executor, revert)
    except ExecutorConfigError as exc:
        return Check(name, Status.FAIL, str(exc), "lower executor.refresh_interval_s")
    return Check(
        name,
        Status.OK,
        f"the device falls back after {revert:g} s without a refresh; the agent refreshes "
        f"every {refresh:g} s",
    )


# -- MQTT -------------------------------------------------------------------------------------

_AUTH_CODES = frozenset({0x86, 0x87, 4, 5})


class _MqttProbe:
    """A throwaway paho client: own client id, clean session, events into an asyncio queue."""

    def __init__(self, settings: MqttSourceSettings) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

        self.settings = settings
        self.loop = asyncio.get_running_loop()
        self.events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        v5 = settings.protocol == "5"
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"bess-edge-doctor-{uuid.uuid4().hex[:12]}",
            protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
            clean_session=None if v5 else True,
        )
        if settings.username is not None:
            password = settings.password.get_secret_value() if settings.password else None
            self.client.username_pw_set(settings.username, password)
        if settings.tls.enabled:
            tls = settings.tls
            self.client.tls_set(
                ca_certs=str(tls.ca_file) if tls.ca_file else None,
                certfile=str(tls.cert_file) if tls.cert_file else None,
                keyfile=str(tls.key_file) if tls.key_file else None,
            )
            self.client.tls_insecure_set(tls.insecure)
        # paho sleeps up to its reconnect delay before it notices loop_stop: keep it short
        # (fractions work, paho only sleeps on them).
        self.client.reconnect_delay_set(cast(int, 0.1), cast(int, 0.2))
        self.client.on_connect = self._on_connect
        self.client.on_connect_fail = self._on_connect_fail
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.started = False

    def _put(self, kind: str, data: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits any more
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, data))

    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        self._put("connect", rc)

    def _on_connect_fail(self, client: Any, userdata: Any) -> None:
        self._put("connect_fail", None)

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        self._put("disconnect", rc)

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, rcs: Any, props: Any) -> None:
        self._put("subscribe", list(rcs))

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        self._put("message", (message.topic, bytes(message.payload), bool(message.retain)))

    def start(self) -> None:
        import paho.mqtt.client as mqtt

        s = self.settings
        self.client.connect_async(
            s.host,
            s.port,
            keepalive=10,
            clean_start=True if s.protocol == "5" else mqtt.MQTT_CLEAN_START_FIRST_ONLY,
        )
        self.client.loop_start()
        self.started = True

    async def next_event(self, kinds: set[str], timeout_s: float) -> tuple[str, Any] | None:
        try:
            async with asyncio.timeout(max(0.0, timeout_s)):
                while True:
                    kind, data = await self.events.get()
                    if kind in kinds:
                        return kind, data
        except TimeoutError:
            return None

    async def close(self) -> None:
        if not self.started:
            return
        self.client.disconnect()
        # paho's thread is a daemon: do not wait long for it.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.to_thread(self.client.loop_stop), 1.0)


async def check_mqtt(settings: MqttSourceSettings, opts: DoctorOptions) -> list[Check]:
    names = ["mqtt: broker", "mqtt: subscribe", "mqtt: messages"]
    where = f"{settings.host}:{settings.port}"
    probe = await tcp_probe(
        settings.host, settings.port, timeout_s=opts.connect_timeout_s, service="mqtt"
    )
    if not probe.ok:
        return [
            Check(
                names[0], Status.FAIL, f"cannot reach the MQTT broker: {probe.detail}", probe.hint
            ),
            *(_skip(n, "no broker") for n in names[1:]),
        ]
    try:
        client = _MqttProbe(settings)
    except (OSError, ValueError) as exc:
        return [
            Check(names[0], Status.FAIL, f"cannot load the MQTT TLS files: {exc}"),
            *(_skip(n, "no broker") for n in names[1:]),
        ]
    try:
        client.start()
        return await _mqtt_session(client, settings, opts, where, names)
    finally:
        await client.close()


async def _mqtt_session(
    client: _MqttProbe,
    settings: MqttSourceSettings,
    opts: DoctorOptions,
    where: str,
    names: list[str],
) -> list[Check]:
    event = await client.next_event(
        {"connect", "connect_fail", "disconnect"}, opts.connect_timeout_s + 0.5
    )
    if event is None or event[0] != "connect":
        tls = (
            "" if settings.tls.enabled else " — does the broker need TLS (tls.enabled, port 8883)?"
        )
        detail = (
            f"the broker at {where} accepts TCP but did not complete the MQTT connection"
            if event is not None
            else f"the broker at {where} did not answer MQTT CONNECT within "
            f"{opts.connect_timeout_s + 0.5:g} s"
        )
        return [
            Check(names[0], Status.FAIL, detail, f"is it an MQTT port{tls}"),
            *(_skip(n, "no MQTT session") for n in names[1:]),
        ]
    rc = event[1]
    if getattr(rc, "is_failure", False):
        code = int(getattr(rc, "value", 0))
        if code in _AUTH_CODES:
            detail = f"MQTT broker refused: not authorised ({rc})"
            hint = "check username/password (BESS_MQTT_USERNAME, BESS_MQTT_PASSWORD)"
        else:
            detail, hint = (
                f"MQTT broker refused the connection: {rc}",
                ("check the broker's log; protocol version (protocol: '3.1.1' for old brokers)"),
            )
        return [
            Check(names[0], Status.FAIL, detail, hint),
            *(_skip(n, "not connected") for n in names[1:]),
        ]
    user = f" as {settings.username}" if settings.username else " (anonymous)"
    checks = [Check(names[0], Status.OK, f"connected to {where}{user}, MQTT {settings.protocol}")]
    by_topic: dict[str, list[tuple[Quantity, TopicSpec]]] = {}
    for quantity, spec in settings.topics.items():
        by_topic.setdefault(spec.topic, []).append((quantity, spec))
    topics = list(by_topic)
    qos: int = settings.qos
    client.client.subscribe([(t, qos) for t in topics])
    sub = await client.next_event({"subscribe", "disconnect"}, opts.connect_timeout_s)
    if sub is None or sub[0] != "subscribe":
        checks.append(
            Check(names[1], Status.FAIL, "the broker did not acknowledge the subscription")
        )
        return [*checks, _skip(names[2], "no subscription")]
    refused = [t for t, rc in zip(topics, sub[1], strict=False) if getattr(rc, "is_failure", False)]
    if refused:
        checks.append(
            Check(
                names[1],
                Status.FAIL,
                f"the broker refused the subscription to {', '.join(refused)}",
                "check the broker's access rules (ACL) for this user",
            )
        )
        if len(refused) == len(topics):
            return [*checks, _skip(names[2], "no subscription")]
    else:
        checks.append(Check(names[1], Status.OK, f"subscribed to {', '.join(topics)}"))
    checks.append(await _mqtt_messages(client, settings, by_topic, opts, names[2]))
    return checks


async def _mqtt_messages(
    client: _MqttProbe,
    settings: MqttSourceSettings,
    by_topic: Mapping[str, list[tuple[Quantity, TopicSpec]]],
    opts: DoctorOptions,
    name: str,
) -> Check:
    seen: dict[str, str] = {}
    problems: dict[str, str] = {}
    retained_ignored: list[str] = []
    deadline = time.monotonic() + opts.mqtt_wait_s
    while len(seen) + len(problems) < len(by_topic):
        event = await client.next_event({"message"}, deadline - time.monotonic())
        if event is None:
            break
        topic, payload, retain = event[1]
        specs = by_topic.get(topic)
        if specs is None or topic in seen or topic in problems:
            continue
        readings, bad, carried = parse_message(
            payload, specs, received_at=time.time(), timestamp_paths=settings.timestamp_paths
        )
        if bad:
            excerpt = payload[:60].decode("utf-8", "replace")
            problems[topic] = f"{topic}: payload {excerpt!r}: {'; '.join(bad)}"
            continue
        seen[topic] = ", ".join(format_quantity(r.quantity, r.value) for r in readings)
        if retain and not carried and not settings.accept_retained_without_timestamp:
            retained_ignored.append(topic)
    silent = [t for t in by_topic if t not in seen and t not in problems]
    got = "; ".join(f"{t}: {v}" for t, v in seen.items())
    if problems:
        return Check(
            name,
            Status.FAIL,
            "; ".join(problems.values()) + (f"; good: {got}" if got else ""),
            "check the topic's format (plain number or json + json_path) and scale",
        )
    if not seen:
        return Check(
            name,
            Status.WARN,
            f"no message on {', '.join(silent)} within {opts.mqtt_wait_s:g} s",
            "is the device publishing? check the topic names (mosquitto_sub -v -t '#' shows "
            "what arrives)",
        )
    if silent or retained_ignored:
        hints = []
        if silent:
            hints.append(f"nothing yet on {', '.join(silent)}: is it published, and how often?")
        if retained_ignored:
            hints.append(
                f"{', '.join(retained_ignored)}: retained value without a timestamp, which the "
                "agent ignores (its age is unknown) unless accept_retained_without_timestamp"
            )
        return Check(name, Status.WARN, got, "\n".join(hints))
    return Check(name, Status.OK, got)


# -- REST -------------------------------------------------------------------------------------


async def check_rest(settings: RestIngestSettings, opts: DoctorOptions) -> list[Check]:
    name = "rest: port"
    where = f"{settings.host}:{settings.port}"
    if settings.port == 0:
        return [Check(name, Status.OK, "port 0: any free port is used")]
    try:
        family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((settings.host, settings.port))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            if await _healthz_answers(settings.host, settings.port, opts.request_timeout_s):
                return [Check(name, Status.OK, f"{where} is served by a running agent (healthz)")]
            return [
                Check(
                    name,
                    Status.FAIL,
                    f"port {settings.port} on {settings.host} is in use by another program",
                    "choose another sources.rest.port (BESS_REST_PORT), or stop that program",
                )
            ]
        if exc.errno == errno.EADDRNOTAVAIL:
            return [
                Check(
                    name,
                    Status.FAIL,
                    f"{settings.host} is not an address of this machine",
                    "use 127.0.0.1 (local only) or 0.0.0.0 (all interfaces)",
                )
            ]
        if exc.errno == errno.EACCES:
            return [
                Check(
                    name,
                    Status.FAIL,
                    f"not allowed to listen on port {settings.port}",
                    "ports below 1024 need root: use a higher port",
                )
            ]
        return [Check(name, Status.FAIL, f"cannot listen on {where}: {exc.strerror or exc}")]
    return [Check(name, Status.OK, f"{where} is free to listen on")]


async def _healthz_answers(host: str, port: int, timeout_s: float) -> bool:
    target = "127.0.0.1" if host in ("0.0.0.0", "") else host  # noqa: S104 - a comparison
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(target, port)
            writer.write(f"GET {HEALTH_PATH} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
            await writer.drain()
            head = await reader.read(200)
            writer.close()
    except (OSError, TimeoutError):
        return False
    return head.startswith((b"HTTP/1.1 200", b"HTTP/1.0 200"))


# -- uplink -----------------------------------------------------------------------------------


def _read_file(path: Path, what: str) -> tuple[bytes | None, str | None]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        return None, f"{what} {path}: {exc.strerror or exc}"
    if not data.strip():
        return None, f"{what} {path} is empty"
    return data, None


async def check_uplink(
    settings: UplinkSettings,
    opts: DoctorOptions,
    env: Mapping[str, str],
    *,
    site_id: str | None = None,
) -> list[Check]:
    names = ["uplink: address", "uplink: connect", "uplink: credentials", "uplink: grpc"]
    host, port = settings.host, int(settings.target.rpartition(":")[2])
    checks: list[Check] = []
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(opts.uplink_timeout_s):
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        addresses = sorted({str(info[4][0]) for info in infos})
        checks.append(Check(names[0], Status.OK, f"{host} -> {', '.join(addresses[:3])}"))
    except TimeoutError:
        checks.append(
            Check(names[0], Status.FAIL, f"no DNS answer for {host!r}", "check this box's DNS")
        )
    except OSError:
        checks.append(
            Check(
                names[0],
                Status.FAIL,
                f"cannot resolve {host!r}",
                "check uplink.target (BESS_UPLINK_TARGET) and this box's DNS settings",
            )
        )
    checks.append(_uplink_credentials(settings, env, site_id=site_id))
    if checks[0].status is Status.FAIL:
        return [checks[0], _skip(names[1], "no address"), checks[1], _skip(names[3], "no address")]
    probe = await tcp_probe(host, port, timeout_s=opts.connect_timeout_s, service="uplink")
    if not probe.ok:
        return [
            checks[0],
            Check(names[1], Status.FAIL, probe.detail, probe.hint),
            checks[1],
            _skip(names[3], "no TCP connection"),
        ]
    connect = Check(names[1], Status.OK, probe.detail)
    if checks[1].status is Status.FAIL:
        return [checks[0], connect, checks[1], _skip(names[3], "credentials unusable")]
    return [checks[0], connect, checks[1], await _grpc_ready(settings, opts)]


CERT_RENEW_WARN_DAYS = 30
"""Warn this long before the site certificate expires (`bess-plane site-cert` issues a new)."""


def _uplink_credentials(
    settings: UplinkSettings,
    env: Mapping[str, str],
    *,
    site_id: str | None = None,
    now: float | None = None,
) -> Check:
    name = "uplink: credentials"
    problems: list[str] = []
    notes: list[str] = []
    warnings: list[str] = []
    tls = settings.tls
    if tls.enabled:
        for what, path in (("tls.ca_file", tls.ca_file), ("tls.cert_file", tls.cert_file)):
            if path is None:
                continue
            data, problem = _read_file(path, what)
            if problem:
                problems.append(problem)
            elif data is not None and b"-----BEGIN" not in data:
                problems.append(f"{what} {path} is not a PEM file")
            elif data is not None and what == "tls.cert_file":
                note, problem, warning = _site_certificate(data, site_id, now)
                notes += [note] if note else []
                problems += [problem] if problem else []
                warnings += [warning] if warning else []
        if tls.key_file is not None:
            _, problem = _read_file(tls.key_file, "tls.key_file")
            if problem:
                problems.append(problem)
        notes.insert(0, "TLS" + (" with client certificate" if tls.cert_file else ""))
    else:
        notes.append("no TLS")
    auth_warning = ""
    if settings.token_file is not None:
        _, problem = _read_file(settings.token_file, "token_file")
        if problem:
            problems.append(problem)
        else:
            notes.append(f"token from {settings.token_file}")
    elif settings.token_env is not None:
        if env.get(settings.token_env, "").strip():
            notes.append(f"token from ${settings.token_env}")
        else:
            auth_warning = (
                f"the variable {settings.token_env} (token_env) is not set in this shell; "
                "the service gets it from its environment file (/etc/bess-edge/env)?"
            )
    elif tls.cert_file is None:
        auth_warning = (
            "no site token and no client certificate: the plane refuses the agent unless it "
            "admits unauthenticated sites"
        )
    if problems:
        return Check(
            name,
            Status.FAIL,
            "; ".join(problems),
            "the files must exist and be readable by the agent's user, and the certificate "
            "must be this site's and current: a technician issues one with "
            "`bess-plane site-cert SITE_ID` on the plane",
        )
    if auth_warning or warnings:
        hint = "; ".join(w for w in (*warnings, auth_warning) if w)
        return Check(name, Status.WARN, ", ".join(notes), hint)
    return Check(name, Status.OK, ", ".join(notes))


def _site_certificate(pem: bytes, site_id: str | None, now: float | None) -> tuple[str, str, str]:
    """(note, problem, warning) about the site certificate: its site and its expiry."""
    try:
        cert = read_pem_certificate(pem)
    except CertificateFormatError as exc:
        return "", f"tls.cert_file cannot be read as a certificate: {exc}", ""
    moment = time.time() if now is None else now
    until = f"{cert.not_after:%Y-%m-%d}"
    sites = cert.site_ids
    if len(sites) != 1:
        named = f"names the sites {', '.join(sites)}" if sites else "names no site"
        return "", f"tls.cert_file {named} (needs one SAN URI urn:bess:site:<SITE_ID>)", ""
    if site_id is not None and sites[0] != site_id:
        return (
            "",
            (
                f"tls.cert_file is for site {sites[0]!r} but site_id is {site_id!r}: "
                "the plane refuses the stream (PERMISSION_DENIED)"
            ),
            "",
        )
    if moment >= cert.not_after.timestamp():
        return "", f"the site certificate expired on {until}", ""
    if moment < cert.not_before.timestamp():
        return (
            "",
            (
                f"the site certificate is valid only from {cert.not_before:%Y-%m-%d %H:%M} UTC: "
                "is this box's clock right?"
            ),
            "",
        )
    note = f"site certificate for {sites[0]} until {until}"
    days_left = (cert.not_after.timestamp() - moment) / 86_400
    if days_left < CERT_RENEW_WARN_DAYS:
        return note, "", f"the site certificate expires in {days_left:.0f} days: issue a new one"
    return note, "", ""


async def _grpc_ready(settings: UplinkSettings, opts: DoctorOptions) -> Check:
    name = "uplink: grpc"
    tls = settings.tls
    options = settings.channel_options()
    if tls.enabled:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=_read_file(tls.ca_file, "")[0] if tls.ca_file else None,
            private_key=_read_file(tls.key_file, "")[0] if tls.key_file else None,
            certificate_chain=_read_file(tls.cert_file, "")[0] if tls.cert_file else None,
        )
        channel = grpc.aio.secure_channel(settings.target, credentials, options=options)
    else:
        channel = grpc.aio.insecure_channel(settings.target, options=options)
    failed = False
    try:
        async with asyncio.timeout(opts.uplink_timeout_s):
            state = channel.get_state(try_to_connect=True)
            while state is not grpc.ChannelConnectivity.READY:
                if state is grpc.ChannelConnectivity.TRANSIENT_FAILURE:
                    failed = True
                    break
                await channel.wait_for_state_change(state)
                state = channel.get_state(try_to_connect=True)
    except TimeoutError:
        failed = True
    finally:
        await channel.close(grace=None)
    if failed:
        tls_hint = (
            "TLS: check tls.ca_file and tls.server_name against the plane's certificate"
            if tls.enabled
            else "does the plane expect TLS (uplink.tls.enabled)?"
        )
        return Check(
            name,
            Status.FAIL,
            f"TCP connects, but no gRPC (HTTP/2) channel to {settings.target} within "
            f"{opts.uplink_timeout_s:g} s",
            f"is it the plane's EdgeLink port? {tls_hint}",
        )
    return Check(
        name,
        Status.OK,
        f"gRPC channel to {settings.target} ready"
        + (" (TLS handshake done)" if tls.enabled else ""),
    )


# -- disk -------------------------------------------------------------------------------------


def _existing_ancestor(path: Path) -> Path:
    current = path.absolute()
    while not current.exists() and current != current.parent:
        current = current.parent
    return current


async def check_disk(config: SiteConfig, opts: DoctorOptions) -> list[Check]:
    return await asyncio.to_thread(_check_disk_sync, config)


def _check_disk_sync(config: SiteConfig) -> list[Check]:
    storage = config.storage
    data_dir = storage.data_dir
    checks: list[Check] = []
    hint = "run as the agent's user, or point storage.data_dir (BESS_DATA_DIR) elsewhere"
    if data_dir.exists() and not data_dir.is_dir():
        checks.append(Check("disk: data dir", Status.FAIL, f"{data_dir} is not a directory", hint))
    elif data_dir.is_dir():
        try:
            with tempfile.NamedTemporaryFile(dir=data_dir, prefix=".doctor-"):
                pass
            checks.append(Check("disk: data dir", Status.OK, f"{data_dir} is writable"))
        except OSError as exc:
            checks.append(
                Check(
                    "disk: data dir",
                    Status.FAIL,
                    f"cannot write in {data_dir}: {exc.strerror or exc}",
                    hint,
                )
            )
    else:
        parent = _existing_ancestor(data_dir)
        if os.access(parent, os.W_OK | os.X_OK):
            checks.append(
                Check(
                    "disk: data dir",
                    Status.OK,
                    f"{data_dir} does not exist yet; it can be created in {parent}",
                )
            )
        else:
            checks.append(
                Check(
                    "disk: data dir",
                    Status.FAIL,
                    f"{data_dir} does not exist and cannot be created in {parent} "
                    "(permission denied)",
                    "create it for the agent's user (systemd: StateDirectory=bess-edge), or "
                    "set storage.data_dir (BESS_DATA_DIR)",
                )
            )
    usage = shutil.disk_usage(_existing_ancestor(data_dir))
    free = f"{usage.free / 1e9:.1f} GB free of {usage.total / 1e9:.1f} GB"
    if usage.free < LOW_DISK_FAIL_BYTES:
        checks.append(
            Check(
                "disk: free space",
                Status.FAIL,
                free,
                "the outbox cannot store telemetry: free some space",
            )
        )
    elif usage.free < LOW_DISK_WARN_BYTES:
        checks.append(
            Check(
                "disk: free space",
                Status.WARN,
                free,
                "a long uplink outage fills the outbox: about 150 MB per million samples",
            )
        )
    else:
        checks.append(Check("disk: free space", Status.OK, free))
    checks.append(_outbox_check(config))
    return checks


def _outbox_check(config: SiteConfig) -> Check:
    name = "disk: outbox"
    storage = config.storage
    path = storage.outbox_path
    if not path.exists():
        return Check(name, Status.OK, f"{path} not created yet (the agent creates it)")
    try:
        with Outbox(
            path,
            max_rows=storage.outbox_max_rows,
            max_age_s=storage.outbox_max_age_s,
            synchronous=storage.synchronous,
        ) as outbox:
            stats = outbox.stats()
    except OutboxError as exc:
        return Check(
            name,
            Status.FAIL,
            str(exc),
            "move the file aside (its unsent telemetry stays in it) and let the agent create a "
            "new one",
        )
    parts = []
    backlog: list[str] = []
    for st in stats.values():
        part = f"{st.stream}: {st.depth} waiting"
        if st.depth:
            part += f", oldest {_age(st.oldest_age_s)}"
        if st.dropped_total:
            part += f", {st.dropped_total} dropped so far"
        parts.append(part)
        if st.oldest_age_s > OUTBOX_BACKLOG_WARN_S:
            backlog.append(st.stream)
    detail = f"{path}: " + "; ".join(parts)
    if backlog:
        return Check(
            name,
            Status.WARN,
            detail,
            "the plane has not acknowledged for over an hour: check the uplink",
        )
    return Check(name, Status.OK, detail)


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172_800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


# -- clock ------------------------------------------------------------------------------------


class _Timex(ctypes.Structure):
    # The leading fields of struct timex (<sys/timex.h>); the rest is room for the kernel.
    _fields_ = (
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("_rest", ctypes.c_char * 256),
    )


@dataclass(frozen=True)
class ClockState:
    synchronised: bool
    max_error_s: float


def kernel_clock_state() -> ClockState | None:
    """The kernel's NTP state via a read-only ``adjtimex``; None where it is not available."""
    if not sys.platform.startswith("linux"):
        return None
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        timex = _Timex()  # modes = 0: read only, allowed without privileges
        state = int(libc.adjtimex(ctypes.byref(timex)))
    except (OSError, AttributeError):
        return None
    if state < 0:
        return None
    unsync = state == TIME_ERROR or bool(timex.status & STA_UNSYNC)
    return ClockState(synchronised=not unsync, max_error_s=timex.maxerror / 1e6)


def check_clock() -> Check:
    name = "clock"
    state = kernel_clock_state()
    now = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    if state is None:
        return _skip(name, f"cannot ask the kernel on this system; the clock reads {now}")
    if not state.synchronised:
        return Check(
            name,
            Status.WARN,
            f"the system clock is not synchronised (kernel NTP status); it reads {now}",
            "timestamps and 15-minute schedules depend on it: enable NTP "
            "(`timedatectl set-ntp true`, chrony or systemd-timesyncd)",
        )
    err = state.max_error_s
    shown = f"{err * 1000:.0f} ms" if math.isfinite(err) else "unknown"
    return Check(name, Status.OK, f"synchronised (max. error {shown}); it reads {now}")


# -- helpers for the CLI ----------------------------------------------------------------------


@dataclass
class ReadResult:
    """``bess-edge read``: connection problem, or the readout."""

    host: str
    port: int
    unit_id: int
    preset: str
    readout: PointsReadout | None = None
    error: str | None = None
    hint: str = ""


async def read_device(settings: ModbusSourceSettings, *, timeout_s: float = 2.0) -> ReadResult:
    """Connect and ``read_points`` once, for ``bess-edge read``; never raises device errors."""
    preset = load_preset(settings.preset)
    unit = preset.unit_id if settings.unit_id is None else settings.unit_id
    result = ReadResult(settings.host, settings.port, unit, preset.name)
    probe = await tcp_probe(settings.host, settings.port, timeout_s=timeout_s, service="modbus")
    if not probe.ok:
        result.error, result.hint = probe.detail, probe.hint
        return result
    conn = ModbusConnection(
        settings.host,
        settings.port,
        request_timeout_s=settings.request_timeout_s,
        connect_timeout_s=timeout_s,
    )
    try:
        if not await conn.try_connect():
            result.error = f"cannot connect to {settings.host}:{settings.port}"
            result.hint = SERVICE_HINTS["modbus"]
            return result
        try:
            result.readout = await read_points(conn, settings, preset)
        except PresetError as exc:
            result.error = str(exc)
            result.hint = "the preset does not fit this device: `bess-edge scan HOST` shows it"
        except ModbusError as exc:
            result.error, result.hint = explain_modbus_error(exc, unit)
    finally:
        await conn.close()
    return result
