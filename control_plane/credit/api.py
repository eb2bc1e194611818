"""The credit HTTP routes (translation only, STYLE 10): credit errors become 404/409/422 in the
plane's error shape ``{"detail": [{"type", "loc", "msg"}]}``, store failures 503.

- `GET /api/credit/exposure[?counterparty=]` (viewer): exposure, PFE, limit, utilisation.
- `POST /api/credit/limit` (admin): the spec's limit setter (creates the counterparty).
- `GET|POST /api/credit/counterparties`, `GET|PUT|DELETE /api/credit/counterparties/{id}`:
  master data (reads viewer, writes admin).
- `GET|POST /api/credit/settlements` (viewer / admin): settled trades or payments on account.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated, NoReturn, cast

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response, status

from control_plane.auth.deps import AdminDep, require
from control_plane.auth.models import Role
from control_plane.db import StoreError

from .models import (
    CounterpartyExistsError,
    CounterpartyNotFoundError,
    CreditError,
    InvalidCreditInputError,
    SettlementConflictError,
)
from .schemas import (
    CounterpartyCreate,
    CounterpartyPublic,
    CounterpartyUpdate,
    ExposureList,
    ExposurePublic,
    LimitIn,
    SettlementIn,
    SettlementPublic,
)
from .service import CreditService

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api/credit", tags=["credit"])
_VIEWER = [Depends(require(Role.VIEWER))]


def get_credit(request: Request) -> CreditService:
    return cast(CreditService, request.app.state.credit)


CreditDep = Annotated[CreditService, Depends(get_credit)]


def _fail(exc: Exception) -> NoReturn:
    if isinstance(exc, InvalidCreditInputError):
        code, kind, loc = 422, "value_error", ["body", exc.field]
    elif isinstance(exc, CounterpartyNotFoundError):
        code, kind, loc = 404, "not_found", ["path", "counterparty"]
    elif isinstance(exc, CounterpartyExistsError | SettlementConflictError):
        code, kind, loc = 409, "conflict", ["body"]
    elif isinstance(exc, StoreError):
        log.warning("credit: %s", exc)
        raise HTTPException(
            503, detail="the credit store is unavailable, retry", headers={"Retry-After": "5"}
        ) from None
    else:
        raise exc
    raise HTTPException(code, detail=[{"type": kind, "loc": loc, "msg": str(exc)}]) from None


@router.get("/exposure", dependencies=_VIEWER, response_model=ExposureList)
async def exposure(
    credit: CreditDep,
    counterparty: Annotated[str | None, Query(max_length=64)] = None,
) -> ExposureList:
    """Exposure per counterparty (all, or one) with its limit and utilisation."""
    try:
        if counterparty is None:
            found = await asyncio.to_thread(credit.refresh)
        else:
            found = [await asyncio.to_thread(credit.exposure, counterparty)]
    except (CreditError, StoreError) as exc:
        _fail(exc)
    return ExposureList(
        pfe_addon_pct=f"{credit.addon_pct.normalize():f}",
        counterparties=[ExposurePublic.of(e) for e in found],
    )


@router.post("/limit", response_model=CounterpartyPublic)
async def set_limit(body: LimitIn, credit: CreditDep, principal: AdminDep) -> CounterpartyPublic:
    """Set a counterparty's credit limit (creates its master data if there is none)."""
    try:
        cp = await asyncio.to_thread(
            credit.set_limit, counterparty=body.counterparty, limit_eur=body.limit_eur
        )
    except (CreditError, StoreError) as exc:
        _fail(exc)
    log.info(
        "credit: limit of %s set to %s EUR by %s", cp.counterparty_id, cp.limit_eur, principal.name
    )
    return CounterpartyPublic.of(cp, credit.default_thresholds_pct)


@router.get("/counterparties", dependencies=_VIEWER, response_model=list[CounterpartyPublic])
async def list_counterparties(credit: CreditDep) -> list[CounterpartyPublic]:
    try:
        found = await asyncio.to_thread(credit.counterparties)
    except StoreError as exc:
        _fail(exc)
    return [CounterpartyPublic.of(c, credit.default_thresholds_pct) for c in found]


@router.post(
    "/counterparties", status_code=status.HTTP_201_CREATED, response_model=CounterpartyPublic
)
async def create_counterparty(
    body: CounterpartyCreate, credit: CreditDep, _admin: AdminDep
) -> CounterpartyPublic:
    try:
        cp = await asyncio.to_thread(
            lambda: credit.create_counterparty(
                counterparty=body.counterparty,
                name=body.name,
                limit_eur=body.limit_eur,
                alert_thresholds_pct=body.alert_thresholds_pct,
            )
        )
    except (CreditError, StoreError) as exc:
        _fail(exc)
    return CounterpartyPublic.of(cp, credit.default_thresholds_pct)


@router.get(
    "/counterparties/{counterparty}", dependencies=_VIEWER, response_model=CounterpartyPublic
)
async def get_counterparty(counterparty: str, credit: CreditDep) -> CounterpartyPublic:
    try:
        cp = await asyncio.to_thread(credit.counterparty, counterparty)
    except (CreditError, StoreError) as exc:
        _fail(exc)
    return CounterpartyPublic.of(cp, credit.default_thresholds_pct)


@router.put("/counterparties/{counterparty}", response_model=CounterpartyPublic)
async def update_counterparty(
    counterparty: str, body: CounterpartyUpdate, credit: CreditDep, _admin: AdminDep
) -> CounterpartyPublic:
    changes = {k: getattr(body, k) for k in body.model_fields_set}
    if "name" in changes and changes["name"] is None:
        _fail(InvalidCreditInputError("name", "must not be null (omit it to keep the name)"))
    try:
        cp = await asyncio.to_thread(
            lambda: credit.update_counterparty(counterparty=counterparty, **changes)
        )
    except (CreditError, StoreError) as exc:
        _fail(exc)
    return CounterpartyPublic.of(cp, credit.default_thresholds_pct)


@router.delete("/counterparties/{counterparty}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_counterparty(counterparty: str, credit: CreditDep, _admin: AdminDep) -> Response:
    try:
        await asyncio.to_thread(credit.delete_counterparty, counterparty)
    except (CreditError, StoreError) as exc:
        _fail(exc)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/settlements", dependencies=_VIEWER, response_model=list[SettlementPublic])
async def list_settlements(
    credit: CreditDep,
    counterparty: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 500,
) -> list[SettlementPublic]:
    """Settlements, newest first."""
    try:
        found = await asyncio.to_thread(
            lambda: credit.settlements(counterparty=counterparty, limit=limit)
        )
    except (CreditError, StoreError) as exc:
        _fail(exc)
    return [SettlementPublic.of(s) for s in found]


@router.post("/settlements", status_code=status.HTTP_201_CREATED, response_model=SettlementPublic)
async def record_settlement(
    body: SettlementIn, credit: CreditDep, principal: AdminDep
) -> SettlementPublic:
    """Record trades of a counterparty as settled (`trade_ids`) or a payment on account
    (`amount_eur`, > 0 received from it, < 0 paid to it)."""
    try:
        found = await asyncio.to_thread(
            lambda: credit.record_settlement(
                counterparty=body.counterparty,
                trade_ids=body.trade_ids,
                amount_eur=body.amount_eur,
                settled_on=body.settled_on,
                reference_text=body.reference,
                note=body.note,
                recorded_by=principal.name,
            )
        )
    except (CreditError, StoreError) as exc:
        _fail(exc)
    return SettlementPublic.of(found)
