"""``POST /pipeline/run`` with only an ``accountId``: run each of the account's markets.

The seed's run request is ``{"accountId": "...", "useHttpAgents": true}``, without a market.
The request's form (`account_form`) decides what runs:

- ``symbol`` and ``timeframe`` given: one run, answered as before; an ``accountId`` with
  them must name a paper account (`check_account`: 404 naming ``accountId`` otherwise).
- neither given: the account's markets (`account_markets`), ``accountId`` required (422
  naming it), an unknown account 404, an account with no market 422 naming ``accountId``
  with how to give it one, more than `MAX_MARKETS` 422.
- only one of them: 422 naming the missing one.

An account's markets are its default ``markets`` (`AccountConfig`), then its scheduler jobs
from settings, then those added through ``POST /scheduler/jobs`` (oldest first), each
market once, in that order. Every one must be in the deployment's allowlists (422 naming
``accountId`` otherwise). Each market runs through `Runtime.run` (the run deadline, the
paper-account step and the metrics of any run) and is saved like any run. The markets run
concurrently, as the scheduler runs its due jobs: the request ends within about one run
deadline whatever the number of markets, and the paper-account step locks the account's
row, so runs of one account settle one after another. The answer is 201
``{"accountId", "runs": [run, ...]}``, the runs in market order, each in the single
form's shape; a market whose run passes its deadline makes the answer 503 (the runs that
finished stay recorded).

Idempotency (G1-G3). The ``Idempotency-Key`` ``K`` is claimed for the whole request (the
hash of its body): another body is 422, the same one still running 409. Market ``i`` is
claimed and saved under a derived key (`market_key`) with the same hash, and ``K`` is
completed with the last market's run. A replay walks the derived keys up to that run and
answers the stored runs (200, ``Idempotent-Replayed: true``) without running anything. A
retry after a partial failure reuses the markets already recorded and runs the others;
if the account's markets changed in between, the key now means another request: 422.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from conclave.accounts.config import MAX_MARKETS, AccountConfig, Market
from conclave.services.execute import claims_of, settings_jobs
from conclave.services.http_common import ApiError, json_response
from conclave.services.runtime import Runtime
from conclave.store import RunStore
from conclave.store import accounts_repo as db

log = structlog.get_logger(__name__)

__all__ = [
    "MAX_MARKETS",
    "AccountRuns",
    "account_form",
    "account_markets",
    "check_account",
    "market_key",
    "run_account",
]

MarketKey = tuple[str, str]  # (symbol, timeframe)


class AccountRuns(BaseModel):
    """The answer of ``POST /pipeline/run`` with only ``accountId``: one run per market."""

    model_config = ConfigDict(frozen=True)

    account_id: str = Field(alias="accountId", description="The account whose markets ran.")
    runs: list[dict[str, Any]] = Field(
        description="Each market's run, in the single form's shape, in market order."
    )


def _invalid(message: str, field: str) -> ApiError:
    return ApiError(422, "invalid_request", message, field=field)


def account_form(account_id: str | None, symbol: str | None, timeframe: str | None) -> bool:
    """True when the request names no market (run the account's); False when it names one.

    Checked before any I/O: half a market is 422 naming the missing field, no market and
    no account 422 naming ``accountId``.
    """
    if symbol is not None and timeframe is not None:
        return False
    if symbol is not None or timeframe is not None:
        missing, given = ("timeframe", "symbol") if timeframe is None else ("symbol", "timeframe")
        raise _invalid(f"{missing} is required with {given}", missing)
    if account_id is None:
        raise _invalid(
            "give accountId (to run the account's markets), or symbol and timeframe",
            "accountId",
        )
    return True


def _unknown_account() -> ApiError:
    return ApiError(404, "not_found", "no account with this id", field="accountId")


async def check_account(runtime: Runtime, account_id: str | None) -> None:
    """404 naming ``accountId`` when it names no paper account (nothing to check without
    an account id or without an account store)."""
    if account_id is None or runtime.accounts is None:
        return
    if not await runtime.accounts.exists(account_id):
        raise _unknown_account()


async def _own_markets(runtime: Runtime, account_id: str) -> tuple[Market, ...]:
    """The account's default markets; 404 for an unknown account, 503 without accounts."""
    service = runtime.accounts
    if service is None:
        raise ApiError(503, "unavailable", "accounts need the run store's database")
    async with service.repo.read() as conn:
        acct = await db.get_account(conn, account_id)
    if acct is None:
        raise _unknown_account()
    return AccountConfig.model_validate(acct["config"]).markets


async def account_markets(
    runtime: Runtime, account_id: str, own: Sequence[Market] = ()
) -> list[MarketKey]:
    """``own`` markets, then the account's scheduler jobs from settings, then those added
    through the API (oldest first); each (symbol, timeframe) once, first place kept."""
    found: list[MarketKey] = [(m.symbol, m.timeframe) for m in own]
    found += [
        (job.symbol, job.timeframe)
        for job in settings_jobs(runtime.settings.scheduler)
        if job.account_id == account_id
    ]
    tables = claims_of(runtime)
    if tables is not None:
        stored = await tables[1].list()
        found += [(s.job.symbol, s.job.timeframe) for s in stored if s.job.account_id == account_id]
    return list(dict.fromkeys(found))


def _check_markets(runtime: Runtime, account_id: str, markets: Sequence[MarketKey]) -> None:
    if not markets:
        raise _invalid(
            f"account {account_id} has no market: give symbol and timeframe, add a scheduler"
            " job for it (POST /scheduler/jobs) or create it with limits.markets",
            "accountId",
        )
    if len(markets) > MAX_MARKETS:
        raise _invalid(
            f"account {account_id} has {len(markets)} markets; at most {MAX_MARKETS} run in"
            " one request: give symbol and timeframe",
            "accountId",
        )
    allowed = runtime.settings.market
    for symbol, timeframe in markets:
        if symbol not in allowed.symbols or timeframe not in allowed.timeframes:
            raise _invalid(
                f"the account's market {symbol} {timeframe} is not in this deployment's"
                " symbol and timeframe allowlists",
                "accountId",
            )


def market_key(key: str, index: int) -> str:
    """The idempotency key of market ``index`` of a request made with ``key``."""
    return f"conclave-market:{hashlib.sha256(key.encode()).hexdigest()[:40]}:{index}"


def _key_reused(message: str) -> ApiError:
    return ApiError(422, "idempotency_key_reused", message, field="Idempotency-Key")


def key_busy(kind: str, saved: str = "its runs were saved") -> ApiError:
    """The 409 for a claim that is not ours: ``abandoned`` (G4: cut short by a crash,
    never run a second time, no Retry-After) or still in progress (Retry-After: 1).
    ``saved`` says what the abandoned request did not get to save (for the message)."""
    if kind == "abandoned":
        return ApiError(
            409,
            "idempotency_key_abandoned",
            f"the request with this Idempotency-Key stopped before {saved} and is not run"
            " again; send a new Idempotency-Key",
            field="Idempotency-Key",
        )
    err = ApiError(
        409,
        "idempotency_key_in_progress",
        "a request with this Idempotency-Key is still running",
        field="Idempotency-Key",
    )
    err.headers = {"Retry-After": "1"}
    return err


async def _release(store: RunStore, key: str) -> None:
    try:
        await store.release_idempotency_key(key)
    except Exception as exc:  # the original failure matters more; the key expires anyway
        log.warning("idempotency_release_failed", error=type(exc).__name__)


def _store(runtime: Runtime) -> RunStore:
    store = runtime.store
    if runtime.accounts is None or not isinstance(store, RunStore):
        raise ApiError(503, "unavailable", "accounts need the run store's database")
    return store


@dataclass(frozen=True, slots=True)
class _Batch:
    """One account-form request: where it runs and saves, and its idempotency key."""

    runtime: Runtime
    store: RunStore
    account_id: str
    use_http: bool | None
    key: str | None
    digest: str | None
    retry_after_s: int

    def deadline_passed(self, symbol: str, timeframe: str) -> ApiError:
        err = ApiError(
            503, "unavailable", f"the run of {symbol} {timeframe} passed its deadline; retry later"
        )
        err.headers = {"Retry-After": str(self.retry_after_s)}
        return err


async def run_account(
    runtime: Runtime,
    account_id: str,
    *,
    use_http: bool | None,
    key: str | None,
    digest: str | None,
    retry_after_s: int,
) -> Response:
    """Run, store and answer each of the account's markets (see the module); ``digest`` is
    the request's hash, needed with ``key``."""
    store = _store(runtime)
    own = await _own_markets(runtime, account_id)
    if key is not None:
        if digest is None:
            raise ValueError("an idempotency key needs the request's digest")
        claim = await store.claim_idempotency_key(key, digest)
        if claim.kind == "conflict":
            raise _key_reused("this Idempotency-Key was used with a different body")
        if claim.kind == "replay" and claim.run_id is not None:
            return await _replay(store, account_id, key, digest, claim.run_id)
        if claim.kind != "new":
            raise key_busy(claim.kind)
    batch = _Batch(runtime, store, account_id, use_http, key, digest, retry_after_s)
    runs: list[dict[str, Any]] = []
    try:
        markets = await account_markets(runtime, account_id, own)
        _check_markets(runtime, account_id, markets)
        results = await asyncio.gather(
            *(_run_market(batch, m, i) for i, m in enumerate(markets)), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result  # the first failure in market order
            runs.append(result)
        if key is not None:
            await store.complete_idempotency_key(key, runs[-1]["runId"])
    except BaseException:
        if key is not None:
            await _release(store, key)
        raise
    log.info("account_runs_recorded", account_id=account_id, runs=len(runs))
    return json_response({"accountId": account_id, "runs": runs}, 201)


async def _run_market(batch: _Batch, market: MarketKey, index: int) -> dict[str, Any]:
    """One market's run, saved under its derived key; a run recorded before is reused."""
    store, (symbol, timeframe) = batch.store, market
    child = None
    if batch.key is not None and batch.digest is not None:
        child = market_key(batch.key, index)
        claim = await store.claim_idempotency_key(child, batch.digest)
        if claim.kind == "replay" and claim.run_id is not None:
            stored = await store.get_run(claim.run_id)
            if stored is not None and (stored.get("symbol"), stored.get("timeframe")) == market:
                return stored  # recorded by an earlier try of this request
            raise _key_reused("the account's markets changed since this Idempotency-Key was used")
        if claim.kind == "conflict":
            raise _key_reused("this Idempotency-Key was used with a different body")
        if claim.kind != "new":
            raise key_busy(claim.kind)
    saved = False
    try:
        try:
            run = await batch.runtime.run(
                batch.account_id, symbol, timeframe, use_http=batch.use_http
            )
        except TimeoutError:
            raise batch.deadline_passed(symbol, timeframe) from None
        wire = run.to_wire()
        await store.save_run(wire, idempotency_key=child, request_hash=batch.digest)
        saved = True
    finally:
        if child is not None and not saved:
            await _release(store, child)
    log.info("run_recorded", run_id=run.run_id, symbol=symbol, timeframe=timeframe,
             decision=run.decision.status, degraded=run.degraded)  # fmt: skip
    return wire


async def _replay(
    store: RunStore, account_id: str, key: str, digest: str, last_run_id: str
) -> Response:
    """The stored answer of ``key``: the runs of its derived keys up to ``last_run_id``."""
    runs: list[dict[str, Any]] = []
    for index in range(MAX_MARKETS):
        child = market_key(key, index)
        claim = await store.claim_idempotency_key(child, digest)
        stored = await store.get_run(claim.run_id) if claim.run_id is not None else None
        if claim.kind != "replay" or stored is None:
            if claim.kind == "new":
                await _release(store, child)
            break
        runs.append(stored)
        if claim.run_id == last_run_id:
            answer = {"accountId": account_id, "runs": runs}
            return json_response(answer, 200, {"Idempotent-Replayed": "true"})
    raise ApiError(409, "store_rejected",
                   "the runs recorded under this Idempotency-Key cannot be read back",
                   field="Idempotency-Key")  # fmt: skip
