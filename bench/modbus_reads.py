"""Sustained Modbus TCP reads against the simulated battery: reads/s and latency.

The server (``hil.modbus_server`` on a real-time clock) runs in its own process on loopback, as
it does on a HIL rig; the clients run in this process, one asyncio loop, each with one
connection and one request in flight. Each read is one request for the SunSpec model 124 body
(24 registers: WChaMax ... ChaState, ChaState_SF ... InOutWRte_SF), so every read makes the
server take a fresh measurement and encode 24 points -- what an agent polling SoC does.

    python -m bench.modbus_reads                 # 1 and 8 clients, 5 s each
    python -m bench.modbus_reads --clients 1 4 16 --seconds 3 --map generic
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from pymodbus.client import AsyncModbusTcpClient

READS = {  # map -> (address, count) of the block each request reads
    "sunspec": (40124, 24),  # model 124 body: SoC (ChaState) with its SF in one request
    "generic": (0, 9),  # SoC, power, temperature, frequency, status, alarms, V, kvar, SoH
}
UNIT_ID = 1


@dataclass
class Run:
    clients: int
    seconds: float = 0.0
    latencies_s: list[float] = field(default_factory=list)
    errors: int = 0

    @property
    def reads(self) -> int:
        return len(self.latencies_s)

    def percentile_ms(self, q: float) -> float:
        ordered = sorted(self.latencies_s)
        if not ordered:
            return float("nan")
        return 1000.0 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _client_loop(port: int, address: int, count: int, deadline: float, budget: list[int],
                       run: Run) -> None:  # fmt: skip
    client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=2.0, retries=0)
    if not await client.connect():
        raise SystemExit(f"cannot connect to the bench server on port {port}")
    try:
        while time.perf_counter() < deadline and budget[0] > 0:
            budget[0] -= 1
            started = time.perf_counter()
            response = await client.read_holding_registers(address, count=count, device_id=UNIT_ID)
            elapsed = time.perf_counter() - started
            if response.isError() or len(response.registers) != count:
                run.errors += 1
            else:
                run.latencies_s.append(elapsed)
    finally:
        client.close()


async def measure(port: int, regmap: str, clients: int, seconds: float, max_reads: int) -> Run:
    address, count = READS[regmap]
    run = Run(clients=clients)
    budget = [max_reads]
    started = time.perf_counter()
    deadline = started + seconds
    await asyncio.gather(
        *(_client_loop(port, address, count, deadline, budget, run) for _ in range(clients))
    )
    run.seconds = time.perf_counter() - started
    return run


# -- the server process ----------------------------------------------------------------------


async def _serve(regmap_name: str) -> None:
    from hil.clock import RealClock
    from hil.modbus_server import ModbusBatteryServer
    from hil.model import BatterySpec
    from hil.regmap import load_register_map
    from hil.sim import Simulator

    sim = Simulator(BatterySpec(), RealClock(), soc_pct=57.3)
    sim.command_power_kw(20.0)  # a moving battery: every read integrates physics
    async with ModbusBatteryServer(sim, load_register_map(regmap_name), port=0) as srv:
        print(f"PORT {srv.port}", flush=True)
        await asyncio.to_thread(sys.stdin.read)  # until the parent closes our stdin
        stats: dict[str, float] = dict(srv.stats.as_dict())
    stats["cpu_s"] = time.process_time()
    print("STATS " + json.dumps(stats), flush=True)


def _start_server(regmap_name: str) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(  # noqa: S603 - our own interpreter running this file
        [sys.executable, str(Path(__file__).resolve()), "--serve", "--map", regmap_name],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("PORT "):
        proc.kill()
        raise SystemExit(f"bench server did not start: {line!r}")
    return proc, int(line.split()[1])


def _stop_server(proc: subprocess.Popen[str]) -> dict[str, float]:
    out, _ = proc.communicate(input="", timeout=10)
    for line in out.splitlines():
        if line.startswith("STATS "):
            stats: dict[str, float] = json.loads(line[6:])
            return stats
    return {}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--map", choices=sorted(READS), default="sunspec")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--seconds", type=float, default=5.0, help="per client count")
    parser.add_argument("--max-reads", type=int, default=200_000, help="per client count")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        asyncio.run(_serve(args.map))
        return 0

    proc, port = _start_server(args.map)
    try:
        runs = [
            asyncio.run(measure(port, args.map, n, args.seconds, args.max_reads))
            for n in args.clients
        ]
    finally:
        stats = _stop_server(proc)
    address, count = READS[args.map]
    print(f"Modbus TCP reads, {args.map} map, {count} registers at {address}, loopback")
    print(f"{'clients':>7} {'reads':>8} {'seconds':>7} {'reads/s':>8} {'p50 ms':>7} "
          f"{'p99 ms':>7} {'errors':>6}")  # fmt: skip
    for run in runs:
        print(
            f"{run.clients:>7} {run.reads:>8} {run.seconds:>7.2f} "
            f"{run.reads / run.seconds:>8.0f} {run.percentile_ms(0.50):>7.2f} "
            f"{run.percentile_ms(0.99):>7.2f} {run.errors:>6}"
        )
    if stats:
        busy = stats["cpu_s"] / sum(run.seconds for run in runs)
        per_request_us = 1e6 * stats["cpu_s"] / max(1.0, stats["requests"])
        print(
            f"server: {stats['requests']:.0f} requests, {stats['exceptions']:.0f} exceptions, "
            f"{stats['connections_total']:.0f} connections; CPU {stats['cpu_s']:.1f} s = "
            f"{per_request_us:.0f} us/request (start-up included), ~{100 * busy:.0f} % of one "
            f"core while measuring"
        )
    return 1 if any(run.errors for run in runs) else 0


if __name__ == "__main__":
    raise SystemExit(main())
