"""The simulated battery over real Modbus TCP on loopback, read with an independent decoder.

Every test talks to ``ModbusBatteryServer`` through pymodbus' ``AsyncModbusTcpClient`` and
decodes the raw registers with ``struct`` and SunSpec offsets written out here, not with
``hil.regmap``. Time is a ``SteppedClock``: nothing sleeps to let simulated time pass.
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusIOException
from pymodbus.pdu import ModbusPDU

from hil.clock import SteppedClock
from hil.faults import Fault, FaultKind
from hil.modbus_server import ModbusBatteryServer
from hil.model import BatterySpec
from hil.regmap import RegisterMap, build_register_map, load_register_map
from hil.sim import Simulator

pytestmark = pytest.mark.integration

UNIT = 1
SUNS = (0x5375, 0x6E53)
# SunSpec body offsets (registers after ID/L), from the SunSpec models 103, 124 and 802.
M103 = {"W": 12, "W_SF": 13, "Hz": 14, "Hz_SF": 15, "TmpCab": 31, "Tmp_SF": 35, "St": 36}
M124 = {
    "WChaMax": 0,
    "StorCtl_Mod": 3,
    "ChaState": 6,
    "ChaSt": 9,
    "OutWRte": 10,
    "InWRte": 11,
    "InOutWRte_RvrtTms": 13,
    "WChaMax_SF": 16,
    "ChaState_SF": 20,
    "InOutWRte_SF": 23,
}
M802 = {"SoC": 9, "CtrlHb": 17, "Evt1": 24, "SoC_SF": 54}
CHAST_CHARGING, CHAST_DISCHARGING = 4, 3
STORCTL_CHARGE, STORCTL_DISCHARGE = 0b01, 0b10


# -- independent decoding ---------------------------------------------------------------------


def s16(raw: int) -> int:
    return int(struct.unpack(">h", struct.pack(">H", raw))[0])


def u32(hi: int, lo: int) -> int:
    return int(struct.unpack(">I", struct.pack(">HH", hi, lo))[0])


def text(regs: list[int]) -> str:
    return struct.pack(f">{len(regs)}H", *regs).rstrip(b"\0").decode()


def u16_of(value: int) -> int:
    """A signed value as the unsigned register a client writes."""
    return int(struct.unpack(">H", struct.pack(">h", value))[0])


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture
def hil_clock() -> SteppedClock:
    return SteppedClock()


@pytest.fixture
def hil_sim(hil_clock: SteppedClock) -> Simulator:
    return Simulator(BatterySpec(), hil_clock, soc_pct=57.3)


@pytest.fixture
async def sunspec_server(hil_sim: Simulator) -> AsyncIterator[ModbusBatteryServer]:
    async with ModbusBatteryServer(hil_sim, load_register_map("sunspec"), port=0) as srv:
        yield srv


@pytest.fixture
async def generic_server(hil_sim: Simulator) -> AsyncIterator[ModbusBatteryServer]:
    async with ModbusBatteryServer(hil_sim, load_register_map("generic"), port=0) as srv:
        yield srv


ClientFactory = Callable[..., Awaitable[AsyncModbusTcpClient]]


@pytest.fixture
async def modbus_client() -> AsyncIterator[ClientFactory]:
    """connect(port, timeout=1.0): a connected client that does not retry or reconnect."""
    clients: list[AsyncModbusTcpClient] = []

    async def connect(port: int, timeout: float = 1.0) -> AsyncModbusTcpClient:
        client = AsyncModbusTcpClient(
            "127.0.0.1", port=port, timeout=timeout, retries=0, reconnect_delay=0
        )
        clients.append(client)
        assert await client.connect(), f"cannot connect to 127.0.0.1:{port}"
        return client

    yield connect
    for client in clients:
        client.close()
    await asyncio.sleep(0)


async def read(client: AsyncModbusTcpClient, address: int, count: int) -> list[int]:
    response = await client.read_holding_registers(address, count=count, device_id=UNIT)
    assert not response.isError(), f"read {address}+{count}: {response}"
    return list(response.registers)


async def write(client: AsyncModbusTcpClient, address: int, *values: int) -> ModbusPDU:
    if len(values) == 1:
        return await client.write_register(address, values[0], device_id=UNIT)
    return await client.write_registers(address, list(values), device_id=UNIT)


async def until(condition: Callable[[], bool], what: str, timeout_s: float = 2.0) -> None:
    """Wait for network I/O (not simulated time) to make ``condition`` true."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def discover(client: AsyncModbusTcpClient) -> Models:
    """Walk the SunSpec chain like a real client: model id -> (body address, length)."""
    assert tuple(await read(client, 40000, 2)) == SUNS
    models: Models = {}
    address = 40002
    for _ in range(50):
        model_id, length = await read(client, address, 2)
        if model_id == 0xFFFF:
            assert length == 0
            return models
        models[model_id] = (address + 2, length)
        address += 2 + length
    raise AssertionError("no end marker")


Models = dict[int, tuple[int, int]]


async def model(client: AsyncModbusTcpClient, models: Models, mid: int) -> list[int]:
    address, length = models[mid]
    return await read(client, address, length)


def scaled(body: list[int], value: int, sf: int, signed: bool = False) -> float:
    raw = s16(body[value]) if signed else body[value]
    return float(raw * 10.0 ** s16(body[sf]))


# -- SunSpec reading --------------------------------------------------------------------------


async def test_sunspec_discovery_walks_the_model_chain(
    sunspec_server: ModbusBatteryServer, modbus_client: ClientFactory
) -> None:
    client = await modbus_client(sunspec_server.port)
    models = await discover(client)
    assert models == {1: (40004, 66), 103: (40072, 50), 124: (40124, 24), 802: (40150, 62)}
    common = await model(client, models, 1)
    assert text(common[0:16]) == "Phoenyra"
    assert text(common[32:40]) == "hil"
    assert common[64] == UNIT  # DA


async def test_sunspec_values_match_the_battery(
    sunspec_server: ModbusBatteryServer, modbus_client: ClientFactory, hil_sim: Simulator
) -> None:
    client = await modbus_client(sunspec_server.port)
    models = await discover(client)
    storage = await model(client, models, 124)
    assert storage[M124["ChaState"]] == 573 and s16(storage[M124["ChaState_SF"]]) == -1
    assert scaled(storage, M124["ChaState"], M124["ChaState_SF"]) == pytest.approx(
        hil_sim.soc_pct, abs=0.05
    )
    assert scaled(storage, M124["WChaMax"], M124["WChaMax_SF"]) == 100_000.0  # W
    assert storage[M124["InOutWRte_RvrtTms"]] == 60
    battery = await model(client, models, 802)
    assert scaled(battery, M802["SoC"], M802["SoC_SF"]) == pytest.approx(hil_sim.soc_pct, abs=0.05)
    inverter = await model(client, models, 103)
    m = hil_sim.measure()
    assert scaled(inverter, M103["W"], M103["W_SF"], signed=True) == 0.0
    assert scaled(inverter, M103["Hz"], M103["Hz_SF"]) == pytest.approx(m.frequency_hz, abs=0.005)
    assert scaled(inverter, M103["TmpCab"], M103["Tmp_SF"], signed=True) == pytest.approx(
        m.temperature_c, abs=0.05
    )


async def test_discharge_command_drives_the_physics(
    sunspec_server: ModbusBatteryServer,
    modbus_client: ClientFactory,
    hil_sim: Simulator,
    hil_clock: SteppedClock,
) -> None:
    client = await modbus_client(sunspec_server.port)
    base, _ = (await discover(client))[124]
    rte_sf = s16((await read(client, base + M124["InOutWRte_SF"], 1))[0])
    assert not (await write(client, base + M124["OutWRte"], round(50 / 10**rte_sf))).isError()
    assert not (await write(client, base + M124["StorCtl_Mod"], STORCTL_DISCHARGE)).isError()
    soc_before = hil_sim.soc_pct

    hil_clock.advance(30)
    inverter_base, _ = (await discover(client))[103]
    inverter = await read(client, inverter_base, 50)
    assert scaled(inverter, M103["W"], M103["W_SF"], signed=True) == 50_000.0  # 50 % of WChaMax
    storage = await read(client, base, 24)
    assert storage[M124["ChaSt"]] == CHAST_DISCHARGING
    assert s16(storage[M124["OutWRte"]]) * 10.0**rte_sf == 50.0  # the control reads back
    soc_after = scaled(storage, M124["ChaState"], M124["ChaState_SF"])
    assert soc_after < soc_before
    # ~29 s at 50 kW after a 1 s ramp: 0.41 kWh / 0.95 out of 200 kWh
    expected_drop = (50 * 29 + 25 * 1) / 3600 / 0.95 / 200 * 100
    assert soc_before - soc_after == pytest.approx(expected_drop, abs=0.06)
    assert soc_after == pytest.approx(hil_sim.soc_pct, abs=0.05)

    hil_clock.advance(30)
    later = await read(client, base, 24)
    assert later[M124["ChaState"]] < storage[M124["ChaState"]]  # still falling, consistently


async def test_charge_command_in_one_write_multiple(
    sunspec_server: ModbusBatteryServer,
    modbus_client: ClientFactory,
    hil_sim: Simulator,
    hil_clock: SteppedClock,
) -> None:
    client = await modbus_client(sunspec_server.port)
    base, _ = (await discover(client))[124]
    # OutWRte, InWRte, WinTms, RvrtTms, RmpTms in one request, as many EMS controllers do.
    assert not (await write(client, base + M124["OutWRte"], 0, 2500, 0, 120, 0)).isError()
    assert not (await write(client, base + M124["StorCtl_Mod"], STORCTL_CHARGE)).isError()
    assert hil_sim.spec.revert_timeout_s == 120
    soc_before = hil_sim.soc_pct
    hil_clock.advance(10)
    battery_base, _ = (await discover(client))[802]
    battery = await read(client, battery_base, 62)
    assert s16(battery[45]) * 10.0 ** s16(battery[61]) == -25_000.0  # 802 W, W_SF
    assert battery[14] == CHAST_CHARGING
    assert scaled(battery, M802["SoC"], M802["SoC_SF"]) > soc_before
    assert hil_sim.state.setpoint_kw == -25.0


async def test_revert_timeout_falls_back_to_zero(
    sunspec_server: ModbusBatteryServer,
    modbus_client: ClientFactory,
    hil_sim: Simulator,
    hil_clock: SteppedClock,
) -> None:
    client = await modbus_client(sunspec_server.port)
    base, _ = (await discover(client))[124]
    await write(client, base + M124["OutWRte"], 5000)
    await write(client, base + M124["StorCtl_Mod"], STORCTL_DISCHARGE)
    hil_clock.advance(59)
    assert hil_sim.measure().power_kw == 50.0
    hil_clock.advance(2)  # 61 s without a refresh: past InOutWRte_RvrtTms = 60
    battery_base, _ = (await discover(client))[802]
    battery = await read(client, battery_base, 62)
    assert battery[45] == 0  # W
    assert u32(*battery[24:26]) & 1  # Evt1 bit 0: controller communication lost

    # The timeout is writable; a refresh restarts the timer.
    await write(client, base + M124["InOutWRte_RvrtTms"], 10)
    assert hil_sim.spec.revert_timeout_s == 10
    await write(client, base + M124["StorCtl_Mod"], STORCTL_DISCHARGE)
    hil_clock.advance(9)
    assert hil_sim.measure().power_kw == 50.0
    await write(client, base + M124["OutWRte"], 5000)  # refresh
    hil_clock.advance(9)
    assert hil_sim.measure().power_kw == 50.0
    hil_clock.advance(2)
    assert hil_sim.measure().power_kw == 0.0


async def test_controller_heartbeat(
    sunspec_server: ModbusBatteryServer, modbus_client: ClientFactory, hil_sim: Simulator
) -> None:
    client = await modbus_client(sunspec_server.port)
    base, _ = (await discover(client))[802]
    assert not (await write(client, base + M802["CtrlHb"], 4711)).isError()
    assert hil_sim.controller_heartbeat == 4711
    assert (await read(client, base + M802["CtrlHb"], 1)) == [4711]


async def test_read_only_and_illegal_writes_are_refused(
    sunspec_server: ModbusBatteryServer, modbus_client: ClientFactory, hil_sim: Simulator
) -> None:
    client = await modbus_client(sunspec_server.port)
    base, _ = (await discover(client))[124]
    refused = await write(client, base + M124["WChaMax"], 1)
    assert refused.isError() and refused.exception_code == 2  # read-only
    refused = await write(client, base - 2, 125)  # the model ID
    assert refused.isError() and refused.exception_code == 2
    refused = await write(client, base + M124["OutWRte"], 10_100)  # 101 %
    assert refused.isError() and refused.exception_code == 3
    refused = await write(client, base + M124["InWRte"], u16_of(-10_100))  # -101 %
    assert refused.isError() and refused.exception_code == 3
    refused = await write(client, base + M124["StorCtl_Mod"], 0b100)
    assert refused.isError() and refused.exception_code == 3
    # A write-multiple with one bad value applies nothing.
    refused = await write(client, base + M124["OutWRte"], 5000, 20_000)
    assert refused.isError() and refused.exception_code == 3
    assert (await read(client, base + M124["OutWRte"], 1)) == [0]
    assert hil_sim.state.setpoint_written_at is None


async def test_wrong_unit_id_answers_like_a_gateway(
    sunspec_server: ModbusBatteryServer, modbus_client: ClientFactory
) -> None:
    client = await modbus_client(sunspec_server.port)
    response = await client.read_holding_registers(40000, count=2, device_id=7)
    assert response.isError() and response.exception_code == 0x0B
    response = await client.read_coils(0, count=1, device_id=UNIT)
    assert response.isError()


# -- generic map ------------------------------------------------------------------------------


async def test_generic_map_reads_and_setpoint(
    generic_server: ModbusBatteryServer,
    modbus_client: ClientFactory,
    hil_sim: Simulator,
    hil_clock: SteppedClock,
) -> None:
    client = await modbus_client(generic_server.port)
    regs = await read(client, 0, 9)
    assert regs[0] == 573  # SoC x0.1 %
    assert s16(regs[1]) == 0  # power x0.1 kW
    assert s16(regs[2]) * 0.1 == pytest.approx(hil_sim.measure().temperature_c, abs=0.05)
    assert regs[3] * 0.01 == pytest.approx(hil_sim.measure().frequency_hz, abs=0.005)
    assert regs[4] == 0  # idle

    assert not (await write(client, 20, u16_of(-300))).isError()  # charge 30.0 kW
    hil_clock.advance(20)
    regs = await read(client, 0, 9)
    assert s16(regs[1]) == -300
    assert regs[4] == 1  # charging
    assert regs[0] > 573
    assert s16((await read(client, 20, 1))[0]) == -300

    refused = await write(client, 20, 1001 + 1000)  # +200.1 kW: above the 100 kW rating
    assert refused.isError() and refused.exception_code == 3
    refused = await write(client, 0, 500)
    assert refused.isError() and refused.exception_code == 2
    assert hil_sim.state.setpoint_kw == -30.0


@pytest.fixture
def orders_map() -> RegisterMap:
    """A device with a little-endian-word int32 setpoint in W and an input-register table."""
    return build_register_map(
        {
            "name": "orders",
            "points": [
                {"name": "power_w", "address": 100, "table": "input", "type": "int32",
                 "word_order": "little", "units": "W", "binding": {"measure": "power_kw"}},
                {"name": "soc", "address": 102, "table": "input", "type": "float32",
                 "binding": {"measure": "soc_pct"}},
                {"name": "setpoint_w", "address": 200, "type": "int32", "word_order": "little",
                 "units": "W", "access": "rw", "binding": {"control": "power_setpoint"}},
            ],
        }
    )  # fmt: skip


async def test_word_order_input_table_and_partial_writes(
    hil_sim: Simulator,
    hil_clock: SteppedClock,
    orders_map: RegisterMap,
    modbus_client: ClientFactory,
) -> None:
    async with ModbusBatteryServer(hil_sim, orders_map, port=0) as srv:
        client = await modbus_client(srv.port)
        lo, hi = struct.unpack(">2H", struct.pack(">i", -42_000))[::-1]  # low word first
        assert not (await write(client, 200, lo, hi)).isError()
        hil_clock.advance(5)
        response = await client.read_input_registers(100, count=4, device_id=UNIT)
        regs = response.registers
        assert struct.unpack(">i", struct.pack(">HH", regs[1], regs[0]))[0] == -42_000
        soc = struct.unpack(">f", struct.pack(">HH", regs[2], regs[3]))[0]
        assert soc == pytest.approx(hil_sim.soc_pct, abs=1e-4)
        # The input table is not the holding table.
        response = await client.read_holding_registers(100, count=2, device_id=UNIT)
        assert response.isError() and response.exception_code == 2
        # Half of an int32 is refused.
        refused = await write(client, 200, 0)
        assert refused.isError() and refused.exception_code == 2
        assert hil_sim.state.setpoint_kw == -42.0


# -- faults -----------------------------------------------------------------------------------


async def test_modbus_exception_fault(
    sunspec_server: ModbusBatteryServer, modbus_client: ClientFactory, hil_sim: Simulator
) -> None:
    client = await modbus_client(sunspec_server.port)
    hil_sim.inject(Fault(FaultKind.MODBUS_EXCEPTION, params={"code": 6}))
    response = await client.read_holding_registers(40000, count=2, device_id=UNIT)
    assert response.isError() and response.exception_code == 6  # device busy
    response = await write(client, 40124 + M124["StorCtl_Mod"], STORCTL_DISCHARGE)
    assert response.isError() and response.exception_code == 6
    assert hil_sim.state.setpoint_written_at is None  # not applied
    hil_sim.faults.clear(FaultKind.MODBUS_EXCEPTION)
    assert tuple(await read(client, 40000, 2)) == SUNS
    assert sunspec_server.stats.exceptions == 2


async def test_no_response_fault_times_out_the_client(
    sunspec_server: ModbusBatteryServer, modbus_client: ClientFactory, hil_sim: Simulator
) -> None:
    client = await modbus_client(sunspec_server.port, timeout=0.3)
    hil_sim.inject(Fault(FaultKind.NO_RESPONSE))
    started = time.monotonic()
    with pytest.raises(ModbusIOException):
        await client.read_holding_registers(40000, count=2, device_id=UNIT)
    assert 0.25 < time.monotonic() - started < 2.0
    with pytest.raises(ModbusIOException):  # a write is neither answered nor applied
        await write(client, 40124 + M124["StorCtl_Mod"], STORCTL_DISCHARGE)
    assert hil_sim.state.setpoint_written_at is None
    with pytest.raises(ModbusIOException):  # even a request for an unmapped address
        await client.read_holding_registers(0, count=1, device_id=UNIT)
    assert sunspec_server.stats.unanswered == 3
    hil_sim.faults.clear(FaultKind.NO_RESPONSE)
    assert tuple(await read(client, 40000, 2)) == SUNS


async def test_shutdown_with_a_request_left_unanswered(
    hil_sim: Simulator, modbus_client: ClientFactory
) -> None:
    async with ModbusBatteryServer(hil_sim, load_register_map("generic"), port=0) as srv:
        client = await modbus_client(srv.port, timeout=0.5)
        hil_sim.inject(Fault(FaultKind.NO_RESPONSE))
        pending = asyncio.ensure_future(client.read_holding_registers(0, count=1, device_id=UNIT))
        await until(lambda: srv.stats.unanswered == 1, "the request to be swallowed")
        started = time.monotonic()
    assert time.monotonic() - started < 1.0  # shutdown is not held up by the silent request
    with pytest.raises(Exception):  # noqa: B017 - connection lost or timeout, both fine
        await pending


async def test_drop_connections_fault_closes_once(
    sunspec_server: ModbusBatteryServer, modbus_client: ClientFactory, hil_sim: Simulator
) -> None:
    client = await modbus_client(sunspec_server.port)
    other = await modbus_client(sunspec_server.port)
    await read(client, 40000, 2)
    await until(lambda: sunspec_server.open_connections == 2, "two connections")
    hil_sim.inject(Fault(FaultKind.DROP_CONNECTIONS))
    await sunspec_server.check_faults()
    await until(lambda: not client.connected and not other.connected, "the connections to close")
    assert sunspec_server.stats.connections_dropped == 2
    # The fault acts once: reconnecting works while it is still injected.
    assert await client.connect()
    await sunspec_server.check_faults()
    assert tuple(await read(client, 40000, 2)) == SUNS
    assert sunspec_server.stats.connections_dropped == 2


async def test_refuse_connections_fault_closes_the_listener(
    sunspec_server: ModbusBatteryServer, modbus_client: ClientFactory, hil_sim: Simulator
) -> None:
    connected = await modbus_client(sunspec_server.port)
    port = sunspec_server.port
    hil_sim.inject(Fault(FaultKind.REFUSE_CONNECTIONS))
    await until(lambda: not sunspec_server.listening, "the watcher to stop listening")
    refused = AsyncModbusTcpClient(
        "127.0.0.1", port=port, timeout=0.5, retries=0, reconnect_delay=0
    )
    assert not await refused.connect()
    refused.close()
    assert tuple(await read(connected, 40000, 2)) == SUNS  # open connections keep working
    hil_sim.faults.clear(FaultKind.REFUSE_CONNECTIONS)
    await sunspec_server.check_faults()
    assert sunspec_server.listening and sunspec_server.port == port
    again = await modbus_client(port)
    assert tuple(await read(again, 40000, 2)) == SUNS


async def test_frozen_and_out_of_range_values_are_served(
    generic_server: ModbusBatteryServer,
    modbus_client: ClientFactory,
    hil_sim: Simulator,
    hil_clock: SteppedClock,
) -> None:
    client = await modbus_client(generic_server.port)
    hil_sim.inject(Fault(FaultKind.FREEZE, params={"quantities": ["soc_pct"]}))
    await write(client, 20, 500)  # discharge 50 kW
    hil_clock.advance(60)
    regs = await read(client, 0, 2)
    assert regs[0] == 573  # frozen
    assert s16(regs[1]) == 500  # power is not frozen
    assert hil_sim.soc_pct < 57.0
    hil_sim.faults.clear(FaultKind.FREEZE)

    hil_sim.inject(Fault(FaultKind.OUT_OF_RANGE, params={"quantity": "soc_pct", "value": 250.0}))
    assert (await read(client, 0, 1)) == [2500]
    hil_sim.faults.clear()
    hil_sim.inject(Fault(FaultKind.OUT_OF_RANGE, params={"quantity": "power_kw", "value": 1e6}))
    assert s16((await read(client, 1, 1))[0]) == 32767  # saturated, not wrapped


async def test_out_of_range_through_sunspec_scale_factors(
    sunspec_server: ModbusBatteryServer, modbus_client: ClientFactory, hil_sim: Simulator
) -> None:
    client = await modbus_client(sunspec_server.port)
    hil_sim.inject(Fault(FaultKind.OUT_OF_RANGE, params={"quantity": "soc_pct", "value": 250.0}))
    storage = await read(client, 40124, 24)
    assert scaled(storage, M124["ChaState"], M124["ChaState_SF"]) == 250.0
    hil_sim.faults.clear()
    hil_sim.inject(Fault(FaultKind.OUT_OF_RANGE, params={"quantity": "power_kw", "value": -1e6}))
    inverter = await read(client, 40072, 50)
    assert s16(inverter[M103["W"]]) == -32767  # saturated; -32768 would mean "not implemented"


async def test_stats_count_requests(
    generic_server: ModbusBatteryServer, modbus_client: ClientFactory
) -> None:
    client = await modbus_client(generic_server.port)
    await read(client, 0, 3)
    await write(client, 21, 1)
    await write(client, 0, 1)  # refused
    stats: dict[str, Any] = generic_server.stats.as_dict()
    assert stats["requests"] == 3 and stats["reads"] == 1 and stats["writes"] == 2
    assert stats["responses"] == 3 and stats["exceptions"] == 1
    assert stats["connections_total"] == 1


async def test_stop_leaves_no_tasks_or_connections(hil_sim: Simulator) -> None:
    before = asyncio.all_tasks()
    srv = ModbusBatteryServer(hil_sim, load_register_map("generic"), port=0)
    async with srv:
        client = AsyncModbusTcpClient("127.0.0.1", port=srv.port, retries=0, reconnect_delay=0)
        assert await client.connect()
        assert (await client.read_holding_registers(0, count=1, device_id=UNIT)).registers
        await until(lambda: srv.open_connections == 1, "the connection")
    await until(lambda: not client.connected, "the client to see the server go")
    client.close()
    assert asyncio.all_tasks() == before
    assert not srv.listening and srv.open_connections == 0
