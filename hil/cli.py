"""``bess-hil``: serve a simulated battery, run scenarios, inject faults into a live one.

    bess-hil serve --preset sunspec --port 5020 [--speed 60] [--mqtt-broker localhost]
    bess-hil run-scenario day_cycle [--json]
    bess-hil fault inject modbus_exception code=4 --duration-s 30
    bess-hil fault clear [KIND]
    bess-hil set-power -50
    bess-hil status [--json]
    bess-hil maps [show sunspec]
    bess-hil scenarios

Exit codes: 0 fine, 1 a scenario expectation failed or a control command was refused,
2 bad arguments or a setup problem (port in use, unreadable file, no simulator to talk to).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import errno
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NoReturn, TextIO

from pydantic import SecretStr

from .clock import AcceleratedClock, Clock, RealClock
from .config import (
    DEFAULT_MQTT_QUANTITIES,
    DURATION_HELP,
    FAULT_ARG_HELP,
    FAULT_KINDS,
    MQTT_QUANTITIES,
    MqttSettings,
    ScheduledFault,
    build_spec,
    make_fault,
    parse_duration_s,
    parse_fault_arg,
    parse_host_port,
    parse_params,
)
from .control import (
    DEFAULT_CONTROL_PORT,
    ControlError,
    ControlServer,
    demo_controller,
    request,
)
from .grid import GridFrequency
from .scenario import ScenarioError, load_scenario, run_scenario, shipped_scenarios
from .sim import Simulator

if TYPE_CHECKING:
    from .regmap import RegisterMap

log = logging.getLogger("hil")

DEFAULT_MODBUS_PORT = 5020
MQTT_PASSWORD_ENV = "BESS_HIL_MQTT_PASSWORD"  # noqa: S105 - a variable name, not a secret
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """A problem the user can fix: printed as one plain line, exit code 2, no traceback."""


# -- argument types -------------------------------------------------------------------------


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0 (got {text})")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 (got {text})")
    return value


def _soc(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of percent") from None
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"must be within 0..100 % (got {text})")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be 0..65535, 0 = any free port (got {text})")
    return value


def _unit_id(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a unit id") from None
    if not 0 <= value <= 247:
        raise argparse.ArgumentTypeError(f"must be 0..247 (got {text})")
    return value


def _duration(text: str) -> float:
    try:
        return parse_duration_s(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _fault(text: str) -> ScheduledFault:
    try:
        return parse_fault_arg(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _endpoint(default_port: int) -> Callable[[str], tuple[str, int]]:
    def parse(text: str) -> tuple[str, int]:
        try:
            return parse_host_port(text, default_port)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def _quantities(text: str) -> tuple[str, ...]:
    names = tuple(q.strip() for q in text.split(",") if q.strip())
    unknown = [q for q in names if q not in MQTT_QUANTITIES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown quantity {unknown}; choose from: {', '.join(MQTT_QUANTITIES)}"
        )
    return names


# -- parser ---------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bess-hil",
        description="Hardware-in-the-loop battery simulator: a BESS behind an inverter, "
        "speaking Modbus TCP and MQTT.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    # serve
    s = sub.add_parser("serve", help="serve a simulated battery over Modbus TCP (and MQTT)")
    s.add_argument(
        "--preset",
        "--map",
        dest="preset",
        default="sunspec",
        metavar="sunspec|generic|PATH.yaml",
        help="register map: a built-in name or a map file (default sunspec)",
    )
    s.add_argument("--host", default="127.0.0.1", help="Modbus listen address (default 127.0.0.1)")
    s.add_argument(
        "--port", type=_port, default=DEFAULT_MODBUS_PORT, help="Modbus TCP port (0 = any free)"
    )
    s.add_argument("--unit-id", type=_unit_id, default=None, help="Modbus unit id (default: map's)")
    s.add_argument(
        "--speed",
        type=_positive_float,
        default=1.0,
        help="simulated seconds per real second (default 1 = real time)",
    )
    s.add_argument(
        "--soc", type=_soc, default=50.0, help="initial state of charge, %% (default 50)"
    )
    s.add_argument("--temperature-c", type=float, default=None, help="initial cell temperature")
    s.add_argument("--capacity-kwh", type=_positive_float, help="usable capacity (default 200)")
    s.add_argument("--max-kw", type=_positive_float, help="inverter rating both ways (default 100)")
    s.add_argument(
        "--revert-timeout-s",
        type=_non_negative_float,
        help="fall back to 0 kW when the setpoint is not refreshed (default 60, 0 = never)",
    )
    s.add_argument("--seed", type=int, default=0, help="grid-frequency noise seed (default 0)")
    s.add_argument(
        "--fault",
        action="append",
        type=_fault,
        default=[],
        metavar="SPEC",
        help=f"inject a fault (repeatable): {FAULT_ARG_HELP}; START and DURATION in simulated "
        f"time. Kinds: {FAULT_KINDS}",
    )
    s.add_argument(
        "--control-host", default="127.0.0.1", help="control endpoint address (default loopback)"
    )
    s.add_argument(
        "--control-port",
        type=_port,
        default=DEFAULT_CONTROL_PORT,
        help=f"control endpoint port for 'bess-hil fault/status' (default {DEFAULT_CONTROL_PORT}, "
        "0 = any free)",
    )
    s.add_argument("--no-control", action="store_true", help="no control endpoint")
    s.add_argument("--no-live", action="store_true", help="no live status line")
    s.add_argument(
        "--demo-controller",
        action="store_true",
        help="drive the battery with a built-in controller (a slow charge/discharge sine) "
        "for demos; a real controller's writes still take effect",
    )
    m = s.add_argument_group("MQTT publisher")
    m.add_argument(
        "--mqtt-broker",
        type=_endpoint(1883),
        metavar="HOST[:PORT]",
        help="publish telemetry to this broker",
    )
    m.add_argument("--mqtt-topic-prefix", default="bess", help="topic prefix (default bess)")
    m.add_argument(
        "--mqtt-format", choices=("plain", "json"), default="plain", help="payload format"
    )
    m.add_argument(
        "--mqtt-single-topic",
        metavar="TOPIC",
        help="JSON only: all quantities in one message on TOPIC",
    )
    m.add_argument(
        "--mqtt-quantities",
        type=_quantities,
        default=DEFAULT_MQTT_QUANTITIES,
        metavar="Q1,Q2,...",
        help=f"what to publish (default {','.join(DEFAULT_MQTT_QUANTITIES)}); "
        f"choose from {', '.join(MQTT_QUANTITIES)}",
    )
    m.add_argument(
        "--mqtt-interval-s",
        type=_positive_float,
        default=1.0,
        help="publish interval in SIMULATED seconds (default 1)",
    )
    m.add_argument("--mqtt-qos", type=int, choices=(0, 1, 2), default=1, help="QoS (default 1)")
    m.add_argument("--mqtt-retain", action="store_true", help="publish telemetry retained")
    m.add_argument(
        "--mqtt-username", help=f"user name; the password is read from ${MQTT_PASSWORD_ENV}"
    )
    m.add_argument("--mqtt-tls", action="store_true", help="connect with TLS")
    m.add_argument("--mqtt-ca", metavar="FILE", help="CA certificate file for TLS")
    m.add_argument("--mqtt-cert", metavar="FILE", help="client certificate for TLS")
    m.add_argument("--mqtt-key", metavar="FILE", help="client key for TLS")
    m.add_argument(
        "--mqtt-tls-insecure", action="store_true", help="TLS without host-name check (test rigs)"
    )
    m.add_argument("--mqtt-client-id", help="client id (default bess-hil-<random>)")

    # run-scenario / scenarios
    r = sub.add_parser("run-scenario", help="run a scenario file and check its expectations")
    r.add_argument("file", metavar="FILE", help="scenario YAML file or shipped scenario name")
    r.add_argument("--json", action="store_true", help="print the report as JSON")
    sub.add_parser("scenarios", help="list the shipped scenarios")

    # fault / status / set-power (control endpoint clients)
    def control_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--control",
            type=_endpoint(DEFAULT_CONTROL_PORT),
            default=("127.0.0.1", DEFAULT_CONTROL_PORT),
            metavar="HOST:PORT",
            help=f"the simulator's control endpoint (default 127.0.0.1:{DEFAULT_CONTROL_PORT})",
        )

    f = sub.add_parser("fault", help="inject or clear a fault in a running simulator")
    fsub = f.add_subparsers(dest="fault_command", metavar="inject|clear", required=True)
    fi = fsub.add_parser("inject", help="inject a fault now")
    fi.add_argument("kind", metavar="KIND", help=f"one of: {FAULT_KINDS}")
    fi.add_argument("params", nargs="*", metavar="name=value", help="fault parameters")
    fi.add_argument(
        "--duration-s", type=_duration, help=f"how long ({DURATION_HELP}); default until cleared"
    )
    fi.add_argument("--start-in-s", type=_duration, default=0.0, help="delay (simulated)")
    control_arg(fi)
    fc = fsub.add_parser("clear", help="clear one kind of fault, or all")
    fc.add_argument("kind", nargs="?", default=None, metavar="KIND", help="default: all")
    control_arg(fc)

    st = sub.add_parser("status", help="measurements, faults and server statistics")
    st.add_argument("--json", action="store_true", help="print the raw JSON answer")
    control_arg(st)

    sp = sub.add_parser("set-power", help="write an AC power setpoint (+ discharge, - charge)")
    sp.add_argument("kw", type=float, metavar="KW")
    control_arg(sp)

    # maps
    mp = sub.add_parser("maps", help="list register maps, or show one")
    msub = mp.add_subparsers(dest="maps_command", metavar="show")
    ms = msub.add_parser("show", help="print a register map")
    ms.add_argument("name", metavar="NAME|PATH")
    return parser


# -- register maps --------------------------------------------------------------------------


def _load_map(name: str) -> RegisterMap:
    from . import regmap

    try:
        return regmap.load_register_map(name)
    except (regmap.RegisterMapError, OSError) as exc:
        raise UsageError(str(exc)) from None


def _cmd_maps(args: argparse.Namespace, out: TextIO) -> int:
    from . import regmap

    if args.maps_command == "show":
        rm = _load_map(args.name)
        print(f"Register map {rm.name} ({rm.source}): {rm.description}", file=out)
        print(f"base address {rm.base_address}, unit id {rm.unit_id}, layout {rm.layout}", file=out)
        print(rm.describe_text(), file=out)
        return EXIT_OK
    print(
        "Built-in register maps (bess-hil serve --preset NAME, or a PATH.yaml of your own):",
        file=out,
    )
    for name in regmap.BUILTIN_MAPS:
        rm = _load_map(name)
        print(
            f"  {name:<10} {len(rm.points):>3} points at {rm.base_address}  {rm.description}",
            file=out,
        )
    print("Show one: bess-hil maps show NAME", file=out)
    return EXIT_OK


# -- scenarios ------------------------------------------------------------------------------


def _cmd_run_scenario(args: argparse.Namespace, out: TextIO) -> int:
    try:
        report = run_scenario(args.file)
    except (ScenarioError, FileNotFoundError) as exc:
        raise UsageError(str(exc)) from None
    print(report.to_json() if args.json else report.format(), file=out)
    return EXIT_OK if report.passed else EXIT_FAILED


def _cmd_scenarios(out: TextIO) -> int:
    print("Shipped scenarios (bess-hil run-scenario NAME):", file=out)
    for path in shipped_scenarios():
        try:
            desc = load_scenario(path).description
        except ScenarioError as exc:
            desc = f"INVALID: {exc.problems[0]}"
        print(f"  {path.stem:<20} {desc}", file=out)
    return EXIT_OK


# -- control clients ------------------------------------------------------------------------


def _control(args: argparse.Namespace, payload: dict[str, Any]) -> dict[str, Any]:
    host, port = args.control
    try:
        return request(payload, host=host, port=port)
    except ControlError as exc:
        raise UsageError(str(exc)) from None


def _cmd_fault(args: argparse.Namespace, out: TextIO) -> int:
    if args.fault_command == "inject":
        try:  # check here first: a typo is a usage error, not a refusal by the simulator
            params = parse_params(args.params)
            make_fault(args.kind.lower(), params, duration_s=args.duration_s)
        except ValueError as exc:
            raise UsageError(f"fault inject: {exc}") from None
        payload: dict[str, Any] = {
            "cmd": "inject",
            "kind": args.kind.lower(),
            "params": params,
            "duration_s": args.duration_s,
            "start_in_s": args.start_in_s,
        }
        answer = _control(args, payload)
        if not answer.get("ok"):
            print(f"refused: {answer.get('error')}", file=sys.stderr)
            return EXIT_FAILED
        fault = answer["fault"]
        until = f"for {fault['duration_s']:g} s" if fault.get("duration_s") else "until cleared"
        print(f"injected {_fmt_fault(fault['kind'], fault['params'])} {until}", file=out)
        return EXIT_OK
    answer = _control(args, {"cmd": "clear", "kind": args.kind})
    if not answer.get("ok"):
        print(f"refused: {answer.get('error')}", file=sys.stderr)
        return EXIT_FAILED
    print(f"cleared {answer['cleared']} fault(s)", file=out)
    return EXIT_OK


def _fmt_fault(kind: str, params: Mapping[str, Any] | None) -> str:
    def value(v: Any) -> str:
        return ",".join(map(str, v)) if isinstance(v, list) else str(v)

    text = " ".join(f"{k}={value(v)}" for k, v in (params or {}).items())
    return f"{kind} {text}" if text else kind


def _cmd_set_power(args: argparse.Namespace, out: TextIO) -> int:
    answer = _control(args, {"cmd": "set_power", "kw": args.kw})
    if not answer.get("ok"):
        print(f"refused: {answer.get('error')}", file=sys.stderr)
        return EXIT_FAILED
    print(f"setpoint {answer['setpoint_kw']:g} kW (+ discharge, - charge)", file=out)
    return EXIT_OK


def _cmd_status(args: argparse.Namespace, out: TextIO) -> int:
    answer = _control(args, {"cmd": "status"})
    if args.json:
        print(json.dumps(answer, indent=2, ensure_ascii=False), file=out)
        return EXIT_OK if answer.get("ok") else EXIT_FAILED
    if not answer.get("ok"):
        print(f"refused: {answer.get('error')}", file=sys.stderr)
        return EXIT_FAILED
    m = answer["measurements"]
    print(f"time         {m['time']}  (clock x{answer.get('clock_speed', 1):g})", file=out)
    print(f"status       {m['status']}", file=out)
    true = answer.get("physics") or {}

    def real(name: str, fmt: str) -> str:
        # Measurement faults change what is reported: show the truth beside it when it differs.
        if name in true and format(true[name], fmt) != format(m[name], fmt):
            return f"  [true {format(true[name], fmt)}]"
        return ""

    print(f"SoC          {m['soc_pct']:.2f} %{real('soc_pct', '.2f')}", file=out)
    print(
        f"power        {m['power_kw']:.2f} kW{real('power_kw', '.2f')}  "
        f"(setpoint {m['setpoint_kw']:.2f} kW)",
        file=out,
    )
    print(f"temperature  {m['temperature_c']:.2f} °C", file=out)
    print(f"frequency    {m['frequency_hz']:.3f} Hz", file=out)
    print(f"voltage      {m['voltage_v']:.1f} V", file=out)
    print(
        f"energy       charged {m['charged_kwh']:.2f} kWh, "
        f"discharged {m['discharged_kwh']:.2f} kWh",
        file=out,
    )
    print(f"alarms       {', '.join(m['alarms']) or '-'}", file=out)
    faults = answer.get("faults") or []
    if not faults:
        print("faults       -", file=out)
    for i, f in enumerate(faults):
        left = "" if f["remaining_s"] is None else f", {f['remaining_s']:.0f} s left"
        state = "active" if f["active"] else "scheduled"
        label = "faults" if i == 0 else ""
        print(f"{label:<12} {_fmt_fault(f['kind'], f['params'])} ({state}{left})", file=out)
    for name, stats in (answer.get("servers") or {}).items():
        text = ", ".join(f"{k} {v}" for k, v in stats.items())
        print(f"{name:<12} {text}", file=out)
    return EXIT_OK


# -- serve ----------------------------------------------------------------------------------


def _as_dict(obj: object) -> dict[str, Any]:
    """Server statistics as a plain dict, whatever shape the server keeps them in."""
    if obj is None:
        return {}
    if isinstance(obj, Mapping):
        return dict(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    as_dict = getattr(obj, "as_dict", None)
    if callable(as_dict):
        return dict(as_dict())
    return {k: v for k, v in vars(obj).items() if not k.startswith("_")}


def _check_port_free(host: str, port: int, what: str, flag: str) -> None:
    """Fail early, in plain words, when a listening port is taken."""
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise UsageError(f"cannot listen for {what} on {host!r}: {exc.strerror}") from None
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        if os.name != "nt":
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio does
        try:
            probe.bind(addr)
        except OSError as exc:
            raise UsageError(_bind_message(exc, host, port, what, flag)) from None


def _bind_message(exc: OSError, host: str, port: int, what: str, flag: str) -> str:
    if exc.errno == errno.EADDRINUSE:
        return (
            f"cannot listen for {what} on {host}:{port}: the port is already in use "
            f"(another bess-hil or device simulator?). Stop it or choose another with {flag}."
        )
    if exc.errno == errno.EACCES:
        return (
            f"cannot listen for {what} on {host}:{port}: permission denied "
            f"(ports below 1024 need root). Choose another with {flag}."
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"cannot listen for {what} on {host}:{port}: this machine has no address {host}"
    return f"cannot listen for {what} on {host}:{port}: {exc.strerror or exc}"


def _make_clock(speed: float) -> Clock:
    return RealClock() if speed == 1.0 else AcceleratedClock(speed)


def _fmt_live(sim: Simulator, requests_per_s: float | None, mqtt_state: str | None) -> str:
    m = sim.measure()
    t = datetime.fromtimestamp(m.timestamp, UTC).strftime("%H:%M:%S")
    active = sorted({f.kind.value for f in sim.faults.all() if f.active(m.timestamp)})
    parts = [
        f"{t}",
        f"SoC {m.soc_pct:6.2f}%",
        f"P {m.power_kw:+8.2f}kW",
        f"sp {m.setpoint_kw:+8.2f}",
        f"T {m.temperature_c:5.1f}°C",
        f"f {m.frequency_hz:6.3f}Hz",
        f"alarms {','.join(sorted(a.value for a in m.alarms)) or '-'}",
        f"faults {','.join(active) or '-'}",
    ]
    if requests_per_s is not None:
        parts.append(f"req/s {requests_per_s:.0f}")
    if mqtt_state is not None:
        parts.append(f"mqtt {mqtt_state}")
    return "  ".join(parts)


async def _serve(args: argparse.Namespace, out: TextIO) -> int:
    from .modbus_server import ModbusBatteryServer
    from .mqtt import MqttPublisher

    overrides: dict[str, float] = {}
    if args.capacity_kwh is not None:
        overrides["capacity_kwh"] = args.capacity_kwh
    if args.max_kw is not None:
        overrides["max_charge_kw"] = overrides["max_discharge_kw"] = args.max_kw
    if args.revert_timeout_s is not None:
        overrides["revert_timeout_s"] = args.revert_timeout_s
    try:
        spec = build_spec(overrides)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    mqtt_settings: MqttSettings | None = None
    if args.mqtt_broker is not None:
        password = os.environ.get(MQTT_PASSWORD_ENV)
        try:
            mqtt_settings = MqttSettings(
                host=args.mqtt_broker[0],
                port=args.mqtt_broker[1],
                client_id=args.mqtt_client_id,
                username=args.mqtt_username,
                password=SecretStr(password) if args.mqtt_username and password else None,
                tls=bool(args.mqtt_tls or args.mqtt_ca or args.mqtt_cert or args.mqtt_tls_insecure),
                ca_certs=args.mqtt_ca,
                certfile=args.mqtt_cert,
                keyfile=args.mqtt_key,
                tls_insecure=args.mqtt_tls_insecure,
                topic_prefix=args.mqtt_topic_prefix,
                quantities=args.mqtt_quantities,
                payload_format="json" if args.mqtt_single_topic else args.mqtt_format,
                single_topic=args.mqtt_single_topic,
                qos=args.mqtt_qos,
                retain=args.mqtt_retain,
                interval_s=args.mqtt_interval_s,
            )
        except ValueError as exc:
            raise UsageError(f"MQTT settings: {exc}") from None

    regmap = _load_map(args.preset)
    unit_id = args.unit_id if args.unit_id is not None else regmap.unit_id
    clock = _make_clock(args.speed)
    # Physics steps of at most 1 simulated second, coarser only for very fast clocks.
    sim = Simulator(
        spec,
        clock,
        soc_pct=args.soc,
        temperature_c=args.temperature_c,
        grid=GridFrequency(seed=args.seed),
        max_step_s=max(1.0, args.speed / 1000.0),
    )
    t0 = sim.state.timestamp
    for scheduled in args.fault:
        sim.inject(scheduled.to_fault(t0))

    _check_port_free(args.host, args.port, "Modbus TCP", "--port")
    if not args.no_control:
        _check_port_free(
            args.control_host, args.control_port, "the control endpoint", "--control-port"
        )

    print(f"Register map {regmap.name} ({regmap.source}):", file=out)
    print(regmap.describe_text(), file=out)
    print(file=out)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)

    async with contextlib.AsyncExitStack() as stack:
        try:
            server = await stack.enter_async_context(
                ModbusBatteryServer(sim, regmap, host=args.host, port=args.port, unit_id=unit_id)
            )
        except OSError as exc:
            message = _bind_message(exc, args.host, args.port, "Modbus TCP", "--port")
            raise UsageError(message) from None
        print(
            f"Modbus TCP   listening on {args.host}:{server.port} unit {unit_id} "
            f"(map {regmap.name})",
            file=out,
        )
        publisher: MqttPublisher | None = None
        if mqtt_settings is not None:
            publisher = await stack.enter_async_context(MqttPublisher(sim, mqtt_settings))
            topics = (
                mqtt_settings.single_topic
                if mqtt_settings.single_topic
                else ", ".join(mqtt_settings.topic_for(q) for q in mqtt_settings.quantities)
            )
            state = "connected" if publisher.connected else "connecting"
            print(
                f"MQTT         {mqtt_settings.host}:{mqtt_settings.port} ({state}) -> {topics}; "
                f"availability {mqtt_settings.status_topic}; every {mqtt_settings.interval_s:g} "
                "simulated s",
                file=out,
            )
        if not args.no_control:
            stats: dict[str, Callable[[], Mapping[str, Any]]] = {
                "modbus": lambda: _as_dict(getattr(server, "stats", None))
            }
            if publisher is not None:
                pub = publisher
                stats["mqtt"] = lambda: {"connected": pub.connected, **pub.stats.as_dict()}
            try:
                control = await stack.enter_async_context(
                    ControlServer(sim, host=args.control_host, port=args.control_port, stats=stats)
                )
            except OSError as exc:
                raise UsageError(
                    _bind_message(
                        exc,
                        args.control_host,
                        args.control_port,
                        "the control endpoint",
                        "--control-port",
                    )
                ) from None
            print(
                f"Control      {args.control_host}:{control.port} "
                f"(bess-hil status --control {args.control_host}:{control.port})",
                file=out,
            )
        speed = "real time" if args.speed == 1.0 else f"x{args.speed:g}"
        print(
            f"Battery      {spec.capacity_kwh:g} kWh, {spec.max_discharge_kw:g} kW, "
            f"SoC {args.soc:g} %, clock {speed}, revert timeout {spec.revert_timeout_s:g} s",
            file=out,
        )
        if args.demo_controller:
            print("Controller   demo: +/-80 % of rating, sine with a 10 min period", file=out)
        for scheduled in args.fault:
            when = f" at +{scheduled.offset_s:g} s" if scheduled.offset_s else ""
            length = f" for {scheduled.duration_s:g} s" if scheduled.duration_s else ""
            label = _fmt_fault(scheduled.kind.value, scheduled.params)
            print(f"Fault        {label}{when}{length}", file=out)
        print("Ready. Ctrl-C to stop.", file=out, flush=True)

        tasks = [asyncio.create_task(sim.run(tick_s=0.1), name="simulator")]
        if args.demo_controller:
            tasks.append(asyncio.create_task(demo_controller(sim), name="demo-controller"))
        try:
            await _live(sim, server, publisher, stop, out, enabled=not args.no_live)
        finally:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if not args.no_live and out.isatty():
                print(file=out)
            print("Stopping.", file=out, flush=True)
    return EXIT_OK


async def _live(
    sim: Simulator,
    server: Any,
    publisher: Any,
    stop: asyncio.Event,
    out: TextIO,
    *,
    enabled: bool,
) -> None:
    tty = out.isatty()
    last_requests: float | None = None
    last_time = time.monotonic()
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)
        if stop.is_set() or not enabled:
            continue
        now = time.monotonic()
        stats = _as_dict(getattr(server, "stats", None))
        requests = stats.get("requests")
        rate = None
        if isinstance(requests, int | float):
            if last_requests is not None:
                rate = (requests - last_requests) / max(now - last_time, 1e-6)
            last_requests = float(requests)
        last_time = now
        mqtt_state = None
        if publisher is not None:
            mqtt_state = "silent" if publisher.silent else ("up" if publisher.connected else "down")
        line = _fmt_live(sim, rate, mqtt_state)
        if tty:
            out.write("\r" + line + "\x1b[K")
        else:
            out.write(line + "\n")
        out.flush()


# -- main -----------------------------------------------------------------------------------


def _configure_logging(verbose: int) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s", stream=sys.stderr
    )
    if verbose < 2:
        logging.getLogger("pymodbus").setLevel(logging.ERROR)


def _fail(message: str) -> NoReturn:
    print(f"bess-hil: error: {message}", file=sys.stderr)
    raise SystemExit(EXIT_USAGE)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    out = sys.stdout
    _configure_logging(args.verbose)
    if args.command == "run-scenario" and not args.verbose:
        # Alarms and faults are the point of a scenario: its report shows them, not the log.
        logging.getLogger("hil").setLevel(logging.ERROR)
    try:
        if args.command == "serve":
            try:
                return asyncio.run(_serve(args, out))
            except KeyboardInterrupt:  # before the signal handlers were in place
                return EXIT_OK
        if args.command == "run-scenario":
            return _cmd_run_scenario(args, out)
        if args.command == "scenarios":
            return _cmd_scenarios(out)
        if args.command == "fault":
            return _cmd_fault(args, out)
        if args.command == "status":
            return _cmd_status(args, out)
        if args.command == "set-power":
            return _cmd_set_power(args, out)
        if args.command == "maps":
            return _cmd_maps(args, out)
    except UsageError as exc:
        _fail(str(exc))
    parser.error(f"unknown command {args.command!r}")
