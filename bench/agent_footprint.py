"""The edge agent's footprint on a site: memory, CPU and Modbus-read-to-plane latency.

Three processes on loopback, as on a HIL rig:

- the HIL battery (``hil.modbus_server`` on a real-time clock) serving a 50-register map,
  in its own process (``--serve``, started by this script);
- the real agent, ``python -m edge_agent run -c site.yaml``, polling that map at 1 Hz, taking a
  telemetry sample at 1 Hz into its SQLite outbox (``synchronous: FULL``, as on a site) and
  streaming it over EdgeLink; its Prometheus endpoint is on (port 0), as on a site;
- a real EdgeLink gRPC server: the tests' ``FakePlane`` in this process, which also records
  when each sample arrived.

After a warm-up the agent process is watched for a window: resident memory (``VmRSS`` every
0.5 s, and ``VmHWM``, the peak since it started) and CPU (``utime + stime`` of all its threads
over the window / wall time, in % of one core). For every sample the plane receives in the
window, the latency from the Modbus read whose values it carries to its arrival at the plane.

How the read time travels with the sample: the bench's simulator writes the time it served
each read (Unix microseconds) into a uint64 register that both maps call reactive power (the
simulated battery's reactive power is always 0), so every sample carries the time of the read
it came from in ``reactive_power_kvar``. The agent stamps the sample itself
(``timestamp_unix_ms``) with the time its sampler took the snapshot, which is not the read
time: the poller and the sampler are separate 1 Hz loops. So the latency is split:

    read -> plane       arrival - served time of the read  (what the issue asks for)
    read -> sample      timestamp_unix_ms - served time    (the reading's age when sampled)
    sample -> plane     arrival - timestamp_unix_ms        (outbox append, batching, gRPC)

All three use one wall clock (one machine). The served time is the simulator's; the agent's
own reading is stamped one Modbus round trip later (< 1 ms on loopback, see modbus_reads).

    python -m bench.agent_footprint                         # 10 s warm-up, 30 s window, 2 delays
    python -m bench.agent_footprint --seconds 60 --delays 0.05
    python -m bench.agent_footprint --dir /var/lib/phoenyra  # the outbox on the site's disk
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
UNIT_ID = 1
POLL_S = 1.0
TELEMETRY_S = 1.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
START_TIMEOUT_S = 30.0  # agent start to its first sample at the plane
STOP_TIMEOUT_S = 15.0
# The plane's extra installs pandas and numpy into a dev venv; sqlite-utils (the agent's outbox
# and schedule store) imports them whenever they are importable. A site installs .[edge] only.
HIDDEN = ("pandas", "numpy")

# -- the 50-register map, for both sides ----------------------------------------------------
#
# (address, name, type, scale, units, hil binding, agent quantity, agent role)
# role: "primary" = the point for its quantity, "fallback" = read and decoded every poll but
# used only when the primary gives nothing, "doc" = listed in the preset (so a read may cover
# it) but not decoded, "control" = the setpoint / heartbeat / revert-timeout registers.
_STATUS = {"state": {"idle": 0, "charging": 1, "discharging": 2, "fault": 3}}
_ALARMS = {
    "alarms": {
        "soc_full": 0,
        "soc_empty": 1,
        "over_temperature": 2,
        "temperature_warning": 3,
        "setpoint_reverted": 4,
        "frequency_deviation": 5,
    }
}
Row = tuple[int, str, str, float | None, str | None, dict[str, Any], str | None, str]
POINTS: tuple[Row, ...] = (
    (0, "soc", "uint16", 0.1, "%", {"measure": "soc_pct"}, "soc_pct", "primary"),
    (1, "power", "int16", 0.1, "kW", {"measure": "power_kw"}, "active_power_kw", "primary"),
    (2, "temperature", "int16", 0.1, "C", {"measure": "temperature_c"}, "temperature_c",
     "primary"),
    (3, "frequency", "uint16", 0.01, "Hz", {"measure": "frequency_hz"}, "grid_frequency_hz",
     "primary"),
    (4, "status", "uint16", None, None, _STATUS, "status_code", "primary"),
    (5, "alarms", "uint16", None, None, _ALARMS, "alarm_bits", "primary"),
    (6, "voltage", "uint16", 0.1, "V", {"measure": "voltage_v"}, "voltage_v", "primary"),
    (7, "soh", "uint16", 0.1, "%", {"measure": "soh_pct"}, "soh_pct", "primary"),
    (8, "charged_energy", "acc32", 0.1, "kWh", {"measure": "charged_kwh"},
     "energy_charged_total_kwh", "primary"),
    (10, "discharged_energy", "acc32", 0.1, "kWh", {"measure": "discharged_kwh"},
     "energy_discharged_total_kwh", "primary"),
    # The bench's read stamp: Unix microseconds when the simulator served the read.
    (12, "read_time_us", "uint64", None, "kvar", {"measure": "reactive_power_kvar"},
     "reactive_power_kvar", "primary"),
    (16, "soc_f32", "float32", None, "%", {"measure": "soc_pct"}, "soc_pct", "fallback"),
    (18, "power_w", "int32", None, "W", {"measure": "power_kw"}, "active_power_kw", "fallback"),
    (20, "voltage_f32", "float32", None, "V", {"measure": "voltage_v"}, "voltage_v", "fallback"),
    (22, "frequency_f32", "float32", None, "Hz", {"measure": "frequency_hz"},
     "grid_frequency_hz", "fallback"),
    *(
        (24 + i, f"module{i + 1}_temperature", "int16", 0.1, "C", {"measure": "temperature_c"},
         "temperature_c", "fallback")
        for i in range(8)
    ),
    (32, "soh_f32", "float32", None, "%", {"measure": "soh_pct"}, "soh_pct", "fallback"),
    (34, "dc_current", "int16", 0.1, "A", {"measure": "dc_current_a"}, None, "doc"),
    (35, "apparent_power", "uint16", 0.1, "kVA", {"measure": "apparent_power_kva"}, None, "doc"),
    (36, "stored_energy", "uint16", 0.1, "kWh", {"measure": "stored_energy_kwh"}, None, "doc"),
    (37, "depth_of_discharge", "uint16", 0.1, "%", {"measure": "depth_of_discharge_pct"}, None,
     "doc"),
    (38, "equivalent_cycles", "uint16", 0.01, None, {"measure": "equivalent_cycles"}, None, "doc"),
    (39, "capacity", "uint16", 0.1, "kWh", {"spec": "capacity_kwh"}, None, "doc"),
    (40, "max_charge", "uint16", 0.1, "kW", {"spec": "max_charge_kw"}, None, "doc"),
    (41, "max_discharge", "uint16", 0.1, "kW", {"spec": "max_discharge_kw"}, None, "doc"),
    (42, "nominal_voltage", "uint16", 0.1, "V", {"spec": "nominal_voltage_v"}, None, "doc"),
    (43, "temp_warning", "int16", 0.1, "C", {"spec": "temp_warning_c"}, None, "doc"),
    (44, "temp_trip", "int16", 0.1, "C", {"spec": "temp_trip_c"}, None, "doc"),
    (45, "stored_charge", "uint16", None, "Ah", {"measure": "stored_charge_ah"}, None, "doc"),
    (46, "battery_clock", "uint16", None, None, {"measure": "heartbeat"}, None, "doc"),
    (47, "setpoint", "int16", 0.1, "kW", {"control": "power_setpoint"}, "setpoint_kw", "control"),
    (48, "heartbeat", "uint16", None, None, {"control": "heartbeat"}, None, "control"),
    (49, "revert_timeout", "uint16", None, "s", {"control": "revert_timeout"}, None, "control"),
)  # fmt: skip
REGISTERS = {"uint16": 1, "int16": 1, "int32": 2, "float32": 2, "acc32": 2, "uint64": 4}
MAP_REGISTERS = max(a + REGISTERS[t] for a, _, t, *_ in POINTS)


def hil_map() -> dict[str, Any]:
    points = []
    for address, name, type_, scale, units, binding, _, role in POINTS:
        point: dict[str, Any] = {"name": name, "address": address, "type": type_}
        if scale is not None:
            point["scale"] = scale
        if units is not None:
            point["units"] = units
        if role == "control":
            point["access"] = "rw"
        point["binding"] = binding
        points.append(point)
    return {
        "name": "bench50",
        "description": f"{MAP_REGISTERS} holding registers for bench.agent_footprint",
        "base_address": 0,
        "unit_id": UNIT_ID,
        "layout": "plain",
        "table": "holding",
        "points": points,
    }


def agent_preset() -> dict[str, Any]:
    points = []
    for address, name, type_, scale, units, _, quantity, role in POINTS:
        point: dict[str, Any] = {"name": name, "address": address, "type": type_}
        if scale is not None:
            point["scale"] = scale
        if units is not None:
            point["units"] = units
        if quantity is not None:
            point["quantity"] = quantity
        if role == "fallback":
            point["fallback"] = True
        if role == "control":
            point["access"] = "rw"
        points.append(point)
    return {
        "name": "bench50",
        "description": f"{MAP_REGISTERS} holding registers for bench.agent_footprint",
        "layout": "plain",
        "unit_id": UNIT_ID,
        "table": "holding",
        "na_markers": False,
        "max_gap": 0,  # the map covers 0..49 without holes: one request anyway
        "points": points,
        "control": {
            "mode": "setpoint",
            "setpoint": "setpoint",
            "heartbeat": "heartbeat",
            "revert_timeout": "revert_timeout",
        },
    }


def map_summary() -> str:
    roles = [row[7] for row in POINTS]
    primary, fallback = roles.count("primary") + 1, roles.count("fallback")  # + setpoint
    doc_regs = sum(REGISTERS[t] for _, _, t, *rest in POINTS if rest[-1] == "doc") + 1  # + hb
    return (
        f"{MAP_REGISTERS} holding registers 0-{MAP_REGISTERS - 1}, read in one request per poll; "
        f"{primary + fallback + 1} points decoded per poll ({primary} quantities incl. the read "
        f"stamp, {fallback} fallbacks, the revert timeout), {doc_regs} registers read but "
        f"not decoded"
    )


# -- the HIL server process ------------------------------------------------------------------


async def _serve(map_path: str) -> None:
    from dataclasses import replace

    from hil.clock import RealClock
    from hil.modbus_server import ModbusBatteryServer
    from hil.model import BatterySpec
    from hil.regmap import load_register_map
    from hil.sim import Measurements, Simulator

    class StampingSimulator(Simulator):
        """Reports the time of every measurement (one per read request) as reactive power."""

        def measure(self) -> Measurements:
            return replace(super().measure(), reactive_power_kvar=float(time.time_ns() // 1000))

    sim = StampingSimulator(BatterySpec(), RealClock(), soc_pct=57.3)
    async with ModbusBatteryServer(sim, load_register_map(map_path), port=0) as srv:
        print(f"PORT {srv.port}", flush=True)
        while True:  # "stats" -> one STATS line; end of input -> stop
            line = await asyncio.to_thread(sys.stdin.readline)
            if not line:
                break
            print("STATS " + json.dumps(srv.stats.as_dict()), flush=True)


class HilServer:
    def __init__(self, map_path: Path) -> None:
        self.proc = subprocess.Popen(  # noqa: S603 - our own interpreter running this module
            [sys.executable, "-m", "bench.agent_footprint", "--serve", str(map_path)],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("PORT "):
            self.stop()
            raise SystemExit(f"bench Modbus server did not start: {line!r}")
        self.port = int(line.split()[1])

    def stats(self) -> dict[str, int]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("stats\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line.startswith("STATS "):
            raise RuntimeError(f"bench Modbus server: unexpected answer {line!r}")
        stats: dict[str, int] = json.loads(line[6:])
        return stats

    def stop(self) -> None:
        if self.proc.poll() is not None:
            return
        try:
            self.proc.communicate(input="", timeout=10)
        except (subprocess.TimeoutExpired, OSError, ValueError):
            self.proc.kill()
            self.proc.wait(timeout=10)


# -- the agent process --------------------------------------------------------------------------


def site_yaml(site_id: str, modbus_port: int, preset: Path, plane: str, delay_s: float,
              data_dir: Path) -> str:  # fmt: skip
    config = {
        "site_id": site_id,
        "battery": {"capacity_kwh": 200, "max_charge_kw": 100, "max_discharge_kw": 100},
        "sources": {
            "modbus": {
                "host": "127.0.0.1",
                "port": modbus_port,
                "preset": str(preset),
                "poll_interval_s": POLL_S,
            }
        },
        "telemetry": {"interval_s": TELEMETRY_S},
        "uplink": {"target": plane, "batch_max_delay_s": delay_s},
        "storage": {"data_dir": str(data_dir), "synchronous": "FULL"},
        "metrics": {"host": "127.0.0.1", "port": 0},
        "logging": {"level": "INFO"},
    }
    return yaml.safe_dump(config, sort_keys=False)


def _proc_status(pid: int) -> dict[str, str]:
    out = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            out[key] = value.strip()
    return out


def _kib(value: str) -> int:
    return int(value.split()[0])  # "12345 kB"


def _cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        fields = fh.read().rpartition(")")[2].split()  # after "pid (comm)"
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime: every thread


def _filesystem(path: Path) -> str:
    best, kind = "", "?"
    resolved = str(path.resolve())
    with contextlib.suppress(OSError), open("/proc/mounts", encoding="utf-8") as fh:
        for line in fh:
            parts = line.split()
            mount = parts[1]
            inside = resolved == mount or resolved.startswith(mount.rstrip("/") + "/")
            if inside and len(mount) >= len(best):
                best, kind = mount, parts[2]
    return kind


# -- one measured run ---------------------------------------------------------------------------


@dataclass
class Result:
    delay_s: float
    site_id: str
    pid: int = 0
    startup_cpu_s: float = 0.0
    window_s: float = 0.0
    cpu_s: float = 0.0
    rss_kib: list[int] = field(default_factory=list)
    hwm_kib: int = 0
    threads: int = 0
    samples: int = 0
    duplicates: int = 0
    gaps: int = 0
    read_to_plane: list[float] = field(default_factory=list)
    read_to_sample: list[float] = field(default_factory=list)
    sample_to_plane: list[float] = field(default_factory=list)
    unstamped: int = 0
    reads_served: int = 0
    writes_served: int = 0
    exceptions: int = 0
    log_path: Path | None = None

    @property
    def cpu_pct(self) -> float:
        return 100.0 * self.cpu_s / self.window_s if self.window_s else float("nan")


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _timed_plane_class() -> type:
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from tests.edge_agent.fake_plane import FakePlane, _Live

    class TimedPlane(FakePlane):
        """The tests' EdgeLink server, noting when each new sample arrived (wall clock)."""

        def __init__(self) -> None:
            super().__init__()
            self.arrived: dict[tuple[str, int], float] = {}

        def _store(self, table, into, site, items, live: _Live) -> None:
            now = time.time()
            if table == "samples":
                held = into.get(site, {})
                for item in items:
                    if item.seq not in held:
                        self.arrived.setdefault((site, item.seq), now)
            super()._store(table, into, site, items, live)

    return TimedPlane


async def _stop_agent(proc: subprocess.Popen[bytes], *, interrupted: bool) -> None:
    if proc.poll() is not None:
        return
    if interrupted:  # Ctrl-C reached the agent too: give its own clean stop a chance first
        with contextlib.suppress(subprocess.TimeoutExpired):
            await asyncio.to_thread(proc.wait, 5.0)
            return
    proc.send_signal(signal.SIGTERM)  # clean stop: 0 kW to the battery, outbox flushed
    try:
        await asyncio.to_thread(proc.wait, STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        await asyncio.to_thread(proc.wait, 5.0)


def _log_tail(path: Path | None, lines: int = 15) -> str:
    if path is None or not path.exists():
        return ""
    text = path.read_text(encoding="utf-8", errors="replace").splitlines()
    return "\n".join("    " + line for line in text[-lines:])


def _agent_env(workdir: Path, edge_install: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BESS_")}  # the file only
    if edge_install:
        shadow = workdir / "edge-install"
        shadow.mkdir(exist_ok=True)
        for name in HIDDEN:
            (shadow / f"{name}.py").write_text(
                f"raise ImportError('{name} hidden by bench.agent_footprint --edge-install')\n",
                encoding="utf-8",
            )
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(shadow), env.get("PYTHONPATH")]))
    return env


async def measure_agent(plane: Any, hil: HilServer, preset: Path, workdir: Path, delay_s: float,
                        args: argparse.Namespace) -> Result:  # fmt: skip
    warmup_s, seconds = args.warmup, args.seconds
    site = f"bench-footprint-{delay_s}s"
    result = Result(delay_s=delay_s, site_id=site)
    run_dir = Path(tempfile.mkdtemp(prefix=f"delay{delay_s}-", dir=workdir))
    config = run_dir / "site.yaml"
    config.write_text(
        site_yaml(site, hil.port, preset, plane.address, delay_s, run_dir / "data"),
        encoding="utf-8",
    )
    result.log_path = run_dir / "agent.log"
    env = _agent_env(workdir, args.edge_install)
    with open(result.log_path, "wb") as log:
        proc = subprocess.Popen(  # noqa: S603 - our interpreter, the agent's module
            [sys.executable, "-m", "edge_agent", "run", "-c", str(config)],
            cwd=run_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    result.pid = proc.pid
    interrupted = False
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not plane.stored_seqs(site):
            if proc.poll() is not None:
                raise RuntimeError(
                    f"the agent exited ({proc.returncode}) before its first sample:\n"
                    + _log_tail(result.log_path)
                )
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"no sample from the agent within {START_TIMEOUT_S:g} s:\n"
                    + _log_tail(result.log_path)
                )
            await asyncio.sleep(0.05)
        result.startup_cpu_s = _cpu_s(proc.pid)
        await asyncio.sleep(warmup_s)

        before = hil.stats()
        cpu0, wall0, mono0 = _cpu_s(proc.pid), time.time(), time.monotonic()
        end = mono0 + seconds
        while (now := time.monotonic()) < end:
            status = _proc_status(proc.pid)
            result.rss_kib.append(_kib(status["VmRSS"]))
            result.threads = max(result.threads, int(status["Threads"]))
            await asyncio.sleep(min(0.5, end - now))
        cpu1, wall1 = _cpu_s(proc.pid), time.time()
        status = _proc_status(proc.pid)
        result.rss_kib.append(_kib(status["VmRSS"]))
        result.hwm_kib = _kib(status["VmHWM"])
        after = hil.stats()
        if proc.poll() is not None:
            raise RuntimeError(f"the agent exited ({proc.returncode}) while measured")
    except asyncio.CancelledError:
        interrupted = True
        raise
    finally:
        await _stop_agent(proc, interrupted=interrupted)

    result.window_s = wall1 - wall0
    result.cpu_s = cpu1 - cpu0
    result.reads_served = after["reads"] - before["reads"]
    result.writes_served = after["writes"] - before["writes"]
    result.exceptions = after["exceptions"] - before["exceptions"]
    for (s, seq), arrived in sorted(plane.arrived.items()):
        if s != site or not wall0 <= arrived <= wall1:
            continue
        sample = plane.sample(site, seq)
        result.samples += 1
        taken = sample.timestamp_unix_ms / 1000.0
        result.sample_to_plane.append(arrived - taken)
        if not sample.HasField("reactive_power_kvar"):
            result.unstamped += 1
            continue
        read = sample.reactive_power_kvar / 1e6
        result.read_to_plane.append(arrived - read)
        result.read_to_sample.append(taken - read)
    result.duplicates = plane.duplicates
    result.gaps = sum(1 for g in plane.gaps if g[0] == site)
    return result


# -- report -------------------------------------------------------------------------------------


def report(results: list[Result], args: argparse.Namespace, data_fs: str,
           loads: tuple[tuple[float, ...], tuple[float, ...]]) -> None:  # fmt: skip
    mib = 1 / 1024
    print(
        f"Edge agent footprint: {MAP_REGISTERS}-register Modbus map polled every {POLL_S:g} s, "
        f"a sample every {TELEMETRY_S:g} s streamed over EdgeLink, loopback"
    )
    print(f"  map:     {map_summary()}")
    hidden = importlib.util.find_spec("pandas") is not None and not args.edge_install
    print(
        f"  agent:   python -m edge_agent run -c site.yaml; outbox synchronous FULL on "
        f"{data_fs} ({args.dir}); metrics endpoint on; plaintext EdgeLink to a local FakePlane; "
        + (
            "pandas/numpy hidden (--edge-install)"
            if args.edge_install
            else "pandas/numpy importable"
            if hidden
            else "no pandas/numpy"
        )
    )
    print(
        f"  window:  {args.warmup:g} s warm-up after the first sample, then {args.seconds:g} s "
        f"measured; {os.cpu_count()} CPUs, load average {loads[0][0]:.2f} before, "
        f"{loads[1][0]:.2f} after; Python {sys.version.split()[0]}"
    )
    print()
    label_w, cell_w = 44, 16
    head = "".join(f"{f'{r.delay_s} s':>{cell_w}}" for r in results)
    print(f"{'uplink batch_max_delay_s':<{label_w}}{head}")

    def row(label: str, cell: Any) -> None:
        print(f"{label:<{label_w}}" + "".join(f"{cell(r):>{cell_w}}" for r in results))

    row(
        "RSS avg / max in window (MiB)",
        lambda r: f"{sum(r.rss_kib) / len(r.rss_kib) * mib:.1f} / {max(r.rss_kib) * mib:.1f}",
    )
    row("RSS change over the window (KiB)", lambda r: f"{r.rss_kib[-1] - r.rss_kib[0]:+d}")
    row("RSS peak since start, VmHWM (MiB)", lambda r: f"{r.hwm_kib * mib:.1f}")
    row("threads", lambda r: f"{r.threads}")
    row("CPU, % of one core", lambda r: f"{r.cpu_pct:.2f}")
    row("CPU from start to the first sample (s)", lambda r: f"{r.startup_cpu_s:.2f}")
    row(
        "Modbus reads / writes served per s",
        lambda r: f"{r.reads_served / r.window_s:.2f} / {r.writes_served / r.window_s:.2f}",
    )
    row("samples received per s", lambda r: f"{r.samples / r.window_s:.2f}")
    row("samples / gaps / duplicates", lambda r: f"{r.samples} / {r.gaps} / {r.duplicates}")
    print()
    print(f"{'latency (ms)':<{label_w}}{'p50':>9}{'p95':>9}{'p99':>9}{'max':>9}{'n':>6}")
    for r in results:
        for label, values in (
            ("Modbus read -> plane", r.read_to_plane),
            ("  read -> sample (reading age)", r.read_to_sample),
            ("  sample -> plane (outbox, uplink)", r.sample_to_plane),
        ):
            cells = "".join(
                f"{1000 * _percentile(values, q):>9.1f}" for q in (0.50, 0.95, 0.99, 1.0)
            )
            print(f"{f'{r.delay_s} s: {label}':<{label_w}}{cells}{len(values):>6}")
    notes = [
        f"{r.delay_s} s: {r.unstamped} samples without the read stamp (no fresh reactive "
        f"power: a stale or missing reading)"
        for r in results
        if r.unstamped
    ] + [
        f"{r.delay_s} s: {r.exceptions} Modbus exception responses" for r in results if r.exceptions
    ]
    if hidden:
        notes.append(
            "this venv has the plane's pandas/numpy, which sqlite-utils imports into the agent "
            "(~43 MiB of RSS, ~0.3 s of start-up CPU); --edge-install measures the agent as a "
            "site installs it (.[edge] only)"
        )
    for line in notes:
        print("note: " + line)


# -- main ---------------------------------------------------------------------------------------


async def run(args: argparse.Namespace, workdir: Path) -> tuple[list[Result], str]:
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    if task is not None:  # SIGTERM stops the bench as Ctrl-C does: children cleaned up
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
    map_path, preset = workdir / "hil-bench50.yaml", workdir / "preset-bench50.yaml"
    map_path.write_text(yaml.safe_dump(hil_map(), sort_keys=False), encoding="utf-8")
    preset.write_text(yaml.safe_dump(agent_preset(), sort_keys=False), encoding="utf-8")
    hil = await asyncio.to_thread(HilServer, map_path)
    results: list[Result] = []
    try:
        budget = len(args.delays) * (START_TIMEOUT_S + args.warmup + args.seconds + 30.0)
        async with asyncio.timeout(budget), _timed_plane_class()() as plane:
            for delay in args.delays:
                results.append(await measure_agent(plane, hil, preset, workdir, delay, args))
    finally:
        await asyncio.to_thread(hil.stop)
    return results, _filesystem(workdir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="measured window per run")
    parser.add_argument("--warmup", type=float, default=10.0, help="after the first sample")
    parser.add_argument(
        "--delays",
        type=float,
        nargs="+",
        default=[0.05, 1.0],
        help="uplink batch_max_delay_s, one agent run each (1.0 is the default)",
    )
    parser.add_argument(
        "--dir", default=tempfile.gettempdir(), help="where the agent's data dir goes"
    )
    parser.add_argument(
        "--edge-install",
        action="store_true",
        help="hide pandas/numpy from the agent, as on a site installed with .[edge] only",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs, configs)")
    parser.add_argument("--serve", metavar="MAP", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when we stop
        asyncio.run(_serve(args.serve))
        return 0

    workdir = Path(tempfile.mkdtemp(prefix="agent-footprint-", dir=args.dir))
    load_before = os.getloadavg()
    try:
        results, data_fs = asyncio.run(run(args, workdir))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted; the agent and the Modbus server are stopped", file=sys.stderr)
        return 130
    except (RuntimeError, TimeoutError) as exc:
        print(f"agent_footprint: {exc or type(exc).__name__}", file=sys.stderr)
        return 1
    finally:
        if args.keep:
            print(f"work dir kept: {workdir}", file=sys.stderr)
        else:
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)
    report(results, args, data_fs, (load_before, os.getloadavg()))
    return 0 if all(r.samples and not r.unstamped for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
