"""Modbus register values <-> numbers: the one codec the agent and the simulator share.

Pure functions, no I/O and no pymodbus: ``hil.regmap`` (the simulated device) and the agent's
Modbus source (``edge_agent.modbus_source``) both encode and decode through here, so a value
the simulator serves is read back by the same rules.

Types (``PointType``): ``int16/uint16/int32/uint32/int64/uint64``, ``float32/float64``,
``acc16/32/64`` (energy counters that wrap), ``enum16/32``, ``bitfield16/32``, ``sunssf``
(a SunSpec scale factor, int16), ``pad`` and ``string`` (``size`` registers, UTF-8, NUL padded).

Orders: ``word_order`` is the order of the 16-bit registers of a multi-register value
(``big`` = most significant register first, as Modbus and SunSpec define it; ``little`` = the
"swapped words" many vendors use); ``byte_order`` is the order of the two bytes inside each
register (``big`` = network order). Strings are character sequences: only ``byte_order``
applies to them.

Scaling: engineering value = raw x ``multiplier``, the multiplier being a fixed ``scale``
(0.1 for "x0.1 %") or ``10 ** SF`` for a SunSpec scale-factor register (``sf_multiplier``).

Encoding saturates instead of failing: integers are rounded to the nearest raw value and
clipped to the type's range, so a faulty 250 % SoC or a 10 MW spike never crashes anything
(``avoid_na`` keeps a saturated value off SunSpec's "not implemented" marker, e.g. 0x8000 for
int16). Accumulators wrap like real counters. NaN encodes as the type's marker; floats beyond
float32 encode as +/-inf.

Decoding knows SunSpec's "not implemented" values (``TypeInfo.na``: 0x8000 int16, 0xFFFF
uint16/enum16/bitfield16, 0x80000000 int32, 0xFFFFFFFF uint32, 0 for accumulators, NaN for
floats, 0x8000 for a scale factor); ``decode_value`` turns them into ``None``. SMA's Modbus
profile uses the same markers for its S32/U32/U64 "NaN".
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

Order = Literal["big", "little"]

MAX_READ_REGISTERS = 125  # what one read-holding/input-registers request may ask for
MAX_WRITE_REGISTERS = 123  # what one write-multiple-registers request may carry
SF_RANGE = (-10, 10)  # SunSpec: scale factors are -10 ... 10; anything else is not a value


class PointType(StrEnum):
    INT16 = "int16"
    UINT16 = "uint16"
    INT32 = "int32"
    UINT32 = "uint32"
    INT64 = "int64"
    UINT64 = "uint64"
    FLOAT32 = "float32"
    FLOAT64 = "float64"
    ACC16 = "acc16"
    ACC32 = "acc32"
    ACC64 = "acc64"
    ENUM16 = "enum16"
    ENUM32 = "enum32"
    BITFIELD16 = "bitfield16"
    BITFIELD32 = "bitfield32"
    SUNSSF = "sunssf"
    PAD = "pad"
    STRING = "string"


@dataclass(frozen=True)
class TypeInfo:
    name: PointType
    registers: int  # 0 = given by the point's ``size`` (strings)
    kind: Literal["int", "float", "string"]
    fmt: str  # struct format character
    na: int | float | None  # SunSpec "not implemented" raw value
    wraps: bool = False  # accumulators roll over instead of saturating

    @property
    def bits(self) -> int:
        return 16 * self.registers

    @property
    def signed(self) -> bool:
        return self.fmt.islower()

    def int_range(self, *, avoid_na: bool = False) -> tuple[int, int]:
        """Smallest and largest raw integer; with ``avoid_na`` the NA marker is excluded."""
        if self.signed:
            lo, hi = -(1 << (self.bits - 1)), (1 << (self.bits - 1)) - 1
        else:
            lo, hi = 0, (1 << self.bits) - 1
        if avoid_na and not self.wraps:
            if self.na == lo:
                lo += 1
            elif self.na == hi:
                hi -= 1
        return lo, hi


TYPES: dict[PointType, TypeInfo] = {
    t.name: t
    for t in (
        TypeInfo(PointType.INT16, 1, "int", "h", -0x8000),
        TypeInfo(PointType.UINT16, 1, "int", "H", 0xFFFF),
        TypeInfo(PointType.INT32, 2, "int", "i", -0x80000000),
        TypeInfo(PointType.UINT32, 2, "int", "I", 0xFFFFFFFF),
        TypeInfo(PointType.INT64, 4, "int", "q", -(1 << 63)),
        TypeInfo(PointType.UINT64, 4, "int", "Q", (1 << 64) - 1),
        TypeInfo(PointType.FLOAT32, 2, "float", "f", math.nan),
        TypeInfo(PointType.FLOAT64, 4, "float", "d", math.nan),
        TypeInfo(PointType.ACC16, 1, "int", "H", 0, wraps=True),
        TypeInfo(PointType.ACC32, 2, "int", "I", 0, wraps=True),
        TypeInfo(PointType.ACC64, 4, "int", "Q", 0, wraps=True),
        TypeInfo(PointType.ENUM16, 1, "int", "H", 0xFFFF),
        TypeInfo(PointType.ENUM32, 2, "int", "I", 0xFFFFFFFF),
        TypeInfo(PointType.BITFIELD16, 1, "int", "H", 0xFFFF),
        TypeInfo(PointType.BITFIELD32, 2, "int", "I", 0xFFFFFFFF),
        TypeInfo(PointType.SUNSSF, 1, "int", "h", -0x8000),
        TypeInfo(PointType.PAD, 1, "int", "H", 0x8000),
        TypeInfo(PointType.STRING, 0, "string", "s", 0),
    )
}


# -- bytes <-> registers ----------------------------------------------------------------------


def bytes_to_registers(data: bytes, word_order: Order, byte_order: Order) -> list[int]:
    """Big-endian bytes (as ``struct`` packs them) -> registers in the device's order."""
    regs = [(data[i] << 8) | data[i + 1] for i in range(0, len(data), 2)]
    if byte_order == "little":
        regs = [((r & 0xFF) << 8) | (r >> 8) for r in regs]
    if word_order == "little":
        regs.reverse()
    return regs


def registers_to_bytes(registers: Sequence[int], word_order: Order, byte_order: Order) -> bytes:
    """Registers in the device's order -> big-endian bytes (the inverse of the above)."""
    regs = list(registers)
    if word_order == "little":
        regs.reverse()
    if byte_order == "little":
        regs = [((r & 0xFF) << 8) | (r >> 8) for r in regs]
    return b"".join(struct.pack(">H", r & 0xFFFF) for r in regs)


# -- encoding -----------------------------------------------------------------------------------


def raw_value(
    value: float | str, ptype: PointType, *, multiplier: float = 1.0, avoid_na: bool = False
) -> int | float | str:
    """Engineering value -> the raw number the registers hold (rounded, saturated, wrapped)."""
    info = TYPES[ptype]
    if info.kind == "string":
        return str(value)
    if isinstance(value, str):
        raise TypeError(f"{ptype.value} cannot hold text {value!r}")
    lo, hi = info.int_range(avoid_na=avoid_na) if info.kind == "int" else (0, 0)
    return to_raw(value, info, multiplier, lo, hi)


def to_raw(value: float, info: TypeInfo, multiplier: float, lo: int, hi: int) -> int | float:
    """``raw_value`` with the type's limits precomputed (the simulator calls it per read)."""
    scaled: int | float
    if isinstance(value, int) and multiplier == 1.0:
        scaled = value  # exact, even for 64-bit counters and bitfields
    else:
        scaled = float(value) / multiplier
    if info.kind == "float":
        return float(scaled)
    if math.isnan(scaled):
        return int(info.na or 0)
    if info.wraps:
        if math.isinf(scaled):
            return hi if scaled > 0 else 0
        return round(scaled) % (1 << info.bits)
    if scaled >= hi:
        return hi
    if scaled <= lo:
        return lo
    return round(scaled)


def registers_of(
    raw: int | float | str,
    ptype: PointType,
    *,
    size: int | None = None,
    word_order: Order = "big",
    byte_order: Order = "big",
) -> list[int]:
    """The registers for a raw value (already scaled and within range for integer types)."""
    info = TYPES[ptype]
    if info.kind == "string":
        if size is None:
            raise ValueError("a string needs its size in registers")
        data = str(raw).encode("utf-8")[: 2 * size].ljust(2 * size, b"\0")
        # Strings are character sequences: only the byte order within a register applies.
        return bytes_to_registers(data, "big", byte_order)
    if info.kind == "float":
        try:
            data = struct.pack(f">{info.fmt}", float(raw))
        except OverflowError:
            data = struct.pack(f">{info.fmt}", math.copysign(math.inf, float(raw)))
    else:
        data = struct.pack(f">{info.fmt}", int(raw))
    return bytes_to_registers(data, word_order, byte_order)


def encode(
    value: float | str,
    ptype: PointType | str,
    *,
    size: int | None = None,
    word_order: Order = "big",
    byte_order: Order = "big",
    multiplier: float = 1.0,
    avoid_na: bool = False,
) -> list[int]:
    """Engineering value -> registers (``multiplier`` = scale or 10^SF)."""
    ptype = PointType(ptype)
    raw = raw_value(value, ptype, multiplier=multiplier, avoid_na=avoid_na)
    return registers_of(raw, ptype, size=size, word_order=word_order, byte_order=byte_order)


def saturates(value: float, ptype: PointType | str, *, multiplier: float = 1.0) -> bool:
    """Would ``encode`` clip this value to fit the integer type (SunSpec markers excluded)?"""
    info = TYPES[PointType(ptype)]
    if info.kind != "int" or info.wraps or math.isnan(value):
        return False
    if math.isinf(value):
        return True
    lo, hi = info.int_range(avoid_na=True)
    return not lo <= round(value / multiplier) <= hi


# -- decoding -----------------------------------------------------------------------------------


def decode_raw(
    registers: Sequence[int],
    ptype: PointType | str,
    *,
    word_order: Order = "big",
    byte_order: Order = "big",
) -> int | float | str:
    """Registers -> the raw number (or text) they hold."""
    info = TYPES[PointType(ptype)]
    if info.kind == "string":
        data = registers_to_bytes(registers, "big", byte_order)
        return data.rstrip(b"\0").decode("utf-8", errors="replace")
    if len(registers) != info.registers:
        raise ValueError(
            f"{info.name.value} takes {info.registers} registers, got {len(registers)}"
        )
    data = registers_to_bytes(registers, word_order, byte_order)
    raw: int | float = struct.unpack(f">{info.fmt}", data)[0]
    return raw


def decode(
    registers: Sequence[int],
    ptype: PointType | str,
    *,
    word_order: Order = "big",
    byte_order: Order = "big",
    multiplier: float = 1.0,
) -> float | str:
    """Registers -> engineering value (raw x multiplier); markers are not interpreted."""
    raw = decode_raw(registers, ptype, word_order=word_order, byte_order=byte_order)
    if isinstance(raw, str):
        return raw
    return raw * multiplier


def is_not_implemented(
    raw: int | float | str, ptype: PointType | str, *, extra: int | None = None
) -> bool:
    """Is ``raw`` the type's SunSpec "not implemented" marker (or the vendor's ``extra`` one)?

    Strings are "not implemented" when empty (all NUL). Accumulators use 0 as their marker,
    which is also a real value for a new counter: callers decide whether to trust it.
    """
    info = TYPES[PointType(ptype)]
    if isinstance(raw, str):
        return raw == ""
    if extra is not None and raw == extra:
        return True
    if info.kind == "float":
        return math.isnan(raw)
    return raw == info.na


def decode_value(
    registers: Sequence[int],
    ptype: PointType | str,
    *,
    word_order: Order = "big",
    byte_order: Order = "big",
    multiplier: float | None = 1.0,
    na: bool = True,
    extra_na: int | None = None,
) -> float | str | None:
    """Registers -> engineering value, or None when not implemented or unscalable.

    ``multiplier`` None means the scale factor itself is not implemented (see
    ``sf_multiplier``): the value cannot be known. With ``na`` False only floats' NaN counts
    as missing (plain maps whose 0xFFFF is a real reading).
    """
    ptype = PointType(ptype)
    raw = decode_raw(registers, ptype, word_order=word_order, byte_order=byte_order)
    if isinstance(raw, str):
        return None if raw == "" and na else raw
    if (extra_na is not None and raw == extra_na) or (na and is_not_implemented(raw, ptype)):
        return None
    if isinstance(raw, float) and not math.isfinite(raw):
        return None
    if multiplier is None:
        return None
    return raw * multiplier


def sf_multiplier(sf_raw: int | float | str | None) -> float | None:
    """A SunSpec scale factor's raw value -> 10**SF, None if not implemented or out of range."""
    if sf_raw is None or isinstance(sf_raw, str | float):
        return None
    if not SF_RANGE[0] <= sf_raw <= SF_RANGE[1]:
        return None  # includes 0x8000 ("not implemented") read as int16
    return 10.0**sf_raw
