"""The account routes in process (ASGI) and ``conclave accounts`` (Typer's runner), on SQLite."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx2
import pytest
from typer.testing import CliRunner

from conclave import cli
from conclave.cli.accounts import SHOW_KEYS
from conclave.market.sources import open_source
from conclave.services.api import create_app
from tests.services.test_api import _now_ms, assert_error, make_settings

NEW = {"name": "paper one", "balance": 10_000, "quote": "USDT"}


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[httpx2.AsyncClient]:
    settings = make_settings(tmp_path)
    app = create_app(settings, source=open_source("sim", settings, now_ms=_now_ms))
    async with app.router.lifespan_context(app):
        transport = httpx2.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx2.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
            c.app = app  # type: ignore[attr-defined]
            yield c


async def test_create_list_show_pause_resume(api: httpx2.AsyncClient) -> None:
    """Create answers 201 with an id; list and show find it; pause/resume record reasons."""
    resp = await api.post("/accounts", json=NEW | {"limits": {"max_position_fraction": 0.1}})
    assert resp.status_code == 201, resp.text
    acct = resp.json()
    assert acct["id"]
    assert acct["equity"] == 10_000
    assert acct["riskLevel"] == "ok"
    assert acct["limits"]["max_position_fraction"] == 0.1
    items = (await api.get("/accounts")).json()["items"]
    assert [a["id"] for a in items] == [acct["id"]]
    shown = (await api.get(f"/accounts/{acct['id']}")).json()
    assert set(SHOW_KEYS) <= set(shown)
    paused = await api.post(f"/accounts/{acct['id']}/pause", json={"reason": "holiday"})
    assert paused.json()["status"] == "paused"
    resumed = await api.post(f"/accounts/{acct['id']}/resume", json={"reason": "back"})
    body = resumed.json()
    assert body["status"] == "active"
    assert [(e["kind"], e["reason"]) for e in body["riskEvents"]] == [
        ("pause", "holiday"), ("resume", "back")]  # fmt: skip


async def test_unknown_is_404_and_bad_fields_are_422_named(api: httpx2.AsyncClient) -> None:
    """404 for an unknown id; 422 naming balance, quote, a limit, the reason."""
    assert_error(await api.get("/accounts/paper-nope"), 404)
    assert_error(await api.post("/accounts/paper-nope/pause", json={"reason": "x"}), 404)
    assert_error(await api.post("/accounts", json=NEW | {"balance": -1}), 422, "balance")
    assert_error(await api.post("/accounts", json=NEW | {"quote": "usdt"}), 422, "quote")
    bad = NEW | {"limits": {"max_postion_fraction": 0.1}}
    assert_error(await api.post("/accounts", json=bad), 422, "limits.max_postion_fraction")
    acct = (await api.post("/accounts", json=NEW)).json()
    assert_error(await api.post(f"/accounts/{acct['id']}/resume", json={}), 422, "reason")


async def test_a_pipeline_run_for_a_paper_account_records_its_equity(
    api: httpx2.AsyncClient,
) -> None:
    """POST /pipeline/run with the account's id reads it and records equity at the bar."""
    acct = (await api.post("/accounts", json=NEW)).json()
    resp = await api.post("/pipeline/run", json={"symbol": "BTCUSDT", "timeframe": "1h",
                                                 "accountId": acct["id"]})  # fmt: skip
    assert resp.status_code == 201, resp.text
    risk = resp.json()["steps"]["risk-manager"]
    assert risk["payload"]["account"] == acct["id"]
    assert risk["meta"]["status"] == "ok"
    service = api.app.state.runtime.accounts  # type: ignore[attr-defined]
    _, _, times, equity = await service.state_rows(acct["id"], as_of_ms=_now_ms())
    assert len(times) == 1
    assert equity == [10_000.0]


def test_cli_create_and_show_json_forms(runner: CliRunner) -> None:
    """``create --json`` prints the account with its id; ``show ID --json`` exactly the keys."""
    made = runner.invoke(cli.app, ["accounts", "create", "--name", "cli", "--balance", "10000",
                                   "--quote", "USDT", "--json"])  # fmt: skip
    assert made.exit_code == 0, made.output
    acct = json.loads(made.stdout)
    assert acct["id"]
    assert acct["name"] == "cli"
    assert acct["quote"] == "USDT"
    shown = runner.invoke(cli.app, ["accounts", "show", acct["id"], "--json"])
    assert shown.exit_code == 0, shown.output
    body = json.loads(shown.stdout)
    assert list(body) == list(SHOW_KEYS)
    assert (body["equity"], body["peakEquity"], body["drawdown"]) == (10_000, 10_000, 0.0)
    assert body["riskLevel"] == "ok"
    assert body["positions"] == []
    assert body["orders"] == []
    listed = json.loads(runner.invoke(cli.app, ["accounts", "list", "--json"]).stdout)
    assert [a["id"] for a in listed["items"]] == [acct["id"]]
    paused = runner.invoke(cli.app, ["accounts", "pause", acct["id"], "--json"])
    assert json.loads(paused.stdout)["status"] == "paused"
    resumed = runner.invoke(cli.app, ["accounts", "resume", acct["id"], "--reason", "ok",
                                      "--json"])  # fmt: skip
    assert json.loads(resumed.stdout)["riskEvents"][-1]["reason"] == "ok"


def test_cli_unknown_id_and_bad_balance_exit_2(runner: CliRunner) -> None:
    """An unknown id exits 2 naming --id; a negative balance exits 2 naming --balance."""
    missing = runner.invoke(cli.app, ["accounts", "show", "paper-none", "--json"])
    assert missing.exit_code == 2
    assert "--id" in missing.output
    bad = runner.invoke(cli.app, ["accounts", "create", "--name", "x", "--balance", "-5"])
    assert bad.exit_code == 2
    assert "--balance" in bad.output
