"""`make demo`: the HIL battery and an edge agent in front of it, with a live status line.

Run from the repository root: `python deploy/demo/demo.py`. Ctrl-C stops everything (the
agent writes 0 kW to the battery on its way out).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

from edge_agent.config import load_config

ROOT = Path(__file__).resolve().parents[2]
SITE_FILE = Path(__file__).with_name("edge-site.yaml")
PRICE_FILE = ROOT.parent / "shared" / "data" / "be_dayahead_2022_2023.csv"
PATTERN_KW = (-80.0, -80.0, 0.0, 80.0, 80.0, 0.0)  # charge, charge, hold, discharge, ...
QUARTER_S = 900


def _create_api_key(python: str, env: dict[str, str], key_file: Path) -> str:
    """An admin key for the demo, made with `bess-plane keys create` on the demo's store and
    kept in `key_file` (mode 0600); the key itself is never printed."""
    result = subprocess.run(  # noqa: S603 - our own module
        [python, "-m", "control_plane", "keys", "create", "--name", "make demo", "--role", "admin"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"could not create the demo's API key: {result.stderr.strip()}")
    key = result.stdout.strip()
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(key + "\n")
    return key


def _load_prices(python: str, env: dict[str, str], price_file: Path) -> str:
    """The demo's prices, without internet: the shared Belgian file as it is (zone BE) and,
    for AT, the 90 days before today to tomorrow replayed from its last year's day curves,
    stored as source `demo:...` and flagged as synthetic (never presented as ENTSO-E data).
    What happened, for the banner."""
    if not price_file.is_file():
        return f"none ({price_file} not found: /api/market-data says so)"
    steps = (
        ["prices", "import", str(price_file), "--zone", "BE"],
        # 90 days back: the forecasts (ridge: 72 days) and the optimiser's forecast mode work.
        ["prices", "demo", "--zone", "AT", "--shape", str(price_file), "--past-days", "90"],
    )
    for step in steps:
        result = subprocess.run(  # noqa: S603 - our own module
            [python, "-m", "control_plane", *step],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            return f"not loaded: {result.stderr.strip()}"
    return (
        f"BE from {price_file.name}; AT synthetic, 90 days back to tomorrow: {price_file.name}'s "
        "day curves replayed (source demo:, flagged)"
    )


def _post_demo_schedule(plane_url: str, site_id: str, api_key: str) -> int:
    """The desk's path: POST a schedule to the plane, which pushes it to the agent."""
    now = time.time()
    start = now - now % QUARTER_S

    def iso(t: float) -> str:
        return datetime.fromtimestamp(t, UTC).isoformat()

    intervals = [
        {"start": iso(start + i * QUARTER_S), "power_kw": PATTERN_KW[i % len(PATTERN_KW)]}
        for i in range(4 * 6)
    ]
    body = json.dumps(
        {
            "valid_from": iso(start),
            "valid_until": iso(start + len(intervals) * QUARTER_S),
            "intervals": intervals,
            "origin": "make demo",
        }
    ).encode()
    request = urllib.request.Request(  # noqa: S310 - loopback
        f"{plane_url}/api/sites/{site_id}/schedules",
        data=body,
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {api_key}"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=5) as reply:  # noqa: S310 - loopback
        return int(json.loads(reply.read())["version"])


def _metric(body: str, name: str, labels: str = "") -> float | None:
    match = re.search(rf"^{re.escape(name + labels)} (\S+)$", body, re.MULTILINE)
    return float(match.group(1)) if match else None


def _status_line(metrics_url: str) -> str:
    try:
        with urllib.request.urlopen(metrics_url, timeout=2) as reply:  # noqa: S310 - loopback
            body = reply.read().decode()
    except OSError as exc:
        return f"agent metrics not reachable yet ({exc.__class__.__name__})"

    def fmt(value: float | None, spec: str) -> str:
        return "   -  " if value is None else format(value, spec)

    soc = _metric(body, "bess_edge_soc_percent")
    power = _metric(body, "bess_edge_active_power_kw")
    requested = _metric(body, "bess_edge_setpoint_requested_kw")
    applied = _metric(body, "bess_edge_setpoint_applied_kw")
    temp = _metric(body, "bess_edge_temperature_celsius")
    freq = _metric(body, "bess_edge_grid_frequency_hertz")
    queued = _metric(body, "bess_edge_outbox_rows", '{stream="telemetry"}')
    active_reasons = re.findall(r'^bess_edge_guard_active\{reason="(\w+)"\} 1\.0$', body, re.M)
    active = ",".join(active_reasons) or "-"
    return (
        f"{time.strftime('%H:%M:%S')}  SoC {fmt(soc, '5.1f')} %  P {fmt(power, '+6.1f')} kW  "
        f"asked {fmt(requested, '+6.1f')} → set {fmt(applied, '+6.1f')} kW  "
        f"T {fmt(temp, '4.1f')} °C  f {fmt(freq, '6.3f')} Hz  "
        f"queued {fmt(queued, '.0f')}  guard {active}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--modbus-port", type=int, default=5020)
    parser.add_argument("--control-port", type=int, default=5021)
    parser.add_argument("--plane-port", type=int, default=9000)
    parser.add_argument("--speed", type=float, default=10.0, help="simulated time speed-up")
    parser.add_argument(
        "--prices",
        type=Path,
        default=PRICE_FILE,
        help="price CSV for the demo's market data (default: the shared Belgian file)",
    )
    args = parser.parse_args()

    config = load_config(SITE_FILE)
    demo_dir = ROOT / "var" / "demo"
    shutil.rmtree(demo_dir, ignore_errors=True)  # every demo starts afresh
    config.storage.data_dir.mkdir(parents=True, exist_ok=True)
    python = sys.executable
    hil = subprocess.Popen(  # noqa: S603 - our own module
        [
            python,
            "-m",
            "hil",
            "serve",
            "--preset",
            "sunspec",
            "--host",
            "127.0.0.1",
            "--port",
            str(args.modbus_port),
            "--control-port",
            str(args.control_port),
            "--speed",
            str(args.speed),
            # In simulated seconds: 600 s at 10x is a minute of wall time, well above the
            # agent's 5 s refresh, so the battery only reverts when the agent is gone.
            "--revert-timeout-s",
            "600",
            "--soc",
            "50",
            "--no-live",
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        start_new_session=True,  # Ctrl-C reaches only us: we stop the agent first
    )
    plane_env = {
        **os.environ,
        "BESS_PLANE_DATA_DIR": str(ROOT / "var" / "demo" / "plane"),
        "BESS_PLANE_HTTP_PORT": str(args.plane_port),
        "BESS_PLANE_GRPC_PORT": "50051",
    }
    key_file = demo_dir / "api-key"
    try:
        api_key = _create_api_key(python, plane_env, key_file)
    except RuntimeError as exc:
        print(exc, file=sys.stderr)
        hil.terminate()
        return 1
    prices = _load_prices(python, plane_env, args.prices)
    plane_log = (ROOT / "var" / "demo" / "plane.log").open("a")
    plane = subprocess.Popen(  # noqa: S603 - our own module
        [python, "-m", "control_plane", "serve"],
        cwd=ROOT,
        env=plane_env,
        stdout=plane_log,
        stderr=plane_log,
        start_new_session=True,
    )
    time.sleep(1.5)
    if plane.poll() is not None:
        print(
            f"the control plane did not start (exit {plane.returncode}); is port "
            f"{args.plane_port} or 50051 in use? see var/demo/plane.log",
            file=sys.stderr,
        )
        hil.terminate()
        return 1
    if hil.poll() is not None:
        print(
            f"the simulator did not start (exit {hil.returncode}); is port "
            f"{args.modbus_port} free?",
            file=sys.stderr,
        )
        return 1
    log_file = (ROOT / "var" / "demo" / "edge-agent.log").open("a")
    agent = subprocess.Popen(  # noqa: S603 - our own module
        [python, "-m", "edge_agent", "run", "-c", str(SITE_FILE)],
        cwd=ROOT,
        stderr=log_file,
        start_new_session=True,
    )
    metrics_url = f"http://{config.metrics.host}:{config.metrics.port}/metrics"
    plane_url = f"http://127.0.0.1:{args.plane_port}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # the plane knows a site once its agent said hello
        try:
            site = urllib.request.Request(  # noqa: S310 - loopback
                f"{plane_url}/api/sites/{config.site_id}",
                headers={"Authorization": f"Bearer {api_key}"},
            )
            with urllib.request.urlopen(site, timeout=2):  # noqa: S310 - loopback
                break
        except OSError:
            time.sleep(0.3)
    try:
        version = _post_demo_schedule(plane_url, config.site_id, api_key)
    except OSError as exc:
        print(f"could not post the demo schedule to the plane: {exc}", file=sys.stderr)
        version = 0
    print(
        "\nPhoenyra BESS demo\n"
        f"  simulated battery  Modbus TCP 127.0.0.1:{args.modbus_port} unit 1 (SunSpec), "
        f"time x{args.speed:g}\n"
        f"  simulator control  bess-hil status --control 127.0.0.1:{args.control_port}\n"
        f"                     bess-hil fault inject frequency_event hz=49.8 --duration-s 60 "
        f"--control 127.0.0.1:{args.control_port}\n"
        f"  edge agent         metrics {metrics_url}\n"
        f"                     log var/demo/edge-agent.log\n"
        f"                     bess-edge doctor -c {SITE_FILE.relative_to(ROOT)}\n"
        f"  demo schedule      v{version}, posted to the plane: charge 80 kW, hold, discharge "
        "80 kW, hold (15-minute intervals)\n"
        f"  market prices      {prices}\n"
        f"                     http://127.0.0.1:{args.plane_port}/api/market-data, "
        "/api/market/prices?zone=AT\n"
        f"  control plane      http://127.0.0.1:{args.plane_port}/docs (every endpoint)\n"
        f"                     http://127.0.0.1:{args.plane_port}/api/bess/status\n"
        f"                     http://127.0.0.1:{args.plane_port}/metrics, EdgeLink gRPC "
        "127.0.0.1:50051, log var/demo/plane.log\n"
        f"  API key (admin)    in {key_file.relative_to(ROOT)} (mode 0600), e.g.\n"
        '                     curl -H "Authorization: Bearer $(cat var/demo/api-key)" '
        f"http://127.0.0.1:{args.plane_port}/api/bess/status\n"
        "Ctrl-C to stop.\n"
    )
    stopping = False

    def stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        while not stopping:
            if agent.poll() is not None:
                print(
                    f"the edge agent exited ({agent.returncode}); see var/demo/edge-agent.log",
                    file=sys.stderr,
                )
                return 1
            print(_status_line(metrics_url), flush=True)
            for _ in range(20):
                if stopping:
                    break
                time.sleep(0.1)
    finally:
        print("\nstopping: agent first (it sets the battery to 0 kW), then the plane and simulator")
        for proc in (agent, plane, hil):
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
        log_file.close()
        plane_log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
