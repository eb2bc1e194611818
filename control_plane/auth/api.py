"""Access-control routes: API-key administration (admin) and `whoami` (any key).

Only translation here (STYLE item 10). The admin operations block on the store, so they run
off the event loop.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from fastapi import APIRouter, HTTPException, status

from .deps import AdminDep, AuthDep, ViewerDep
from .models import KeyStateError, UnknownKeyError
from .schemas import KeyCreate, KeyIssued, KeyPublic, KeyRotate, WhoAmI

router = APIRouter(tags=["access"])


@router.get("/api/auth/whoami", response_model=WhoAmI)
async def whoami(principal: ViewerDep) -> WhoAmI:
    """The key (or signing client) this request authenticated as, and its role."""
    return WhoAmI.of(principal)


@router.get("/api/keys", response_model=list[KeyPublic])
async def list_keys(_: AdminDep, auth: AuthDep) -> list[KeyPublic]:
    """Every stored key, masked, oldest first."""
    keys = await asyncio.to_thread(auth.list)
    now = auth.clock()
    return [KeyPublic.of(k, now=now) for k in keys]


@router.post("/api/keys", response_model=KeyIssued, status_code=status.HTTP_201_CREATED)
async def create_key(body: KeyCreate, _: AdminDep, auth: AuthDep) -> KeyIssued:
    """A new key. The response holds its secret: the only time it is shown."""
    try:
        issued = await asyncio.to_thread(
            lambda: auth.create(name=body.name, role=body.role, expires_in=body.expires_in)
        )
    except ValueError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None
    return KeyIssued.issued(issued, now=auth.clock())


@router.post("/api/keys/{key_id}/rotate", response_model=KeyIssued, status_code=201)
async def rotate_key(
    key_id: str, _: AdminDep, auth: AuthDep, body: KeyRotate | None = None
) -> KeyIssued:
    """A successor key (same name and role); the old one keeps working for `grace_hours`."""
    grace = timedelta(hours=(body or KeyRotate()).grace_hours)
    try:
        issued = await asyncio.to_thread(lambda: auth.rotate(key_id, grace=grace))
    except UnknownKeyError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None
    except KeyStateError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    except ValueError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None
    return KeyIssued.issued(issued, now=auth.clock())


@router.delete("/api/keys/{key_id}", response_model=KeyPublic)
async def revoke_key(key_id: str, _: AdminDep, auth: AuthDep) -> KeyPublic:
    """Revoke the key; it is refused from the next request on."""
    try:
        key = await asyncio.to_thread(auth.revoke, key_id)
    except UnknownKeyError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None
    except KeyStateError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    return KeyPublic.of(key, now=auth.clock())
