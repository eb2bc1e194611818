"""The Modbus source against the real hil Modbus server on loopback, and against a fake device.

Integration tests run ``hil.modbus_server.ModbusBatteryServer`` on 127.0.0.1 (port 0) with a
``SteppedClock``: simulated time moves only when a test advances it. Unit tests use
``FakeDevice``, an in-memory register image implementing ``RegisterIO``: it is how a scale
factor changing at runtime is tested (the simulator's scale factors are fixed for its life).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import pytest

from edge_agent.modbus_client import DeviceException, ModbusError, Table
from edge_agent.modbus_source import (
    ControlNotSupported,
    ModbusSource,
    ModbusSourceSettings,
    PresetError,
    load_preset,
    parse_preset,
)
from edge_agent.readings import BatteryController, BatteryReader, Quantity, Reading
from hil.clock import SteppedClock
from hil.faults import Fault, FaultKind
from hil.modbus_server import ModbusBatteryServer
from hil.model import BatterySpec
from hil.regmap import RegisterMap, build_register_map, load_register_map
from hil.sim import Simulator

Q = Quantity


def values(readings: Sequence[Reading]) -> dict[Quantity, float]:
    return {r.quantity: r.value for r in readings}


# -- fixtures: the simulator and its server -----------------------------------------------------


@pytest.fixture
def clock() -> SteppedClock:
    return SteppedClock()


@pytest.fixture
def sim(clock: SteppedClock) -> Simulator:
    return Simulator(BatterySpec(), clock, soc_pct=57.3)


ServeFn = Callable[..., AbstractAsyncContextManager[ModbusBatteryServer]]


@pytest.fixture
def serve(sim: Simulator) -> ServeFn:
    @asynccontextmanager
    async def run(
        regmap: RegisterMap | str, simulator: Simulator | None = None
    ) -> AsyncIterator[ModbusBatteryServer]:
        if isinstance(regmap, str):
            regmap = load_register_map(regmap)
        async with ModbusBatteryServer(simulator or sim, regmap, port=0) as srv:
            yield srv

    return run


def settings_for(srv: ModbusBatteryServer, preset: str, **kw: Any) -> ModbusSourceSettings:
    return ModbusSourceSettings(host="127.0.0.1", port=srv.port, preset=preset, **kw)


# -- the generic map --------------------------------------------------------------------------


@pytest.mark.integration
async def test_generic_values_match_the_battery(
    serve: ServeFn, sim: Simulator, clock: SteppedClock
) -> None:
    async with (
        serve("generic") as srv,
        ModbusSource(settings_for(srv, "generic"), clock=clock.now) as source,
    ):
        assert isinstance(source, BatteryReader) and isinstance(source, BatteryController)
        readings = await source.read()
        m = sim.measure()
        got = values(readings)
        assert got[Q.SOC_PCT] == pytest.approx(m.soc_pct, abs=0.05)
        assert got[Q.ACTIVE_POWER_KW] == 0.0
        assert got[Q.TEMPERATURE_C] == pytest.approx(m.temperature_c, abs=0.05)
        assert got[Q.GRID_FREQUENCY_HZ] == pytest.approx(m.frequency_hz, abs=0.005)
        assert got[Q.VOLTAGE_V] == pytest.approx(m.voltage_v, abs=0.05)
        assert got[Q.SOH_PCT] == pytest.approx(98.0)
        assert got[Q.SETPOINT_KW] == 0.0
        assert {r.source for r in readings} == {"modbus"}
        assert {r.timestamp for r in readings} == {clock.now()}
        # Batching: 0..8, 10..13 and 20..22 (the spec's registers, nothing across the gaps).
        assert [(b.address, b.count) for b in source.batches] == [(0, 9), (10, 4), (20, 3)]
        assert srv.stats.reads == 3
        assert source.revert_timeout_s == 60.0  # read from register 22


@pytest.mark.integration
async def test_generic_charge_and_discharge(
    serve: ServeFn, sim: Simulator, clock: SteppedClock
) -> None:
    async with (
        serve("generic") as srv,
        ModbusSource(settings_for(srv, "generic"), clock=clock.now) as source,
    ):
        await source.write_power_kw(-30.0)  # charge
        clock.advance(20)
        got = values(await source.read())
        assert got[Q.ACTIVE_POWER_KW] == pytest.approx(-30.0)
        assert got[Q.SETPOINT_KW] == pytest.approx(-30.0)
        assert got[Q.SOC_PCT] > 57.3
        soc_charged = sim.soc_pct

        await source.write_power_kw(40.0)  # discharge
        clock.advance(60)
        got = values(await source.read())
        assert got[Q.ACTIVE_POWER_KW] == pytest.approx(40.0)
        assert sim.soc_pct < soc_charged
        assert got[Q.SOC_PCT] == pytest.approx(sim.soc_pct, abs=0.05)
        assert sim.controller_heartbeat == 2  # one increment per write
        assert source.stats.writes == 2


@pytest.mark.integration
async def test_spec_register_settings_move_soc_power_temperature(
    serve: ServeFn, sim: Simulator, clock: SteppedClock
) -> None:
    moved = build_register_map(
        {
            "name": "moved",
            "points": [
                {"name": "soc", "address": 100, "type": "uint16", "scale": 0.1,
                 "binding": {"measure": "soc_pct"}},
                {"name": "temp", "address": 105, "type": "int16", "scale": 0.1,
                 "binding": {"measure": "temperature_c"}},
                {"name": "power", "address": 300, "type": "int16", "scale": 0.1,
                 "binding": {"measure": "power_kw"}},
                {"name": "setpoint", "address": 20, "type": "int16", "scale": 0.1,
                 "access": "rw", "binding": {"control": "power_setpoint"}},
            ],
        }
    )  # fmt: skip
    preset = parse_preset(
        {
            "name": "three",
            "points": [
                {"name": "soc", "address": 0, "type": "uint16", "scale": 0.1,
                 "units": "%", "quantity": "soc_pct"},
                {"name": "power", "address": 1, "type": "int16", "scale": 0.1,
                 "units": "kW", "quantity": "active_power_kw"},
                {"name": "temp", "address": 2, "type": "int16", "scale": 0.1,
                 "units": "C", "quantity": "temperature_c"},
            ],
        }
    )  # fmt: skip
    async with serve(moved) as srv:
        settings = settings_for(
            srv, "generic", soc_register=100, power_register=300, temp_register=105
        )
        async with ModbusSource(settings, preset=preset, clock=clock.now) as source:
            got = values(await source.read())
    assert got[Q.SOC_PCT] == pytest.approx(57.3)
    assert got[Q.TEMPERATURE_C] == pytest.approx(sim.measure().temperature_c, abs=0.05)
    assert got[Q.ACTIVE_POWER_KW] == 0.0
    with pytest.raises(PresetError, match="overlaps"):
        ModbusSource(ModbusSourceSettings(host="x", soc_register=1))  # onto the power register
    with pytest.raises(PresetError, match="plain maps"):
        ModbusSource(ModbusSourceSettings(host="x", preset="sunspec", soc_register=100))


# -- SunSpec ----------------------------------------------------------------------------------


@pytest.mark.integration
async def test_sunspec_values_and_storage_control(
    serve: ServeFn, sim: Simulator, clock: SteppedClock
) -> None:
    async with (
        serve("sunspec") as srv,
        ModbusSource(settings_for(srv, "sunspec"), clock=clock.now) as source,
    ):
        got = values(await source.read())
        m = sim.measure()
        assert got[Q.SOC_PCT] == pytest.approx(m.soc_pct, abs=0.05)
        assert got[Q.ACTIVE_POWER_KW] == 0.0
        assert got[Q.TEMPERATURE_C] == pytest.approx(m.temperature_c, abs=0.05)
        assert got[Q.GRID_FREQUENCY_HZ] == pytest.approx(m.frequency_hz, abs=0.005)
        assert got[Q.SETPOINT_KW] == 0.0
        assert got[Q.STATUS_CODE] == 6  # 124 ChaSt HOLDING
        assert source.revert_timeout_s == 60.0  # 124 InOutWRte_RvrtTms
        assert len(source.batches) <= 3  # three models, SFs inside, <= 125 registers each
        resolved = source.resolved_map
        assert resolved is not None
        for batch in source.batches:
            assert batch.count <= 125
            for p in batch.points:  # a value rides with its SF, in the same request
                sf = resolved.point(p.sf)
                assert sf is None or batch.address <= sf.address < batch.end

        await source.write_power_kw(50.0)
        clock.advance(30)
        got = values(await source.read())
        assert got[Q.ACTIVE_POWER_KW] == pytest.approx(50.0)
        assert got[Q.SETPOINT_KW] == pytest.approx(50.0)
        assert got[Q.STATUS_CODE] == 3  # DISCHARGING
        assert got[Q.SOC_PCT] < 57.3
        assert sim.controller_heartbeat == 1  # 802 CtrlHb

        await source.write_power_kw(-25.0)
        clock.advance(30)
        got = values(await source.read())
        assert got[Q.ACTIVE_POWER_KW] == pytest.approx(-25.0)
        assert got[Q.SETPOINT_KW] == pytest.approx(-25.0)
        assert got[Q.STATUS_CODE] == 4  # CHARGING
        assert sim.state.setpoint_kw == pytest.approx(-25.0)

        await source.write_power_kw(0.0)
        clock.advance(5)
        assert values(await source.read())[Q.ACTIVE_POWER_KW] == 0.0


@pytest.mark.integration
async def test_sunspec_at_base_0_and_a_big_battery_scale_factor(
    serve: ServeFn, clock: SteppedClock
) -> None:
    # 2 MW: the simulator fits W_SF = 2 (W reads 15000 x 10^2 at 1.5 MW).
    big = Simulator(
        BatterySpec(capacity_kwh=4000, max_charge_kw=2000, max_discharge_kw=2000), clock
    )
    async with serve(load_register_map("sunspec").with_base(0), big) as srv:
        async with ModbusSource(settings_for(srv, "sunspec"), clock=clock.now) as source:
            await source.read()
            discovery = source.resolved_map.discovery if source.resolved_map else None
            assert discovery is not None and discovery.base == 0
            await source.write_power_kw(1500.0)
            clock.advance(60)
            got = values(await source.read())
    assert got[Q.ACTIVE_POWER_KW] == pytest.approx(1500.0)
    assert got[Q.SETPOINT_KW] == pytest.approx(1500.0)
    assert big.state.setpoint_kw == pytest.approx(1500.0)


@pytest.mark.integration
async def test_sunspec_is_discovered_again_after_a_reconnect(
    serve: ServeFn, sim: Simulator, clock: SteppedClock
) -> None:
    async with (
        serve("sunspec") as srv,
        ModbusSource(
            settings_for(srv, "sunspec", backoff_initial_s=0.01, backoff_max_s=0.01),
            clock=clock.now,
        ) as source,
    ):
        await source.read()
        sim.inject(Fault(FaultKind.DROP_CONNECTIONS))
        await srv.check_faults()
        for _ in range(200):  # real time: the reconnect loop waits 0..10 ms
            try:
                got = values(await source.read())
                break
            except ModbusError:
                await asyncio.sleep(0.01)
        else:
            raise AssertionError("no reconnect")
    assert got[Q.SOC_PCT] == pytest.approx(57.3)
    assert source.stats.discoveries == 2  # the device may have come back with other models


@pytest.mark.integration
async def test_revert_timeout_is_written_once_per_connection(
    serve: ServeFn, sim: Simulator, clock: SteppedClock
) -> None:
    async with (
        serve("sunspec") as srv,
        ModbusSource(settings_for(srv, "sunspec", revert_timeout_s=30), clock=clock.now) as source,
    ):
        await source.write_power_kw(10.0)
        assert sim.spec.revert_timeout_s == 30
        assert source.revert_timeout_s == 30
        sim.set_revert_timeout_s(45)  # someone else changes it
        await source.write_power_kw(10.0)
        assert sim.spec.revert_timeout_s == 45  # not rewritten on every refresh
        await source.read()
        assert source.revert_timeout_s == 45  # the device's value wins once read


# -- faults -------------------------------------------------------------------------------------


@pytest.mark.integration
async def test_modbus_exception_is_counted_and_the_source_keeps_running(
    serve: ServeFn, sim: Simulator, clock: SteppedClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="edge_agent")
    async with (
        serve("sunspec") as srv,
        ModbusSource(settings_for(srv, "sunspec"), clock=clock.now) as source,
    ):
        await source.read()
        sim.inject(Fault(FaultKind.MODBUS_EXCEPTION, params={"code": 6}))
        caplog.clear()
        for _ in range(3):
            with pytest.raises(DeviceException) as failed:
                await source.read()
            assert failed.value.code == 6 and "device busy" in str(failed.value)
        with pytest.raises(DeviceException):
            await source.write_power_kw(20.0)
        assert source.stats.device_exceptions[6] >= 3
        assert source.stats.poll_failures == 3 and source.stats.write_failures == 1
        warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
        per_batch = len(source.batches)
        assert len([r for r in warnings if "exception 6" in r.getMessage()]) <= per_batch + 1

        sim.faults.clear(FaultKind.MODBUS_EXCEPTION)
        got = values(await source.read())
        assert got[Q.SOC_PCT] == pytest.approx(sim.soc_pct, abs=0.05)
        assert any("reads again" in r.getMessage() for r in caplog.records)
        await source.write_power_kw(20.0)
        assert sim.state.setpoint_kw == pytest.approx(20.0)


@pytest.mark.integration
async def test_out_of_range_soc_is_dropped_counted_and_logged_once(
    serve: ServeFn, sim: Simulator, clock: SteppedClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="edge_agent")
    async with (
        serve("generic") as srv,
        ModbusSource(settings_for(srv, "generic"), clock=clock.now) as source,
    ):
        sim.inject(Fault(FaultKind.OUT_OF_RANGE, params={"quantity": "soc_pct", "value": 250.0}))
        for _ in range(3):
            got = values(await source.read())
            assert Q.SOC_PCT not in got
            assert Q.ACTIVE_POWER_KW in got  # everything else still flows
        assert source.stats.implausible["soc"] == 3
        dropped = [r for r in caplog.records if "dropped soc" in r.getMessage()]
        assert len(dropped) == 1 and "250" in dropped[0].getMessage()
        sim.faults.clear(FaultKind.OUT_OF_RANGE)
        assert Q.SOC_PCT in values(await source.read())
        assert any("soc is plausible again" in r.getMessage() for r in caplog.records)


@pytest.mark.integration
async def test_out_of_range_on_sunspec_tries_the_fallback_then_drops(
    serve: ServeFn, sim: Simulator, clock: SteppedClock
) -> None:
    async with (
        serve("sunspec") as srv,
        ModbusSource(settings_for(srv, "sunspec"), clock=clock.now) as source,
    ):
        sim.inject(Fault(FaultKind.OUT_OF_RANGE, params={"quantity": "soc_pct", "value": 250.0}))
        got = values(await source.read())
    assert Q.SOC_PCT not in got
    assert source.stats.implausible["battery.SoC"] == 1  # 802 SoC
    assert source.stats.implausible["storage.ChaState"] == 1  # 124 fallback, also 250 %


# -- vendor presets -----------------------------------------------------------------------------


def sma_mirror() -> RegisterMap:
    """The simulator dressed up with SMA's registers (an independent encoder for the preset)."""
    return build_register_map(
        {
            "name": "sma-mirror",
            "unit_id": 3,
            "points": [
                {"name": "health", "address": 30201, "type": "uint32",
                 "binding": {"state": {"fault": 35, "idle": 307, "charging": 307,
                                       "discharging": 307}}},
                {"name": "power", "address": 30775, "type": "int32", "units": "W",
                 "binding": {"measure": "power_kw"}},
                {"name": "hz", "address": 30803, "type": "uint32", "scale": 0.01,
                 "binding": {"measure": "frequency_hz"}},
                {"name": "soc", "address": 30845, "type": "uint32",
                 "binding": {"measure": "soc_pct"}},
                {"name": "temp", "address": 30849, "type": "int32", "scale": 0.1,
                 "binding": {"measure": "temperature_c"}},
                {"name": "volt", "address": 30851, "type": "uint32", "scale": 0.01,
                 "binding": {"measure": "voltage_v"}},
                {"name": "wspt", "address": 40149, "type": "int32", "units": "W",
                 "access": "rw", "binding": {"control": "power_setpoint"}},
                {"name": "ctl", "address": 40151, "type": "uint32", "access": "rw",
                 "initial": 803, "binding": {"control": "store"}},
            ],
        }
    )  # fmt: skip


@pytest.mark.integration
async def test_sma_preset_against_a_mirror_of_its_registers(
    serve: ServeFn, sim: Simulator, clock: SteppedClock
) -> None:
    async with (
        serve(sma_mirror()) as srv,
        ModbusSource(settings_for(srv, "sma"), clock=clock.now) as source,
    ):
        assert source.unit_id == 3
        got = values(await source.read())
        assert got[Q.SOC_PCT] == 57.0  # SMA reports whole percent
        assert got[Q.GRID_FREQUENCY_HZ] == pytest.approx(sim.measure().frequency_hz, abs=0.005)
        assert got[Q.VOLTAGE_V] == pytest.approx(sim.measure().voltage_v, abs=0.005)
        assert got[Q.STATUS_CODE] == 307
        writes_before = srv.stats.writes
        await source.write_power_kw(-20.0)
        assert srv.stats.writes == writes_before + 1  # 40149 + 40151 in one request
        assert sim.state.setpoint_kw == pytest.approx(-20.0)
        regs = await source.io.read_registers("holding", 40151, 2, unit_id=3)
        assert regs == [0, 802]
        clock.advance(10)
        assert values(await source.read())[Q.ACTIVE_POWER_KW] == pytest.approx(-20.0)


class FakeDevice:
    """An in-memory device: ``RegisterIO`` over a dict of (unit, table, address) -> register."""

    def __init__(self, registers: Mapping[int, int] | None = None, unit_id: int = 1) -> None:
        self.unit_id = unit_id
        self.holding: dict[tuple[int, int], int] = {
            (unit_id, a): v for a, v in (registers or {}).items()
        }
        self.reads: list[tuple[int, int]] = []
        self.writes: list[tuple[int, list[int]]] = []
        self.generation = 1
        self.max_points: int | None = None  # refuse reads wider than this many registers

    def set(self, address: int, regs: Sequence[int], unit_id: int | None = None) -> None:
        unit = self.unit_id if unit_id is None else unit_id
        for i, r in enumerate(regs):
            self.holding[(unit, address + i)] = r & 0xFFFF

    async def read_registers(
        self, table: Table, address: int, count: int, *, unit_id: int
    ) -> list[int]:
        self.reads.append((address, count))
        if self.max_points is not None and count > self.max_points:
            raise DeviceException(2, f"reading {table} {address}+{count}", unit_id=unit_id)
        keys = [(unit_id, a) for a in range(address, address + count)]
        if any(k not in self.holding for k in keys):
            raise DeviceException(2, f"reading {table} {address}+{count}", unit_id=unit_id)
        return [self.holding[k] for k in keys]

    async def write_registers(self, address: int, values: Sequence[int], *, unit_id: int) -> None:
        self.writes.append((address, list(values)))
        self.set(address, values, unit_id)


def u16(value: int) -> int:
    return value & 0xFFFF


def sunspec_device(models: Mapping[int, tuple[int, Mapping[int, int]]]) -> FakeDevice:
    """A SunSpec image at 40000: model id -> (L, {offset: register}); unset body reads 0x8000."""
    dev = FakeDevice()
    dev.set(40000, [0x5375, 0x6E53])
    address = 40002
    for model_id, (length, body) in models.items():
        dev.set(address, [model_id, length])
        dev.set(address + 2, [body.get(i, 0x8000) for i in range(length)])
        address += 2 + length
    dev.set(address, [0xFFFF, 0])
    return dev


STORAGE_124 = {
    0: 10_000,
    3: 0,
    6: 500,
    9: 6,
    10: 0,
    11: 0,
    13: 120,
    16: 0,
    20: u16(-1),
    23: u16(-2),
}


async def test_a_scale_factor_changed_at_runtime_is_read_with_its_value() -> None:
    # Model 103: W at 12, W_SF at 13. The device rescales between two polls (Fronius does).
    dev = sunspec_device({1: (66, {}), 103: (50, {12: 500, 13: 1}), 124: (24, STORAGE_124)})
    source = ModbusSource(ModbusSourceSettings(host="fake", preset="sunspec"), io=dev)
    assert values(await source.read())[Q.ACTIVE_POWER_KW] == pytest.approx(5.0)  # 500 x 10 W
    w, w_sf = 40072 + 12, 40072 + 13  # model 103's body: 40002 + 2 + 66 + 2
    dev.set(w, [u16(-12_345)])
    dev.set(w_sf, [u16(-1)])  # -1234.5 W
    dev.reads.clear()
    assert values(await source.read())[Q.ACTIVE_POWER_KW] == pytest.approx(-1.2345)
    # Both registers came from one request: a rescale can never pair a new value with an old SF.
    assert any(a <= w and w_sf < a + n for a, n in dev.reads)
    dev.set(w_sf, [0x8000])  # SF "not implemented": the value cannot be known
    assert Q.ACTIVE_POWER_KW not in values(await source.read())
    assert source.stats.not_implemented["inverter.W"] == 1


async def test_fronius_window_strategy_pins_both_limits() -> None:
    dev = sunspec_device({1: (66, {}), 103: (50, {}), 124: (24, STORAGE_124)})
    source = ModbusSource(ModbusSourceSettings(host="fake", preset="fronius"), io=dev)
    base = 40124  # body of model 124: 40070 (103's header) + 2 + 50 + 2
    await source.write_power_kw(5.0)  # 50 % of WChaMax 10 kW, InOutWRte_SF -2
    assert dev.writes[0] == (base + 10, [5000, u16(-5000)])  # OutWRte, InWRte in one write
    assert dev.writes[1] == (base + 3, [0b11])  # StorCtl_Mod: both limits
    dev.writes.clear()
    await source.write_power_kw(-2.0)
    assert dev.writes[0] == (base + 10, [u16(-2000), 2000])
    got = values(await source.read())
    assert got[Q.SETPOINT_KW] == pytest.approx(-2.0)
    assert got[Q.SOC_PCT] == pytest.approx(50.0)  # 124 ChaState (no 802 on this device)
    await source.write_power_kw(25.0)  # beyond the rating: clipped to 100 %
    assert dev.writes[-2] == (base + 10, [10_000, u16(-10_000)])


async def test_victron_preset_signs_and_units() -> None:
    dev = FakeDevice(unit_id=100)
    dev.set(840, [5123, 0, u16(-1500), 81, 2])  # 512.3 V, -, -1500 W (discharging), 81 %, 2
    dev.set(2700, [0])
    source = ModbusSource(ModbusSourceSettings(host="fake", preset="victron_gx"), io=dev)
    got = values(await source.read())
    assert got[Q.ACTIVE_POWER_KW] == pytest.approx(1.5)  # Victron + = charging; ours + = discharge
    assert got[Q.SOC_PCT] == 81 and got[Q.VOLTAGE_V] == pytest.approx(512.3)
    assert got[Q.STATUS_CODE] == 2
    await source.write_power_kw(2.0)  # discharge 2 kW = export 2 kW = grid setpoint -2000 W
    assert dev.writes == [(2700, [u16(-2000)])]
    assert source.revert_timeout_s is None  # 2700 never reverts: the executor must know


async def test_a_device_refusing_wide_reads_is_read_point_by_point(
    caplog: pytest.LogCaptureFixture,
) -> None:
    dev = FakeDevice({a: 100 + a for a in range(0, 23)})
    dev.max_points = 2
    source = ModbusSource(ModbusSourceSettings(host="fake"), io=dev)
    first = values(await source.read())
    assert first[Q.SOC_PCT] == pytest.approx(10.0)
    assert first[Q.ACTIVE_POWER_KW] == pytest.approx(10.1)
    dev.reads.clear()
    assert values(await source.read()) == first
    assert max(n for _, n in dev.reads) <= 2  # no more wide reads after the first refusal
    assert len([r for r in caplog.records if "one by one" in r.getMessage()]) == 3  # once each


async def test_control_needs_a_way_to_command() -> None:
    preset = parse_preset(
        {"name": "ro", "points": [{"name": "soc", "address": 0, "type": "uint16",
                                   "quantity": "soc_pct"}]}
    )  # fmt: skip
    source = ModbusSource(ModbusSourceSettings(host="fake"), preset=preset, io=FakeDevice({0: 50}))
    with pytest.raises(ControlNotSupported):
        await source.write_power_kw(1.0)
    with pytest.raises(ValueError, match="finite"):
        await source.write_power_kw(float("nan"))
    assert issubclass(ControlNotSupported, ModbusError)


def test_presets_load_and_bad_ones_are_refused_with_the_reason() -> None:
    for name in ("generic", "sunspec", "fronius", "sma", "victron_gx"):
        assert load_preset(name).name == name
    assert load_preset("fronius").control.strategy == "window"
    assert load_preset("fronius").models == load_preset("sunspec").models  # extends
    with pytest.raises(PresetError, match="Powerwall"):
        load_preset("tesla_powerwall")
    bad: dict[str, Any] = {
        "name": "bad",
        "points": [
            {"name": "soc", "address": 0, "type": "uint16", "units": "W", "quantity": "soc_pct"}
        ],
    }
    with pytest.raises(PresetError, match=r"points\.0.*soc_pct"):
        parse_preset(bad)
    bad["points"] = [{"name": "sp", "address": 0, "type": "int16"}]
    bad["control"] = {"mode": "setpoint", "setpoint": "sp"}
    with pytest.raises(PresetError, match="not writable"):
        parse_preset(bad)
    bad["points"] = [{"name": "w", "address": 0, "type": "int16", "sf": "W_SF"}]
    bad["control"] = {}
    with pytest.raises(PresetError, match="sunssf"):
        parse_preset(bad)
    with pytest.raises(ValueError, match="backoff"):
        ModbusSourceSettings(host="x", backoff_initial_s=10, backoff_max_s=1)
