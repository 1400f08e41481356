"""``GET /accounts/{id}/equity``: a paper account's equity curve, for the dashboard's chart.

The account's recorded equity points (one per settled run, ascending), the drawdown from the
running peak at each point, and the account's drawdown limits (warn, reduce, halt) to draw
as lines. The live risk level is measured from the peak since the last resume (a resume
restarts it, `conclave.accounts.service.AccountService.resume`); this curve's drawdown runs
from the first point, which the chart says. ``read`` scope; 404 for an unknown account.
"""

# no `from __future__ import annotations`: FastAPI reads the route's annotations at run time

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from pydantic import BaseModel
from starlette.responses import Response

from conclave.pipeline.wire import ACCOUNT_ID_PATTERN
from conclave.services.http_common import ApiError, json_response
from conclave.services.openapi_docs import KEY_ERRORS, error_responses

router = APIRouter(tags=["accounts"])


class EquityCurve(BaseModel):
    """Times (ms UTC), equity, drawdown from the running peak, and the limits."""

    time: list[int]
    equity: list[float]
    drawdown: list[float]
    limits: dict[str, float]


@router.get(
    "/accounts/{account_id}/equity",
    summary="A paper account's equity curve and drawdown",
    responses={
        200: {"model": EquityCurve},
        **error_responses(404, 422, *KEY_ERRORS, 503, e404="no account with this id"),
    },
)
async def equity_curve(
    request: Request,
    account_id: Annotated[str, Path(pattern=ACCOUNT_ID_PATTERN.pattern)],
) -> Response:
    """The recorded equity points, oldest first, with the drawdown limits."""
    from conclave.store import accounts_repo

    service: Any = getattr(request.app.state.runtime, "accounts", None)
    if service is None:
        raise ApiError(503, "unavailable", "accounts need the run store's database")
    found = await service.get(account_id)
    if found is None:
        raise ApiError(404, "not_found", "no account with this id", field="account_id")
    async with service.repo.read() as conn:
        times, equity = await accounts_repo.equity_history(conn, account_id)
    peak = 0.0
    drawdown = []
    for e in equity:
        peak = max(peak, e)
        drawdown.append(e / peak - 1.0 if peak > 0 else 0.0)
    warn, reduce, halt = found["limits"]["drawdown_limits"]
    return json_response({"time": times, "equity": equity, "drawdown": drawdown,
                          "limits": {"warn": warn, "reduce": reduce, "halt": halt}})  # fmt: skip


__all__ = ["EquityCurve", "router"]
