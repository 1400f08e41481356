"""``conclave keys create|list|revoke|rotate``: API keys from the command line (issue 12).

An edge like the rest of the CLI: settings come from the root callback, the store is opened
here (``DATABASE_URL``, else SQLite under ``data_dir``) and the clock is read here. A key is
printed once, by ``create`` and ``rotate``, and never again: the store holds only its keyed
hash under ``CONCLAVE_SECURITY__KEY_SECRET`` (which ``create`` and ``rotate`` need; unset or
weak, they exit 2 naming it). ``create --json`` prints exactly ``{"id", "name", "scope",
"key", "expiresAt"}``; ``rotate --json`` adds ``replaces`` and ``oldExpiresAt``. An unknown
id exits 2 naming ``--id``. Registered on the root app by `conclave.cli`.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.table import Table
from rich.text import Text

from conclave.cli.common import CliState, fail, iso_utc, run_or_fail
from conclave.errors import ConfigurationError
from conclave.security.keys import Scope

if TYPE_CHECKING:  # the store loads when a command runs
    from conclave.security.keys import GeneratedKey, KeyHasher, KeyRecord
    from conclave.store.keys_repo import KeyRepo

T = TypeVar("T")
keys_app = typer.Typer(help="API keys: create, list, revoke, rotate.", no_args_is_help=True)

#: The keys ``keys create --json`` prints, in this order (ARCHITECTURE, names to use).
CREATE_KEYS = ("id", "name", "scope", "key", "expiresAt")
_JSON = typer.Option("--json", help="Print one JSON object.")
_ID = typer.Argument(metavar="ID", help="The key's id (the 16 hex characters after ck_).")


async def _with_repo(state: CliState, act: Callable[[KeyRepo], Awaitable[T]]) -> T:
    from conclave.store import RunStore
    from conclave.store.keys_repo import KeyRepo

    store = await RunStore.open(state.settings.database_url, data_dir=state.settings.data_dir)
    try:
        return await act(KeyRepo(store))
    finally:
        await store.aclose()


def _hasher(state: CliState) -> KeyHasher:
    from conclave.security.keys import KeyHasher

    try:
        return KeyHasher(state.settings.security.key_secret)
    except ConfigurationError as exc:
        fail(state.err, str(exc), 2)


def _shown_once(state: CliState, generated: GeneratedKey, record: KeyRecord) -> None:
    state.out.print(
        Text.assemble(("API key ", "bold"), (generated.key, "bold green")), soft_wrap=True
    )
    state.out.print(
        f"id {record.id}, name {record.name!r}, scope {record.scope},"
        f" expires {iso_utc(record.expires_ms) if record.expires_ms else 'never'}",
        highlight=False,
        markup=False,
    )
    state.err.print("This key is shown once: store it now (only its hash is kept).")


def _created(generated: GeneratedKey, record: KeyRecord) -> dict[str, Any]:
    expires = None if record.expires_ms is None else iso_utc(record.expires_ms)
    return {"id": record.id, "name": record.name, "scope": str(record.scope),
            "key": generated.key, "expiresAt": expires}  # fmt: skip


@keys_app.command("create")
def create(
    ctx: typer.Context,
    name: Annotated[str, typer.Option("--name", help="What the key is for (1-128 chars).")],
    scope: Annotated[Scope, typer.Option("--scope", help="read, run or admin.")],
    expires: Annotated[
        float | None, typer.Option("--expires", help="Days until it expires (default never).")
    ] = None,
    as_json: Annotated[bool, _JSON] = False,
) -> None:
    """Create an API key and print it once."""
    state: CliState = ctx.obj
    if not name.strip() or len(name) > 128:
        fail(state.err, "--name: expected 1 to 128 characters", 2)
    if expires is not None and not 0 < expires <= 36_500:
        fail(state.err, "--expires: expected days from 0 (exclusive) to 36500", 2)
    hasher, now = _hasher(state), state.now_ms()
    generated, record = run_or_fail(state, _with_repo(state, lambda r: r.create(
        name.strip(), scope, hasher, now_ms=now, expires_days=expires)))  # fmt: skip
    if as_json:
        typer.echo(json.dumps(_created(generated, record)))
        return
    _shown_once(state, generated, record)


@keys_app.command("list")
def list_(ctx: typer.Context, as_json: Annotated[bool, _JSON] = False) -> None:
    """List the keys (never the keys themselves): id, name, scope, state, times."""
    state: CliState = ctx.obj
    records = run_or_fail(state, _with_repo(state, lambda r: r.list_keys()))
    now = state.now_ms()
    if as_json:
        typer.echo(json.dumps({"items": [r.public(now) for r in records]}))
        return
    table = Table(title="API keys")
    for col in ("id", "name", "scope", "state", "created", "expires", "replaces"):
        table.add_column(col, no_wrap=col in ("id", "state"))
    for r in records:
        expires = iso_utc(r.expires_ms) if r.expires_ms is not None else "never"
        table.add_row(r.id, Text(r.name), str(r.scope), r.state(now), iso_utc(r.created_ms),
                      expires, r.rotated_from or "-")  # fmt: skip
    state.out.print(table)


@keys_app.command("revoke")
def revoke(
    ctx: typer.Context,
    key_id: Annotated[str, _ID],
    as_json: Annotated[bool, _JSON] = False,
) -> None:
    """Revoke a key: every replica refuses it within the key cache's TTL (at most 60 s)."""
    state: CliState = ctx.obj
    now = state.now_ms()
    record = run_or_fail(state, _with_repo(state, lambda r: r.revoke(key_id, now_ms=now)))
    if as_json:
        typer.echo(json.dumps(record.public(now)))
        return
    state.out.print(f"revoked {record.id} ({record.name})", highlight=False, markup=False)


@keys_app.command("rotate")
def rotate(
    ctx: typer.Context,
    key_id: Annotated[str, _ID],
    overlap: Annotated[
        float, typer.Option("--overlap", help="Seconds the old key keeps working.")
    ] = 3600.0,
    as_json: Annotated[bool, _JSON] = False,
) -> None:
    """Replace a key with a new one (printed once); the old one works ``--overlap`` s more."""
    state: CliState = ctx.obj
    if not 0 <= overlap <= 30 * 86_400:
        fail(state.err, "--overlap: expected seconds from 0 to 2592000 (30 days)", 2)
    hasher, now = _hasher(state), state.now_ms()
    generated, record, old = run_or_fail(state, _with_repo(state, lambda r: r.rotate(
        key_id, hasher, now_ms=now, overlap_s=overlap)))  # fmt: skip
    old_expires = None if old.expires_ms is None else iso_utc(old.expires_ms)
    if as_json:
        out = {**_created(generated, record), "replaces": old.id, "oldExpiresAt": old_expires}
        typer.echo(json.dumps(out))
        return
    _shown_once(state, generated, record)
    state.out.print(f"replaces {old.id}, which works until {old_expires}", highlight=False)


__all__ = ["CREATE_KEYS", "keys_app"]
