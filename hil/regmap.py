"""Modbus register maps as data: YAML files in ``hil/maps/`` loaded, checked and encoded here.

A map file names its points (address, table, type, word/byte order, scale or SunSpec scale
factor, units, access) and binds each to what it shows: a measured quantity, a nameplate (spec)
value, a constant, the battery state, alarm bits, or a control that a write drives. The Modbus
server (``hil.modbus_server``) only evaluates bindings; everything about the layout lives in the
file, so a technician can mirror a real device's register list without touching code.

File layout (see ``maps/generic.yaml`` and ``maps/sunspec.yaml`` for worked examples)::

    name, description, base_address, unit_id, table (default holding),
    layout: plain | sunspec       # sunspec: checks the model chain, NA markers for unbound points
    points: [...]                 # or blocks: [{name, model, length, points: [...]}, ...]

A point without ``address`` follows the previous one; a block with ``model`` gets its SunSpec
header (``ID`` = model, ``L`` = body length) generated, and a declared ``length`` is checked.

Bindings (exactly one per point; a point without one reads "not implemented")::

    measure: soc_pct | power_kw | ...    a measured quantity (MEASURED_UNITS), converted to the
                                         point's units (kW -> W, kWh -> Wh, ...)
    spec: max_charge_kw | ...            a nameplate value (SPEC_UNITS), converted likewise
    const: 802 | "Phoenyra"              an engineering value, scaled like any other
    server: unit_id                      the unit id the server answers to
    state: {fault: 3, charging: 1, ...}  the value of the first condition that holds
    alarms: {soc_full: 0, ...}           a bit per raised alarm
    control: out_w_rte | ...             what a write does (ControlKind); reads show its state
    sf_fit: {spec: [...], units: W}      a scale factor fitted to the nameplate at start-up

Encoding rules (``encode``/``decode``, from ``edge_agent.modbus_codec``, which the agent's
Modbus source decodes with too):

- engineering value = raw x ``scale``, or raw x 10^SF for ``sf: <point>``;
- integers are rounded to the nearest raw value and **saturated** to the type's range, so a
  faulty 250 % SoC or a 10 MW power spike never crashes the server: it reads as the largest
  value the register can hold (in SunSpec maps the "not implemented" marker, e.g. 0x8000 for
  int16, is never produced by saturation). Accumulators (``acc16/32/64``) **wrap** like real
  energy counters. NaN encodes as the type's "not implemented" marker (float types: NaN);
- floats overflowing float32 encode as +/-inf; strings are UTF-8, NUL padded.
"""

from __future__ import annotations

import itertools
import math
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

# The value <-> registers codec is shared with the agent, so both sides follow one set of rules.
from edge_agent.modbus_codec import (
    MAX_WRITE_REGISTERS,
    TYPES,
    Order,
    PointType,
    TypeInfo,
    bytes_to_registers,
    decode,
    encode,
    registers_of,
    to_raw,
)
from edge_agent.modbus_codec import decode_raw as decode_raw
from edge_agent.modbus_codec import raw_value as raw_value

from .model import Alarm, BatterySpec, BatteryStatus
from .sim import FREQ_NORMAL_BAND_HZ, Measurements

MAPS_DIR = Path(__file__).with_name("maps")
SUNSPEC_MARKER = (0x5375, 0x6E53)  # "SunS"
SUNSPEC_END_MODEL = 0xFFFF
MAX_REGISTERS_PER_POINT = MAX_WRITE_REGISTERS  # what one write-multiple request can carry

Table = Literal["holding", "input"]
Access = Literal["r", "rw"]
Value = int | float | str


class RegisterMapError(ValueError):
    """A map file that cannot be served; the message names the point, the field and the fix."""


# -- quantities and units -------------------------------------------------------------------

# unit -> (dimension, factor to the dimension's base unit)
UNITS: dict[str, tuple[str, float]] = {
    "": ("dimensionless", 1.0),
    "%": ("percent", 1.0),
    "%/s": ("percent per second", 1.0),
    "%/d": ("percent per day", 1.0),
    "W": ("active power", 1.0),
    "kW": ("active power", 1e3),
    "MW": ("active power", 1e6),
    "var": ("reactive power", 1.0),
    "kvar": ("reactive power", 1e3),
    "Mvar": ("reactive power", 1e6),
    "VA": ("apparent power", 1.0),
    "kVA": ("apparent power", 1e3),
    "MVA": ("apparent power", 1e6),
    "Wh": ("energy", 1.0),
    "kWh": ("energy", 1e3),
    "MWh": ("energy", 1e6),
    "W/s": ("power ramp", 1.0),
    "kW/s": ("power ramp", 1e3),
    "Ah": ("charge", 1.0),
    "V": ("voltage", 1.0),
    "A": ("current", 1.0),
    "C": ("temperature", 1.0),
    "Hz": ("frequency", 1.0),
    "s": ("time", 1.0),
    "min": ("time", 60.0),
    "h": ("time", 3600.0),
}

# What ``measure:`` can show: Measurements fields plus a few derived from them and the spec.
MEASURED_UNITS: dict[str, str] = {
    "soc_pct": "%",
    "power_kw": "kW",  # + = discharge, AC
    "reactive_power_kvar": "kvar",
    "voltage_v": "V",  # DC
    "temperature_c": "C",
    "frequency_hz": "Hz",
    "setpoint_kw": "kW",
    "soh_pct": "%",
    "charged_kwh": "kWh",
    "discharged_kwh": "kWh",
    "apparent_power_kva": "kVA",
    "dc_current_a": "A",  # + = discharge; AC power over DC voltage (converter losses ignored)
    "depth_of_discharge_pct": "%",
    "stored_energy_kwh": "kWh",
    "stored_charge_ah": "Ah",
    "equivalent_cycles": "",  # discharged energy / capacity
    "heartbeat": "",  # whole seconds of the battery's clock, modulo 65536 (SunSpec 802 Hb)
}

# What ``spec:`` can show: BatterySpec nameplate values plus two derived ones.
SPEC_UNITS: dict[str, str] = {
    "capacity_kwh": "kWh",
    "capacity_ah": "Ah",  # capacity at nominal voltage
    "max_charge_kw": "kW",
    "max_discharge_kw": "kW",
    "charge_efficiency": "",
    "discharge_efficiency": "",
    "round_trip_efficiency": "",
    "self_discharge_pct_per_day": "%/d",
    "ramp_kw_per_s": "kW/s",
    "ramp_pct_per_s": "%/s",  # of max_charge_kw (SunSpec WChaGra: % WChaMax per second)
    "ambient_c": "C",
    "thermal_time_constant_s": "s",
    "temp_warning_c": "C",
    "temp_trip_c": "C",
    "temp_trip_hysteresis_c": "C",
    "revert_timeout_s": "s",
    "nominal_voltage_v": "V",
    "voltage_span_v": "V",
    "soh_pct": "%",
}

# Conditions a ``state:`` or ``alarms:`` binding can test.
FREQUENCY_CONDITIONS = ("over_frequency", "under_frequency")
STATUS_CONDITIONS = tuple(s.value for s in BatteryStatus)
ALARM_CONDITIONS = tuple(a.value for a in Alarm) + FREQUENCY_CONDITIONS


class ControlKind(StrEnum):
    """What a write to a ``control:`` point does (see ``hil.modbus_server``)."""

    STORCTL_MOD = "storctl_mod"  # SunSpec 124 StorCtl_Mod: bit 0 charge, bit 1 discharge
    IN_W_RTE = "in_w_rte"  # charge rate, % of WChaMax (spec.max_charge_kw)
    OUT_W_RTE = "out_w_rte"  # discharge rate, % of WChaMax
    REVERT_TIMEOUT = "revert_timeout"  # setpoint revert timeout, s (0 = never)
    HEARTBEAT = "heartbeat"  # controller heartbeat counter (SunSpec 802 CtrlHb)
    POWER_SETPOINT = "power_setpoint"  # AC power setpoint, + = discharge
    STORE = "store"  # accepted and read back, no effect on the battery


CONTROL_UNITS: dict[ControlKind, str | None] = {
    ControlKind.STORCTL_MOD: "",
    ControlKind.IN_W_RTE: "%",
    ControlKind.OUT_W_RTE: "%",
    ControlKind.REVERT_TIMEOUT: "s",
    ControlKind.HEARTBEAT: "",
    ControlKind.POWER_SETPOINT: "kW",
    ControlKind.STORE: None,  # whatever the point says
}


def measured_value(name: str, m: Measurements, spec: BatterySpec) -> float:
    """The value of a ``measure:`` quantity in its unit (``MEASURED_UNITS``)."""
    if name == "apparent_power_kva":
        return math.hypot(m.power_kw, m.reactive_power_kvar)
    if name == "dc_current_a":
        return m.power_kw * 1000.0 / m.voltage_v if m.voltage_v else math.nan
    if name == "depth_of_discharge_pct":
        return 100.0 - m.soc_pct
    if name == "stored_energy_kwh":
        return spec.capacity_kwh * m.soc_pct / 100.0
    if name == "stored_charge_ah":
        return spec.capacity_kwh * m.soc_pct / 100.0 * 1000.0 / spec.nominal_voltage_v
    if name == "equivalent_cycles":
        return m.discharged_kwh / spec.capacity_kwh
    if name == "heartbeat":
        return float(int(m.timestamp) % 65536)
    value = getattr(m, name)
    return float(value)


def spec_value(name: str, spec: BatterySpec) -> float:
    """The value of a ``spec:`` quantity in its unit (``SPEC_UNITS``)."""
    if name == "capacity_ah":
        return spec.capacity_kwh * 1000.0 / spec.nominal_voltage_v
    if name == "ramp_pct_per_s":
        return 100.0 * spec.ramp_kw_per_s / spec.max_charge_kw
    value = getattr(spec, name)
    return float(value)


def condition_holds(name: str, m: Measurements) -> bool:
    """Does a ``state:``/``alarms:`` condition (status, alarm, over/under frequency) hold?"""
    if name == "over_frequency":
        return m.frequency_hz > FREQ_NORMAL_BAND_HZ[1]
    if name == "under_frequency":
        return m.frequency_hz < FREQ_NORMAL_BAND_HZ[0]
    if name in STATUS_CONDITIONS:
        return m.status.value == name
    return Alarm(name) in m.alarms


POWER_DIMENSIONS = frozenset({"active power", "reactive power", "apparent power"})


def unit_factor(source: str, target: str, *, any_power: bool = False) -> float:
    """Multiply a value in ``source`` units by this to get ``target`` units.

    ``any_power`` lets a kW rating bound var and VA values too (for fitted scale factors).
    """
    dim_s, f_s = UNITS[source]
    dim_t, f_t = UNITS[target]
    if dim_s != dim_t and not (any_power and {dim_s, dim_t} <= POWER_DIMENSIONS):
        raise ValueError(f"cannot show {dim_s} ({source or 'no unit'}) in {target or 'no unit'}")
    return f_s / f_t


# -- file schema (pydantic) ------------------------------------------------------------------


def _choose(what: str, name: str, allowed: Sequence[str]) -> str:
    if name not in allowed:
        raise ValueError(f"unknown {what} {name!r}; allowed: {', '.join(allowed)}")
    return name


class SfFitSpec(BaseModel):
    """A scale factor chosen at start-up so the largest nameplate value fits its registers."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    spec: list[str] = Field(min_length=1)
    units: str
    min_sf: int = Field(default=0, ge=-10, le=10)
    max_sf: int = Field(default=10, ge=-10, le=10)

    @field_validator("spec")
    @classmethod
    def _known_spec(cls, names: list[str]) -> list[str]:
        return [_choose("spec value", n, list(SPEC_UNITS)) for n in names]

    @field_validator("units")
    @classmethod
    def _known_units(cls, units: str) -> str:
        return _choose("units", units, list(UNITS))


class BindingSpec(BaseModel):
    """What a point shows. Exactly one key; a point without a binding reads 'not implemented'."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    measure: str | None = None
    spec: str | None = None
    const: int | float | str | None = None
    server: Literal["unit_id"] | None = None
    state: dict[str, int] | None = None
    alarms: dict[str, int] | None = None
    control: ControlKind | None = None
    sf_fit: SfFitSpec | None = None

    @field_validator("measure")
    @classmethod
    def _known_measure(cls, name: str | None) -> str | None:
        return None if name is None else _choose("quantity", name, list(MEASURED_UNITS))

    @field_validator("spec")
    @classmethod
    def _known_spec(cls, name: str | None) -> str | None:
        return None if name is None else _choose("spec value", name, list(SPEC_UNITS))

    @field_validator("state")
    @classmethod
    def _known_states(cls, states: dict[str, int] | None) -> dict[str, int] | None:
        if states is None:
            return None
        for name in states:
            _choose("state condition", name, STATUS_CONDITIONS + ALARM_CONDITIONS)
        missing = [s for s in STATUS_CONDITIONS if s not in states]
        if missing:
            raise ValueError(
                f"every battery status needs a value so the point is always defined; "
                f"missing: {', '.join(missing)}"
            )
        return states

    @field_validator("alarms")
    @classmethod
    def _known_alarms(cls, alarms: dict[str, int] | None) -> dict[str, int] | None:
        if alarms is None:
            return None
        for name, bit in alarms.items():
            _choose("alarm", name, ALARM_CONDITIONS)
            if not 0 <= bit <= 63:
                raise ValueError(f"alarm {name!r}: bit {bit} must be within 0..63")
        return alarms

    @model_validator(mode="after")
    def _exactly_one(self) -> BindingSpec:
        given = [k for k in type(self).model_fields if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                f"a binding takes exactly one of {', '.join(type(self).model_fields)}; "
                f"got {', '.join(given) or 'none'}"
            )
        return self

    @property
    def kind(self) -> str:
        return next(k for k in type(self).model_fields if getattr(self, k) is not None)

    def describe(self) -> str:
        kind = self.kind
        value = getattr(self, kind)
        if kind == "state":
            return "state " + ", ".join(f"{k}={v}" for k, v in value.items())
        if kind == "alarms":
            return "alarm bits " + ", ".join(f"{k}:{v}" for k, v in value.items())
        if kind == "sf_fit":
            return f"sf fit {'/'.join(value.spec)} in {value.units}"
        if kind == "const":
            if isinstance(value, str):
                return f"const {value!r}"
            if isinstance(value, int) and value > 0xFFFF:
                return f"const 0x{value:X}"
            return f"const {value:g}"
        if isinstance(value, StrEnum):
            value = value.value
        return f"{kind} {value}"


class PointSpec(BaseModel):
    """One point as written in the map file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    address: int | None = Field(default=None, ge=0, le=65535)
    table: Table | None = None
    type: PointType
    size: int | None = Field(default=None, ge=1, le=MAX_REGISTERS_PER_POINT)
    word_order: Order = "big"
    byte_order: Order = "big"
    scale: float | None = Field(default=None, gt=0)
    sf: str | None = None
    units: str | None = None
    access: Access = "r"
    range: tuple[float, float] | None = None
    initial: float = 0.0
    description: str = ""
    binding: BindingSpec | None = None

    @field_validator("units")
    @classmethod
    def _known_units(cls, units: str | None) -> str | None:
        return None if units is None else _choose("units", units, list(UNITS))

    @model_validator(mode="after")
    def _consistent(self) -> PointSpec:
        info = TYPES[self.type]
        b = self.binding
        if self.scale is not None and self.sf is not None:
            raise ValueError("give either scale or sf, not both")
        if info.kind == "string":
            if self.size is None:
                raise ValueError("a string needs size: its length in registers")
            if self.scale is not None or self.sf is not None:
                raise ValueError("a string cannot be scaled")
            if b is not None and not isinstance(b.const, str):
                raise ValueError("a string point can only bind a text const")
        elif self.size is not None and self.size != info.registers:
            raise ValueError(f"{self.type.value} is {info.registers} register(s), not {self.size}")
        elif b is not None and isinstance(b.const, str):
            raise ValueError(f"a text const needs type string, not {self.type.value}")
        if self.type is PointType.SUNSSF and (self.scale is not None or self.sf is not None):
            raise ValueError("a scale factor point cannot itself be scaled")
        if b is not None and b.sf_fit is not None and self.type is not PointType.SUNSSF:
            raise ValueError("sf_fit binds scale factor points only (type sunssf)")
        if b is not None and (b.state or b.alarms) and info.kind != "int":
            raise ValueError("state and alarm bits need an integer type")
        if b is not None and b.alarms:
            too_high = {k: v for k, v in b.alarms.items() if v >= info.bits}
            if too_high:
                raise ValueError(f"alarm bits {too_high} do not fit {self.type.value}")
        is_control = b is not None and b.control is not None
        if self.access == "rw" and not is_control:
            raise ValueError("a writable point (access rw) needs a control binding")
        if is_control and self.access != "rw":
            raise ValueError("a control binding needs access rw")
        if self.range is not None and not self.range[0] <= self.range[1]:
            raise ValueError(f"range {list(self.range)} must be [low, high]")
        return self


class BlockSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    model: int | None = Field(default=None, ge=0, le=0xFFFF)
    length: int | None = Field(default=None, ge=0, le=0xFFFF)
    address: int | None = Field(default=None, ge=0, le=65535)
    table: Table | None = None
    description: str = ""
    points: list[Any] = Field(default_factory=list)


class MapSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    description: str = ""
    base_address: int = Field(default=0, ge=0, le=65535)
    unit_id: int = Field(default=1, ge=0, le=255)
    layout: Literal["plain", "sunspec"] = "plain"
    table: Table = "holding"
    points: list[Any] | None = None
    blocks: list[Any] | None = None

    @model_validator(mode="after")
    def _points_or_blocks(self) -> MapSpec:
        if (self.points is None) == (self.blocks is None):
            raise ValueError("give either points (one block) or blocks, not both or neither")
        return self


# -- the resolved map ------------------------------------------------------------------------


@dataclass(frozen=True)
class Point:
    """A point with its address resolved and its units checked."""

    name: str  # "block.point", or "point" in a map without blocks
    block: str
    address: int
    table: Table
    type: PointType
    size: int  # registers
    word_order: Order
    byte_order: Order
    scale: float | None
    sf: str | None  # full name of the scale factor point
    units: str | None
    access: Access
    binding: BindingSpec | None
    range: tuple[float, float] | None
    initial: float
    description: str
    unit_factor: float = 1.0  # bound quantity -> point units

    @property
    def end(self) -> int:
        return self.address + self.size

    @property
    def short_name(self) -> str:
        return self.name.rpartition(".")[2]

    @property
    def info(self) -> TypeInfo:
        return TYPES[self.type]

    def multiplier(self, sf_values: Mapping[str, int]) -> float:
        if self.scale is not None:
            return self.scale
        if self.sf is not None and self.sf in sf_values:
            return 10.0 ** sf_values[self.sf]
        return 1.0  # unscaled, or the SF is not implemented (then neither is this point)

    def encode(
        self, value: float | str | None, *, multiplier: float = 1.0, avoid_na: bool = False
    ) -> list[int]:
        """Registers for an engineering value; ``None`` = not implemented (NA marker)."""
        if value is None:
            return registers_of(
                self.info.na if self.info.na is not None else 0,
                self.type,
                size=self.size,
                word_order=self.word_order,
                byte_order=self.byte_order,
            )
        return encode(
            value,
            self.type,
            size=self.size,
            word_order=self.word_order,
            byte_order=self.byte_order,
            multiplier=multiplier,
            avoid_na=avoid_na,
        )

    def encoder(
        self, *, multiplier: float = 1.0, avoid_na: bool = False
    ) -> Callable[[Value | None], list[int]]:
        """``encode`` with everything precomputed: the server calls it on every read."""
        na = self.encode(None)
        info = self.info
        if info.kind == "string":

            def encode_text(value: Value | None) -> list[int]:
                return na if value is None else self.encode(value)

            return encode_text
        packer = struct.Struct(">" + info.fmt)
        lo, hi = info.int_range(avoid_na=avoid_na) if info.kind == "int" else (0, 0)
        one_register = info.registers == 1 and self.byte_order == "big"
        word_order, byte_order = self.word_order, self.byte_order

        def encode_number(value: Value | None) -> list[int]:
            if value is None:
                return na
            if isinstance(value, str):
                raise TypeError(f"{self.name} ({info.name.value}) cannot hold text {value!r}")
            raw = to_raw(value, info, multiplier, lo, hi)
            if one_register:
                return [int(raw) & 0xFFFF]
            try:
                data = packer.pack(raw)
            except OverflowError:  # beyond float32
                data = packer.pack(math.copysign(math.inf, raw))
            return bytes_to_registers(data, word_order, byte_order)

        return encode_number

    def decode(self, registers: Sequence[int], *, multiplier: float = 1.0) -> float | str:
        return decode(
            registers,
            self.type,
            word_order=self.word_order,
            byte_order=self.byte_order,
            multiplier=multiplier,
        )


@dataclass(frozen=True)
class Block:
    name: str
    model: int | None
    address: int  # of the header (or of the first point)
    length: int  # SunSpec L: registers after the header; for plain blocks the whole span
    description: str = ""


@dataclass(frozen=True)
class DescribeRow:
    address: int
    table: str
    name: str
    type: str
    scale: str
    units: str
    access: str
    binding: str


@dataclass(frozen=True)
class RegisterMap:
    name: str
    description: str
    base_address: int
    unit_id: int
    layout: Literal["plain", "sunspec"]
    points: tuple[Point, ...]
    blocks: tuple[Block, ...] = ()
    source: str = "<memory>"
    _by_name: dict[str, Point] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._by_name.clear()
        for p in self.points:
            self._by_name[p.name] = p
        shorts: dict[str, list[Point]] = {}
        for p in self.points:
            shorts.setdefault(p.short_name, []).append(p)
        for short, same in shorts.items():
            if len(same) == 1 and short not in self._by_name:
                self._by_name[short] = same[0]

    @property
    def avoid_na(self) -> bool:
        """SunSpec maps never produce a 'not implemented' marker by saturation."""
        return self.layout == "sunspec"

    def point(self, name: str) -> Point:
        """A point by full name (``storage.OutWRte``) or by its short name if unique."""
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"map {self.name!r} has no point {name!r}") from None

    def table(self, table: Table) -> tuple[Point, ...]:
        return tuple(p for p in self.points if p.table == table)

    def with_base(self, base_address: int) -> RegisterMap:
        """The same map moved so that it starts at ``base_address`` (e.g. SunSpec at 0/50000)."""
        shift = base_address - self.base_address
        if shift == 0:
            return self
        last = max(p.end for p in self.points)
        if min(p.address for p in self.points) + shift < 0 or last + shift > 65536:
            raise RegisterMapError(f"{self.name}: base {base_address} moves points out of range")
        return replace(
            self,
            base_address=base_address,
            points=tuple(replace(p, address=p.address + shift) for p in self.points),
            blocks=tuple(replace(b, address=b.address + shift) for b in self.blocks),
            _by_name={},
        )

    def sf_users(self, sf_name: str) -> tuple[Point, ...]:
        return tuple(p for p in self.points if p.sf == sf_name)

    def resolve_sf(self, spec: BatterySpec) -> dict[str, int]:
        """Scale factor values for this battery: constants, or fitted to the nameplate."""
        values: dict[str, int] = {}
        for p in self.points:
            if p.type is not PointType.SUNSSF or p.binding is None:
                continue
            if p.binding.const is not None:
                values[p.name] = int(p.binding.const)
            elif p.binding.sf_fit is not None:
                values[p.name] = self._fit(p, p.binding.sf_fit, spec)
        return values

    def _fit(self, sf_point: Point, fit: SfFitSpec, spec: BatterySpec) -> int:
        largest = max(
            abs(spec_value(n, spec)) * unit_factor(SPEC_UNITS[n], fit.units, any_power=True)
            for n in fit.spec
        )
        users = self.sf_users(sf_point.name)
        room = min((p.info.int_range(avoid_na=self.avoid_na)[1] for p in users), default=32767)
        for sf in range(fit.min_sf, fit.max_sf + 1):
            if largest / 10.0**sf <= room:
                return sf
        return fit.max_sf

    def describe(self) -> list[DescribeRow]:
        """One row per point, in address order: what ``bess-hil serve`` prints."""
        rows = []
        for p in sorted(self.points, key=lambda p: (p.table, p.address)):
            if p.scale is not None:
                scale = f"x{p.scale:g}"
            elif p.sf is not None:
                scale = f"sf {p.sf.rpartition('.')[2]}"
            else:
                scale = ""
            ptype = f"string[{p.size}]" if p.type is PointType.STRING else p.type.value
            if p.word_order == "little" or p.byte_order == "little":
                ptype += f" ({p.word_order[0]}w/{p.byte_order[0]}b)"
            rows.append(
                DescribeRow(
                    address=p.address,
                    table=p.table,
                    name=p.name,
                    type=ptype,
                    scale=scale,
                    units=p.units or "",
                    access=p.access,
                    binding=p.binding.describe() if p.binding else "not implemented",
                )
            )
        return rows

    def describe_text(self) -> str:
        """``describe()`` as a fixed-width text table."""
        header = DescribeRow(0, "table", "name", "type", "scale", "units", "access", "binding")
        rows = self.describe()
        cols = ("table", "name", "type", "scale", "units", "access", "binding")
        widths = {c: max(len(getattr(r, c)) for r in [header, *rows]) for c in cols}
        lines = []
        for i, r in enumerate([header, *rows]):
            addr = "address" if i == 0 else str(r.address)
            cells = [f"{addr:>7}"] + [f"{getattr(r, c):<{widths[c]}}" for c in cols]
            lines.append("  ".join(cells).rstrip())
        return "\n".join(lines)


# -- loading ---------------------------------------------------------------------------------

BUILTIN_MAPS = ("generic", "sunspec")
_YamlLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_register_map(name_or_path: str | Path) -> RegisterMap:
    """A built-in map by name (``sunspec``, ``generic``) or a map file by path."""
    path = Path(name_or_path)
    if str(name_or_path) in BUILTIN_MAPS:
        path = MAPS_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise RegisterMapError(
            f"no register map {str(name_or_path)!r}: give a file path or one of "
            f"{', '.join(BUILTIN_MAPS)}"
        )
    return parse_register_map(path.read_text(encoding="utf-8"), source=str(path))


def parse_register_map(text: str, *, source: str = "<text>") -> RegisterMap:
    try:
        data = yaml.load(text, Loader=_YamlLoader)  # noqa: S506 - a SafeLoader (C or Python)
    except yaml.YAMLError as exc:
        raise RegisterMapError(f"{source}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise RegisterMapError(f"{source}: a map file is a mapping (name, points or blocks, ...)")
    return build_register_map(data, source=source)


def _pydantic_problems(exc: ValidationError, model: type[BaseModel]) -> list[str]:
    out = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err["loc"]) or "(point)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            target: type[BaseModel] = BindingSpec if loc.startswith("binding.") else model
            msg += f"; allowed fields: {', '.join(target.model_fields)}"
        out.append(f"field {loc!r}: {msg}")
    return out


def build_register_map(data: Mapping[str, Any], *, source: str = "<memory>") -> RegisterMap:
    """Validate a parsed map file and resolve addresses, scale factors and units."""
    try:
        spec = MapSpec.model_validate(data)
    except ValidationError as exc:
        raise RegisterMapError(
            f"{source}: map " + "; ".join(_pydantic_problems(exc, MapSpec))
        ) from None
    problems: list[str] = []
    raw_blocks: list[Any] = list(spec.blocks or [])
    if spec.points is not None:
        raw_blocks = [{"name": "_", "points": spec.points}]
    blocks: list[BlockSpec] = []
    for i, raw in enumerate(raw_blocks):
        try:
            blocks.append(BlockSpec.model_validate(raw))
        except ValidationError as exc:
            name = raw.get("name", f"#{i + 1}") if isinstance(raw, dict) else f"#{i + 1}"
            for problem in _pydantic_problems(exc, BlockSpec):
                problems.append(f"block {name!r}: {problem}")
    if problems:
        raise RegisterMapError(f"{source}: " + "\n  ".join(problems))

    points: list[Point] = []
    resolved_blocks: list[Block] = []
    next_free = spec.base_address
    for block in blocks:
        prefix = "" if block.name == "_" else f"{block.name}."
        table: Table = block.table or spec.table
        if block.address is not None:
            next_free = block.address
        start = next_free
        block_points: list[Point] = []
        if block.model is not None:
            for hname, hvalue in (("ID", block.model), ("L", 0)):
                block_points.append(
                    _header_point(prefix + hname, block.name, next_free, table, hvalue)
                )
                next_free += 1
        for j, raw in enumerate(block.points):
            label = raw.get("name") if isinstance(raw, dict) else None
            where = f"point {prefix}{label}" if label else f"point #{j + 1} of block {block.name!r}"
            try:
                ps = PointSpec.model_validate(raw)
            except ValidationError as exc:
                problems.extend(f"{where}: {p}" for p in _pydantic_problems(exc, PointSpec))
                continue
            address = ps.address if ps.address is not None else next_free
            size = ps.size or TYPES[ps.type].registers  # strings always have a size
            try:
                factor, units = _units_for(ps)
            except ValueError as exc:
                problems.append(f"point {prefix}{ps.name!r}: field 'units': {exc}")
                factor, units = 1.0, ps.units
            point = Point(
                name=prefix + ps.name,
                block=block.name,
                address=address,
                table=ps.table or table,
                type=ps.type,
                size=size,
                word_order=ps.word_order,
                byte_order=ps.byte_order,
                scale=ps.scale,
                sf=(prefix + ps.sf) if ps.sf else None,
                units=units,
                access=ps.access,
                binding=ps.binding,
                range=ps.range,
                initial=ps.initial,
                description=ps.description,
                unit_factor=factor,
            )
            if point.end > 65536:
                problems.append(f"point {point.name!r}: field 'address': ends past 65535")
            block_points.append(point)
            next_free = max(next_free, point.end)
        if block.model is not None:
            body = next_free - start - 2
            if block.length is not None and block.length != body:
                problems.append(
                    f"block {block.name!r}: field 'length': declared L={block.length} but the "
                    f"points after the header take {body} registers"
                )
            block_points[1] = replace(
                block_points[1],
                binding=BindingSpec(const=body),
                description=f"model {block.model} length",
            )
            resolved_blocks.append(Block(block.name, block.model, start, body, block.description))
        else:
            resolved_blocks.append(
                Block(block.name, None, start, next_free - start, block.description)
            )
        points.extend(block_points)

    problems.extend(_check_points(points))
    if spec.layout == "sunspec" and not problems:
        problems.extend(_check_sunspec(points, resolved_blocks, spec.base_address))
    if problems:
        raise RegisterMapError(f"{source}: " + "\n  ".join(problems))
    return RegisterMap(
        name=spec.name,
        description=spec.description.strip(),
        base_address=spec.base_address,
        unit_id=spec.unit_id,
        layout=spec.layout,
        points=tuple(points),
        blocks=tuple(resolved_blocks),
        source=source,
    )


def _header_point(name: str, block: str, address: int, table: Table, value: int) -> Point:
    return Point(
        name=name,
        block=block,
        address=address,
        table=table,
        type=PointType.UINT16,
        size=1,
        word_order="big",
        byte_order="big",
        scale=None,
        sf=None,
        units=None,
        access="r",
        binding=BindingSpec(const=value),
        range=None,
        initial=0.0,
        description="SunSpec model id" if name.endswith("ID") else "",
    )


def _units_for(ps: PointSpec) -> tuple[float, str | None]:
    """(factor from the bound quantity's unit to the point's, the point's unit)."""
    b = ps.binding
    source: str | None = None
    if b is not None:
        if b.measure is not None:
            source = MEASURED_UNITS[b.measure]
        elif b.spec is not None:
            source = SPEC_UNITS[b.spec]
        elif b.control is not None:
            source = CONTROL_UNITS[b.control]
    if source is None:
        return 1.0, ps.units
    if ps.units is None:
        return 1.0, source
    return unit_factor(source, ps.units), ps.units


def _check_points(points: Sequence[Point]) -> list[str]:
    problems: list[str] = []
    by_name = {p.name: p for p in points}
    seen: set[str] = set()
    for p in points:
        if p.name in seen:
            problems.append(f"point {p.name!r}: field 'name': used twice in block {p.block!r}")
        seen.add(p.name)
    for table in ("holding", "input"):
        ordered = sorted((p for p in points if p.table == table), key=lambda p: p.address)
        for a, z in itertools.pairwise(ordered):
            if z.address < a.end:
                problems.append(
                    f"point {z.name!r}: field 'address': {z.address} overlaps {a.name!r} "
                    f"({a.address}..{a.end - 1}, {table})"
                )
    for p in points:
        if p.sf is not None:
            sf_point = by_name.get(p.sf)
            if sf_point is None or sf_point.type is not PointType.SUNSSF:
                candidates = [
                    q.short_name for q in points if q.block == p.block and q.type == "sunssf"
                ]
                problems.append(
                    f"point {p.name!r}: field 'sf': no scale factor point "
                    f"{p.sf.rpartition('.')[2]!r} in its block; allowed: "
                    f"{', '.join(candidates) or 'none (add a sunssf point)'}"
                )
            elif p.binding is not None and sf_point.binding is None:
                problems.append(
                    f"point {p.name!r}: field 'sf': {sf_point.name!r} has no value (bind a "
                    f"const or sf_fit) but this point shows one"
                )
        b = p.binding
        if b is not None and b.const is not None and isinstance(b.const, str):
            if len(b.const.encode("utf-8")) > 2 * p.size:
                problems.append(
                    f"point {p.name!r}: field 'binding.const': {b.const!r} is longer than "
                    f"{2 * p.size} bytes"
                )
        if b is not None and b.sf_fit is not None:
            users = [q for q in points if q.sf == p.name]
            for q in users:
                if q.units is not None and UNITS[q.units][0] != UNITS[b.sf_fit.units][0]:
                    problems.append(
                        f"point {p.name!r}: field 'binding.sf_fit.units': {b.sf_fit.units} "
                        f"does not match {q.name!r} in {q.units}"
                    )
            for n in b.sf_fit.spec:
                try:
                    unit_factor(SPEC_UNITS[n], b.sf_fit.units, any_power=True)
                except ValueError as exc:
                    problems.append(f"point {p.name!r}: field 'binding.sf_fit.spec': {exc}")
    return problems


def _check_sunspec(points: Sequence[Point], blocks: Sequence[Block], base: int) -> list[str]:
    """The chain a SunSpec client walks: marker, then ID/L headers back to back, then 0xFFFF."""
    problems: list[str] = []
    if any(p.table != "holding" for p in points):
        problems.append("layout sunspec: every point must be a holding register")
    first = blocks[0] if blocks else None
    marker = [p for p in points if first and p.block == first.name]
    ok_marker = (
        first is not None
        and first.model is None
        and first.address == base
        and len(marker) == 1
        and marker[0].binding is not None
        and marker[0].binding.const is not None
        and tuple(marker[0].encode(marker[0].binding.const)) == SUNSPEC_MARKER
    )
    if not ok_marker:
        problems.append(
            f"layout sunspec: the first block must hold only the 'SunS' marker "
            f"(uint32 const 0x53756E53) at base_address {base}"
        )
    expected = base + 2
    for block in blocks[1:]:
        if block.model is None:
            problems.append(f"block {block.name!r}: field 'model': SunSpec blocks need a model id")
            continue
        if block.address != expected:
            problems.append(
                f"block {block.name!r}: field 'address': header at {block.address}, but the "
                f"previous model ends at {expected - 1}: a client walking ID/L would miss it"
            )
        body = sorted((p for p in points if p.block == block.name), key=lambda p: p.address)
        for a, z in itertools.pairwise(body):
            if z.address != a.end:
                problems.append(
                    f"point {z.name!r}: field 'address': gap after {a.name!r}; SunSpec models "
                    f"are contiguous"
                )
        expected = block.address + 2 + block.length
    last = blocks[-1] if blocks else None
    if last is None or last.model != SUNSPEC_END_MODEL or last.length != 0:
        problems.append("layout sunspec: the last block must be the end marker (model 0xFFFF, L 0)")
    return problems
