"""``bess-edge``: the edge agent's command line, for the technician beside the battery.

    bess-edge init [--preset sunspec] [--site-id ID] [--host IP] [--uplink HOST:PORT] [-o FILE]
    bess-edge presets [show NAME]
    bess-edge doctor -c site.yaml [--json]
    bess-edge read -c site.yaml [--json]
    bess-edge scan HOST [--port 502] [--unit-id 1]
    bess-edge schedule -c site.yaml set --kw 50 --from now --until +1h
    bess-edge schedule -c site.yaml show | clear
    bess-edge run -c site.yaml
    bess-edge config -c site.yaml [--json]
    bess-edge env

Exit codes: 0 fine; 1 a check failed or the device could not be read; 2 bad input or an
unusable config (the problems are printed, never a traceback); 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import importlib
import json
import logging
import math
import os
import re
import shutil
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Protocol, TextIO, cast

import yaml

from .config import ENV_VARS, SITE_ID_PATTERN, ConfigError, SiteConfig, apply_env, load_config
from .doctor import (
    DoctorOptions,
    PointReadout,
    ReadResult,
    format_quantity,
    read_device,
    run_doctor,
)
from .modbus_source import (
    BUILTIN_PRESETS,
    PRESETS_DIR,
    PointDef,
    PresetDef,
    PresetError,
    load_preset,
)
from .mqtt_source import MqttSourceError
from .outbox import OutboxError
from .rest_ingest import RestIngestError
from .schedule_store import (
    DEFAULT_INTERVAL_S,
    Schedule,
    ScheduleError,
    ScheduleInterval,
    ScheduleSource,
    ScheduleStatus,
    ScheduleStore,
    ScheduleStoreError,
)
from .sunspec import scan

log = logging.getLogger("edge_agent.cli")

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
DEFAULT_CONFIG = "site.yaml"
TEMPLATE_PATH = Path(__file__).with_name("site_template.yaml")
DEFAULT_PRESET = "sunspec"
DEFAULT_HOST = "192.168.1.100"
MAX_SCHEDULE_S = 7 * 86_400  # a local override longer than a week is a typo
SECRET_KEYS = re.compile(r"(^|_)(password|api_key|token|secret)$", re.IGNORECASE)
_HOST = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._:-]*[A-Za-z0-9.])?$|^\[[0-9A-Fa-f:.]+\]$")


class UsageError(Exception):
    """A problem the user can fix: printed as one plain message, exit code 2, no traceback."""


class RunAgent(Protocol):
    def __call__(
        self, config: SiteConfig, *, stop: asyncio.Event | None = None
    ) -> Awaitable[int]: ...


# -- init -------------------------------------------------------------------------------------


def _unit_id_note(preset: PresetDef) -> str:
    return f"the {preset.name} preset's default"


def _register_overrides(preset: PresetDef) -> str:
    if preset.layout != "plain":
        return (
            "    # SunSpec finds its registers by itself (discovery at 40000, 0 or 50000): the\n"
            "    # BESS_MODBUS_*_REGISTER overrides apply to plain maps such as generic only."
        )
    by_quantity = {p.quantity.value: p.address for p in preset.points or [] if p.quantity}
    lines = ["    # Move a point of this plain map to another register (rarely needed):"]
    for key, quantity, var in (
        ("soc_register", "soc_pct", "BESS_MODBUS_SOC_REGISTER"),
        ("power_register", "active_power_kw", "BESS_MODBUS_POWER_REGISTER"),
        ("temp_register", "temperature_c", "BESS_MODBUS_TEMP_REGISTER"),
    ):
        if quantity in by_quantity:
            lines.append(f"    # {key}: {by_quantity[quantity]}  # {var}")
    return "\n".join(lines)


def _revert_timeout(preset: PresetDef) -> str:
    ctl = preset.control
    if ctl.mode == "none":
        return "    # This preset reads only: the agent cannot command power through it."
    if preset.name == "victron_gx":
        return (
            "    # Victron's ESS setpoint (2700) NEVER reverts: if the agent stops, the GX keeps\n"
            "    # regulating to the last setpoint. There is no device-side fallback to 0 W."
        )
    if ctl.point_name("revert_timeout") is not None:
        return (
            "    # The device falls back to 0 W when the setpoint is not refreshed within its\n"
            "    # revert timeout; the agent reads it and refreshes well within. Set this to\n"
            "    # make the agent write it to the device once per connection:\n"
            "    # revert_timeout_s: 60"
        )
    return (
        "    # The device's fallback timeout is a device parameter the agent cannot read: set\n"
        "    # it here, so setpoints are refreshed in time (executor.refresh_interval_s < it):\n"
        "    # revert_timeout_s: 60"
    )


def _uplink_block(target: str | None) -> str:
    lines = [
        f"uplink:\n  target: {json.dumps(target or 'plane.example.com:50051')}"
        "  # the plane's EdgeLink endpoint, host:port  BESS_UPLINK_TARGET",
        "  tls:",
        "    enabled: true  # required whenever a token crosses the network  "
        "BESS_UPLINK_TLS_ENABLED",
        "    # Mutual TLS with the plane's own CA: `bess-plane site-cert SITE_ID` on the plane",
        "    # writes these three files (all three or none); copy them here, site.key readable",
        "    # by the agent's user only. Without them: server TLS with the system CAs.",
        "    # ca_file: /etc/bess-edge/tls/ca.crt  # the plane's CA  BESS_UPLINK_TLS_CA_FILE",
        "    # cert_file: /etc/bess-edge/tls/site.crt  # this site  BESS_UPLINK_TLS_CERT_FILE",
        "    # key_file: /etc/bess-edge/tls/site.key  # its key  BESS_UPLINK_TLS_KEY_FILE",
        "    # server_name: plane.example.com  # only when target is an address the plane's",
        "    #   certificate does not name  BESS_UPLINK_TLS_SERVER_NAME",
        "  # The site token: the NAME of the variable that holds it (never the token itself),",
        "  # or a file holding it (mode 0600). Not needed with a site certificate.",
        "  token_env: BESS_UPLINK_TOKEN",
        "  # token_file: /etc/bess-edge/token",
    ]
    text = "\n".join(lines)
    if target is None:
        text = "\n".join(
            line if line.lstrip().startswith("#") else f"# {line}" for line in text.splitlines()
        )
    return text


def render_site_template(*, preset: str, site_id: str, host: str, uplink: str | None = None) -> str:
    """The commented starter config for a preset; it always loads with ``load_config``."""
    if preset not in BUILTIN_PRESETS:
        raise UsageError(f"unknown preset {preset!r}; choose one of {', '.join(BUILTIN_PRESETS)}")
    if not re.fullmatch(SITE_ID_PATTERN, site_id):
        raise UsageError(
            f"--site-id {site_id!r}: use 1-63 letters, digits, '.', '_' or '-', starting with a "
            "letter or digit"
        )
    if not _HOST.fullmatch(host):
        raise UsageError(f"--host {host!r} is not an IP address or host name")
    if uplink is not None:
        name, sep, port = uplink.rpartition(":")
        if not sep or not name or not port.isdigit() or not 0 < int(port) < 65536:
            raise UsageError(f"--uplink {uplink!r}: give host:port, e.g. plane.example.com:50051")
    definition = load_preset(preset)
    values = {
        "preset": preset,
        "site_id": json.dumps(site_id),
        "host": json.dumps(host),
        "unit_id": str(definition.unit_id),
        "unit_id_note": _unit_id_note(definition),
        "preset_description": definition.description or preset,
        "register_overrides": _register_overrides(definition),
        "revert_timeout": _revert_timeout(definition),
        "uplink": _uplink_block(uplink),
    }
    try:
        text = TEMPLATE_PATH.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(
            f"the starter template {TEMPLATE_PATH.name} is missing from this installation "
            "(package data): reinstall phoenyra-bess[edge]"
        ) from None
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", value)
    return text


def _default_site_id() -> str:
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", socket.gethostname()).strip("-._")
    return (name or "site-1")[:63]


def cmd_init(args: argparse.Namespace, out: TextIO) -> int:
    text = render_site_template(
        preset=args.preset, site_id=args.site_id, host=args.host, uplink=args.uplink
    )
    # A template that does not load is a bug here, not the user's problem: fail loudly.
    from .config import parse_config

    parse_config(text, source="<site template>", env={})
    if args.output in (None, "-"):
        out.write(text)
        return EXIT_OK
    path = Path(args.output)
    if path.exists() and not args.force:
        raise UsageError(f"{path} exists already; use --force to overwrite it")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w" if args.force else "x", encoding="utf-8") as f:
            f.write(text)
    except FileExistsError:
        raise UsageError(f"{path} exists already; use --force to overwrite it") from None
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from None
    preset = load_preset(args.preset)
    print(
        f"wrote {path} (preset {args.preset}, unit id {preset.unit_id}, site {args.site_id}).\n"
        f"Next: set the battery's ratings in it, then `bess-edge doctor -c {path}`.",
        file=sys.stderr,
    )
    return EXIT_OK


# -- presets ----------------------------------------------------------------------------------


def _verified_short(preset: PresetDef) -> str:
    text = preset.verified.lower()
    parts = []
    if "hil" in text or "simulator" in text:
        parts.append("hil simulator")
    if "fake device" in text:
        parts.append("fake device")
    if not parts:
        return "not verified" if not text else "see `presets show`"
    status = " + ".join(parts)
    if "not against" in text and "hardware" in text:
        status += "; no hardware"
    return status


def _control_short(preset: PresetDef) -> str:
    ctl = preset.control
    if ctl.mode == "sunspec_storage":
        return f"sunspec_storage ({ctl.strategy})"
    return ctl.mode


def _table(rows: Sequence[Sequence[str]], out: TextIO) -> None:
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = [f"{cell!s:<{w}}" for cell, w in zip(row, widths, strict=True)]
        out.write("  ".join(cells).rstrip() + "\n")


def cmd_presets(args: argparse.Namespace, out: TextIO) -> int:
    if getattr(args, "name", None):
        return _show_preset(args.name, out)
    rows: list[list[str]] = [["NAME", "UNIT", "CONTROL", "VERIFIED AGAINST", "DESCRIPTION"]]
    for name in BUILTIN_PRESETS:
        p = load_preset(name)
        rows.append([name, str(p.unit_id), _control_short(p), _verified_short(p), p.description])
    _table(rows, out)
    out.write(
        f"\n`bess-edge presets show NAME` prints a preset's registers; {PRESETS_DIR}/README.md "
        "has the sources.\nBefore the agent commands power, compare `bess-edge read` with the "
        "device's own display.\n"
    )
    return EXIT_OK


def _control_text(preset: PresetDef) -> list[str]:
    ctl = preset.control
    if ctl.mode == "none":
        return ["control: none (reads only: the agent cannot command power)"]
    lines: list[str] = []
    if ctl.mode == "setpoint":
        text = f"control: setpoint — writes {ctl.setpoint} (+ = discharge after sign)"
        if ctl.enable is not None:
            text += f", with {ctl.enable} = {ctl.enable_value} in the same request when adjacent"
        lines.append(text)
    else:
        lines.append(
            f"control: sunspec_storage, strategy {ctl.strategy} — model 124 OutWRte/InWRte in "
            f"% of WChaMax, then StorCtl_Mod"
        )
    heartbeat = ctl.point_name("heartbeat")
    if heartbeat:
        lines.append(f"  heartbeat: {heartbeat} (incremented with every write)")
    revert = ctl.point_name("revert_timeout")
    if revert:
        lines.append(f"  revert timeout: read from {revert}, written when revert_timeout_s is set")
    elif ctl.revert_timeout_s is not None:
        lines.append(f"  revert timeout: {ctl.revert_timeout_s:g} s (documented)")
    else:
        lines.append(
            "  revert timeout: unknown to the preset (set sources.modbus.revert_timeout_s)"
        )
    return lines


def _point_row(first: str, p: PointDef) -> list[str]:
    if p.sf is not None:
        scale = f"SF {p.sf}"
    elif p.scale is not None:
        scale = f"x{p.scale:g}"
    else:
        scale = ""
    kind = p.type.value + (f"[{p.size}]" if p.size else "")
    if p.sign == -1:
        scale = (scale + " sign -1").strip()
    quantity = p.quantity.value if p.quantity else ""
    if p.fallback and quantity:
        quantity += " (fallback)"
    return [first, p.name, kind, scale, p.units or "", quantity, p.access, p.description]


def _show_preset(name: str, out: TextIO) -> int:
    p = load_preset(name)
    out.write(f"{p.name} — {p.description}\n")
    out.write(
        f"layout {p.layout}, unit id {p.unit_id}, table {p.table}, max gap {p.max_gap}, "
        f"n/a markers {'on' if p.na_markers else 'off'}\n"
    )
    for line in _control_text(p):
        out.write(line + "\n")
    if p.verified:
        out.write(f"verified: {p.verified}\n")
    for source in p.sources:
        out.write(f"source: {source}\n")
    out.write("\n")
    if p.points is not None:
        rows = [["ADDRESS", "NAME", "TYPE", "SCALE", "UNITS", "QUANTITY", "ACCESS", "NOTE"]]
        rows += [_point_row(str(pt.address), pt) for pt in p.points]
        _table(rows, out)
        return EXIT_OK
    for m in p.models or []:
        ids = "/".join(str(i) for i in m.ids)
        out.write(f"model {ids} ({m.name}){': ' + m.description if m.description else ''}\n")
        rows = [["OFFSET", "NAME", "TYPE", "SCALE", "UNITS", "QUANTITY", "ACCESS", "NOTE"]]
        rows += [_point_row(f"+{pt.offset}", pt) for pt in m.points]
        _table(rows, out)
        out.write("\n")
    out.write("Offsets count registers after the model's ID/L header (SunSpec discovery).\n")
    return EXIT_OK


# -- config loading ---------------------------------------------------------------------------


def _config_path(args: argparse.Namespace) -> Path:
    return Path(getattr(args, "config", None) or DEFAULT_CONFIG)


def _load(args: argparse.Namespace) -> SiteConfig:
    return load_config(_config_path(args))


# -- doctor, read, scan -----------------------------------------------------------------------


def cmd_doctor(args: argparse.Namespace, out: TextIO) -> int:
    options = DoctorOptions(mqtt_wait_s=args.mqtt_wait)
    report = asyncio.run(run_doctor(_config_path(args), options=options))
    if args.json:
        out.write(json.dumps(report.as_dict(), indent=2) + "\n")
    else:
        width = min(120, max(80, shutil.get_terminal_size((100, 24)).columns))
        title = f"bess-edge doctor: {report.source}"
        if report.site_id:
            title += f" (site {report.site_id})"
        out.write(title + "\n\n" + report.table(width) + "\n")
    return report.exit_code


def _readout_rows(points: Sequence[PointReadout], unit_id: int) -> list[list[str]]:
    rows = [["POINT", "ADDR", "TYPE", "RAW", "VALUE", "SCALE", "QUANTITY", "NOTE"]]
    for r in points:
        p = r.point
        quantity = ""
        if p.quantity is not None and r.quantity_value is not None:
            quantity = format_quantity(p.quantity, r.quantity_value)
        elif p.quantity is not None:
            quantity = p.quantity.value
        note = r.error or r.note or ("rw" if p.access == "rw" else "")
        unit = f" (unit {p.unit_id})" if p.unit_id != unit_id else ""
        rows.append(
            [
                p.name,
                f"{p.address}{unit}",
                p.type.value,
                r.raw_text(),
                r.value_text(),
                r.scale_text(),
                quantity,
                note,
            ]
        )
    return rows


def _print_read(result: ReadResult, out: TextIO) -> None:
    out.write(
        f"Modbus {result.host}:{result.port}, unit id {result.unit_id}, preset {result.preset}\n"
    )
    readout = result.readout
    if readout is None:
        return
    if readout.discovery is not None:
        ids = ", ".join(str(i) for i in readout.discovery.ids())
        out.write(f"SunSpec map at {readout.discovery.base}: models {ids}\n")
        if readout.resolved.skipped_models:
            out.write(f"not on this device: {', '.join(readout.resolved.skipped_models)}\n")
    device = readout.device_name()
    if device:
        out.write(f"device: {device}\n")
    out.write("\n")
    _table(_readout_rows(readout.points, readout.unit_id), out)
    out.write("\n")
    if readout.readings_error:
        out.write(f"decoded: nothing — {readout.readings_error}\n")
    elif readout.readings:
        out.write("decoded, as the agent reads it:\n")
        for reading in readout.readings:
            out.write(f"  {format_quantity(reading.quantity, reading.value)}\n")
    if readout.revert_timeout_s is not None:
        out.write(f"revert timeout of the device: {readout.revert_timeout_s:g} s\n")


def cmd_read(args: argparse.Namespace, out: TextIO) -> int:
    cfg = _load(args)
    settings = cfg.sources.modbus
    if settings is None:
        raise UsageError(
            f"{_config_path(args)} has no Modbus source (sources.modbus): nothing to read"
        )
    result = asyncio.run(read_device(settings))
    if args.json:
        out.write(json.dumps(_read_json(result), indent=2) + "\n")
    else:
        _print_read(result, out)
        if result.error:
            out.write(
                f"error: {result.error}\n" + (f"hint: {result.hint}\n" if result.hint else "")
            )
    if result.error or result.readout is None:
        return EXIT_FAILED
    if result.readout.connection_error or not any(p.ok for p in result.readout.points):
        return EXIT_FAILED
    return EXIT_OK


def _read_json(result: ReadResult) -> dict[str, Any]:
    data: dict[str, Any] = {
        "host": result.host,
        "port": result.port,
        "unit_id": result.unit_id,
        "preset": result.preset,
        "error": result.error,
        "hint": result.hint or None,
    }
    readout = result.readout
    if readout is not None:
        disc = readout.discovery
        data["sunspec"] = (
            {"base": disc.base, "models": disc.ids()} if disc is not None and disc.found else None
        )
        data["points"] = [r.as_dict() for r in readout.points]
        data["readings"] = {r.quantity.value: r.value for r in readout.readings}
        data["readings_error"] = readout.readings_error
        data["revert_timeout_s"] = readout.revert_timeout_s
    return data


def cmd_scan(args: argparse.Namespace, out: TextIO) -> int:
    result = asyncio.run(scan(args.host, args.port, args.unit_id, args.timeout))
    out.write(result.summary() + "\n")
    return EXIT_OK if result.connected and result.sunspec else EXIT_FAILED


# -- schedule ---------------------------------------------------------------------------------

_RELATIVE = re.compile(r"^\+\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|d)?$")
_UNIT_S = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, None: 60}


def parse_time(text: str, *, now: float, end: bool) -> float:
    """``now``, ``+15m``/``+2h``/``+1d`` or ISO 8601 with an offset -> Unix seconds, on a
    quarter hour: relative times are rounded (down for a start, up for an end), absolute ones
    must be on one."""
    raw = text.strip()
    step = DEFAULT_INTERVAL_S
    low = raw.lower()
    if low == "now" or _RELATIVE.match(low):
        match = _RELATIVE.match(low)
        t = now
        if match is not None:
            t = now + float(match.group(1)) * _UNIT_S[match.group(2)]
        return float(math.ceil(t / step) * step if end else math.floor(t / step) * step)
    try:
        when = datetime.fromisoformat(raw.replace("z", "Z"))
    except ValueError:
        raise UsageError(
            f"{raw!r} is not a time: use now, +15m, +2h, or ISO 8601 with an offset such as "
            "2025-06-01T14:00+02:00 or 2025-06-01T12:00Z"
        ) from None
    if when.tzinfo is None:
        raise UsageError(
            f"{raw!r} has no UTC offset: add one (e.g. {raw}+02:00 or {raw}Z) so the time "
            "is not ambiguous"
        )
    t = when.timestamp()
    if t % step:
        before = math.floor(t / step) * step

        def shown(x: float) -> str:
            return datetime.fromtimestamp(x, when.tzinfo).isoformat(timespec="minutes")

        raise UsageError(
            f"{raw} is not on a quarter hour: schedules run in 15-minute intervals — use "
            f"{shown(before)} or {shown(before + step)}"
        )
    return t


def _fmt_utc(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _fmt_window(start: float, end: float) -> str:
    text = f"{_fmt_utc(start)} → {_fmt_utc(end)}"
    local_start = datetime.fromtimestamp(start).astimezone()
    local_end = datetime.fromtimestamp(end).astimezone()
    if local_start.utcoffset() or local_end.utcoffset():
        text += f" ({local_start:%H:%M} → {local_end:%H:%M} {local_start:%Z} local time)"
    return text


def _fmt_kw(kw: float) -> str:
    if kw > 0:
        return f"{kw:g} kW discharge"
    if kw < 0:
        return f"{-kw:g} kW charge"
    return "0 kW"


def _now() -> float:
    """Wall-clock time; a seam for tests."""
    return datetime.now(UTC).timestamp()


def _operator() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def _open_store(cfg: SiteConfig, *, create: bool) -> ScheduleStore | None:
    path = cfg.storage.schedules_path
    if not path.exists() and not create:
        return None
    try:
        if create:
            path.parent.mkdir(parents=True, exist_ok=True)
        return ScheduleStore(path, site_id=cfg.site_id, synchronous=cfg.storage.synchronous)
    except OSError as exc:
        raise UsageError(
            f"cannot open the schedule store {path}: {exc.strerror or exc} — run as the agent's "
            "user (e.g. sudo -u bess-edge), or check storage.data_dir (BESS_DATA_DIR)"
        ) from None
    except ScheduleStoreError as exc:
        raise UsageError(str(exc)) from None


def _check_power(cfg: SiteConfig, kw: float) -> list[str]:
    """Refuse a power beyond the battery's rating; return notes about configured limits."""
    b, lim = cfg.battery, cfg.limits
    if not math.isfinite(kw):
        raise UsageError(f"--kw {kw!r} is not a number of kW")
    if kw > b.max_discharge_kw:
        raise UsageError(
            f"--kw {kw:g}: {kw:g} kW discharge is beyond the battery's rating "
            f"(battery.max_discharge_kw = {b.max_discharge_kw:g} kW)"
        )
    if -kw > b.max_charge_kw:
        raise UsageError(
            f"--kw {kw:g}: {-kw:g} kW charge is beyond the battery's rating "
            f"(battery.max_charge_kw = {b.max_charge_kw:g} kW)"
        )
    notes = []
    if kw > 0 and lim.discharge_limit_kw is not None and kw > lim.discharge_limit_kw:
        notes.append(
            f"note: the safety guard limits discharge to {lim.discharge_limit_kw:g} kW "
            "(limits.discharge_limit_kw)"
        )
    if kw < 0 and lim.charge_limit_kw is not None and -kw > lim.charge_limit_kw:
        notes.append(
            f"note: the safety guard limits charging to {lim.charge_limit_kw:g} kW "
            "(limits.charge_limit_kw)"
        )
    notes.append(
        f"the guard still applies the SoC limits ({lim.min_soc_pct:g} … {lim.max_soc_pct:g} %) "
        "and temperature derating"
    )
    return notes


def cmd_schedule(args: argparse.Namespace, out: TextIO) -> int:
    cfg = _load(args)
    action = args.action
    if action == "set":
        return _schedule_set(args, cfg, out)
    if action == "load":
        return _schedule_load(args, cfg, out)
    store = _open_store(cfg, create=False)
    if store is None:
        out.write(
            f"no schedules yet ({cfg.storage.schedules_path} does not exist): the agent holds "
            f"its fallback ({_fmt_kw(cfg.executor.fallback_kw)})\n"
        )
        return EXIT_OK
    with store:
        if action == "show":
            _schedule_show(store, cfg, out)
            return EXIT_OK
        return _schedule_clear(store, out)


def _schedule_set(args: argparse.Namespace, cfg: SiteConfig, out: TextIO) -> int:
    now = _now()
    kw = float(args.kw)
    notes = _check_power(cfg, kw)
    start = parse_time(args.start, now=now, end=False)
    end = parse_time(args.until, now=now, end=True)
    if end <= start:
        raise UsageError(
            f"--until ({_fmt_utc(end)}) must be after --from ({_fmt_utc(start)}); times are "
            "rounded to quarter hours"
        )
    if end <= now:
        raise UsageError(f"--until {_fmt_utc(end)} has passed already")
    if end - start > MAX_SCHEDULE_S:
        raise UsageError(
            f"{(end - start) / 86400:.1f} days is longer than a local override may run (7 days)"
        )
    step = DEFAULT_INTERVAL_S
    intervals = tuple(ScheduleInterval(float(t), kw) for t in range(int(start), int(end), step))
    store = _open_store(cfg, create=True)
    if store is None:  # create=True opens or raises; for the type checker
        raise UsageError(f"cannot open {cfg.storage.schedules_path}")
    with store:
        try:
            schedule = Schedule(
                site_id=cfg.site_id,
                version=store.next_version(ScheduleSource.CLI),
                created_at=now,
                valid_from=start,
                valid_until=end,
                intervals=intervals,
                interval_s=step,
                source=ScheduleSource.CLI,
                origin=f"bess-edge schedule set by {_operator()}",
            )
        except ScheduleError as exc:
            raise UsageError(str(exc)) from None
        result = store.save(schedule, now=now)
        if not result.accepted:
            out.write(f"refused: {result.detail}\n")
            return EXIT_FAILED
    out.write(
        f"cli schedule v{schedule.version}: {_fmt_kw(kw)}, {_fmt_window(start, end)}, "
        f"{len(intervals)} interval(s) of 15 min\n"
    )
    for note in notes:
        out.write(note + "\n")
    out.write(
        "It overrides the plane's schedule while it runs; `bess-edge schedule clear` ends it.\n"
    )
    return EXIT_OK


def read_schedule_file(path: Path, *, now: float) -> tuple[float, float, list[tuple[float, float]]]:
    """A schedule file -> (valid_from, valid_until, [(start, kW)]).

    CSV (``.csv``): a header ``start,power_kw`` and one row per 15-minute interval, times in
    ISO 8601 with an offset. YAML: ``valid_from`` (ISO 8601 with an offset),
    ``power_kw`` (a list, one value per interval from valid_from) and optionally
    ``valid_until`` (default: the end of the last interval).
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None
    step = DEFAULT_INTERVAL_S
    rows: list[tuple[float, float]] = []
    if path.suffix.lower() == ".csv":
        lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
        if not lines or [c.strip() for c in lines[0].split(",")] != ["start", "power_kw"]:
            raise UsageError(f"{path}: the first line must be the header start,power_kw")
        for number, line in enumerate(lines[1:], start=2):
            cells = [c.strip() for c in line.split(",")]
            if len(cells) != 2:
                raise UsageError(f"{path} line {number}: expected 2 columns, got {len(cells)}")
            try:
                rows.append((parse_time(cells[0], now=now, end=False), _kw(cells[1])))
            except (UsageError, argparse.ArgumentTypeError) as exc:
                raise UsageError(f"{path} line {number}: {exc}") from None
        if not rows:
            raise UsageError(f"{path}: no intervals")
        return rows[0][0], rows[-1][0] + step, rows
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UsageError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict) or "valid_from" not in raw or "power_kw" not in raw:
        raise UsageError(
            f"{path}: expected a mapping with valid_from (ISO 8601 with an offset) and "
            "power_kw (a list of kW, one per 15-minute interval)"
        )
    start = parse_time(str(raw["valid_from"]), now=now, end=False)
    powers = raw["power_kw"]
    if not isinstance(powers, list) or not powers:
        raise UsageError(f"{path}: power_kw must be a non-empty list of kW values")
    for i, value in enumerate(powers):
        try:
            rows.append((start + i * step, _kw(str(value))))
        except argparse.ArgumentTypeError as exc:
            raise UsageError(f"{path}: power_kw[{i}]: {exc}") from None
    end = start + len(rows) * step
    if "valid_until" in raw:
        end = parse_time(str(raw["valid_until"]), now=now, end=True)
    return start, end, rows


def _schedule_load(args: argparse.Namespace, cfg: SiteConfig, out: TextIO) -> int:
    now = _now()
    start, end, rows = read_schedule_file(Path(args.file), now=now)
    notes: list[str] = []
    for _, kw in rows:
        for note in _check_power(cfg, kw):
            if note not in notes:
                notes.append(note)
    if end <= now:
        raise UsageError(f"the schedule in {args.file} ended already ({_fmt_utc(end)})")
    store = _open_store(cfg, create=True)
    if store is None:
        raise UsageError(f"cannot open {cfg.storage.schedules_path}")
    with store:
        try:
            schedule = Schedule(
                site_id=cfg.site_id,
                version=store.next_version(ScheduleSource.FILE),
                created_at=now,
                valid_from=start,
                valid_until=end,
                intervals=tuple(ScheduleInterval(t, kw) for t, kw in rows),
                interval_s=DEFAULT_INTERVAL_S,
                source=ScheduleSource.FILE,
                origin=f"{Path(args.file).name} loaded by {_operator()}",
            )
        except ScheduleError as exc:
            raise UsageError(f"{args.file}: {exc}") from None
        result = store.save(schedule, now=now)
        if not result.accepted:
            out.write(f"refused: {result.detail}\n")
            return EXIT_FAILED
    out.write(
        f"file schedule v{schedule.version}: {len(rows)} interval(s) of 15 min, "
        f"{_fmt_window(start, end)}\n"
    )
    for note in notes:
        out.write(note + "\n")
    out.write(
        "It overrides the plane's schedule while it runs; `bess-edge schedule clear` ends it.\n"
    )
    return EXIT_OK


def _blocks(schedule: Schedule) -> list[tuple[float, float, float]]:
    """Consecutive intervals of equal power merged: (start, end, kW)."""
    blocks: list[tuple[float, float, float]] = []
    for iv in schedule.intervals:
        end = iv.start + schedule.interval_s
        if blocks and blocks[-1][1] == iv.start and blocks[-1][2] == iv.power_kw:
            blocks[-1] = (blocks[-1][0], end, iv.power_kw)
        else:
            blocks.append((iv.start, end, iv.power_kw))
    return blocks


def _schedule_show(store: ScheduleStore, cfg: SiteConfig, out: TextIO) -> None:
    now = _now()
    out.write(f"schedule store {store.path} (site {cfg.site_id}), now {_fmt_utc(now)}\n")
    current = store.current(now)
    if current is None:
        out.write(
            f"in force: nothing — the agent holds its fallback "
            f"({_fmt_kw(cfg.executor.fallback_kw)})\n"
        )
    else:
        setpoint = current.setpoint_at(now)
        shown = _fmt_kw(setpoint) if setpoint is not None else "no interval now (fallback)"
        out.write(
            f"in force: {current.source.value} v{current.version} — {shown} now; valid "
            f"{_fmt_window(current.valid_from, current.valid_until)}\n"
        )
        for start, end, kw in _blocks(current)[:12]:
            out.write(f"  {_fmt_utc(start)} → {_fmt_utc(end)[11:]}  {_fmt_kw(kw)}\n")
    records = [r for r in store.history(limit=200, now=now) if r.source is ScheduleSource.CLI]
    if records:
        out.write("cli schedules (newest first):\n")
        for r in records[:10]:
            s = r.schedule
            what = (
                f"{_fmt_kw(s.intervals[0].power_kw) if s.intervals else '-'}, "
                f"{_fmt_utc(s.valid_from)} → {_fmt_utc(s.valid_until)[11:]}"
                if s is not None
                else f"{r.reason}: {r.detail}"
            )
            extra = f" ({r.detail})" if r.detail and s is not None else ""
            out.write(f"  v{r.version:<4} {r.status.value:<10} {what}{extra}\n")


def _schedule_clear(store: ScheduleStore, out: TextIO) -> int:
    now = _now()
    # Superseded ones too: cancelling the newer one would otherwise bring an older one back.
    live = {
        ScheduleStatus.RECEIVED,
        ScheduleStatus.ACTIVE,
        ScheduleStatus.OVERRIDDEN,
        ScheduleStatus.SUPERSEDED,
    }
    records = [
        r
        for r in store.history(limit=1000, now=now)
        if r.source in (ScheduleSource.CLI, ScheduleSource.FILE)
        and r.status in live
        and r.schedule is not None
    ]
    if not records:
        out.write("no local (cli or file) schedule to clear\n")
        return EXIT_OK
    for r in records:
        store.cancel(
            r.version,
            source=r.source,
            reason=f"cleared with bess-edge schedule clear by {_operator()}",
            now=now,
        )
        out.write(f"cancelled {r.source.value} v{r.version} (was {r.status.value})\n")
    current = store.current(now)
    after = (
        f"{current.source.value} v{current.version}"
        if current is not None
        else "nothing (the agent holds its fallback)"
    )
    out.write(f"in force now: {after}\n")
    return EXIT_OK


# -- run --------------------------------------------------------------------------------------


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line: ts (UTC), level, logger, message (+ exc)."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data, ensure_ascii=False)


def _load_run_agent() -> RunAgent:
    try:
        module = importlib.import_module("edge_agent.agent")
    except ModuleNotFoundError as exc:
        if exc.name != "edge_agent.agent":
            raise
        raise UsageError("this installation has no agent (edge_agent.agent is missing)") from None
    return cast(RunAgent, module.run_agent)


async def _run_until_signalled(run_agent: RunAgent, cfg: SiteConfig) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    installed: list[signal.Signals] = []

    def on_signal(sig: signal.Signals) -> None:
        if stop.is_set() and task is not None:
            log.warning("second %s: stopping at once", sig.name)
            task.cancel()
            return
        log.info("%s: stopping (again to stop at once)", sig.name)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, on_signal, sig)
            installed.append(sig)
    try:
        return await run_agent(cfg, stop=stop)
    except asyncio.CancelledError:
        return EXIT_INTERRUPTED
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


def cmd_run(args: argparse.Namespace, out: TextIO) -> int:
    cfg = _load(args)
    level = "DEBUG" if args.verbose else cfg.logging.level
    _configure_logging(level=level, fmt=cfg.logging.format, verbose=args.verbose)
    run_agent = _load_run_agent()
    log.info("bess-edge run: site %s from %s", cfg.site_id, _config_path(args))
    try:
        return asyncio.run(_run_until_signalled(run_agent, cfg))
    except (RestIngestError, MqttSourceError, OutboxError, ScheduleStoreError, OSError) as exc:
        # Start-up problems of the environment (port in use, unwritable data dir, TLS files):
        # one plain line, the traceback only with -v.
        log.debug("the agent stopped", exc_info=True)
        print(
            f"bess-edge: the agent cannot run: {exc}\n"
            f"  `bess-edge doctor -c {_config_path(args)}` checks every connection and file",
            file=sys.stderr,
        )
        return EXIT_FAILED


# -- config, env ------------------------------------------------------------------------------


def _mask(value: Any, key: str = "") -> Any:
    if isinstance(value, dict):
        return {k: _mask(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_mask(v) for v in value]
    if value is not None and SECRET_KEYS.search(key):
        return "********"
    return value


def effective_config(path: Path, env: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """(the config as the agent uses it, secrets masked; field -> BESS_* variable that set it)."""
    cfg = load_config(path, env=env)
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    _, _, origin = apply_env(raw if isinstance(raw, dict) else {}, env)
    data = _mask(cfg.model_dump(mode="json"))
    return data, origin


def cmd_config(args: argparse.Namespace, out: TextIO) -> int:
    path = _config_path(args)
    data, origin = effective_config(path, os.environ)
    if args.json:
        out.write(json.dumps({"config": data, "from_environment": origin}, indent=2) + "\n")
        return EXIT_OK
    out.write(f"# effective configuration of {path} (defaults < file < environment)\n")
    out.write("# secrets are masked; they belong in the environment, not in the file\n")
    for field_path, var in origin.items():
        out.write(f"# {field_path} from {var}\n")
    out.write(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    return EXIT_OK


def _type_name(parse: Callable[[str], Any]) -> str:
    return {"int": "integer", "float": "number", "_bool": "true/false"}.get(
        getattr(parse, "__name__", ""), "text"
    )


def cmd_env(args: argparse.Namespace, out: TextIO) -> int:
    rows = [["VARIABLE", "OVERRIDES", "TYPE", "NOW"]]

    def now_text(name: str, secret: bool) -> str:
        value = os.environ.get(name)
        if value is None:
            return "-"
        return "set (hidden)" if secret else repr(value)

    rows.append(
        [
            "BESS_MODBUS_ENABLED",
            "false removes sources.modbus",
            "true/false",
            now_text("BESS_MODBUS_ENABLED", False),
        ]
    )
    for var in ENV_VARS:
        target = ".".join(var.path) + (" (secret)" if var.secret else "")
        rows.append([var.name, target, _type_name(var.parse), now_text(var.name, var.secret)])
    _table(rows, out)
    out.write(
        "\nThey override the site file (defaults < file < environment). Put secrets "
        "(BESS_MQTT_PASSWORD, BESS_API_KEY, the uplink token) in /etc/bess-edge/env, mode 0600.\n"
    )
    return EXIT_OK


# -- parser and main --------------------------------------------------------------------------


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port {value} is outside 1..65535")
    return value


def _unit_id(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a unit id") from None
    if not 0 <= value <= 255:
        raise argparse.ArgumentTypeError(f"unit id {value} is outside 0..255")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not (math.isfinite(value) and 0 < value <= 60):
        raise argparse.ArgumentTypeError(f"{text} s is outside 0..60 s")
    return value


def _kw(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a power in kW") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite power in kW")
    return value


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=argparse.SUPPRESS,
        help="debug logs (twice: pymodbus too)",
    )
    with_config = argparse.ArgumentParser(add_help=False)
    with_config.add_argument(
        "-c",
        "--config",
        metavar="FILE",
        default=argparse.SUPPRESS,
        help=f"site file (default: {DEFAULT_CONFIG})",
    )
    parser = argparse.ArgumentParser(
        prog="bess-edge",
        description="Phoenyra BESS edge agent: reads the battery, keeps it safe, runs the "
        "schedule, streams telemetry to the control plane.",
        parents=[common],
        epilog="Start with `bess-edge init -o site.yaml`, then `bess-edge doctor -c site.yaml`.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("init", parents=[common], help="write a commented starter site file")
    p.add_argument("--preset", choices=BUILTIN_PRESETS, default=DEFAULT_PRESET)
    p.add_argument("--site-id", default=_default_site_id(), help="default: this host's name")
    p.add_argument("--host", default=DEFAULT_HOST, help="the inverter's IP address or name")
    p.add_argument("--uplink", metavar="HOST:PORT", help="the control plane's EdgeLink endpoint")
    p.add_argument("-o", "--output", metavar="FILE", help="write here (default: stdout)")
    p.add_argument("--force", action="store_true", help="overwrite an existing file")

    p = sub.add_parser("presets", parents=[common], help="list Modbus presets, or show one")
    psub = p.add_subparsers(dest="presets_action", metavar="ACTION")
    ps = psub.add_parser("show", parents=[common], help="print a preset's points and control")
    ps.add_argument("name", help="preset name or a preset file")
    psub.add_parser("list", parents=[common], help="list the presets (the default)")

    p = sub.add_parser("doctor", parents=[common, with_config], help="check every connection")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument(
        "--mqtt-wait",
        type=_seconds,
        default=DoctorOptions.mqtt_wait_s,
        metavar="S",
        help="how long to wait for MQTT messages (default %(default)s s)",
    )

    p = sub.add_parser(
        "read", parents=[common, with_config], help="read every Modbus point once, decoded"
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("scan", parents=[common], help="SunSpec discovery on a device")
    p.add_argument("host", help="the device's IP address or host name")
    p.add_argument("--port", type=_port, default=502)
    p.add_argument("--unit-id", type=_unit_id, default=1)
    p.add_argument("--timeout", type=_seconds, default=2.0, metavar="S")

    p = sub.add_parser(
        "schedule", parents=[common, with_config], help="a local power schedule (override)"
    )
    ssub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    sset = ssub.add_parser(
        "set",
        parents=[common, with_config],
        help="run the battery at a power for a while (+ discharge, - charge)",
        description="Times: now, +15m, +2h, +1d, or ISO 8601 with an offset "
        "(2025-06-01T14:00+02:00). Relative times are rounded to quarter hours.",
    )
    sset.add_argument("--kw", type=_kw, required=True, help="+ discharge, - charge")
    sset.add_argument("--from", dest="start", default="now", metavar="TIME")
    sset.add_argument("--until", required=True, metavar="TIME")
    sload = ssub.add_parser(
        "load",
        parents=[common, with_config],
        help="load a schedule file (CSV start,power_kw or YAML valid_from + power_kw list)",
    )
    sload.add_argument("file", metavar="FILE")
    ssub.add_parser("show", parents=[common, with_config], help="the schedule in force")
    ssub.add_parser(
        "clear", parents=[common, with_config], help="cancel the local (cli and file) schedules"
    )

    sub.add_parser("run", parents=[common, with_config], help="run the agent")
    p = sub.add_parser(
        "config", parents=[common, with_config], help="print the effective config (masked)"
    )
    p.add_argument("--json", action="store_true")
    sub.add_parser("env", parents=[common], help="the BESS_* environment variables")
    return parser


COMMANDS: Mapping[str, Callable[[argparse.Namespace, TextIO], int]] = {
    "init": cmd_init,
    "presets": cmd_presets,
    "doctor": cmd_doctor,
    "read": cmd_read,
    "scan": cmd_scan,
    "schedule": cmd_schedule,
    "run": cmd_run,
    "config": cmd_config,
    "env": cmd_env,
}
# They report problems themselves; library warnings would only repeat them.
_QUIET_COMMANDS = frozenset({"doctor", "read", "scan", "schedule"})


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """Marks the handler ``main`` installed, so a second call replaces it."""


def _configure_logging(
    *,
    level: str,
    fmt: Literal["text", "json"] = "text",
    verbose: int = 0,
    pymodbus_level: int = logging.ERROR,
) -> None:
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(handler)
    handler = _Handler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonLogFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(level)
    # pymodbus logs every garbled frame at ERROR; our errors already say what went wrong.
    logging.getLogger("pymodbus").setLevel(logging.DEBUG if verbose >= 2 else pymodbus_level)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit code (``python -m edge_agent`` exits with it)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error argparse has printed
        return int(exc.code) if isinstance(exc.code, int) else EXIT_USAGE
    args.verbose = getattr(args, "verbose", 0)
    root = logging.getLogger()
    saved_level = root.level
    quiet = args.command in _QUIET_COMMANDS
    _configure_logging(
        level="DEBUG" if args.verbose else "ERROR" if quiet else "WARNING",
        verbose=args.verbose,
        pymodbus_level=logging.CRITICAL if quiet else logging.ERROR,
    )
    out = sys.stdout
    try:
        return COMMANDS[args.command](args, out)
    except UsageError as exc:
        print(f"bess-edge: error: {exc}", file=sys.stderr)
    except ConfigError as exc:
        print(f"bess-edge: {exc.source} cannot be used:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  - {problem}", file=sys.stderr)
    except PresetError as exc:
        print(f"bess-edge: error: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        print("bess-edge: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `bess-edge presets | head`: the reader left, nothing to say
        with contextlib.suppress(OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())  # no second error when Python flushes
        return EXIT_OK
    finally:
        for handler in [h for h in root.handlers if isinstance(h, _Handler)]:
            root.removeHandler(handler)
        root.setLevel(saved_level)
    return EXIT_USAGE
