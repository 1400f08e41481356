"""The orchestrator's paper-account routes (an `APIRouter` included by `conclave.services.api`).

- ``POST /accounts`` ``{"name", "balance", "quote", "feeRate"?, "slippage"?, "limits"?}``
  -> 201 with the account (its ``id`` included); ``limits`` are the per-account sizing and
  risk settings of `AccountConfig` (unknown keys are 422 naming them).
- ``GET /accounts`` -> ``{"items": [summary, ...]}``.
- ``GET /accounts/{id}`` -> the account: ``id, name, equity, peakEquity, drawdown,
  riskLevel, positions, orders`` and more (terms, status, P&L, limits, risk events); 404.
- ``POST /accounts/{id}/pause`` and ``/resume`` ``{"reason"}`` -> the account after it;
  both are recorded with the reason. Resuming restarts the drawdown peak (see
  `AccountService.resume`).

Errors use the common shape (`conclave.services.http_common`): 422 names the field, 404 for
an unknown account, 503 when the store has no account tables (a test double store).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.responses import Response

from conclave.accounts.config import AccountConfig
from conclave.accounts.service import AccountService
from conclave.pipeline.wire import ACCOUNT_ID_PATTERN
from conclave.services.http_common import ApiError, json_response, read_json

router = APIRouter(tags=["accounts"])
_ID = Annotated[str, Path(pattern=ACCOUNT_ID_PATTERN.pattern, description="The account's id.")]
_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "no such account"}}


class CreateAccount(BaseModel):
    """A new paper account: name, starting balance, quote currency, costs, limits."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=128)
    balance: float = Field(gt=0, le=1e15, allow_inf_nan=False)
    quote: str = Field(min_length=2, max_length=16, pattern=r"^[A-Z0-9]{2,16}$")
    fee_rate: float = Field(0.001, alias="feeRate", ge=0, lt=0.1, allow_inf_nan=False)
    slippage: float = Field(0.0005, ge=0, lt=0.1, allow_inf_nan=False)
    limits: AccountConfig = Field(default_factory=AccountConfig)


class Reason(BaseModel):
    """Why an account is paused or resumed (recorded with the event)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    reason: str = Field(min_length=1, max_length=500)


def _service(request: Request) -> AccountService:
    accounts: AccountService | None = getattr(request.app.state.runtime, "accounts", None)
    if accounts is None:
        raise ApiError(503, "unavailable", "accounts need the run store's database")
    return accounts


async def _body(request: Request, model: type[BaseModel]) -> Any:
    data = await read_json(request)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_input=False)]
        ) from None


def _schema(model: type[BaseModel]) -> dict[str, Any]:
    schema = model.model_json_schema(by_alias=True)
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


@router.post("/accounts", status_code=201, summary="Create a paper account",
             openapi_extra=_schema(CreateAccount))  # fmt: skip
async def create_account(request: Request) -> Response:
    """Create a paper account holding ``balance`` of ``quote`` in cash."""
    service = _service(request)
    body: CreateAccount = await _body(request, CreateAccount)
    account = await service.create(
        body.name, balance=body.balance, quote=body.quote, fee_rate=body.fee_rate,
        slippage=body.slippage, config=body.limits,
    )  # fmt: skip
    return json_response(account, 201)


@router.get("/accounts", summary="List the paper accounts")
async def list_accounts(request: Request) -> Response:
    """Every account's summary, oldest first."""
    return json_response({"items": await _service(request).list_accounts()})


@router.get("/accounts/{account_id}", summary="One paper account", responses=_NOT_FOUND)
async def get_account(request: Request, account_id: _ID) -> Response:
    """Equity, peak, drawdown, risk level, positions, orders and risk events."""
    found = await _service(request).get(account_id)
    if found is None:
        raise ApiError(404, "not_found", "no account with this id", field="account_id")
    return json_response(found)


async def _set(request: Request, account_id: str, resume: bool) -> Response:
    service = _service(request)
    body: Reason = await _body(request, Reason)
    if not await service.exists(account_id):
        raise ApiError(404, "not_found", "no account with this id", field="account_id")
    now = int(request.app.state.runtime.now_ms())  # the app's clock, read at the edge
    act = service.resume if resume else service.pause
    return json_response(await act(account_id, body.reason, now_ms=now))


@router.post("/accounts/{account_id}/pause", summary="Pause an account (no new orders)",
             responses=_NOT_FOUND, openapi_extra=_schema(Reason))  # fmt: skip
async def pause_account(request: Request, account_id: _ID) -> Response:
    """Stop new orders until resumed; recorded with the reason."""
    return await _set(request, account_id, resume=False)


@router.post("/accounts/{account_id}/resume", summary="Resume a paused or halted account",
             responses=_NOT_FOUND, openapi_extra=_schema(Reason))  # fmt: skip
async def resume_account(request: Request, account_id: _ID) -> Response:
    """Resume by hand; recorded with the reason."""
    return await _set(request, account_id, resume=True)
