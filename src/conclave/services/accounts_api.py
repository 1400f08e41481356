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
an unknown account, 503 when the store has no account tables (a test double store). The
OpenAPI document declares each body, answer and error as enforced
(`conclave.services.openapi_docs`), with links from a created account to its routes.
"""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Path, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.responses import Response

from conclave.accounts.config import AccountConfig
from conclave.accounts.service import AccountService
from conclave.pipeline.wire import ACCOUNT_ID_PATTERN
from conclave.services.http_common import ApiError, json_response
from conclave.services.json_body import read_json
from conclave.services.openapi_docs import (
    BODY_ERRORS,
    KEY_ERRORS,
    Account,
    AccountList,
    error_responses,
    link,
    path_ref,
    request_body,
)
from conclave.timeframes import BINANCE_INTERVALS

router = APIRouter(tags=["accounts"])
_ID = Annotated[str, Path(pattern=ACCOUNT_ID_PATTERN.pattern, description="The account's id.")]
#: No control characters (a NUL cannot be stored by PostgreSQL, a newline forges log lines).
_PRINTABLE = r"^[^\x00-\x1f\x7f]+$"
_ONE = "/accounts/{account_id}"
_LINKS = {
    "GetAccount": link(path_ref(_ONE, "get"), account_id="$response.body#/id"),
    "PauseAccount": link(path_ref(_ONE + "/pause", "post"), account_id="$response.body#/id"),
    "ResumeAccount": link(path_ref(_ONE + "/resume", "post"), account_id="$response.body#/id"),
}
_ERRORS = error_responses(*KEY_ERRORS, 503)
_WRITE_ERRORS = error_responses(*BODY_ERRORS, *KEY_ERRORS, 503)
_NOT_FOUND = error_responses(404, e404="no account with this id")


class CreateAccount(BaseModel):
    """A new paper account: name, starting balance, quote currency, costs, limits."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=128, pattern=_PRINTABLE)
    balance: float = Field(gt=0, le=1e15, allow_inf_nan=False)
    quote: str = Field(min_length=2, max_length=16, pattern=r"^[A-Z0-9]{2,16}$")
    fee_rate: float = Field(0.001, alias="feeRate", ge=0, lt=0.1, allow_inf_nan=False)
    slippage: float = Field(0.0005, ge=0, lt=0.1, allow_inf_nan=False)
    limits: AccountConfig = Field(default_factory=AccountConfig)


class Reason(BaseModel):
    """Why an account is paused or resumed (recorded with the event)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    reason: str = Field(min_length=1, max_length=500, pattern=r"^[^\x00]+$")


def _create_schema() -> dict[str, Any]:
    """`CreateAccount`'s schema with what `AccountConfig` enforces beyond its field types:
    each of the three risk levels in (0, 1), and a market's timeframe a Binance interval."""
    schema = CreateAccount.model_json_schema(by_alias=True)
    defs = schema.get("$defs", {})
    for name in ("drawdown_limits", "daily_loss_limits"):
        levels = defs.get("AccountConfig", {}).get("properties", {}).get(name)
        if levels is not None:
            level = {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1}
            levels["prefixItems"] = [level, level, level]
            levels["description"] = "warn, reduce, halt: 0 < warn <= reduce <= halt < 1"
    timeframe = defs.get("Market", {}).get("properties", {}).get("timeframe")
    if timeframe is not None:
        timeframe["enum"] = list(BINANCE_INTERVALS)
    markets = defs.get("AccountConfig", {}).get("properties", {}).get("markets")
    if markets is not None:
        markets["uniqueItems"] = True  # each market once
    return schema


def _service(request: Request) -> AccountService:
    accounts: AccountService | None = getattr(request.app.state.runtime, "accounts", None)
    if accounts is None:
        raise ApiError(503, "unavailable", "accounts need the run store's database")
    return accounts


def _integral(value: Any) -> Any:
    """``value`` with integral floats as ints: JSON has one number type, 186.0 is 186."""
    if isinstance(value, float) and value.is_integer() and abs(value) <= 2**53:
        return int(value)
    if isinstance(value, dict):
        return {k: _integral(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_integral(v) for v in value]
    return value


async def _body(request: Request, model: type[BaseModel]) -> Any:
    data = await read_json(request)  # 415, 400 (malformed, a duplicate key) as everywhere
    try:  # strict JSON: no "5" for 5, no false for 0; arrays for the tuples
        return model.model_validate_json(orjson.dumps(_integral(data)), strict=True)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_input=False)]
        ) from None


@router.post(
    "/accounts",
    status_code=201,
    summary="Create a paper account",
    openapi_extra=request_body(_create_schema()),
    responses={201: {"model": Account, "links": _LINKS}, **_WRITE_ERRORS},
)
async def create_account(request: Request) -> Response:
    """Create a paper account holding ``balance`` of ``quote`` in cash."""
    service = _service(request)
    body: CreateAccount = await _body(request, CreateAccount)
    account = await service.create(
        body.name, balance=body.balance, quote=body.quote, fee_rate=body.fee_rate,
        slippage=body.slippage, config=body.limits,
    )  # fmt: skip
    return json_response(account, 201)


@router.get(
    "/accounts",
    summary="List the paper accounts",
    responses={200: {"model": AccountList}, **_ERRORS},
)
async def list_accounts(request: Request) -> Response:
    """Every account's summary, oldest first."""
    return json_response({"items": await _service(request).list_accounts()})


@router.get(
    "/accounts/{account_id}",
    summary="One paper account",
    responses={200: {"model": Account}, **_NOT_FOUND, **_ERRORS, **error_responses(422)},
)
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


@router.post(
    "/accounts/{account_id}/pause",
    summary="Pause an account (no new orders)",
    openapi_extra=request_body(Reason),
    responses={200: {"model": Account}, **_NOT_FOUND, **_WRITE_ERRORS},
)
async def pause_account(request: Request, account_id: _ID) -> Response:
    """Stop new orders until resumed; recorded with the reason."""
    return await _set(request, account_id, resume=False)


@router.post(
    "/accounts/{account_id}/resume",
    summary="Resume a paused or halted account",
    openapi_extra=request_body(Reason),
    responses={200: {"model": Account}, **_NOT_FOUND, **_WRITE_ERRORS},
)
async def resume_account(request: Request, account_id: _ID) -> Response:
    """Resume by hand; recorded with the reason."""
    return await _set(request, account_id, resume=True)
