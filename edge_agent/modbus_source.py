"""The battery over Modbus TCP: ``ModbusSource`` reads it (``BatteryReader``) and commands it
(``BatteryController``), driven by a register map that is data (``edge_agent/presets/*.yaml``).

A **preset** describes a device from the agent's side: which register holds which
``Quantity``, in which table (holding/input), type, word/byte order, fixed ``scale`` or SunSpec
scale-factor point (``sf``), units (W/Wh/var are converted to kW/kWh/kvar) and ``sign`` (-1 for
vendors that count charging as positive), plus how to command power (``control``)::

    name, description, extends (inherit another preset's keys), sources, verified,
    layout: plain | sunspec, unit_id, table, na_markers, max_gap,
    points: [...]                       # plain: every point has an ``address``
    models: [{model: 124, name: storage, points: [...]}]   # sunspec: ``offset`` in the model
    control: {mode: none | setpoint | sunspec_storage, ...}

Points: ``name``, ``address``/``offset``, ``type``, ``size`` (strings), ``word_order``,
``byte_order``, ``scale`` or ``sf``, ``units``, ``sign``, ``quantity``, ``fallback`` (used
only when the primary points of that quantity give nothing), ``unit_id`` (a point behind
another unit id of a gateway), ``na`` (an extra vendor "not available" raw value), ``access``.

SunSpec presets are model-relative: ``discover`` (``edge_agent.sunspec``) finds the base
(40000, 0 or 50000) and the models, each model entry binds to the first discovered model whose
id it lists (``model: [103, 102, 101]`` for variants with one layout). Discovery runs again
after every reconnect: a device may come back with another firmware.

Reading (``read``): the needed points (quantities, their scale factors, control read-backs)
are merged into as few requests as possible (contiguous, or gaps up to ``max_gap`` registers,
at most 125 registers each); a value and its scale factor always come from **one** request, so
a scale factor the device changes at runtime is never paired with a stale value. A request the
device refuses with exception 2 is split into per-point requests from then on. "Not
implemented" markers and implausible values (``check_plausible``) are dropped, counted per
point and logged once (and once more when the point recovers); the next point for the same
quantity (``fallback``) is tried. ``read`` raises a ``ModbusError`` only when nothing at all
could be read; the coordinator then marks the source stale.

Control (``write_power_kw``, + = discharge): ``setpoint`` writes a power register (with an
optional enable register written in the same request when adjacent, e.g. SMA 40149/40151);
``sunspec_storage`` writes model 124's ``OutWRte``/``InWRte`` (one write, they are adjacent,
in % of ``WChaMax`` at ``InOutWRte_SF``) and then ``StorCtl_Mod``. Two strategies:

- ``rate`` (the simulator, and devices that treat the rates as setpoints): discharge P ->
  ``StorCtl_Mod`` = 2, ``OutWRte`` = P; charge -> 1, ``InWRte`` = |P|; 0 kW -> 3 with both 0;
- ``window`` (SunSpec's own reading, Fronius: the rates bound a power window): both limits
  active (3), ``OutWRte`` = P and ``InWRte`` = -P pin the window to P.

A controller heartbeat (802 ``CtrlHb``, generic register 21) is incremented with every write;
``settings.revert_timeout_s`` is written to the device's revert-timeout register once per
connection. ``revert_timeout_s`` tells the executor how often it must refresh.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .modbus_client import (
    ConnectionLost,
    DeviceException,
    ModbusConnection,
    ModbusError,
    RegisterIO,
    RequestTimeout,
)
from .modbus_codec import (
    MAX_READ_REGISTERS,
    TYPES,
    Order,
    PointType,
    decode_raw,
    decode_value,
    encode,
    saturates,
    sf_multiplier,
)
from .readings import Quantity, Reading, ReadingError, check_plausible
from .sunspec import Discovery, SunSpecNotFound, discover, marker_missing_text

log = logging.getLogger(__name__)

SOURCE_NAME = "modbus"
PRESETS_DIR = Path(__file__).with_name("presets")
BUILTIN_PRESETS = ("generic", "sunspec", "fronius", "sma", "victron_gx")

Table = Literal["holding", "input"]

# The unit each quantity is reported in, and the units a point may be written in.
QUANTITY_UNITS: Mapping[Quantity, str] = {
    Quantity.SOC_PCT: "%",
    Quantity.SOH_PCT: "%",
    Quantity.ACTIVE_POWER_KW: "kW",
    Quantity.SETPOINT_KW: "kW",
    Quantity.REACTIVE_POWER_KVAR: "kvar",
    Quantity.VOLTAGE_V: "V",
    Quantity.TEMPERATURE_C: "C",
    Quantity.GRID_FREQUENCY_HZ: "Hz",
    Quantity.ENERGY_CHARGED_TOTAL_KWH: "kWh",
    Quantity.ENERGY_DISCHARGED_TOTAL_KWH: "kWh",
    Quantity.STATUS_CODE: "",
    Quantity.ALARM_BITS: "",
}
UNITS: Mapping[str, tuple[str, float]] = {  # unit -> (dimension, factor to the base unit)
    "": ("dimensionless", 1.0),
    "%": ("percent", 1.0),
    "W": ("active power", 1.0),
    "kW": ("active power", 1e3),
    "MW": ("active power", 1e6),
    "var": ("reactive power", 1.0),
    "kvar": ("reactive power", 1e3),
    "VA": ("apparent power", 1.0),
    "kVA": ("apparent power", 1e3),
    "Wh": ("energy", 1.0),
    "kWh": ("energy", 1e3),
    "MWh": ("energy", 1e6),
    "V": ("voltage", 1.0),
    "A": ("current", 1.0),
    "Ah": ("charge", 1.0),
    "C": ("temperature", 1.0),
    "Hz": ("frequency", 1.0),
    "s": ("time", 1.0),
    "min": ("time", 60.0),
}


def unit_factor(source: str, target: str) -> float:
    """Multiply a value in ``source`` units by this to get ``target`` units."""
    dim_s, f_s = UNITS[source]
    dim_t, f_t = UNITS[target]
    if dim_s != dim_t:
        raise ValueError(f"cannot convert {dim_s} ({source or 'no unit'}) to {dim_t} ({target})")
    return f_s / f_t


class PresetError(ValueError):
    """A preset (register map) that cannot be used; the message names the point and the fix."""


class ControlNotSupported(ModbusError):
    """The preset has no way to command power (``control.mode: none``) or lacks a register."""


# -- preset schema ----------------------------------------------------------------------------


class PointDef(BaseModel):
    """One register (or group of registers) as the preset file writes it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    address: int | None = Field(default=None, ge=0, le=65535)
    offset: int | None = Field(default=None, ge=0, le=65535)
    table: Table | None = None
    type: PointType
    size: int | None = Field(default=None, ge=1, le=MAX_READ_REGISTERS)
    word_order: Order = "big"
    byte_order: Order = "big"
    scale: float | None = Field(default=None, gt=0)
    sf: str | None = None
    units: str | None = None
    sign: Literal[1, -1] = 1
    quantity: Quantity | None = None
    fallback: bool = False
    unit_id: int | None = Field(default=None, ge=0, le=255)
    na: int | None = None
    access: Literal["r", "rw"] = "r"
    description: str = ""

    @model_validator(mode="after")
    def _consistent(self) -> PointDef:
        info = TYPES[self.type]
        if self.scale is not None and self.sf is not None:
            raise ValueError("give either scale or sf, not both")
        if self.units is not None and self.units not in UNITS:
            raise ValueError(f"unknown units {self.units!r}; allowed: {', '.join(UNITS)}")
        if info.kind == "string":
            if self.size is None:
                raise ValueError("a string needs size: its length in registers")
            if self.quantity is not None:
                raise ValueError("a string cannot be a quantity")
        elif self.size is not None and self.size != info.registers:
            raise ValueError(f"{self.type.value} is {info.registers} register(s), not {self.size}")
        if self.quantity is not None:
            want = QUANTITY_UNITS[self.quantity]
            have = self.units if self.units is not None else want
            try:
                unit_factor(have, want)
            except ValueError as exc:
                raise ValueError(f"quantity {self.quantity.value} is in {want!r}: {exc}") from None
        return self

    @property
    def registers(self) -> int:
        return self.size or TYPES[self.type].registers


class ModelDef(BaseModel):
    """Points of one SunSpec model, by offset after the model's ID/L header."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: int | list[int]
    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    description: str = ""
    points: list[PointDef]

    @property
    def ids(self) -> list[int]:
        return [self.model] if isinstance(self.model, int) else list(self.model)


SUNSPEC_CONTROL_DEFAULTS: Mapping[str, str] = {
    "storctl": "storage.StorCtl_Mod",
    "out_rate": "storage.OutWRte",
    "in_rate": "storage.InWRte",
    "max_rate": "storage.WChaMax",
    "revert_timeout": "storage.InOutWRte_RvrtTms",
    "heartbeat": "battery.CtrlHb",
}


class ControlDef(BaseModel):
    """How ``write_power_kw`` commands the device; point names refer to the preset's points."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Literal["none", "setpoint", "sunspec_storage"] = "none"
    strategy: Literal["rate", "window"] = "rate"  # sunspec_storage only
    setpoint: str | None = None  # setpoint mode: the power register (+ = discharge after sign)
    enable: str | None = None  # setpoint mode: a register that must hold enable_value
    enable_value: int | None = None
    storctl: str | None = None  # sunspec_storage: the 124 points (defaults above)
    out_rate: str | None = None
    in_rate: str | None = None
    max_rate: str | None = None
    heartbeat: str | None = None  # incremented on every write (optional)
    revert_timeout: str | None = None  # seconds; read for revert_timeout_s, written if set
    revert_timeout_s: float | None = Field(default=None, ge=0)  # documented fixed timeout

    @model_validator(mode="after")
    def _complete(self) -> ControlDef:
        if self.mode == "setpoint" and self.setpoint is None:
            raise ValueError("control mode setpoint needs setpoint: <point name>")
        if (self.enable is None) != (self.enable_value is None):
            raise ValueError("give enable and enable_value together")
        return self

    def point_name(self, role: str) -> str | None:
        name: str | None = getattr(self, role)
        if name is None and self.mode == "sunspec_storage":
            return SUNSPEC_CONTROL_DEFAULTS.get(role)
        return name


class PresetDef(BaseModel):
    """A whole preset file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    description: str = ""
    sources: list[str] = Field(default_factory=list)  # where the registers come from
    verified: str = ""  # what it was checked against
    layout: Literal["plain", "sunspec"] = "plain"
    unit_id: int = Field(default=1, ge=0, le=255)
    table: Table = "holding"
    na_markers: bool = True  # treat 0x8000/0xFFFF/... as "not implemented"
    max_gap: int = Field(default=0, ge=0, le=MAX_READ_REGISTERS - 1)
    points: list[PointDef] | None = None
    models: list[ModelDef] | None = None
    control: ControlDef = ControlDef()

    @model_validator(mode="after")
    def _layout(self) -> PresetDef:
        problems: list[str] = []
        if self.layout == "plain":
            if self.points is None or self.models is not None:
                raise ValueError("a plain preset lists points (each with an address), no models")
            problems += [
                f"point {p.name!r}: give its address (offsets are for sunspec presets)"
                for p in self.points
                if p.address is None or p.offset is not None
            ]
        else:
            if self.models is None or self.points is not None:
                raise ValueError("a sunspec preset lists models (points with offsets), no points")
            problems += [
                f"point {m.name}.{p.name}: give its offset in the model, not an address"
                for m in self.models
                for p in m.points
                if p.offset is None or p.address is not None
            ]
        names = [name for name, _ in self.named_points()]
        problems += [f"point {n!r} is defined twice" for n, c in Counter(names).items() if c > 1]
        by_name = dict(self.named_points())
        for name, p in self.named_points():
            if p.sf is not None:
                sf_name = f"{name.rpartition('.')[0]}.{p.sf}" if "." in name else p.sf
                sf_point = by_name.get(sf_name)
                if sf_point is None or sf_point.type is not PointType.SUNSSF:
                    problems.append(f"point {name!r}: sf {p.sf!r} is not a sunssf point beside it")
        for role in ("setpoint", "enable", "storctl", "out_rate", "in_rate", "heartbeat"):
            ref = self.control.point_name(role)
            if ref is None or self.control.mode == "none":
                continue
            point = by_name.get(ref)
            if point is None:
                problems.append(f"control.{role}: no point {ref!r}")
            elif point.access != "rw":
                problems.append(f"control.{role}: point {ref!r} is not writable (access: rw)")
        for role in ("max_rate", "revert_timeout"):
            ref = self.control.point_name(role)
            if ref is not None and self.control.mode != "none" and ref not in by_name:
                problems.append(f"control.{role}: no point {ref!r}")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def named_points(self) -> list[tuple[str, PointDef]]:
        """(full name, point): ``model.point`` in sunspec presets, ``point`` in plain ones."""
        if self.points is not None:
            return [(p.name, p) for p in self.points]
        return [(f"{m.name}.{p.name}", p) for m in self.models or [] for p in m.points]


# -- loading ----------------------------------------------------------------------------------

_YamlLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _preset_path(name_or_path: str | Path) -> Path:
    if str(name_or_path) in BUILTIN_PRESETS:
        return PRESETS_DIR / f"{name_or_path}.yaml"
    path = Path(name_or_path)
    if not path.is_file():
        raise PresetError(
            f"no Modbus preset {str(name_or_path)!r}: give a file path or one of "
            f"{', '.join(BUILTIN_PRESETS)} (Tesla Powerwall has no Modbus: see "
            f"edge_agent/presets/README.md)"
        )
    return path


def _load_raw(name_or_path: str | Path, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    path = _preset_path(name_or_path)
    key = str(path.resolve())
    if key in seen:
        raise PresetError(f"{path}: 'extends' loops back to itself")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_YamlLoader)  # noqa: S506 - a SafeLoader (C or Python)
    except yaml.YAMLError as exc:
        raise PresetError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise PresetError(f"{path}: a preset is a mapping (name, layout, points or models, ...)")
    parent = data.pop("extends", None)
    if parent is None:
        return data
    base_dir = path.parent
    parent_ref = parent if parent in BUILTIN_PRESETS else str(base_dir / str(parent))
    merged = _load_raw(parent_ref, (*seen, key))
    merged.update(data)  # top-level keys of the child win
    return merged


def load_preset(name_or_path: str | Path) -> PresetDef:
    """A built-in preset by name or a preset file by path (with ``extends`` resolved)."""
    data = _load_raw(name_or_path)
    return parse_preset(data, source=str(name_or_path))


def parse_preset(data: Mapping[str, Any], *, source: str = "<preset>") -> PresetDef:
    try:
        return PresetDef.model_validate(dict(data))
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = ".".join(str(x) for x in err["loc"]) or "(preset)"
            problems.append(f"{loc}: {err['msg'].removeprefix('Value error, ')}")
        raise PresetError(f"{source}: " + "\n  ".join(problems)) from None


# -- resolved map -----------------------------------------------------------------------------


@dataclass(frozen=True)
class MapPoint:
    """A point with its absolute address, table and unit id resolved."""

    name: str
    address: int
    table: Table
    unit_id: int
    type: PointType
    size: int
    word_order: Order
    byte_order: Order
    scale: float | None
    sf: str | None  # full name of the scale factor point
    units: str | None
    sign: int
    quantity: Quantity | None
    fallback: bool
    na: bool
    extra_na: int | None
    access: str

    @property
    def end(self) -> int:
        return self.address + self.size

    def to_quantity_factor(self) -> float:
        """Engineering value in the point's units -> the quantity's unit, sign included."""
        factor = float(self.sign)
        if self.quantity is not None and self.units is not None:
            factor *= unit_factor(self.units, QUANTITY_UNITS[self.quantity])
        return factor


@dataclass(frozen=True)
class Batch:
    """One read request: ``count`` registers from ``address``, decoding ``points``."""

    unit_id: int
    table: Table
    address: int
    count: int
    points: tuple[MapPoint, ...]

    @property
    def end(self) -> int:
        return self.address + self.count

    @property
    def key(self) -> str:
        return f"{self.table} {self.address}+{self.count} (unit {self.unit_id})"


@dataclass(frozen=True)
class ResolvedMap:
    preset: PresetDef
    points: tuple[MapPoint, ...]
    discovery: Discovery | None = None
    skipped_models: tuple[str, ...] = ()

    def point(self, name: str | None) -> MapPoint | None:
        if name is None:
            return None
        return next((p for p in self.points if p.name == name), None)


def resolve_preset(
    preset: PresetDef,
    *,
    unit_id: int | None = None,
    discovery: Discovery | None = None,
    register_overrides: Mapping[Quantity, int] | None = None,
) -> ResolvedMap:
    """Absolute addresses for every point: from the file (plain) or from discovery (sunspec)."""
    unit = preset.unit_id if unit_id is None else unit_id
    overrides = dict(register_overrides or {})
    if overrides and preset.layout != "plain":
        raise PresetError(
            f"preset {preset.name!r} is SunSpec: addresses come from discovery, register "
            f"overrides (BESS_MODBUS_*_REGISTER) apply to plain maps such as 'generic' only"
        )
    points: list[MapPoint] = []
    skipped: list[str] = []

    def make(name: str, p: PointDef, address: int, prefix: str) -> MapPoint:
        return MapPoint(
            name=name,
            address=address,
            table=p.table or preset.table,
            unit_id=unit if p.unit_id is None else p.unit_id,
            type=p.type,
            size=p.registers,
            word_order=p.word_order,
            byte_order=p.byte_order,
            scale=p.scale,
            sf=f"{prefix}{p.sf}" if p.sf else None,
            units=p.units if p.units is not None else _default_units(p),
            sign=p.sign,
            quantity=p.quantity,
            fallback=p.fallback,
            na=preset.na_markers,
            extra_na=p.na,
            access=p.access,
        )

    if preset.layout == "plain":
        for p in preset.points or []:
            address = p.address if p.address is not None else 0
            if p.quantity in overrides and not p.fallback:
                address = overrides.pop(p.quantity)
            points.append(make(p.name, p, address, ""))
        if overrides:
            missing = ", ".join(q.value for q in overrides)
            raise PresetError(f"preset {preset.name!r} has no point for {missing} to move")
    else:
        if discovery is None or not discovery.found:
            raise PresetError(f"preset {preset.name!r} needs SunSpec discovery first")
        for m in preset.models or []:
            found = discovery.find(m.ids)
            if found is None:
                skipped.append(f"{m.name} (model {'/'.join(str(i) for i in m.ids)})")
                continue
            for p in m.points:
                offset = p.offset or 0
                if offset + p.registers > found.length:
                    skipped.append(f"{m.name}.{p.name} (beyond L={found.length} of {found.id})")
                    continue
                points.append(make(f"{m.name}.{p.name}", p, found.body + offset, f"{m.name}."))
    resolved = ResolvedMap(preset, tuple(points), discovery, tuple(skipped))
    _check_overlaps(resolved)
    return resolved


def _default_units(p: PointDef) -> str | None:
    return QUANTITY_UNITS[p.quantity] if p.quantity is not None else None


def _check_overlaps(resolved: ResolvedMap) -> None:
    ordered = sorted(resolved.points, key=lambda p: (p.unit_id, p.table, p.address))
    for a, z in itertools.pairwise(ordered):
        if (a.unit_id, a.table) == (z.unit_id, z.table) and z.address < a.end:
            raise PresetError(
                f"preset {resolved.preset.name!r}: point {z.name!r} at {z.address} overlaps "
                f"{a.name!r} ({a.address}..{a.end - 1}) — check the addresses (and register "
                f"overrides)"
            )


def plan_batches(
    points: Sequence[MapPoint], *, max_gap: int, known: Sequence[MapPoint] = ()
) -> list[Batch]:
    """Merge points into requests of at most 125 registers; a value rides with its SF.

    A gap counts only registers that no point of the map (``known``) covers: reading a
    register the map defines but does not need is harmless, an undefined one may be refused.
    """
    by_name = {p.name: p for p in points}
    covered: dict[tuple[int, Table], set[int]] = {}
    for p in (*known, *points):
        covered.setdefault((p.unit_id, p.table), set()).update(range(p.address, p.end))
    groups: dict[tuple[int, Table], list[tuple[int, int, MapPoint]]] = {}
    for p in points:
        start, end = p.address, p.end
        sf = by_name.get(p.sf) if p.sf else None
        if sf is not None and (sf.unit_id, sf.table) == (p.unit_id, p.table):
            if max(end, sf.end) - min(start, sf.address) <= MAX_READ_REGISTERS:
                start, end = min(start, sf.address), max(end, sf.end)
        groups.setdefault((p.unit_id, p.table), []).append((start, end, p))
    batches: list[Batch] = []
    for (unit, table), spans in groups.items():
        spans.sort(key=lambda s: (s[0], s[1]))
        mapped = covered[(unit, table)]
        cur_start, cur_end, cur_points = spans[0][0], spans[0][1], [spans[0][2]]
        for start, end, p in spans[1:]:
            fits = max(cur_end, end) - cur_start <= MAX_READ_REGISTERS
            gap = sum(1 for a in range(cur_end, start) if a not in mapped)
            if gap <= max_gap and fits:
                cur_end = max(cur_end, end)
                cur_points.append(p)
                continue
            batches.append(Batch(unit, table, cur_start, cur_end - cur_start, tuple(cur_points)))
            cur_start, cur_end, cur_points = start, end, [p]
        batches.append(Batch(unit, table, cur_start, cur_end - cur_start, tuple(cur_points)))
    return batches


def split_batch(batch: Batch) -> list[Batch]:
    """One request per point: for devices that refuse reads spanning several points."""
    return [Batch(p.unit_id, p.table, p.address, p.size, (p,)) for p in batch.points]


# -- decoding ---------------------------------------------------------------------------------


def decode_point(
    p: MapPoint, batch_address: int, registers: Sequence[int], sf_raw: int | None = None
) -> float | str | None:
    """A point's engineering value (its own units) from a batch's registers; None = n/a."""
    regs = registers[p.address - batch_address : p.end - batch_address]
    multiplier: float | None = p.scale if p.scale is not None else 1.0
    if p.sf is not None:
        multiplier = sf_multiplier(sf_raw)
    return decode_value(
        regs,
        p.type,
        word_order=p.word_order,
        byte_order=p.byte_order,
        multiplier=multiplier,
        na=p.na,
        extra_na=p.extra_na,
    )


def describe_model_values(model_id: int, body: Sequence[int]) -> dict[str, str]:
    """Key values of a SunSpec model body, formatted for ``bess-edge scan`` (sunspec preset)."""
    preset = load_preset("sunspec")
    out: dict[str, str] = {}
    for m in preset.models or []:
        if model_id not in m.ids:
            continue
        by_name = {p.name: p for p in m.points}
        for p in m.points:
            shown = p.quantity is not None or p.access == "rw" or p.type is PointType.STRING
            if not shown:
                continue
            offset = p.offset or 0
            regs = list(body[offset : offset + p.registers])
            if len(regs) != p.registers:
                continue
            sf_raw = None
            if p.sf is not None and p.sf in by_name:
                sf_off = by_name[p.sf].offset or 0
                raw = decode_raw(body[sf_off : sf_off + 1], PointType.SUNSSF)
                sf_raw = raw if isinstance(raw, int) else None
            multiplier = p.scale if p.scale is not None else 1.0
            mult = sf_multiplier(sf_raw) if p.sf is not None else multiplier
            value = decode_value(
                regs, p.type, word_order=p.word_order, byte_order=p.byte_order, multiplier=mult
            )
            if value is None:
                continue
            units = f" {p.units}" if p.units else ""
            out[p.name] = value if isinstance(value, str) else f"{value:g}{units}"
        break
    return out


# -- settings and statistics --------------------------------------------------------------------


class ModbusSourceSettings(BaseModel):
    """The Modbus source's settings; the config layer maps BESS_MODBUS_* onto them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field(min_length=1, description="BESS_MODBUS_HOST")
    port: int = Field(default=502, ge=1, le=65535, description="BESS_MODBUS_PORT")
    unit_id: int | None = Field(
        default=None, ge=0, le=255, description="BESS_MODBUS_UNIT_ID; None = the preset's"
    )
    preset: str = Field(
        default="generic", min_length=1, description="built-in preset name or a YAML file"
    )
    poll_interval_s: float = Field(default=1.0, gt=0, le=3600)
    request_timeout_s: float = Field(default=1.0, gt=0, le=60)
    connect_timeout_s: float = Field(default=3.0, gt=0, le=60)
    backoff_initial_s: float = Field(default=0.5, gt=0, le=60)
    backoff_max_s: float = Field(default=60.0, gt=0, le=3600)
    soc_register: int | None = Field(
        default=None, ge=0, le=65535, description="BESS_MODBUS_SOC_REGISTER"
    )
    power_register: int | None = Field(
        default=None, ge=0, le=65535, description="BESS_MODBUS_POWER_REGISTER"
    )
    temp_register: int | None = Field(
        default=None, ge=0, le=65535, description="BESS_MODBUS_TEMP_REGISTER"
    )
    max_gap: int | None = Field(
        default=None, ge=0, le=MAX_READ_REGISTERS - 1, description="None = the preset's"
    )
    revert_timeout_s: float | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="written to the device's revert-timeout register once per connection",
    )

    @model_validator(mode="after")
    def _consistent(self) -> ModbusSourceSettings:
        if self.backoff_initial_s > self.backoff_max_s:
            raise ValueError(
                f"backoff_initial_s ({self.backoff_initial_s}) must not exceed backoff_max_s "
                f"({self.backoff_max_s})"
            )
        return self

    def register_overrides(self) -> dict[Quantity, int]:
        pairs = (
            (Quantity.SOC_PCT, self.soc_register),
            (Quantity.ACTIVE_POWER_KW, self.power_register),
            (Quantity.TEMPERATURE_C, self.temp_register),
        )
        return {q: a for q, a in pairs if a is not None}


@dataclass
class SourceStats:
    polls: int = 0
    poll_failures: int = 0  # polls that read nothing at all
    readings: int = 0
    batch_failures: Counter[str] = field(default_factory=Counter)  # by error kind
    device_exceptions: Counter[int] = field(default_factory=Counter)  # by exception code
    not_implemented: Counter[str] = field(default_factory=Counter)  # by point
    implausible: Counter[str] = field(default_factory=Counter)  # by point
    writes: int = 0
    write_failures: int = 0
    discoveries: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "polls_total": self.polls,
            "poll_failures_total": self.poll_failures,
            "readings_total": self.readings,
            "batch_failures_total": dict(self.batch_failures),
            "device_exceptions_total": {str(k): v for k, v in self.device_exceptions.items()},
            "not_implemented_total": dict(self.not_implemented),
            "implausible_total": dict(self.implausible),
            "writes_total": self.writes,
            "write_failures_total": self.write_failures,
            "discoveries_total": self.discoveries,
        }


class _Once:
    """Log a problem once per key, and once more when it clears."""

    def __init__(self, logger: logging.Logger) -> None:
        self.log = logger
        self.active: set[str] = set()

    def problem(self, key: str, level: int, msg: str, *args: object) -> None:
        if key not in self.active:
            self.active.add(key)
            self.log.log(level, msg + " (logged once until it clears)", *args)

    def cleared(self, key: str, msg: str, *args: object) -> None:
        if key in self.active:
            self.active.discard(key)
            self.log.info(msg, *args)


# -- the source -------------------------------------------------------------------------------

Clock = Callable[[], float]


class ModbusSource:
    """``BatteryReader`` and ``BatteryController`` over Modbus TCP (``name = "modbus"``).

    ``async with ModbusSource(settings) as source``: opens its own ``ModbusConnection`` (or
    uses ``io``, a shared connection or a test fake), then ``read()`` / ``write_power_kw()``.
    """

    name = SOURCE_NAME

    def __init__(
        self,
        settings: ModbusSourceSettings,
        *,
        io: RegisterIO | None = None,
        preset: PresetDef | None = None,
        clock: Clock = time.time,
    ) -> None:
        self.settings = settings
        self.preset = preset or load_preset(settings.preset)
        self.unit_id = self.preset.unit_id if settings.unit_id is None else settings.unit_id
        self.max_gap = self.preset.max_gap if settings.max_gap is None else settings.max_gap
        self.stats = SourceStats()
        self._clock = clock
        self._own_connection: ModbusConnection | None = None
        if io is None:
            self._own_connection = ModbusConnection(
                settings.host,
                settings.port,
                request_timeout_s=settings.request_timeout_s,
                connect_timeout_s=settings.connect_timeout_s,
                backoff_initial_s=settings.backoff_initial_s,
                backoff_max_s=settings.backoff_max_s,
            )
            io = self._own_connection
        self.io: RegisterIO = io
        self._once = _Once(log)
        self._map: ResolvedMap | None = None
        self._map_generation = -1
        self._batches: list[Batch] = []
        self._split: set[str] = set()  # batches the device refused whole: read point by point
        # What the last reads said (engineering values in the points' own units).
        self._values: dict[str, float | str | None] = {}
        self._revert_written_generation = -1
        self._heartbeat: int | None = None
        if self.preset.layout == "plain":  # static: fail on a bad map at construction
            self._set_map(
                resolve_preset(
                    self.preset,
                    unit_id=self.unit_id,
                    register_overrides=settings.register_overrides(),
                )
            )
        elif settings.register_overrides():
            resolve_preset(self.preset, register_overrides=settings.register_overrides())

    # -- lifecycle --------------------------------------------------------------------------
    async def __aenter__(self) -> ModbusSource:
        if self._own_connection is not None:
            await self._own_connection.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._own_connection is not None:
            await self._own_connection.close()

    @property
    def resolved_map(self) -> ResolvedMap | None:
        return self._map

    @property
    def batches(self) -> list[Batch]:
        return list(self._batches)

    @property
    def poll_timeout_s(self) -> float:
        """A deadline for one ``read()`` that never cuts the connection's own timeouts short.

        A request may wait for the connection's lock behind one other request (a write) and
        then for its own answer; a read ends at its first timeout. A poller with a shorter
        deadline would cancel requests before ``request_timeout_s`` could report them.
        """
        return 2 * self.settings.request_timeout_s + 0.5

    @property
    def revert_timeout_s(self) -> float | None:
        """The device's revert timeout in s (0 = never reverts); None when unknown."""
        if self._map is not None:
            p = self._map.point(self.preset.control.point_name("revert_timeout"))
            value = self._values.get(p.name) if p is not None else None
            if p is not None and isinstance(value, int | float) and math.isfinite(value):
                return float(value) * unit_factor(p.units or "s", "s")
        if self.settings.revert_timeout_s is not None:
            return self.settings.revert_timeout_s
        return self.preset.control.revert_timeout_s

    # -- the map --------------------------------------------------------------------------
    def _require_map(self) -> ResolvedMap:
        if self._map is None:
            raise RuntimeError("no register map yet: read() or write_power_kw() resolves it")
        return self._map

    def _set_map(self, resolved: ResolvedMap) -> None:
        self._map = resolved
        needed = self._needed_points(resolved)
        self._batches = plan_batches(needed, max_gap=self.max_gap, known=resolved.points)
        self._split.clear()
        for batch in self._batches:
            log.debug("Modbus poll plan: %s -> %s", batch.key, [p.name for p in batch.points])

    def _needed_points(self, resolved: ResolvedMap) -> list[MapPoint]:
        ctl = self.preset.control
        names = {p.name for p in resolved.points if p.quantity is not None}
        if ctl.mode != "none":
            for role in ("storctl", "out_rate", "in_rate", "max_rate", "revert_timeout"):
                ref = ctl.point_name(role)
                if ref is not None:
                    names.add(ref)
        by_name = {p.name: p for p in resolved.points}
        for name in list(names):
            p = by_name.get(name)
            if p is not None and p.sf is not None:
                names.add(p.sf)
        return [p for p in resolved.points if p.name in names]

    async def _ensure_map(self) -> ResolvedMap:
        """The resolved map; SunSpec discovery again after every reconnect."""
        generation = self.io.generation
        if self._map is not None and (
            self.preset.layout == "plain" or generation == self._map_generation
        ):
            return self._map
        found = await discover(self.io, unit_id=self.unit_id)
        self.stats.discoveries += 1
        if not found.found:
            raise SunSpecNotFound(
                f"Modbus {self.settings.host}:{self.settings.port} unit {self.unit_id}: "
                + marker_missing_text(found.probed)
            )
        resolved = resolve_preset(self.preset, unit_id=self.unit_id, discovery=found)
        if self._map is None or self._map.discovery != found:
            log.info(
                "SunSpec at %d: models %s; preset %r uses %d points%s",
                found.base,
                ", ".join(str(i) for i in found.ids()),
                self.preset.name,
                len(resolved.points),
                f" (not on this device: {', '.join(resolved.skipped_models)})"
                if resolved.skipped_models
                else "",
            )
        self._set_map(resolved)
        self._map_generation = generation
        return resolved

    # -- reading ----------------------------------------------------------------------------
    async def read(self) -> list[Reading]:
        """One poll: every batch, decoded, checked and turned into readings."""
        self.stats.polls += 1
        try:
            await self._ensure_map()
            results, first_error = await self._read_batches(self._batches)
        except ModbusError:
            self.stats.poll_failures += 1
            raise
        if not results and first_error is not None:
            self.stats.poll_failures += 1
            raise first_error
        readings = self._readings(results)
        self.stats.readings += len(readings)
        return readings

    async def _read_batches(
        self, batches: Iterable[Batch]
    ) -> tuple[dict[str, tuple[float | str | None, float]], ModbusError | None]:
        results: dict[str, tuple[float | str | None, float]] = {}
        first_error: ModbusError | None = None
        queue = list(batches)
        while queue:
            batch = queue.pop(0)
            if batch.key in self._split and len(batch.points) > 1:
                queue[0:0] = split_batch(batch)
                continue
            # A value is stamped with the moment its request was sent: it cannot be older
            # than that, and a write that landed before it is certainly reflected in it.
            sent_at = self._clock()
            try:
                regs = await self.io.read_registers(
                    batch.table, batch.address, batch.count, unit_id=batch.unit_id
                )
            except DeviceException as exc:
                self.stats.batch_failures["DeviceException"] += 1
                self.stats.device_exceptions[exc.code] += 1
                if exc.code == 2 and len(batch.points) > 1:
                    self._split.add(batch.key)
                    log.warning(
                        "Modbus: the device refuses %s as one request (%s); reading its "
                        "points one by one from now on",
                        batch.key,
                        exc,
                    )
                    queue[0:0] = split_batch(batch)
                    continue
                self._once.problem(f"batch:{batch.key}", logging.WARNING, "Modbus: %s", exc)
                first_error = first_error or exc
                continue
            except (ConnectionLost, RequestTimeout) as exc:
                # The link is down (or silent): the other batches would fail the same way.
                self.stats.batch_failures[type(exc).__name__] += 1
                return results, first_error or exc
            except ModbusError as exc:
                self.stats.batch_failures[type(exc).__name__] += 1
                self._once.problem(f"batch:{batch.key}", logging.WARNING, "Modbus: %s", exc)
                first_error = first_error or exc
                continue
            self._once.cleared(f"batch:{batch.key}", "Modbus: %s reads again", batch.key)
            self._decode_batch(batch, regs, sent_at, results)
        return results, first_error

    def _decode_batch(
        self,
        batch: Batch,
        regs: Sequence[int],
        now: float,
        results: dict[str, tuple[float | str | None, float]],
    ) -> None:
        for p in batch.points:
            sf_raw: int | None = None
            if p.sf is not None:
                sf_raw = self._sf_raw(p.sf, batch, regs)
            value = decode_point(p, batch.address, regs, sf_raw)
            results[p.name] = (value, now)
            self._values[p.name] = value

    def _sf_raw(self, sf_name: str, batch: Batch, regs: Sequence[int]) -> int | None:
        """The scale factor from the same request when it holds it, else the last one read."""
        sf = self._require_map().point(sf_name)
        if sf is None:
            return None
        if (sf.unit_id, sf.table) == (
            batch.unit_id,
            batch.table,
        ) and batch.address <= sf.address < batch.end:
            raw = decode_raw(regs[sf.address - batch.address : sf.end - batch.address], sf.type)
            return raw if isinstance(raw, int) else None
        last = self._values.get(sf_name)  # read in another request: the best there is
        return int(last) if isinstance(last, int | float) else None

    def _readings(self, results: Mapping[str, tuple[float | str | None, float]]) -> list[Reading]:
        readings: list[Reading] = []
        by_quantity: dict[Quantity, list[MapPoint]] = {}
        for p in self._require_map().points:
            if p.quantity is not None and p.name in results:
                by_quantity.setdefault(p.quantity, []).append(p)
        for quantity, candidates in by_quantity.items():
            ordered = [p for p in candidates if not p.fallback] + [
                p for p in candidates if p.fallback
            ]
            for p in ordered:
                value, at = results[p.name]
                if value is None or isinstance(value, str):
                    self.stats.not_implemented[p.name] += 1
                    self._once.problem(
                        f"na:{p.name}",
                        logging.INFO,
                        "Modbus: %s (%s at %d) reads 'not implemented'; %s",
                        p.name,
                        quantity.value,
                        p.address,
                        "trying the next point" if p is not ordered[-1] else "no value",
                    )
                    continue
                reading = Reading(quantity, value * p.to_quantity_factor(), at, SOURCE_NAME)
                try:
                    check_plausible(reading)
                except ReadingError as exc:
                    self.stats.implausible[p.name] += 1
                    self._once.problem(
                        f"implausible:{p.name}",
                        logging.WARNING,
                        "Modbus: dropped %s (register %d): %s",
                        p.name,
                        p.address,
                        exc,
                    )
                    continue
                self._once.cleared(f"na:{p.name}", "Modbus: %s has values again", p.name)
                self._once.cleared(f"implausible:{p.name}", "Modbus: %s is plausible again", p.name)
                readings.append(reading)
                break
        storage = self._storage_setpoint_kw(results)
        if storage is not None:
            readings.append(Reading(Quantity.SETPOINT_KW, storage[0], storage[1], SOURCE_NAME))
        return readings

    def _storage_setpoint_kw(
        self, results: Mapping[str, tuple[float | str | None, float]]
    ) -> tuple[float, float] | None:
        """SunSpec 124 controls read back as the commanded power (kW), with their time."""
        ctl = self.preset.control
        if ctl.mode != "sunspec_storage" or self._map is None:
            return None
        values: list[float] = []
        at = 0.0
        for role in ("storctl", "out_rate", "in_rate", "max_rate"):
            name = ctl.point_name(role)
            got = results.get(name) if name is not None else None
            if got is None or not isinstance(got[0], int | float):
                return None
            values.append(float(got[0]))
            at = max(at, got[1])
        mode, out_pct, in_pct, max_rate = values
        max_kw = self._max_rate_kw(max_rate)
        if max_kw is None:
            return None
        if ctl.strategy == "window":
            if int(mode) != 0b11 or not math.isclose(out_pct, -in_pct, abs_tol=0.01):
                return None  # a window, not a pinned value: nothing to report
            return out_pct / 100.0 * max_kw, at
        kw = 0.0
        if int(mode) & 0b10:
            kw += out_pct / 100.0 * max_kw
        if int(mode) & 0b01:
            kw -= in_pct / 100.0 * max_kw
        return kw, at

    def _max_rate_kw(self, value: float | str | None) -> float | None:
        p = self._require_map().point(self.preset.control.point_name("max_rate"))
        if p is None or not isinstance(value, int | float) or not value > 0:
            return None
        return float(value) * unit_factor(p.units or "W", "kW")

    # -- control ----------------------------------------------------------------------------
    async def write_power_kw(self, power_kw: float) -> None:
        """Command AC power (+ discharge, - charge); raises ``ModbusError`` on failure."""
        if not math.isfinite(power_kw):
            raise ValueError(f"power must be a finite number of kW, got {power_kw!r}")
        ctl = self.preset.control
        if ctl.mode == "none":
            raise ControlNotSupported(
                f"preset {self.preset.name!r} reads only: it has no way to command power"
            )
        try:
            resolved = await self._ensure_map()
            await self._write_revert_timeout(resolved)
            if ctl.mode == "setpoint":
                await self._write_setpoint(resolved, power_kw)
            else:
                await self._write_storage(resolved, power_kw)
            await self._beat(resolved)
        except ModbusError as exc:
            self.stats.write_failures += 1
            self._once.problem(
                "write", logging.WARNING, "Modbus: cannot command %.1f kW: %s", power_kw, exc
            )
            raise
        self.stats.writes += 1
        self._once.cleared("write", "Modbus: commanding power works again")

    def _point(self, resolved: ResolvedMap, role: str) -> MapPoint:
        name = self.preset.control.point_name(role)
        point = resolved.point(name)
        if point is None:
            raise ControlNotSupported(
                f"preset {self.preset.name!r}: the device has no {name or role} (model not "
                f"found by discovery?) — it cannot be controlled this way"
            )
        return point

    async def _multiplier(self, resolved: ResolvedMap, p: MapPoint) -> float:
        """Scale of a point to write: fixed, or its SF (as just read, else read now)."""
        if p.scale is not None:
            return p.scale
        if p.sf is None:
            return 1.0
        sf = resolved.point(p.sf)
        if sf is None:
            raise ControlNotSupported(f"{p.name}: its scale factor {p.sf} is not on the device")
        last = self._values.get(sf.name)
        if isinstance(last, int | float):
            raw: int | float | str | None = int(last)
        else:
            regs = await self.io.read_registers(sf.table, sf.address, sf.size, unit_id=sf.unit_id)
            raw = decode_raw(regs, sf.type)
        multiplier = sf_multiplier(raw if isinstance(raw, int) else None)
        if multiplier is None:
            raise ControlNotSupported(f"{p.name}: its scale factor {p.sf} reads 'not implemented'")
        return multiplier

    def _encode(self, p: MapPoint, value: float, multiplier: float, what: str) -> list[int]:
        if saturates(value, p.type, multiplier=multiplier):
            self._once.problem(
                f"clip:{p.name}",
                logging.WARNING,
                "Modbus: %s = %g does not fit %s (%s); clipped to its range",
                p.name,
                value,
                p.type.value,
                what,
            )
        return encode(
            value,
            p.type,
            size=p.size,
            word_order=p.word_order,
            byte_order=p.byte_order,
            multiplier=multiplier,
            avoid_na=p.na,
        )

    async def _write(self, points: Sequence[tuple[MapPoint, list[int]]]) -> None:
        """Write points in the order given; a run of adjacent ones goes in one request."""
        group: list[tuple[MapPoint, list[int]]] = []
        for item in points:
            if group and (
                item[0].unit_id != group[-1][0].unit_id or item[0].address != group[-1][0].end
            ):
                await self._write_group(group)
                group = []
            group.append(item)
        if group:
            await self._write_group(group)

    async def _write_group(self, group: Sequence[tuple[MapPoint, list[int]]]) -> None:
        values = [r for _, regs in group for r in regs]
        first = group[0][0]
        await self.io.write_registers(first.address, values, unit_id=first.unit_id)

    async def _write_setpoint(self, resolved: ResolvedMap, power_kw: float) -> None:
        ctl = self.preset.control
        p = self._point(resolved, "setpoint")
        factor = float(p.sign) * unit_factor(p.units or "kW", "kW")
        value = power_kw / factor
        # The value first, then the switch that makes it count (one request when adjacent).
        writes = [(p, self._encode(p, value, await self._multiplier(resolved, p), "setpoint"))]
        if ctl.enable is not None and ctl.enable_value is not None:
            enable = self._point(resolved, "enable")
            writes.append((enable, self._encode(enable, ctl.enable_value, 1.0, "enable")))
        await self._write(writes)

    async def _write_storage(self, resolved: ResolvedMap, power_kw: float) -> None:
        ctl = self.preset.control
        storctl = self._point(resolved, "storctl")
        out_rate = self._point(resolved, "out_rate")
        in_rate = self._point(resolved, "in_rate")
        max_rate = self._point(resolved, "max_rate")
        # Read WChaMax, the rates' scale factor and their SFs fresh (one request, model 124):
        # a scale factor may have changed since the last poll, and a stale one would turn
        # 50 % into 5 % or 500 %.
        fresh, error = await self._read_batches(
            b for b in self._batches if max_rate in b.points or out_rate in b.points
        )
        if error is not None and max_rate.name not in fresh:
            raise error
        max_kw = self._max_rate_kw(self._values.get(max_rate.name))
        if max_kw is None:
            raise ControlNotSupported(
                f"{max_rate.name} (the reference for the charge/discharge rates) reads "
                f"'not implemented' or 0: the device cannot be commanded in % of it"
            )
        pct = 100.0 * power_kw / max_kw
        if abs(pct) > 100.0:
            self._once.problem(
                "clip:rate",
                logging.WARNING,
                "Modbus: %.1f kW is beyond the device's rating %s = %.1f kW; clipped to 100 %%",
                power_kw,
                max_rate.name,
                max_kw,
            )
            pct = math.copysign(100.0, pct)
        if ctl.strategy == "window":
            out_pct, in_pct, mode = pct, -pct, 0b11
        else:
            out_pct, in_pct = max(pct, 0.0), max(-pct, 0.0)
            mode = 0b10 if pct > 0 else 0b01 if pct < 0 else 0b11
        rate_multiplier = await self._multiplier(resolved, out_rate)
        await self._write(
            [
                (out_rate, self._encode(out_rate, out_pct, rate_multiplier, "discharge rate")),
                (in_rate, self._encode(in_rate, in_pct, rate_multiplier, "charge rate")),
            ]
        )
        await self._write([(storctl, self._encode(storctl, mode, 1.0, "StorCtl_Mod"))])

    async def _write_revert_timeout(self, resolved: ResolvedMap) -> None:
        wanted = self.settings.revert_timeout_s
        generation = self.io.generation
        if wanted is None or self._revert_written_generation == generation:
            return
        p = resolved.point(self.preset.control.point_name("revert_timeout"))
        if p is None or p.access != "rw":
            self._once.problem(
                "revert-timeout",
                logging.WARNING,
                "Modbus: revert_timeout_s = %g is configured but preset %r has no writable "
                "revert-timeout register; the device keeps its own",
                wanted,
                self.preset.name,
            )
            self._revert_written_generation = generation
            return
        seconds = wanted * unit_factor("s", p.units or "s")
        await self._write([(p, self._encode(p, seconds, await self._multiplier(resolved, p), "s"))])
        self._values[p.name] = seconds
        self._revert_written_generation = generation
        log.info("Modbus: revert timeout set to %g s on the device (%s)", wanted, p.name)

    async def _beat(self, resolved: ResolvedMap) -> None:
        p = resolved.point(self.preset.control.point_name("heartbeat"))
        if p is None:
            return
        self._heartbeat = ((self._heartbeat or 0) + 1) % 65536
        await self._write([(p, self._encode(p, self._heartbeat, 1.0, "heartbeat"))])
