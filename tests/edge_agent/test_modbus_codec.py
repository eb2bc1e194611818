"""The shared Modbus codec: round trips (hypothesis), orders against struct, SunSpec markers."""

from __future__ import annotations

import math
import struct
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.modbus_codec import (
    TYPES,
    PointType,
    decode,
    decode_raw,
    decode_value,
    encode,
    is_not_implemented,
    saturates,
    sf_multiplier,
)

ORDERS = st.sampled_from(["big", "little"])
INT_TYPES = [t for t, info in TYPES.items() if info.kind == "int"]
SCALED_TYPES = [
    PointType.INT16,
    PointType.UINT16,
    PointType.INT32,
    PointType.UINT32,
    PointType.INT64,
    PointType.UINT64,
]


def test_orders_against_struct() -> None:
    # An independent reference: struct packs big-endian; the device orders words and bytes.
    regs = encode(-123_456, "int32")
    assert regs == list(struct.unpack(">2H", struct.pack(">i", -123_456)))
    assert encode(-123_456, "int32", word_order="little") == regs[::-1]
    swapped = [((r & 0xFF) << 8) | (r >> 8) for r in regs]
    assert encode(-123_456, "int32", byte_order="little") == swapped
    assert decode(regs[::-1], "int32", word_order="little") == -123_456
    hi, lo = struct.unpack(">2H", struct.pack(">f", 49.98))
    assert decode([lo, hi], "float32", word_order="little") == pytest.approx(49.98, rel=1e-6)


@given(data=st.data(), word_order=ORDERS, byte_order=ORDERS)
def test_integer_round_trip(data: st.DataObject, word_order: Any, byte_order: Any) -> None:
    ptype = data.draw(st.sampled_from(INT_TYPES))
    lo, hi = TYPES[ptype].int_range()
    value = data.draw(st.integers(lo, hi))
    regs = encode(value, ptype, word_order=word_order, byte_order=byte_order)
    assert len(regs) == TYPES[ptype].registers and all(0 <= r <= 0xFFFF for r in regs)
    assert decode_raw(regs, ptype, word_order=word_order, byte_order=byte_order) == value


@given(value=st.floats(width=32, allow_nan=False), word_order=ORDERS, byte_order=ORDERS)
def test_float32_round_trip(value: float, word_order: Any, byte_order: Any) -> None:
    regs = encode(value, "float32", word_order=word_order, byte_order=byte_order)
    back = decode_value(regs, "float32", word_order=word_order, byte_order=byte_order)
    if math.isinf(value):
        assert back is None  # an infinite reading is no reading
    else:
        assert back == value


@given(
    data=st.data(),
    sf=st.integers(-4, 4),
    word_order=ORDERS,
    byte_order=ORDERS,
)
def test_scaled_round_trip_within_half_a_step(
    data: st.DataObject, sf: int, word_order: Any, byte_order: Any
) -> None:
    ptype = data.draw(st.sampled_from(SCALED_TYPES))
    lo, hi = TYPES[ptype].int_range(avoid_na=True)
    multiplier = sf_multiplier(sf)
    assert multiplier is not None
    value = data.draw(st.floats(min_value=lo * multiplier, max_value=min(hi, 2**52) * multiplier))
    orders: dict[str, Any] = {"word_order": word_order, "byte_order": byte_order}
    regs = encode(value, ptype, multiplier=multiplier, avoid_na=True, **orders)
    back = decode_value(regs, ptype, multiplier=multiplier, **orders)
    assert back is not None
    assert abs(float(back) - value) <= multiplier / 2 * (1 + 1e-9) + abs(value) * 1e-12


@given(text=st.text(alphabet=st.characters(codec="ascii", exclude_characters="\0"), max_size=32))
def test_string_round_trip(text: str) -> None:
    regs = encode(text, "string", size=16)
    assert len(regs) == 16
    assert decode_value(regs, "string") == (text or None)


def test_sunspec_not_implemented_markers_read_as_none() -> None:
    assert decode_value([0x8000], "int16") is None
    assert decode_value([0xFFFF], "uint16") is None
    assert decode_value([0xFFFF], "enum16") is None
    assert decode_value([0x8000, 0x0000], "int32") is None
    assert decode_value([0xFFFF, 0xFFFF], "uint32") is None
    assert decode_value(encode(math.nan, "float32"), "float32") is None
    assert decode_value([0, 0], "acc32") is None  # SunSpec: an accumulator's marker is 0
    assert is_not_implemented(-0x8000, "sunssf")
    # Plain maps (na=False): 0xFFFF is 6553.5 %, a value (then refused as implausible).
    assert decode_value([0xFFFF], "uint16", multiplier=0.1, na=False) == pytest.approx(6553.5)
    # A vendor's own marker (SMA TAGLIST "NaN").
    assert decode_value([0x00FF, 0xFFFD], "uint32", extra_na=0x00FFFFFD) is None
    assert decode_value([0, 307], "uint32", extra_na=0x00FFFFFD) == 307


def test_scale_factor_multiplier() -> None:
    assert sf_multiplier(-2) == pytest.approx(0.01)
    assert sf_multiplier(3) == 1000.0
    assert sf_multiplier(-0x8000) is None  # not implemented
    assert sf_multiplier(11) is None  # SunSpec allows -10 .. 10
    assert sf_multiplier(None) is None
    # A value whose scale factor is unknown has no value.
    assert decode_value([573], "uint16", multiplier=None) is None
    assert decode_value([573], "uint16", multiplier=sf_multiplier(-1)) == pytest.approx(57.3)


def test_saturation_never_produces_a_marker() -> None:
    assert encode(250.0, "uint16", multiplier=0.1) == [2500]  # a faulty 250 % still fits
    assert encode(-1e9, "int16", avoid_na=True) == [0x8001]
    assert encode(1e9, "uint16", avoid_na=True) == [0xFFFE]
    assert encode(2**32 + 5, "acc32") == [0, 5]  # accumulators wrap like real counters
    assert saturates(40_000.0, "int16")
    assert saturates(math.inf, "int16")
    assert not saturates(3276.7, "int16", multiplier=0.1)
    assert not saturates(5e9, "acc32")  # wraps, does not clip
    assert not saturates(1e40, "float32")
