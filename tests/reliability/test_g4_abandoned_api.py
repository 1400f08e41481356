"""G4 at the API: a key whose request died with its process answers 409 ``abandoned``.

The crashed process is stood in for by what it leaves behind: the key claimed with the
request's hash, pending, never completed or released. The app's store (real SQLite in
tmp_path) treats every pending claim as stale (limit 0 s), so the next request with the
key finds it abandoned at once; both forms of ``POST /pipeline/run`` are checked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx2
import pytest

from conclave.market.sources import open_source
from conclave.services.api import create_app
from conclave.services.run_request import request_hash, run_request_model
from conclave.store import RunStore
from tests.pipeline.helpers import CountingSource
from tests.services.test_api import _now_ms, make_settings

NEW_ACCOUNT = {"name": "g4", "balance": 10_000.0, "quote": "USDT",
               "limits": {"markets": [{"symbol": "BTCUSDT", "timeframe": "1h"}]}}  # fmt: skip


@pytest.mark.parametrize("form", ["single", "account"])
async def test_g4_a_crashed_requests_key_answers_409_abandoned_and_runs_nothing(
    tmp_path: Path, form: str
) -> None:
    """G4 (never silently re-executed): with a pending claim left by a crash, the same key
    and body answer 409 ``idempotency_key_abandoned`` without ``Retry-After`` (final),
    again on every retry; 0 candles fetched, 0 runs recorded; a new key runs normally."""
    settings = make_settings(tmp_path)
    store = await RunStore.open(None, data_dir=tmp_path, stale_claim_s=0.0)
    source = CountingSource(open_source("sim", settings, now_ms=_now_ms))
    app = create_app(settings, source=source, store=store)
    try:
        async with app.router.lifespan_context(app):
            transport = httpx2.ASGITransport(app=app, raise_app_exceptions=False)
            async with httpx2.AsyncClient(transport=transport, base_url="http://x") as api:
                body: dict[str, Any] = {"symbol": "BTCUSDT", "timeframe": "1h"}
                if form == "account":
                    created = await api.post("/accounts", json=NEW_ACCOUNT)
                    assert created.status_code == 201, created.text
                    body = {"accountId": created.json()["id"]}
                model = run_request_model(settings)
                digest = request_hash(model.model_validate(body))
                crashed = await store.claim_idempotency_key("crashed-1", digest)
                assert crashed.kind == "new"  # ...and then the process died
                fetched = sum(source.calls.values())
                headers = {"Idempotency-Key": "crashed-1"}
                for _ in range(3):
                    resp = await api.post("/pipeline/run", json=body, headers=headers)
                    assert resp.status_code == 409, resp.text
                    assert resp.json()["error"]["code"] == "idempotency_key_abandoned"
                    assert "retry-after" not in resp.headers
                assert sum(source.calls.values()) == fetched  # nothing ran
                assert (await api.get("/pipeline/runs")).json()["total"] == 0
                fresh = await api.post(
                    "/pipeline/run", json=body, headers={"Idempotency-Key": "new-1"}
                )
                assert fresh.status_code == 201, fresh.text
    finally:
        await store.aclose()
