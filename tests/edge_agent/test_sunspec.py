"""SunSpec discovery and ``scan`` against the hil Modbus server, plus a fake for odd devices."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Sequence

import pytest

from edge_agent.modbus_client import DeviceException, ModbusConnection, Table
from edge_agent.sunspec import (
    Discovery,
    ModelInfo,
    discover,
    marker_missing_text,
    read_model,
    scan,
)
from hil.clock import SteppedClock
from hil.faults import Fault, FaultKind
from hil.modbus_server import ModbusBatteryServer
from hil.model import BatterySpec
from hil.regmap import RegisterMap, load_register_map
from hil.sim import Simulator

HIL_CHAIN = [(1, 40002, 66), (103, 40070, 50), (124, 40122, 24), (802, 40148, 62)]


@pytest.fixture
def sim() -> Simulator:
    return Simulator(BatterySpec(), SteppedClock(), soc_pct=57.3)


async def serve(sim: Simulator, regmap: RegisterMap) -> ModbusBatteryServer:
    srv = ModbusBatteryServer(sim, regmap, port=0)
    await srv.start()
    return srv


@pytest.fixture
async def connection_to() -> AsyncIterator[list[ModbusConnection]]:
    opened: list[ModbusConnection] = []
    yield opened
    for conn in opened:
        await conn.close()


async def connect(port: int, opened: list[ModbusConnection]) -> ModbusConnection:
    conn = ModbusConnection("127.0.0.1", port, request_timeout_s=1.0)
    opened.append(conn)
    assert await conn.open()
    return conn


def chain(found: Discovery) -> list[tuple[int, int, int]]:
    return [(m.id, m.address, m.length) for m in found.models]


@pytest.mark.integration
@pytest.mark.parametrize("base", [40000, 0, 50000])
async def test_discovery_finds_the_map_at_each_base(
    sim: Simulator, base: int, connection_to: list[ModbusConnection]
) -> None:
    srv = await serve(sim, load_register_map("sunspec").with_base(base))
    try:
        conn = await connect(srv.port, connection_to)
        found = await discover(conn, unit_id=1)
    finally:
        await srv.stop()
    assert found.found and found.base == base
    shift = base - 40000
    assert chain(found) == [(i, a + shift, n) for i, a, n in HIL_CHAIN]
    assert found.problems == ()
    storage = found.find([124])
    assert storage is not None and storage.body == 40124 + shift and storage.name.startswith("st")
    assert found.find([113, 103]) == found.find(103)


@pytest.mark.integration
async def test_marker_missing_is_a_clear_result(
    sim: Simulator, connection_to: list[ModbusConnection]
) -> None:
    srv = await serve(sim, load_register_map("generic"))
    try:
        conn = await connect(srv.port, connection_to)
        found = await discover(conn, unit_id=1)
        result = await scan("127.0.0.1", srv.port, 1, timeout=1.0)
    finally:
        await srv.stop()
    assert not found.found and found.models == ()
    assert result.connected and not result.sunspec
    text = result.summary()
    assert "SunSpec marker not found at 40000/0/50000 — is this a SunSpec device?" in text
    assert "try the vendor preset" in text
    assert marker_missing_text((40000, 0, 50000)) in result.hints


@pytest.mark.integration
async def test_scan_reports_models_values_and_hints(sim: Simulator) -> None:
    srv = await serve(sim, load_register_map("sunspec"))
    try:
        result = await scan("127.0.0.1", srv.port, 1, timeout=1.0)
        wrong_unit = await scan("127.0.0.1", srv.port, 7, timeout=1.0)
    finally:
        await srv.stop()
    assert result.sunspec and result.base == 40000
    assert [m.info.id for m in result.models] == [1, 103, 124, 802]
    common = result.models[0].values
    assert common["Mn"] == "Phoenyra" and common["SN"] == "PHX-SIM-0001"
    storage = result.models[2].values
    assert storage["ChaState"] == "57.3 %" and storage["InOutWRte_RvrtTms"] == "60 s"
    text = str(result)
    assert "storage controls" in text and "device: Phoenyra BESS-HIL-Simulator" in text
    assert "use preset 'sunspec'" in text
    # The simulator answers other unit ids like a gateway without that target (0x0B).
    assert not wrong_unit.sunspec
    assert any("unit id" in h for h in wrong_unit.hints)


@pytest.mark.integration
async def test_scan_of_nothing_says_what_to_check() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    result = await scan("127.0.0.1", port, 1, timeout=0.5)
    assert not result.connected
    assert "Modbus TCP is enabled" in result.summary()


@pytest.mark.integration
async def test_a_busy_device_is_not_mistaken_for_one_without_sunspec(
    sim: Simulator, connection_to: list[ModbusConnection]
) -> None:
    srv = await serve(sim, load_register_map("sunspec"))
    try:
        conn = await connect(srv.port, connection_to)
        sim.inject(Fault(FaultKind.MODBUS_EXCEPTION, params={"code": 6}))
        with pytest.raises(DeviceException) as busy:
            await discover(conn, unit_id=1)
    finally:
        await srv.stop()
    assert busy.value.code == 6


class ChainDevice:
    """A SunSpec chain in memory whose model 103 body cannot be read (some SMA firmwares)."""

    def __init__(self) -> None:
        self.regs: dict[int, int] = {40000: 0x5375, 40001: 0x6E53}
        address = 40002
        for model_id, length in ((1, 66), (103, 50), (124, 24)):
            self.regs[address], self.regs[address + 1] = model_id, length
            for i in range(length):
                self.regs[address + 2 + i] = 0
            address += 2 + length
        self.regs[address], self.regs[address + 1] = 0xFFFF, 0
        self.refused = range(40072, 40122)  # the body of 103
        self.generation = 1

    async def read_registers(
        self, table: Table, address: int, count: int, *, unit_id: int
    ) -> list[int]:
        span = range(address, address + count)
        if any(a in self.refused for a in span) or any(a not in self.regs for a in span):
            raise DeviceException(2, f"reading {table} {address}+{count}", unit_id=unit_id)
        return [self.regs[a] for a in span]

    async def write_registers(self, address: int, values: Sequence[int], *, unit_id: int) -> None:
        raise DeviceException(1, "writing")


async def test_an_unreadable_model_is_skipped_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    dev = ChainDevice()
    found = await discover(dev, unit_id=1)
    assert found.ids() == [1, 103, 124]  # the headers are readable
    inverter = found.find(103)
    assert inverter is not None
    assert await read_model(dev, inverter, unit_id=1) is None
    assert any(
        "model 103" in r.getMessage() and "skipped" in r.getMessage() for r in caplog.records
    )
    storage = found.find(124)
    assert storage is not None and await read_model(dev, storage, unit_id=1) == [0] * 24


async def test_models_longer_than_one_request_are_read_in_chunks() -> None:
    dev = ChainDevice()
    dev.refused = range(0)
    reads: list[int] = []
    original = dev.read_registers

    async def counting(table: Table, address: int, count: int, *, unit_id: int) -> list[int]:
        reads.append(count)
        return await original(table, address, count, unit_id=unit_id)

    dev.read_registers = counting  # type: ignore[method-assign]
    for a in range(50000, 50300):
        dev.regs[a] = a & 0xFFFF
    body = await read_model(dev, ModelInfo(64_900, 49998, 300), unit_id=1)
    assert body == [a & 0xFFFF for a in range(50000, 50300)]
    assert reads == [125, 125, 50]
