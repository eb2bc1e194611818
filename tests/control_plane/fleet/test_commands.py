"""Command delivery in FleetService on the real store (SQLite and PostgreSQL), clock injected:
what a session gets after Hello, expiry, answers, the metric."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy.engine import Engine

from control_plane.fleet.models import (
    CommandAnswer,
    CommandOut,
    CommandStatus,
    Hello,
    InvalidCommandError,
    NewCommand,
    ResumeAction,
    SetLimitsAction,
    StopAction,
)
from control_plane.fleet.service import FleetMetrics, FleetService
from control_plane.fleet.store import FleetStore

T0 = datetime(2026, 3, 29, 0, 30, tzinfo=UTC)
SITE = "site-c"


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
async def fleet(engine: Engine) -> AsyncIterator[tuple[FleetService, Clock, CollectorRegistry]]:
    clock, registry = Clock(), CollectorRegistry()
    service = FleetService(
        store=FleetStore(engine), metrics=FleetMetrics(registry), plane_version="t", clock=clock
    )
    await service.open()
    try:
        yield service, clock, registry
    finally:
        await service.close()


def _count(registry: CollectorRegistry, kind: str, status: str) -> float:
    value = registry.get_sample_value("bess_plane_commands_total", {"kind": kind, "status": status})
    return value or 0.0


async def test_expired_commands_are_marked_and_not_sent(
    fleet: tuple[FleetService, Clock, CollectorRegistry],
) -> None:
    service, clock, registry = fleet
    session, _, _ = await service.open_session(Hello(SITE, "1"))
    await service.close_session(session, "test")

    soon = await service.submit_command(
        site_id=SITE,
        new=NewCommand(action=StopAction(reason="x"), expires_at=T0 + timedelta(minutes=5)),
    )
    later = await service.submit_command(
        site_id=SITE,
        new=NewCommand(
            action=SetLimitsAction(max_soc_pct=80.0), expires_at=T0 + timedelta(hours=1)
        ),
    )
    clock.now = T0 + timedelta(minutes=1)
    never = await service.submit_command(site_id=SITE, new=NewCommand(action=ResumeAction()))
    assert [r.status for r in await service.commands(site_id=SITE)] == [CommandStatus.PENDING] * 3

    clock.now = T0 + timedelta(minutes=10)
    # Reads derive the expiry before any session touched the command.
    statuses = {
        r.command.command_id: r.status_at(clock.now) for r in await service.commands(site_id=SITE)
    }
    assert statuses[soon.command.command_id] is CommandStatus.EXPIRED

    session, _, to_send = await service.open_session(Hello(SITE, "1"))
    sent = [item.command.command_id for item in to_send if isinstance(item, CommandOut)]
    assert sent == [later.command.command_id, never.command.command_id]  # oldest first
    stored = {r.command.command_id: r for r in await service.commands(site_id=SITE)}
    assert stored[soon.command.command_id].status is CommandStatus.EXPIRED
    assert stored[soon.command.command_id].detail == "expired before the agent answered"
    assert _count(registry, "stop", "expired") == 1

    for item in to_send:
        await service.sent(session, item)
    await service.command_answered(session, CommandAnswer(later.command.command_id, True, "", "ok"))
    await service.command_answered(
        session, CommandAnswer(never.command.command_id, False, "expired", "too late")
    )
    stored = {r.command.command_id: r for r in await service.commands(site_id=SITE)}
    assert stored[later.command.command_id].status is CommandStatus.ACKNOWLEDGED
    assert stored[later.command.command_id].sent_at == clock.now
    # The agent's EXPIRED answer is the expiry, not a refusal.
    assert stored[never.command.command_id].status is CommandStatus.EXPIRED
    assert stored[never.command.command_id].detail == "expired: too late"
    assert _count(registry, "set_limits", "acknowledged") == 1
    assert _count(registry, "resume", "sent") == 1
    assert _count(registry, "set_limits", "pending") == 1

    # Nothing left to send on the next Hello.
    await service.close_session(session, "test")
    _, _, to_send = await service.open_session(Hello(SITE, "1"))
    assert to_send == []


async def test_answers_for_another_site_change_nothing(
    fleet: tuple[FleetService, Clock, CollectorRegistry],
) -> None:
    service, _, _ = fleet
    mine, _, _ = await service.open_session(Hello(SITE, "1"))
    other, _, _ = await service.open_session(Hello("site-d", "1"))
    record = await service.submit_command(site_id=SITE, new=NewCommand(action=ResumeAction()))
    await service.command_answered(other, CommandAnswer(record.command.command_id, True))
    assert (await service.commands(site_id=SITE))[0].status is CommandStatus.PENDING
    assert isinstance(mine.outbound.get_nowait(), CommandOut)


@pytest.mark.parametrize(
    ("action", "problem"),
    [
        (SetLimitsAction(), "at least one of"),
        (SetLimitsAction(min_soc_pct=float("nan")), "finite"),
        (SetLimitsAction(max_soc_pct=101), "outside 0 to 100"),
        (SetLimitsAction(max_discharge_kw=-2), "negative"),
        (SetLimitsAction(min_soc_pct=50, max_soc_pct=50), "must be below"),
        (StopAction(reason="x" * 201), "longer than 200"),
    ],
)
def test_new_commands_are_checked(action: SetLimitsAction | StopAction, problem: str) -> None:
    with pytest.raises(InvalidCommandError, match=problem):
        NewCommand(action=action)
    with pytest.raises(InvalidCommandError, match="time zone"):
        NewCommand(action=ResumeAction(), expires_at=datetime(2026, 1, 1))
