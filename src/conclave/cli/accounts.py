"""``conclave accounts create|list|show|pause|resume``: paper accounts from the command line.

An edge like the rest of the CLI: settings come from the root callback, the store is opened
here (``DATABASE_URL``, else SQLite under ``data_dir``) and the clock is read here for the
pause and resume events. ``--json`` prints one JSON object: ``create`` the new account with
its ``id``; ``show`` exactly ``{"id", "name", "equity", "peakEquity", "drawdown",
"riskLevel", "positions", "orders"}``. An unknown id exits 2 naming ``--id``.
Registered on the root app by `conclave.cli`.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.table import Table

from conclave.cli.common import CliState, fail, run_or_fail
from conclave.errors import InvalidRequestError

if TYPE_CHECKING:  # the accounts and the store load when a command runs
    from conclave.accounts.service import AccountService

T = TypeVar("T")
accounts_app = typer.Typer(help="Paper accounts: create, list, show, pause, resume.",
                           no_args_is_help=True)  # fmt: skip

#: The keys ``accounts show --json`` prints, in this order (issue item 9).
SHOW_KEYS = ("id", "name", "equity", "peakEquity", "drawdown", "riskLevel", "positions", "orders")


async def _with_service(state: CliState, act: Callable[[AccountService], Awaitable[T]]) -> T:
    from conclave.accounts.service import AccountService
    from conclave.store import RunStore

    store = await RunStore.open(state.settings.database_url, data_dir=state.settings.data_dir)
    try:
        return await act(AccountService(store))
    finally:
        await store.aclose()


def _print(
    state: CliState, account: dict[str, Any], as_json: bool, keys: tuple[str, ...] = ()
) -> None:
    if as_json:
        out = {k: account[k] for k in keys} if keys else account
        typer.echo(json.dumps(out, allow_nan=False))
        return
    table = Table(title=f"account {account['id']} ({account['name']})", show_header=False)
    for key in ("status", "quote", "startingBalance", "cash", "equity", "peakEquity",
                "drawdown", "riskLevel", "statusReason"):  # fmt: skip
        if key in account:
            table.add_row(key, str(account[key]))
    state.out.print(table)
    for pos in account.get("positions", []):
        state.out.print(f"position {pos['symbol']}: qty {pos['qty']:.8g} at {pos['avgCost']:.8g}")
    for order in account.get("orders", [])[:10]:
        state.out.print(f"order {order['id']} {order['side']} {order['symbol']} {order['status']}")


@accounts_app.command("create")
def create(
    ctx: typer.Context,
    name: Annotated[str, typer.Option("--name", help="A name for the account.")],
    balance: Annotated[float, typer.Option("--balance", help="Starting balance (quote).")],
    quote: Annotated[str, typer.Option("--quote", help="Quote currency, e.g. USDT.")] = "USDT",
    fee_rate: Annotated[float, typer.Option("--fee-rate", help="Fee per fill.")] = 0.001,
    slippage: Annotated[float, typer.Option("--slippage", help="Slippage per fill.")] = 0.0005,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Create a paper account and print it with its id."""
    state: CliState = ctx.obj
    checks = (
        (not name.strip() or len(name) > 128, "name", "1 to 128 characters"),
        (not 0 < balance <= 1e15, "balance", "a positive amount"),
        (not quote.isalnum() or not quote.isupper() or not 2 <= len(quote) <= 16, "quote",
         "2 to 16 upper-case letters or digits"),
        (not 0 <= fee_rate < 0.1, "fee-rate", "from 0 to 0.1"),
        (not 0 <= slippage < 0.1, "slippage", "from 0 to 0.1"),
    )  # fmt: skip
    for bad, field, want in checks:
        if bad:
            fail(state.err, f"--{field}: expected {want}", 2)
    account = run_or_fail(state, _with_service(state, lambda s: s.create(
        name, balance=balance, quote=quote, fee_rate=fee_rate, slippage=slippage)))  # fmt: skip
    _print(state, account, as_json)


@accounts_app.command("list")
def list_(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """List the paper accounts."""
    state: CliState = ctx.obj
    items = run_or_fail(state, _with_service(state, lambda s: s.list_accounts()))
    if as_json:
        typer.echo(json.dumps({"items": items}, allow_nan=False))
        return
    table = Table(title="paper accounts")
    for col in ("id", "name", "quote", "status", "equity"):
        table.add_column(col)
    for a in items:
        table.add_row(a["id"], a["name"], a["quote"], a["status"], f"{a['equity']:,.2f}")
    state.out.print(table)


async def _get(s: AccountService, account_id: str) -> dict[str, Any]:
    from conclave.accounts.service import UnknownAccountError

    found = await s.get(account_id)
    if found is None:
        raise UnknownAccountError(account_id)
    return found


@accounts_app.command("show")
def show(
    ctx: typer.Context,
    account_id: Annotated[str, typer.Argument(metavar="ID", help="The account's id.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Show equity, peak, drawdown, risk level, positions and orders."""
    state: CliState = ctx.obj
    account = run_or_fail(state, _with_service(state, lambda s: _get(s, account_id)))
    _print(state, account, as_json, SHOW_KEYS)


def _set_status(
    ctx: typer.Context, account_id: str, reason: str, resume: bool, as_json: bool
) -> None:
    state: CliState = ctx.obj
    if not reason.strip():
        fail(state.err, "--reason: expected a reason", 2)

    async def act(s: AccountService) -> dict[str, Any]:
        await _get(s, account_id)
        change = s.resume if resume else s.pause
        return await change(account_id, reason, now_ms=state.now_ms())

    _print(state, run_or_fail(state, _with_service(state, act)), as_json)


_REASON = typer.Option("--reason", help="Why (recorded with the event).")


@accounts_app.command("pause")
def pause(
    ctx: typer.Context,
    account_id: Annotated[str, typer.Argument(metavar="ID", help="The account's id.")],
    reason: Annotated[str, _REASON] = "paused from the command line",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Pause an account: no new orders until it is resumed."""
    _set_status(ctx, account_id, reason, False, as_json)


@accounts_app.command("resume")
def resume(
    ctx: typer.Context,
    account_id: Annotated[str, typer.Argument(metavar="ID", help="The account's id.")],
    reason: Annotated[str, _REASON] = "resumed from the command line",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Resume a paused or halted account (the drawdown peak restarts here)."""
    _set_status(ctx, account_id, reason, True, as_json)


__all__ = ["SHOW_KEYS", "InvalidRequestError", "accounts_app"]
