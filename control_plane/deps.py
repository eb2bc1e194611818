"""FastAPI dependencies as `Annotated` aliases, resolved from `app.state` (lifespan-filled)."""

from __future__ import annotations

from typing import Annotated, cast

from fastapi import Depends, Request

from .config import PlaneSettings
from .fleet.service import FleetService


def get_settings(request: Request) -> PlaneSettings:
    return cast(PlaneSettings, request.app.state.settings)


def get_fleet(request: Request) -> FleetService:
    return cast(FleetService, request.app.state.fleet)


SettingsDep = Annotated[PlaneSettings, Depends(get_settings)]
FleetDep = Annotated[FleetService, Depends(get_fleet)]
