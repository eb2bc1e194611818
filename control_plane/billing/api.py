"""Billing's HTTP routes (translation only, STYLE 10): domain calls in a worker thread (SQL and
PDF rendering block), domain errors to HTTP answers.

- `POST /api/billing/generate` (admin): a month's invoices, issuing the missing ones; 200 with
  the current invoices and the numbers issued now. 422: malformed period or a month that has
  not ended; 503: the store failed (nothing was issued, no number used).
- `GET /api/billing/invoices` (viewer): filtered list, newest first, keyset pages, statistics.
- `GET /api/billing/invoices/{id}` (viewer): one document with its lines, as JSON.
- `GET /api/billing/invoice/{id}` (viewer): the PDF (the spec's path). 404: unknown id.
- `POST /api/billing/invoice/{id}/paid` (admin): mark an issued, current invoice paid and
  settle its trades in credit; idempotent for the same date and reference. 409: a credit note,
  a corrected invoice, paid already with other data, or credit refused the settlement; 422: a
  date in the future or before the invoice date.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import date
from typing import Annotated, ParamSpec, TypeVar, cast

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, Response, status

from control_plane.auth.deps import require
from control_plane.auth.models import Role
from control_plane.billing.errors import (
    BillingStoreError,
    InvalidRequestError,
    InvoiceConflictError,
    InvoiceNotFoundError,
)
from control_plane.billing.models import InvoiceFilter, InvoiceKind, Period
from control_plane.billing.schemas import (
    GenerateRequest,
    GenerateResponse,
    InvoiceList,
    InvoicePublic,
    PaidRequest,
    StatsPublic,
    StatusFilter,
)
from control_plane.billing.service import BillingService

router = APIRouter(prefix="/api/billing", tags=["billing"])

P = ParamSpec("P")
T = TypeVar("T")


def get_billing(request: Request) -> BillingService:
    return cast(BillingService, request.app.state.billing)


BillingDep = Annotated[BillingService, Depends(get_billing)]
InvoiceId = Annotated[int, Path(ge=1, le=2**62, description="the invoice id")]


async def _call(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    try:
        return await asyncio.to_thread(fn, *args, **kwargs)
    except InvalidRequestError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None
    except InvoiceNotFoundError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None
    except InvoiceConflictError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    except BillingStoreError:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            "the billing store is unavailable: nothing was issued or marked paid, retry",
            headers={"Retry-After": "5"},
        ) from None


@router.post(
    "/generate",
    response_model=GenerateResponse,
    dependencies=[Depends(require(Role.ADMIN))],
)
async def generate(body: GenerateRequest, billing: BillingDep) -> GenerateResponse:
    """Invoices of a month, one per counterparty; idempotent unless `correction` is set."""
    result = await _call(
        billing.generate,
        period=body.period,
        counterparty=body.counterparty,
        correction=body.correction,
    )
    return GenerateResponse.of(result)


@router.get("/invoices", response_model=InvoiceList, dependencies=[Depends(require(Role.VIEWER))])
async def list_invoices(
    billing: BillingDep,
    period: Annotated[str | None, Query(pattern=r"^\d{4}-\d{2}$", description="YYYY-MM")] = None,
    counterparty: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
    kind: InvoiceKind | None = None,
    status_: Annotated[
        StatusFilter | None,
        Query(
            alias="status",
            description="issued / corrected (the document), paid / unpaid (current invoices "
            "not marked paid)",
        ),
    ] = None,
    issued_from: date | None = None,
    issued_to: date | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: Annotated[int | None, Query(ge=1, le=2**62)] = None,
) -> InvoiceList:
    """Invoices and credit notes, newest first, with statistics over all that match."""
    try:
        month = None if period is None else Period.parse(period)
    except InvalidRequestError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None
    where = InvoiceFilter(
        period=month,
        counterparty=counterparty,
        kind=kind,
        status=None if status_ is None else status_.document,
        payment=None if status_ is None else status_.payment,
        issued_from=issued_from,
        issued_to=issued_to,
    )
    page, stats = await _call(billing.list_invoices, where, limit=limit, before_id=cursor)
    return InvoiceList(
        invoices=[InvoicePublic.of(i, with_lines=False) for i in page],
        next_cursor=page[-1].invoice_id if len(page) == limit else None,
        stats=StatsPublic.of(stats),
    )


@router.get(
    "/invoices/{invoice_id}",
    response_model=InvoicePublic,
    dependencies=[Depends(require(Role.VIEWER))],
)
async def invoice_detail(invoice_id: InvoiceId, billing: BillingDep) -> InvoicePublic:
    """One invoice or credit note with its line items."""
    return InvoicePublic.of(await _call(billing.invoice, invoice_id))


@router.get(
    "/invoice/{invoice_id}",
    response_class=Response,
    responses={200: {"content": {"application/pdf": {}}, "description": "the PDF"}},
    dependencies=[Depends(require(Role.VIEWER))],
)
async def invoice_pdf(invoice_id: InvoiceId, billing: BillingDep) -> Response:
    """The invoice as PDF."""
    invoice, pdf = await _call(billing.pdf, invoice_id)
    return Response(
        pdf,
        media_type="application/pdf",
        headers={"Content-Disposition": f'inline; filename="{invoice.number}.pdf"'},
    )


@router.post(
    "/invoice/{invoice_id}/paid",
    response_model=InvoicePublic,
    dependencies=[Depends(require(Role.ADMIN))],
)
async def invoice_paid(
    invoice_id: InvoiceId, body: PaidRequest, billing: BillingDep
) -> InvoicePublic:
    """Mark an invoice paid; its trades are settled in credit by the invoice number."""
    invoice = await _call(
        billing.mark_paid, invoice_id=invoice_id, paid_on=body.paid_on, reference=body.reference
    )
    return InvoicePublic.of(invoice)
