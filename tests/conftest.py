"""Shared fixtures: real components on loopback for the integration tests."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

BROKER_START_TIMEOUT_S = 10.0


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _mqtt_answers(host: str, port: int, timeout_s: float = 1.0) -> bool:
    """True if an MQTT broker accepts a real CONNECT at host:port (not just a TCP socket)."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except OSError:
        return False
    accepted = threading.Event()

    def on_connect(
        client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any
    ) -> None:
        if not reason_code.is_failure:
            accepted.set()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"probe-{port}-{time.time_ns()}")
    client.on_connect = on_connect
    try:
        client.connect(host, port, keepalive=5)
    except OSError:
        return False
    client.loop_start()
    try:
        return accepted.wait(timeout_s)
    finally:
        client.disconnect()
        client.loop_stop()


@pytest.fixture(scope="session")
def mqtt_broker() -> Iterator[tuple[str, int]]:
    """(host, port) of an MQTT broker: the local one on 1883, or a Mosquitto we start."""
    if _mqtt_answers("127.0.0.1", 1883):
        yield "127.0.0.1", 1883
        return
    exe = shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if Path(p).exists()),
        None,
    )
    if exe is None:
        pytest.fail(
            "the MQTT integration tests need a broker: none answers on 127.0.0.1:1883 and "
            "'mosquitto' is not installed. Install it (apt-get install -y mosquitto) or start "
            "a broker on 127.0.0.1:1883.",
            pytrace=False,
        )
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="mosquitto-") as tmp:
        conf = Path(tmp) / "mosquitto.conf"
        conf.write_text(
            f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
            "log_dest stderr\nlog_type error\nlog_type warning\n"
        )
        log_path = Path(tmp) / "mosquitto.log"
        with log_path.open("wb") as log_file:
            proc = subprocess.Popen(
                [exe, "-c", str(conf)], stdout=log_file, stderr=subprocess.STDOUT
            )
            try:
                deadline = time.monotonic() + BROKER_START_TIMEOUT_S
                while not _mqtt_answers("127.0.0.1", port, timeout_s=0.5):
                    if proc.poll() is not None or time.monotonic() > deadline:
                        pytest.fail(
                            f"mosquitto did not start on 127.0.0.1:{port}: "
                            f"{log_path.read_text(errors='replace')[-2000:]}",
                            pytrace=False,
                        )
                    time.sleep(0.05)
                yield "127.0.0.1", port
            finally:
                proc.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=5)
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
