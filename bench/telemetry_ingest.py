"""Telemetry ingest: points/s the plane stores and acks over EdgeLink, vs a bare gRPC stream.

`--agents` (default 10) concurrent simulated agents, each a `grpc.aio` channel of its own in the
bench process (one asyncio loop), speak the real session protocol of
`protos/bess/v1/edgelink.proto` to a server in a child process:

- `Hello` (site `bench-<run>-<n>`), wait for `Welcome`;
- `TelemetryBatch`es of `--batch` samples with increasing seq, built as the agent's uplink
  builds them (`edge_agent.convert.telemetry_batch_message`: each sample merged from its stored
  payload, then numbered), at most `--window` batches ahead of their ack (the agent's
  `max_unacked_batches`, default 8);
- for `--seconds`, then wait for the cumulative `TelemetryAck` of everything sent.

The agent sends batches of up to `batch_max_samples` (default 500; the plane's Welcome sets no
lower cap): 1-2 samples while it streams live at 1 Hz with the default 1 s batch delay, full
batches while it drains a backlog after an outage. Default `--batch 1 100 500`.

Servers (each configuration in a fresh child process, forked from a preloaded forkserver):

- `plane`: the real EdgeLink server (`control_plane.fleet.edgelink.start_server`) over
  `FleetService` + `FleetStore` on the plane's engine (`control_plane.db.create_engine`: a temp
  SQLite file in WAL at `--sync`, default FULL as the plane; or PostgreSQL with `--dsn`), which
  acks a batch only after its transaction committed. After the run the child counts the rows
  stored for the run's sites: the bench fails (exit status 1) unless every acked sample is
  stored, once.
- baseline `bare`: a `grpc.aio` server with the same service definition and server options whose
  `Connect` answers Hello with Welcome and acks every batch at once (it reads the batch's last
  seq), storing nothing: what gRPC, protobuf and the clients cost without the plane.

Figures: samples (points) acked per second from the first batch sent to the last ack, batches/s,
p50/p99 of a batch's ack latency (write to the ack covering its last seq), the server's and the
clients' CPU per sample, and `x bare` = plane samples/s / bare samples/s at the same batch
size. The clients share the machine with the server: with large batches and the bare server the
clients' own CPU is usually the limit, which the CPU columns show.

    python -m bench.telemetry_ingest                          # batches of 1, 100, 500; 5 s each
    python -m bench.telemetry_ingest --batch 500 --sync FULL NORMAL --seconds 10
    python -m bench.telemetry_ingest --dsn postgresql://postgres@127.0.0.1/bench_db
    python -m bench.telemetry_ingest --quick                  # smoke test, a few seconds
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import resource
import statistics
import sys
import tempfile
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

from bess.v1 import edgelink_pb2 as pb
from bess.v1 import edgelink_pb2_grpc as pb_grpc

KEEPALIVE_TIME_S = 10.0  # the plane's default agent_keepalive_time_s
ACK_TIMEOUT_S = 60.0  # after the sending window: every ack must be back by then


def _payload() -> bytes:
    """One stored outbox payload: a full reading as the agent encodes it (no seq)."""
    sample = pb.TelemetrySample(
        timestamp_unix_ms=1_767_225_600_000,
        soc_pct=57.25,
        active_power_kw=-412.5,
        reactive_power_kvar=0.0,
        voltage_v=812.4,
        temperature_c=27.5,
        grid_frequency_hz=49.987,
        status=pb.BATTERY_STATUS_CHARGING,
        source=pb.TELEMETRY_SOURCE_MODBUS,
        setpoint_kw=-412.5,
        soh_pct=97.8,
        vendor_alarm_bits=0,
        energy_charged_total_kwh=183_204.25,
        energy_discharged_total_kwh=171_998.5,
    )
    return sample.SerializeToString()


# -- servers (child processes) --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServerSpec:
    kind: str  # "plane" or "bare"
    sync: str = "FULL"
    dsn: str | None = None
    sqlite_dir: str | None = None


class BareEdgeLink(pb_grpc.EdgeLinkServicer):
    """Same service definition; acks every batch at once and stores nothing."""

    async def Connect(  # name fixed by the generated servicer
        self,
        request_iterator: AsyncIterator[pb.AgentMessage],
        context: grpc.aio.ServicerContext[pb.AgentMessage, pb.PlaneMessage],
    ) -> AsyncIterator[pb.PlaneMessage]:
        async for message in request_iterator:
            kind = message.WhichOneof("payload")
            if kind == "hello":
                yield pb.PlaneMessage(
                    welcome=pb.Welcome(
                        plane_version="bare",
                        server_time_unix_ms=round(time.time() * 1000),
                        heartbeat_interval_s=10,
                        session_id=message.hello.site_id,
                    )
                )
            elif kind == "telemetry_batch":
                last = message.telemetry_batch.samples[-1].seq
                yield pb.PlaneMessage(telemetry_ack=pb.TelemetryAck(acked_through_seq=last))


async def _serve(spec: ServerSpec, conn: Connection) -> None:
    from control_plane.fleet.edgelink import server_options

    loop = asyncio.get_running_loop()
    if spec.kind == "bare":
        server = grpc.aio.server(options=server_options(KEEPALIVE_TIME_S))
        pb_grpc.add_EdgeLinkServicer_to_server(BareEdgeLink(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        conn.send(("port", port))
        await loop.run_in_executor(None, conn.recv)  # the run is over
        await server.stop(1.0)
        conn.send(("stored", None))
        return

    import sqlalchemy as sa
    from prometheus_client import CollectorRegistry

    from control_plane import __version__, db
    from control_plane.fleet.edgelink import start_server
    from control_plane.fleet.service import FleetMetrics, FleetService
    from control_plane.fleet.store import FleetStore, telemetry

    assert spec.sqlite_dir is not None
    engine = db.create_engine(
        database_url=spec.dsn,
        sqlite_path=Path(spec.sqlite_dir) / "plane.sqlite3",
        sqlite_synchronous=spec.sync,  # type: ignore[arg-type]
    )
    fleet = FleetService(
        store=FleetStore(engine),
        metrics=FleetMetrics(CollectorRegistry()),
        plane_version=__version__,
    )
    await fleet.open()
    server, port = await start_server(
        fleet, host="127.0.0.1", port=0, keepalive_time_s=KEEPALIVE_TIME_S
    )
    conn.send(("port", port))
    sites = await loop.run_in_executor(None, conn.recv)
    fleet.drain()
    await server.stop(1.0)
    await fleet.close()
    with engine.connect() as c:
        rows = c.execute(
            sa.select(telemetry.c.site_id, sa.func.count(), sa.func.max(telemetry.c.seq))
            .where(telemetry.c.site_id.in_(sites))
            .group_by(telemetry.c.site_id)
        )
        stored = {site: (count, top) for site, count, top in rows}
    engine.dispose()
    conn.send(("stored", stored))


def _server_main(spec: ServerSpec, conn: Connection) -> None:
    try:
        asyncio.run(_serve(spec, conn))
    except BaseException as exc:  # reported by the parent, which exits 1
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        conn.send(("cpu", usage.ru_utime + usage.ru_stime))


class Server:
    """A server child process: started, its port known; `stop()` returns what it stored."""

    def __init__(self, ctx: Any, spec: ServerSpec) -> None:
        self._conn, child = ctx.Pipe()
        self._process = ctx.Process(target=_server_main, args=(spec, child), daemon=True)
        self._process.start()
        child.close()
        self.port = int(self._expect("port", 30))
        self.cpu_s = 0.0

    def _expect(self, what: str, timeout: float) -> Any:
        if not self._conn.poll(timeout):
            raise RuntimeError(f"the server process sent no {what} within {timeout:g} s")
        kind, value = self._conn.recv()
        if kind == "error":
            raise RuntimeError(f"the server process failed: {value}")
        if kind != what:
            raise RuntimeError(f"the server process sent {kind}, expected {what}")
        return value

    def stop(self, sites: list[str]) -> dict[str, tuple[int, int]] | None:
        self._conn.send(sites)
        try:
            stored: dict[str, tuple[int, int]] | None = self._expect("stored", 30)
            self.cpu_s = float(self._expect("cpu", 10))
        finally:
            self._process.join(10)
            if self._process.is_alive():
                self._process.kill()
        return stored


# -- agents (this process) ------------------------------------------------------------------


@dataclass
class AgentResult:
    sent_samples: int = 0
    acked_through: int = 0
    batches: int = 0
    latencies: list[float] = field(default_factory=list)
    first_sent: float = 0.0
    last_ack: float = 0.0
    error: str = ""


async def _agent(
    target: str, site_id: str, batch: int, window: int, seconds: float, payload: bytes
) -> AgentResult:
    result = AgentResult()
    clock = time.perf_counter
    options = [("grpc.keepalive_time_ms", round(KEEPALIVE_TIME_S * 1000))]
    async with grpc.aio.insecure_channel(target, options=options) as channel:
        call = pb_grpc.EdgeLinkStub(channel).Connect()
        hello = pb.Hello(
            site_id=site_id,
            agent_version="bench",
            capabilities=[pb.CAPABILITY_MODBUS],
            agent_time_unix_ms=round(time.time() * 1000),
        )
        await call.write(pb.AgentMessage(hello=hello))
        welcome = await call.read()
        if not isinstance(welcome, pb.PlaneMessage) or welcome.WhichOneof("payload") != "welcome":
            raise RuntimeError(f"{site_id}: no Welcome: {welcome!r}")
        seq = welcome.welcome.last_stored_seq
        start_seq = seq
        in_flight: deque[tuple[int, float]] = deque()  # (last seq, sent at)
        room = asyncio.Event()
        room.set()

        async def read_acks() -> None:
            try:
                while True:
                    message = await call.read()
                    if not isinstance(message, pb.PlaneMessage):  # grpc.aio.EOF
                        return
                    if message.WhichOneof("payload") != "telemetry_ack":
                        continue
                    acked = message.telemetry_ack.acked_through_seq
                    now = clock()
                    while in_flight and in_flight[0][0] <= acked:
                        result.latencies.append(now - in_flight.popleft()[1])
                    result.acked_through = acked - start_seq
                    result.last_ack = now
                    room.set()
            finally:
                room.set()  # the sender must not wait for acks that cannot come

        reader = asyncio.create_task(read_acks())
        try:
            result.first_sent = clock()
            deadline = result.first_sent + seconds
            while clock() < deadline:
                while len(in_flight) >= window:
                    room.clear()
                    await room.wait()
                    if reader.done():
                        reader.result()
                        raise RuntimeError(f"{site_id}: the plane ended the stream")
                # As edge_agent.convert.telemetry_batch_message builds it from outbox rows.
                message = pb.AgentMessage()
                samples = message.telemetry_batch.samples
                for _ in range(batch):
                    seq += 1
                    sample = samples.add()
                    sample.MergeFromString(payload)
                    sample.seq = seq
                in_flight.append((seq, clock()))
                await call.write(message)
                result.batches += 1
            result.sent_samples = seq - start_seq
            wait_until = clock() + ACK_TIMEOUT_S
            while in_flight and not reader.done() and clock() < wait_until:
                room.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(room.wait(), timeout=max(0.01, wait_until - clock()))
            if in_flight:
                raise RuntimeError(
                    f"{site_id}: {len(in_flight)} batches not acked within {ACK_TIMEOUT_S:g} s "
                    "after the last was sent"
                )
            await call.done_writing()
            await asyncio.wait_for(reader, timeout=10)
        finally:
            reader.cancel()
    return result


async def _agents(
    target: str, sites: list[str], batch: int, window: int, seconds: float
) -> list[AgentResult]:
    payload = _payload()
    tasks = [_agent(target, site, batch, window, seconds, payload) for site in sites]
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    results: list[AgentResult] = []
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            results.append(AgentResult(error=f"{type(outcome).__name__}: {outcome}"))
        else:
            results.append(outcome)
    return results


# -- runs -----------------------------------------------------------------------------------


@dataclass
class Run:
    label: str
    batch: int
    agents: list[AgentResult]
    server_cpu_s: float
    client_cpu_s: float
    problems: list[str]

    @property
    def samples(self) -> int:
        return sum(a.acked_through for a in self.agents)

    @property
    def seconds(self) -> float:
        started = min((a.first_sent for a in self.agents if a.first_sent), default=0.0)
        ended = max((a.last_ack for a in self.agents), default=0.0)
        return max(ended - started, 1e-9)

    @property
    def rate(self) -> float:
        return self.samples / self.seconds

    @property
    def latencies(self) -> list[float]:
        return [x for a in self.agents for x in a.latencies]


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_one(ctx: Any, spec: ServerSpec, label: str, args: argparse.Namespace, batch: int) -> Run:
    tag = uuid.uuid4().hex[:6]
    sites = [f"bench-{tag}-{n:02d}" for n in range(args.agents)]
    server = Server(ctx, spec)
    problems: list[str] = []
    cpu_before = _cpu_s()
    try:
        agents = asyncio.run(
            _agents(f"127.0.0.1:{server.port}", sites, batch, args.window, args.seconds)
        )
    finally:
        client_cpu = _cpu_s() - cpu_before
        stored = server.stop(sites)
    problems += [f"{site}: {a.error}" for site, a in zip(sites, agents, strict=True) if a.error]
    if stored is not None:  # the plane: every acked sample stored, once, none beyond
        for site, agent in zip(sites, agents, strict=True):
            count, top = stored.get(site, (0, 0))
            if agent.error:
                continue
            if count != agent.acked_through or top != agent.acked_through:
                problems.append(
                    f"{site}: {agent.acked_through} samples acked, {count} stored "
                    f"(highest seq {top})"
                )
    return Run(label, batch, agents, server.cpu_s, client_cpu, problems)


def _pct_ms(samples: list[float], q: float) -> float:
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    return 1000.0 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _print(runs: list[Run]) -> None:
    print(
        f"{'run':<22} {'batch':>5} {'samples':>8} {'seconds':>7} {'samples/s':>10} "
        f"{'batches/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'srv us/s':>8} {'cli us/s':>8} "
        f"{'x bare':>6}"
    )
    bare = {r.batch: r for r in runs if r.label == "bare gRPC"}
    for r in runs:
        lat = r.latencies
        batches = sum(len(a.latencies) for a in r.agents)
        per = 1e6 / max(r.samples, 1)
        ratio = f"{r.rate / bare[r.batch].rate:>6.2f}" if r.batch in bare else f"{'':>6}"
        p50 = statistics.median(lat) * 1000 if lat else float("nan")
        print(
            f"{r.label:<22} {r.batch:>5} {r.samples:>8} {r.seconds:>7.2f} {r.rate:>10,.0f} "
            f"{batches / r.seconds:>9,.0f} {p50:>7.2f} {_pct_ms(lat, 0.99):>7.2f} "
            f"{r.server_cpu_s * per:>8.1f} {r.client_cpu_s * per:>8.1f} {ratio}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--agents", type=int, default=10, help="concurrent simulated agents")
    parser.add_argument(
        "--batch", type=int, nargs="+", default=[1, 100, 500], help="samples per TelemetryBatch"
    )
    parser.add_argument(
        "--window", type=int, default=8, help="batches in flight per agent (max_unacked_batches)"
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="sending time per run")
    parser.add_argument(
        "--sync", nargs="+", default=["FULL"], choices=["FULL", "NORMAL"], help="SQLite levels"
    )
    parser.add_argument("--dir", type=Path, help="directory for the SQLite files (default /tmp)")
    parser.add_argument(
        "--dsn", help="also run the plane on this PostgreSQL database (rows are left behind)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke test: batches of 100 for 1 s, FULL only"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.batch, args.seconds, args.sync = [100], 1.0, ["FULL"]
    bad = [
        f"--{name} must be at least 1, got {value}"
        for name, value in (("agents", args.agents), ("window", args.window))
        if value < 1
    ] + [f"--batch must be 1..10000, got {b}" for b in args.batch if not 1 <= b <= 10_000]
    if args.seconds <= 0:
        bad.append(f"--seconds must be positive, got {args.seconds:g}")
    if bad:
        parser.error("; ".join(bad))

    ctx = multiprocessing.get_context("forkserver")
    # The servers fork from a process that imported the plane once and never started gRPC
    # (it imports this module too, as the main module, for `_server_main`).
    ctx.set_forkserver_preload(
        ["control_plane.fleet.edgelink", "control_plane.fleet.store", "prometheus_client"]
    )
    load = os.getloadavg()
    print(
        f"Telemetry ingest over EdgeLink: {args.agents} agents, up to {args.window} batches in "
        f"flight each, {args.seconds:g} s per run, loopback; {os.cpu_count()} CPUs, "
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    try:
        runs = _run_all(ctx, args)
    except RuntimeError as exc:
        print(f"telemetry_ingest: {exc}", file=sys.stderr)
        return 1
    print()
    _print(runs)
    load = os.getloadavg()
    print(
        "\nsrv/cli us/s: CPU time of the server process / of the clients per sample acked; "
        f"load average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    problems = [f"{r.label} batch {r.batch}: {p}" for r in runs for p in r.problems]
    for problem in problems:
        print(f"PROBLEM {problem}", file=sys.stderr)
    return 1 if problems else 0


def _run_all(ctx: Any, args: argparse.Namespace) -> list[Run]:
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="telemetry-bench-", dir=args.dir) as tmp:
        print(f"SQLite files in {tmp}")
        for batch in args.batch:
            runs.append(run_one(ctx, ServerSpec("bare"), "bare gRPC", args, batch))
            for sync in args.sync:
                directory = Path(tmp) / f"{sync}-{batch}"
                spec = ServerSpec("plane", sync=sync, sqlite_dir=str(directory))
                runs.append(run_one(ctx, spec, f"plane sqlite {sync}", args, batch))
            if args.dsn:
                spec = ServerSpec("plane", dsn=args.dsn, sqlite_dir=tmp)
                runs.append(run_one(ctx, spec, "plane postgresql", args, batch))
    return runs


if __name__ == "__main__":
    raise SystemExit(main())
