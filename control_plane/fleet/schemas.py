"""Fleet API models (HTTP in/out); built from and into the domain types of `models.py`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Literal, Self

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from .models import (
    MAX_STOP_REASON,
    CommandAction,
    CommandRecord,
    Event,
    FleetTotals,
    Heartbeat,
    NewCommand,
    NewSchedule,
    Ratings,
    ResumeAction,
    ScheduleInterval,
    ScheduleRecord,
    SetLimitsAction,
    Site,
    SiteStatus,
    StopAction,
    TelemetrySample,
    utc_now,
)

MAX_SCHEDULE_INTERVALS = 7 * 96  # a week of quarter-hours

_IN = ConfigDict(extra="forbid")


class RatingsPublic(BaseModel):
    capacity_kwh: float
    max_charge_kw: float
    max_discharge_kw: float

    @classmethod
    def of(cls, r: Ratings | None) -> RatingsPublic | None:
        if r is None:
            return None
        return cls(
            capacity_kwh=r.capacity_kwh,
            max_charge_kw=r.max_charge_kw,
            max_discharge_kw=r.max_discharge_kw,
        )


class HeartbeatPublic(BaseModel):
    timestamp: datetime
    setpoint_kw: float
    scheduled_kw: float | None
    schedule_version: int
    outbox_pending_samples: int
    outbox_pending_events: int

    @classmethod
    def of(cls, h: Heartbeat | None) -> HeartbeatPublic | None:
        if h is None:
            return None
        return cls(
            timestamp=h.timestamp,
            setpoint_kw=h.setpoint_kw,
            scheduled_kw=h.scheduled_kw,
            schedule_version=h.schedule_version,
            outbox_pending_samples=h.outbox_pending_samples,
            outbox_pending_events=h.outbox_pending_events,
        )


class SitePublic(BaseModel):
    site_id: str
    connected: bool
    last_seen: datetime | None
    agent_version: str
    capabilities: list[str]
    ratings: RatingsPublic | None
    registered_at: datetime
    session_id: str
    last_heartbeat: HeartbeatPublic | None

    @classmethod
    def of(cls, s: Site) -> SitePublic:
        return cls(
            site_id=s.site_id,
            connected=s.connected,
            last_seen=s.last_seen,
            agent_version=s.agent_version,
            capabilities=list(s.capabilities),
            ratings=RatingsPublic.of(s.ratings),
            registered_at=s.registered_at,
            session_id=s.session_id,
            last_heartbeat=HeartbeatPublic.of(s.last_heartbeat),
        )


class TelemetrySamplePublic(BaseModel):
    seq: int
    timestamp: datetime
    soc_pct: float | None
    active_power_kw: float | None
    reactive_power_kvar: float | None
    voltage_v: float | None
    temperature_c: float | None
    grid_frequency_hz: float | None
    status: str
    alarms: list[str]
    source: str
    setpoint_kw: float | None
    soh_pct: float | None
    vendor_alarm_bits: int | None
    energy_charged_total_kwh: float | None
    energy_discharged_total_kwh: float | None

    @classmethod
    def of(cls, s: TelemetrySample) -> TelemetrySamplePublic:
        return cls(
            seq=s.seq,
            timestamp=s.timestamp,
            soc_pct=s.soc_pct,
            active_power_kw=s.active_power_kw,
            reactive_power_kvar=s.reactive_power_kvar,
            voltage_v=s.voltage_v,
            temperature_c=s.temperature_c,
            grid_frequency_hz=s.grid_frequency_hz,
            status=s.status,
            alarms=list(s.alarms),
            source=s.source,
            setpoint_kw=s.setpoint_kw,
            soh_pct=s.soh_pct,
            vendor_alarm_bits=s.vendor_alarm_bits,
            energy_charged_total_kwh=s.energy_charged_total_kwh,
            energy_discharged_total_kwh=s.energy_discharged_total_kwh,
        )


class SiteStatusPublic(BaseModel):
    """The latest reading of one site, as the spec's status view shows it."""

    site_id: str
    status: Literal["online", "offline"]
    connected: bool
    last_seen: datetime | None
    agent_version: str
    timestamp: datetime | None = Field(description="when the latest reading was taken")
    soc_pct: float | None
    active_power_kw: float | None
    active_power_mw: float | None
    temperature_c: float | None
    battery_status: str | None
    setpoint_kw: float | None
    alarms: list[str]

    @classmethod
    def of(cls, st: SiteStatus) -> SiteStatusPublic:
        latest = st.latest
        power = latest.active_power_kw if latest else None
        return cls(
            site_id=st.site.site_id,
            status="online" if st.site.connected else "offline",
            connected=st.site.connected,
            last_seen=st.site.last_seen,
            agent_version=st.site.agent_version,
            timestamp=latest.timestamp if latest else None,
            soc_pct=latest.soc_pct if latest else None,
            active_power_kw=power,
            active_power_mw=None if power is None else power / 1000,
            temperature_c=latest.temperature_c if latest else None,
            battery_status=latest.status if latest else None,
            setpoint_kw=latest.setpoint_kw if latest else None,
            alarms=list(latest.alarms) if latest else [],
        )


class FleetTotalsPublic(BaseModel):
    sites: int
    sites_connected: int
    active_power_kw: float
    active_power_mw: float
    capacity_kwh: float
    stored_energy_kwh: float
    average_soc_pct: float | None

    @classmethod
    def of(cls, t: FleetTotals) -> FleetTotalsPublic:
        return cls(
            sites=t.sites,
            sites_connected=t.sites_connected,
            active_power_kw=t.active_power_kw,
            active_power_mw=t.active_power_kw / 1000,
            capacity_kwh=t.capacity_kwh,
            stored_energy_kwh=t.stored_energy_kwh,
            average_soc_pct=t.average_soc_pct,
        )


class FleetStatusPublic(BaseModel):
    generated_at: datetime
    totals: FleetTotalsPublic
    sites: list[SiteStatusPublic]


class EventPublic(BaseModel):
    seq: int
    timestamp: datetime
    severity: str
    kind: str
    code: str
    message: str
    requested_kw: float | None
    applied_kw: float | None
    guard_reason: str
    alarm: str
    source: str
    schedule_version: int
    command_id: str
    config_version: int
    details: dict[str, str]

    @classmethod
    def of(cls, e: Event) -> EventPublic:
        return cls(
            seq=e.seq,
            timestamp=e.timestamp,
            severity=e.severity,
            kind=e.kind,
            code=e.code,
            message=e.message,
            requested_kw=e.requested_kw,
            applied_kw=e.applied_kw,
            guard_reason=e.guard_reason,
            alarm=e.alarm,
            source=e.source,
            schedule_version=e.schedule_version,
            command_id=e.command_id,
            config_version=e.config_version,
            details=dict(e.details),
        )


# -- schedules -------------------------------------------------------------------------------


class ScheduleIntervalIn(BaseModel):
    model_config = _IN

    start: AwareDatetime = Field(description="start of the quarter-hour, with a UTC offset")
    power_kw: float = Field(allow_inf_nan=False, description="+ = discharge, - = charge")


class ScheduleCreate(BaseModel):
    """A power plan for a site; the plane assigns the version."""

    model_config = _IN

    valid_from: AwareDatetime
    valid_until: AwareDatetime
    interval_minutes: Literal[15] = 15  # PT15M, models.SCHEDULE_INTERVAL_MINUTES
    intervals: list[ScheduleIntervalIn] = Field(min_length=1, max_length=MAX_SCHEDULE_INTERVALS)
    origin: str = Field(default="api", max_length=200)

    @model_validator(mode="after")
    def _check(self) -> Self:
        self.to_domain()  # InvalidScheduleError is a ValueError: a 422 naming the rule
        return self

    def to_domain(self) -> NewSchedule:
        return NewSchedule(
            valid_from=self.valid_from.astimezone(UTC),
            valid_until=self.valid_until.astimezone(UTC),
            interval_minutes=self.interval_minutes,
            intervals=tuple(
                ScheduleInterval(i.start.astimezone(UTC), i.power_kw) for i in self.intervals
            ),
            origin=self.origin,
        )


class ScheduleIntervalPublic(BaseModel):
    start: datetime
    power_kw: float


class SchedulePublic(BaseModel):
    site_id: str
    version: int
    status: str = Field(description="pending, sent, acknowledged, rejected, superseded, expired")
    created_at: datetime
    valid_from: datetime
    valid_until: datetime
    interval_minutes: int
    intervals: list[ScheduleIntervalPublic]
    origin: str
    sent_at: datetime | None
    answered_at: datetime | None
    detail: str

    @classmethod
    def of(cls, r: ScheduleRecord, *, now: datetime) -> SchedulePublic:
        s = r.schedule
        return cls(
            site_id=s.site_id,
            version=s.version,
            status=r.status_at(now),
            created_at=s.created_at,
            valid_from=s.valid_from,
            valid_until=s.valid_until,
            interval_minutes=s.interval_minutes,
            intervals=[
                ScheduleIntervalPublic(start=i.start, power_kw=i.power_kw) for i in s.intervals
            ],
            origin=s.origin,
            sent_at=r.sent_at,
            answered_at=r.answered_at,
            detail=r.detail,
        )


# -- commands --------------------------------------------------------------------------------

MAX_COMMAND_EXPIRY_S = 30 * 86_400


class SetLimitsIn(BaseModel):
    """Narrow the site's limits; a field left out keeps that limit (the agent never widens)."""

    model_config = _IN

    min_soc_pct: float | None = Field(default=None, ge=0, le=100, allow_inf_nan=False)
    max_soc_pct: float | None = Field(default=None, ge=0, le=100, allow_inf_nan=False)
    max_charge_kw: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    max_discharge_kw: float | None = Field(default=None, ge=0, allow_inf_nan=False)


class StopIn(BaseModel):
    model_config = _IN

    reason: str = Field(default="", max_length=MAX_STOP_REASON)


class ResumeIn(BaseModel):
    model_config = _IN


class CommandCreate(BaseModel):
    """Exactly one of set_limits, stop, resume; the plane assigns the id."""

    model_config = _IN

    set_limits: SetLimitsIn | None = None
    stop: StopIn | None = None
    resume: ResumeIn | None = None
    expires_in_s: float | None = Field(
        default=None,
        gt=0,
        le=MAX_COMMAND_EXPIRY_S,
        allow_inf_nan=False,
        description="not applied after this many seconds from now; default never expires",
    )

    @model_validator(mode="after")
    def _check(self) -> Self:
        given = [n for n in ("set_limits", "stop", "resume") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of set_limits, stop, resume"
                + (f" (got {', '.join(given)})" if given else "")
            )
        self.to_domain(now=utc_now(), issued_by="")  # InvalidCommandError: a 422 naming the rule
        return self

    def _action(self) -> CommandAction:
        if self.set_limits is not None:
            return SetLimitsAction(**self.set_limits.model_dump())
        if self.stop is not None:
            return StopAction(reason=self.stop.reason)
        return ResumeAction()

    def to_domain(self, *, now: datetime, issued_by: str) -> NewCommand:
        expires = None
        if self.expires_in_s is not None:
            expires = now + timedelta(seconds=self.expires_in_s)
        return NewCommand(action=self._action(), expires_at=expires, issued_by=issued_by)


class CommandPublic(BaseModel):
    command_id: str
    site_id: str
    kind: str = Field(description="set_limits, stop, resume")
    payload: dict[str, float | str] = Field(description="the action's fields")
    status: str = Field(description="pending, sent, acknowledged, rejected, expired")
    issued_by: str
    issued_at: datetime
    expires_at: datetime | None
    sent_at: datetime | None
    answered_at: datetime | None
    detail: str = Field(description="the agent's answer, or why the command expired")

    @classmethod
    def of(cls, r: CommandRecord, *, now: datetime) -> CommandPublic:
        c = r.command
        action = c.action
        payload: dict[str, float | str] = {}
        if isinstance(action, SetLimitsAction):
            for name in ("min_soc_pct", "max_soc_pct", "max_charge_kw", "max_discharge_kw"):
                value = getattr(action, name)
                if value is not None:
                    payload[name] = value
        elif isinstance(action, StopAction):
            payload["reason"] = action.reason
        return cls(
            command_id=c.command_id,
            site_id=c.site_id,
            kind=action.kind,
            payload=payload,
            status=r.status_at(now),
            issued_by=c.issued_by,
            issued_at=c.issued_at,
            expires_at=c.expires_at,
            sent_at=r.sent_at,
            answered_at=r.answered_at,
            detail=r.detail,
        )


# -- external telemetry (spec: POST /api/telemetry, POST /api/bess/telemetry) -----------------


class TelemetryIn(BaseModel):
    """One reading from an external system; `seq` (per site) makes a resend harmless."""

    model_config = _IN

    site_id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
    seq: int | None = Field(default=None, ge=1, description="dedup key; omit to get the next")
    timestamp: AwareDatetime
    soc_pct: float | None = Field(default=None, ge=0, le=100, allow_inf_nan=False)
    active_power_kw: float | None = Field(default=None, allow_inf_nan=False)
    reactive_power_kvar: float | None = Field(default=None, allow_inf_nan=False)
    voltage_v: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    temperature_c: float | None = Field(default=None, ge=-60, le=150, allow_inf_nan=False)
    grid_frequency_hz: float | None = Field(default=None, ge=0, le=100, allow_inf_nan=False)
    soh_pct: float | None = Field(default=None, ge=0, le=100, allow_inf_nan=False)

    def to_domain(self) -> TelemetrySample:
        return TelemetrySample(
            seq=self.seq or 0,
            timestamp=self.timestamp.astimezone(UTC),
            soc_pct=self.soc_pct,
            active_power_kw=self.active_power_kw,
            reactive_power_kvar=self.reactive_power_kvar,
            voltage_v=self.voltage_v,
            temperature_c=self.temperature_c,
            grid_frequency_hz=self.grid_frequency_hz,
            soh_pct=self.soh_pct,
            source="rest",
        )


class TelemetryStored(BaseModel):
    site_id: str
    stored: int
    duplicates: int
