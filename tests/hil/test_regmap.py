"""Register maps: encoding round trips, saturation, and map files that must be refused."""

from __future__ import annotations

import math
import struct
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hil.model import BatterySpec
from hil.regmap import (
    TYPES,
    PointType,
    RegisterMapError,
    build_register_map,
    decode,
    decode_raw,
    encode,
    load_register_map,
    parse_register_map,
)

ORDERS = st.sampled_from(["big", "little"])
INT_TYPES = [t for t, info in TYPES.items() if info.kind == "int"]


# -- encoding ---------------------------------------------------------------------------------


def test_word_and_byte_order_against_struct() -> None:
    value = 0x12345678
    assert encode(value, "uint32") == [0x1234, 0x5678]
    assert encode(value, "uint32", word_order="little") == [0x5678, 0x1234]
    assert encode(value, "uint32", byte_order="little") == [0x3412, 0x7856]
    assert encode(value, "uint32", word_order="little", byte_order="little") == [0x7856, 0x3412]
    regs = encode(-2.5, "float32")
    assert struct.unpack(">f", struct.pack(">HH", *regs))[0] == -2.5
    assert encode(-1, "int16") == [0xFFFF]
    assert encode("SunS", "string", size=3) == [0x5375, 0x6E53, 0]


def test_scale_and_sunspec_scale_factor() -> None:
    assert encode(57.3, "uint16", multiplier=0.1) == [573]
    assert encode(57.34, "uint16", multiplier=10.0**-1) == [573]
    assert encode(-45_678.0, "int16", multiplier=10.0**1) == [(-4568) & 0xFFFF]
    assert decode([573], "uint16", multiplier=0.1) == pytest.approx(57.3)
    assert decode([0xFFFF], "int16", multiplier=100.0) == -100.0


@given(data=st.data(), word_order=ORDERS, byte_order=ORDERS)
def test_integer_round_trip(data: st.DataObject, word_order: Any, byte_order: Any) -> None:
    ptype = data.draw(st.sampled_from(INT_TYPES))
    lo, hi = TYPES[ptype].int_range()
    value = data.draw(st.integers(lo, hi))
    regs = encode(value, ptype, word_order=word_order, byte_order=byte_order)
    assert len(regs) == TYPES[ptype].registers
    assert all(0 <= r <= 0xFFFF for r in regs)
    assert decode_raw(regs, ptype, word_order=word_order, byte_order=byte_order) == value


@given(
    value=st.floats(width=32, allow_nan=False),
    word_order=ORDERS,
    byte_order=ORDERS,
)
def test_float32_round_trip(value: float, word_order: Any, byte_order: Any) -> None:
    regs = encode(value, "float32", word_order=word_order, byte_order=byte_order)
    assert decode(regs, "float32", word_order=word_order, byte_order=byte_order) == value


@given(text=st.text(alphabet=st.characters(codec="ascii", exclude_characters="\0"), max_size=32))
def test_string_round_trip(text: str) -> None:
    regs = encode(text, "string", size=16)
    assert len(regs) == 16
    assert decode(regs, "string") == text


@given(
    value=st.one_of(
        st.floats(allow_nan=False, min_value=-1e30, max_value=1e30),
        st.sampled_from([math.inf, -math.inf]),
    ),
    ptype=st.sampled_from(INT_TYPES),
    multiplier=st.sampled_from([0.01, 0.1, 1.0, 10.0]),
)
def test_any_value_encodes_without_crashing(
    value: float, ptype: PointType, multiplier: float
) -> None:
    regs = encode(value, ptype, multiplier=multiplier, avoid_na=True)
    assert len(regs) == TYPES[ptype].registers
    assert all(0 <= r <= 0xFFFF for r in regs)


def test_out_of_range_saturates_and_nan_is_not_implemented() -> None:
    assert encode(250.0, "uint16", multiplier=0.1) == [2500]  # a faulty 250 % SoC still fits
    assert encode(1e9, "int16") == [0x7FFF]
    assert encode(-1e9, "int16") == [0x8000]
    assert encode(-1e9, "int16", avoid_na=True) == [0x8001]  # SunSpec: 0x8000 means "n/a"
    assert encode(1e9, "uint16", avoid_na=True) == [0xFFFE]
    assert encode(-5, "uint16") == [0]
    assert encode(math.nan, "int16") == [0x8000]
    assert encode(math.nan, "uint32") == [0xFFFF, 0xFFFF]
    assert encode(2**32 + 5, "acc32") == [0, 5]  # accumulators wrap like real counters
    assert encode(1e40, "float32") == encode(math.inf, "float32")


# -- built-in maps ----------------------------------------------------------------------------


def test_builtin_sunspec_chain() -> None:
    regmap = load_register_map("sunspec")
    chain = [(b.model, b.address, b.length) for b in regmap.blocks if b.model is not None]
    assert chain == [
        (1, 40002, 66),
        (103, 40070, 50),
        (124, 40122, 24),
        (802, 40148, 62),
        (0xFFFF, 40212, 0),
    ]
    storage = [p.short_name for p in regmap.points if p.block == "storage"][2:]
    assert storage == [
        "WChaMax", "WChaGra", "WDisChaGra", "StorCtl_Mod", "VAChaMax", "MinRsvPct", "ChaState",
        "StorAval", "InBatV", "ChaSt", "OutWRte", "InWRte", "InOutWRte_WinTms",
        "InOutWRte_RvrtTms", "InOutWRte_RmpTms", "ChaGriSet", "WChaMax_SF", "WChaDisChaGra_SF",
        "VAChaMax_SF", "MinRsvPct_SF", "ChaState_SF", "StorAval_SF", "InBatV_SF", "InOutWRte_SF",
    ]  # fmt: skip
    assert regmap.point("storage.ChaState").address == 40130
    assert regmap.point("battery.SoC").address == 40150 + 9
    assert regmap.point("battery.CtrlHb").address == 40150 + 17


def test_builtin_generic_map() -> None:
    regmap = load_register_map("generic")
    assert [regmap.point(n).address for n in ("soc", "power", "temperature")] == [0, 1, 2]
    assert regmap.point("setpoint").access == "rw"
    rows = regmap.describe()
    assert len(rows) == len(regmap.points)
    assert rows[0].name == "soc" and rows[0].scale == "x0.1" and rows[0].units == "%"
    assert "control power_setpoint" in regmap.describe_text()


def test_scale_factors_fit_the_nameplate() -> None:
    regmap = load_register_map("sunspec")
    small = regmap.resolve_sf(BatterySpec())
    assert small["inverter.W_SF"] == 1  # 100 kW = 100000 W -> 10000 x 10^1
    assert small["storage.ChaState_SF"] == -1
    big = regmap.resolve_sf(
        BatterySpec(capacity_kwh=8000, max_charge_kw=4000, max_discharge_kw=4000)
    )
    assert big["inverter.W_SF"] == 3  # 4 MW in an int16: 4000 x 10^3
    assert big["battery.WHRtg_SF"] == 3


def test_with_base_moves_every_point() -> None:
    regmap = load_register_map("sunspec").with_base(0)
    assert regmap.point("marker.SunS").address == 0
    assert regmap.point("storage.ID").address == 122
    assert regmap.blocks[-1].address == 212


# -- map validation ---------------------------------------------------------------------------


def _plain(*points: dict[str, Any], **top: Any) -> dict[str, Any]:
    return {"name": "test", "points": list(points), **top}


def _refused(data: dict[str, Any]) -> str:
    with pytest.raises(RegisterMapError) as info:
        build_register_map(data, source="test.yaml")
    return str(info.value)


def test_unknown_type_names_point_field_and_choices() -> None:
    msg = _refused(_plain({"name": "soc", "type": "int17", "binding": {"measure": "soc_pct"}}))
    assert "point soc" in msg and "'type'" in msg and "'uint16'" in msg and "float32" in msg


def test_unknown_quantity_lists_the_allowed_ones() -> None:
    msg = _refused(_plain({"name": "soc", "type": "uint16", "binding": {"measure": "soc"}}))
    assert "point soc" in msg and "binding.measure" in msg and "soc_pct" in msg


def test_unknown_field_lists_allowed_fields() -> None:
    msg = _refused(_plain({"name": "soc", "type": "uint16", "scael": 0.1}))
    assert "'scael'" in msg and "allowed fields" in msg and "scale" in msg


def test_writable_point_needs_a_control() -> None:
    msg = _refused(
        _plain({"name": "soc", "type": "uint16", "access": "rw", "binding": {"measure": "soc_pct"}})
    )
    assert "point soc" in msg and "control" in msg
    msg = _refused(_plain({"name": "sp", "type": "int16", "binding": {"control": "heartbeat"}}))
    assert "point sp" in msg and "access rw" in msg


def test_overlapping_addresses_refused() -> None:
    msg = _refused(
        _plain(
            {"name": "energy", "address": 10, "type": "uint32"},
            {"name": "soc", "address": 11, "type": "uint16"},
        )
    )
    assert "point 'soc'" in msg and "overlaps 'energy'" in msg


def test_units_must_match_the_quantity() -> None:
    msg = _refused(
        _plain({"name": "p", "type": "int16", "units": "V", "binding": {"measure": "power_kw"}})
    )
    assert "point 'p'" in msg and "'units'" in msg and "active power" in msg


def test_scale_and_sf_are_exclusive_and_sf_must_exist() -> None:
    msg = _refused(_plain({"name": "p", "type": "int16", "scale": 0.1, "sf": "W_SF"}))
    assert "either scale or sf" in msg
    msg = _refused(
        _plain({"name": "p", "type": "int16", "sf": "W_SF", "binding": {"measure": "power_kw"}})
    )
    assert "point 'p'" in msg and "'sf'" in msg and "W_SF" in msg


def test_state_binding_must_cover_every_status() -> None:
    msg = _refused(_plain({"name": "st", "type": "enum16", "binding": {"state": {"idle": 1}}}))
    assert "point st" in msg and "charging" in msg


def test_text_const_must_fit() -> None:
    too_long = {"name": "mn", "type": "string", "size": 2, "binding": {"const": "x" * 5}}
    msg = _refused(_plain(too_long))
    assert "point 'mn'" in msg and "longer than 4 bytes" in msg


def test_binding_takes_exactly_one_source() -> None:
    msg = _refused(
        _plain({"name": "p", "type": "int16", "binding": {"measure": "power_kw", "const": 1}})
    )
    assert "exactly one" in msg


def test_sunspec_declared_length_is_checked() -> None:
    text = """
name: broken
layout: sunspec
base_address: 40000
blocks:
  - name: marker
    points: [{name: SunS, type: uint32, binding: {const: 0x53756E53}}]
  - name: storage
    model: 124
    length: 24
    points: [{name: WChaMax, type: uint16, binding: {spec: max_charge_kw}, units: W}]
  - {name: end, model: 0xFFFF, length: 0}
"""
    with pytest.raises(RegisterMapError) as info:
        parse_register_map(text, source="broken.yaml")
    msg = str(info.value)
    assert "broken.yaml" in msg and "block 'storage'" in msg
    assert "L=24" in msg and "take 1 registers" in msg


def test_sunspec_needs_marker_and_end() -> None:
    text = """
name: broken
layout: sunspec
blocks:
  - {name: storage, model: 124, points: [{name: X, type: uint16}]}
"""
    with pytest.raises(RegisterMapError) as info:
        parse_register_map(text)
    msg = str(info.value)
    assert "SunS" in msg and "0xFFFF" in msg


def test_unknown_builtin_map_lists_the_choices() -> None:
    with pytest.raises(RegisterMapError, match="generic, sunspec"):
        load_register_map("sunspek")
