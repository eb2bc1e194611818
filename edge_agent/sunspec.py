"""SunSpec discovery and the ``bess-edge scan HOST`` report.

A SunSpec device announces itself with the marker ``SunS`` (0x5375 0x6E53) at one of the
well-known base addresses 40000, 0 or 50000; model blocks follow back to back, each starting
with its header (``ID``, ``L`` = registers after the header), until the end marker ID 0xFFFF.
``discover`` probes the bases in that order and walks the headers; the agent's SunSpec presets
then address points as offsets within the models found, so a device with its map at 0 or with
an extra model in between works without configuration.

Models are read in chunks of at most 125 registers (one request's limit). Some devices
(several SMA firmwares, LIBRARY-NOTES.md) answer exception 2 for a model they list: such a
model is skipped with a warning, the rest of the chain still counts.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from .modbus_client import (
    ConnectionLost,
    DeviceException,
    ModbusConnection,
    ModbusError,
    RegisterIO,
    RequestTimeout,
)
from .modbus_codec import MAX_READ_REGISTERS

log = logging.getLogger(__name__)

SUNSPEC_BASES: tuple[int, ...] = (40000, 0, 50000)
SUNSPEC_MARKER = (0x5375, 0x6E53)  # "SunS"
END_MODEL = 0xFFFF
MAX_MODELS = 100  # a chain longer than this is broken (or not SunSpec at all)
NOT_HERE_CODES = frozenset({2, 3})  # illegal address / value: no map at that base

MODEL_NAMES: dict[int, str] = {
    1: "common",
    101: "inverter, single phase (int + SF)",
    102: "inverter, split phase (int + SF)",
    103: "inverter, three phase (int + SF)",
    111: "inverter, single phase (float)",
    112: "inverter, split phase (float)",
    113: "inverter, three phase (float)",
    120: "nameplate",
    121: "basic settings",
    122: "measurements and status",
    123: "immediate controls",
    124: "storage controls",
    160: "multiple MPPT",
    201: "meter, single phase",
    203: "meter, three phase wye",
    701: "DER AC measurement",
    702: "DER capacity",
    704: "DER AC controls",
    713: "DER storage capacity",
    802: "battery base",
    803: "lithium-ion battery bank",
    804: "lithium-ion battery string",
}


class SunSpecNotFound(ModbusError):
    """The device answered, but no ``SunS`` marker at any of the base addresses probed."""


@dataclass(frozen=True)
class ModelInfo:
    """One model block: its id, where its header is and how long its body is."""

    id: int
    address: int  # of the header (ID); the body starts 2 registers later
    length: int  # L: registers after the header

    @property
    def body(self) -> int:
        return self.address + 2

    @property
    def end(self) -> int:
        return self.body + self.length

    @property
    def name(self) -> str:
        return MODEL_NAMES.get(self.id, "vendor or unknown model")


@dataclass(frozen=True)
class Discovery:
    """What ``discover`` found: the base address (None = no marker) and the model chain."""

    base: int | None
    models: tuple[ModelInfo, ...] = ()
    problems: tuple[str, ...] = ()
    probed: tuple[int, ...] = SUNSPEC_BASES

    @property
    def found(self) -> bool:
        return self.base is not None

    def find(self, model_ids: int | Sequence[int]) -> ModelInfo | None:
        """The first model in the chain whose id is one of ``model_ids`` (in chain order)."""
        ids = {model_ids} if isinstance(model_ids, int) else set(model_ids)
        return next((m for m in self.models if m.id in ids), None)

    def ids(self) -> list[int]:
        return [m.id for m in self.models]


def marker_missing_text(probed: Sequence[int]) -> str:
    where = "/".join(str(b) for b in probed)
    return (
        f"SunSpec marker not found at {where} — is this a SunSpec device? try the vendor "
        f"preset (sma, victron_gx) or the generic map"
    )


async def discover(
    io: RegisterIO,
    *,
    unit_id: int,
    bases: Sequence[int] = SUNSPEC_BASES,
    max_models: int = MAX_MODELS,
) -> Discovery:
    """Probe ``bases`` for the marker and walk the model headers to the end marker.

    Connection problems propagate (``ConnectionLost``, ``RequestTimeout``): without a link
    nothing can be said. Exception 2 or 3 at a base means "nothing here"; any other device
    exception (busy, failure, gateway without target) propagates when no base answered, so a
    busy device is not mistaken for one without SunSpec.
    """
    base: int | None = None
    refused: DeviceException | None = None
    for candidate in bases:
        try:
            regs = await io.read_registers("holding", candidate, 2, unit_id=unit_id)
        except DeviceException as exc:
            log.debug("no SunSpec marker at %d: %s", candidate, exc)
            if exc.code not in NOT_HERE_CODES:
                refused = exc
            continue
        if tuple(regs) == SUNSPEC_MARKER:
            base = candidate
            break
    if base is None:
        if refused is not None:
            raise refused
        return Discovery(base=None, probed=tuple(bases))

    models: list[ModelInfo] = []
    problems: list[str] = []
    address = base + 2
    for _ in range(max_models):
        if address + 2 > 65536:
            problems.append(f"the model chain runs past register 65535 at {address}")
            break
        try:
            model_id, length = await io.read_registers("holding", address, 2, unit_id=unit_id)
        except DeviceException as exc:
            problems.append(
                f"the model chain breaks at {address}: {exc} — models after it are unknown"
            )
            break
        if model_id == END_MODEL:
            break
        models.append(ModelInfo(model_id, address, length))
        address += 2 + length
    else:
        problems.append(f"no end marker (0xFFFF) within {max_models} models")
    for problem in problems:
        log.warning("SunSpec discovery at base %d: %s", base, problem)
    return Discovery(base=base, models=tuple(models), problems=tuple(problems), probed=tuple(bases))


async def read_model(io: RegisterIO, model: ModelInfo, *, unit_id: int) -> list[int] | None:
    """A model's body in chunks of at most 125 registers; None if the device refuses it."""
    body: list[int] = []
    address = model.body
    while address < model.end:
        count = min(MAX_READ_REGISTERS, model.end - address)
        try:
            body += await io.read_registers("holding", address, count, unit_id=unit_id)
        except DeviceException as exc:
            log.warning(
                "SunSpec model %d at %d (L=%d) cannot be read: %s — skipped",
                model.id,
                model.address,
                model.length,
                exc,
            )
            return None
        address += count
    return body


# -- scan -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScannedModel:
    info: ModelInfo
    readable: bool
    values: dict[str, str] = field(default_factory=dict)  # point -> formatted value


@dataclass(frozen=True)
class ScanResult:
    """What ``bess-edge scan`` prints: connection, SunSpec chain, key values, hints."""

    host: str
    port: int
    unit_id: int
    connected: bool
    base: int | None = None
    models: tuple[ScannedModel, ...] = ()
    hints: tuple[str, ...] = ()
    error: str | None = None

    @property
    def sunspec(self) -> bool:
        return self.base is not None

    def summary(self) -> str:
        lines = [f"Modbus TCP {self.host}:{self.port}, unit id {self.unit_id}"]
        if not self.connected:
            lines.append(f"  not connected: {self.error or 'no answer'}")
        elif self.base is None:
            lines.append("  no SunSpec map found")
        else:
            lines.append(f"  SunSpec map at {self.base}, {len(self.models)} model(s):")
            for m in self.models:
                state = "" if m.readable else "  (unreadable, skipped)"
                lines.append(
                    f"    {m.info.id:>5}  {m.info.name:<36} at {m.info.address}, "
                    f"L={m.info.length}{state}"
                )
                for name, value in m.values.items():
                    lines.append(f"             {name} = {value}")
        for hint in self.hints:
            lines.append(f"  hint: {hint}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


async def scan(host: str, port: int = 502, unit_id: int = 1, timeout: float = 2.0) -> ScanResult:
    """Connect once, look for SunSpec, read every model and report in plain language.

    Never raises for device problems: everything a technician needs is in the result.
    """
    conn = ModbusConnection(host, port, request_timeout_s=timeout, connect_timeout_s=timeout)
    try:
        if not await conn.try_connect():
            return ScanResult(
                host,
                port,
                unit_id,
                connected=False,
                error=f"cannot connect within {timeout:g} s",
                hints=(
                    f"nothing accepts Modbus TCP at {host}:{port} — check the IP address and "
                    f"port, that Modbus TCP is enabled on the device (often off by default), "
                    f"and firewalls",
                ),
            )
        return await _scan_connected(conn, host, port, unit_id)
    finally:
        await conn.close()


async def _scan_connected(conn: ModbusConnection, host: str, port: int, unit_id: int) -> ScanResult:
    from .modbus_source import describe_model_values  # the preset knows the points

    hints: list[str] = []
    try:
        found = await discover(conn, unit_id=unit_id)
    except RequestTimeout as exc:
        return ScanResult(
            host,
            port,
            unit_id,
            connected=True,
            error=str(exc),
            hints=(
                f"the device accepts connections but does not answer unit id {unit_id} — "
                f"check the unit id (SMA: 3, Victron GX: 100, Fronius: 1)",
            ),
        )
    except ConnectionLost as exc:
        return ScanResult(host, port, unit_id, connected=False, error=str(exc))
    except DeviceException as exc:
        hint = (
            f"a gateway answered, but no device behind it has unit id {unit_id} — check the "
            f"unit id (SMA: 3, Victron GX: 100, Fronius: 1)"
            if exc.code in (10, 11)
            else f"the device refuses every request ({exc.meaning}) — try again, check its state"
        )
        return ScanResult(host, port, unit_id, connected=True, error=str(exc), hints=(hint,))
    if not found.found:
        hints.append(marker_missing_text(found.probed))
        return ScanResult(host, port, unit_id, connected=True, hints=tuple(hints))
    scanned: list[ScannedModel] = []
    for model in found.models:
        try:
            body = await read_model(conn, model, unit_id=unit_id)
        except ModbusError as exc:
            hints.append(f"reading model {model.id} failed: {exc}")
            body = None
        if body is None:
            scanned.append(ScannedModel(model, readable=False))
            hints.append(
                f"model {model.id} at {model.address} could not be read — it is skipped; "
                f"the agent uses the other models"
            )
            continue
        scanned.append(ScannedModel(model, True, describe_model_values(model.id, body)))
    ids = found.ids()
    hints.extend(found.problems)
    if 1 in ids:
        common = next(m for m in scanned if m.info.id == 1)
        if common.values:
            who = " ".join(v for k, v in common.values.items() if k in ("Mn", "Md"))
            hints.append(f"device: {who}")
    if 124 not in ids and 802 not in ids:
        hints.append(
            "no storage model (124 or 802): the agent can read this device over SunSpec but "
            "cannot control a battery through it"
        )
    elif 124 not in ids:
        hints.append("no storage controls (model 124): reading works, control does not")
    else:
        hints.append("SunSpec storage controls found: use preset 'sunspec' (or 'fronius')")
    return ScanResult(
        host,
        port,
        unit_id,
        connected=True,
        base=found.base,
        models=tuple(scanned),
        hints=tuple(hints),
    )
