"""RELIABILITY C4: an agent answering 500, non-JSON or out-of-range values (``score: 7``,
NaN) is counted as failed and its value dropped.

Pass figure of the row: **0 invalid values reach the decision; all 3 variants produce
degraded runs.** ``POST /pipeline/run`` with momentum called over HTTP on a real uvicorn
server that answers each variant (500, an HTML page, ``score: 7``, ``score: NaN``), the
other eight agents in process: four runs per variant. Each of the 16 runs must be recorded
degraded naming momentum, its step failed with the variant's reason and no value, and the
decision must hold only valid values: momentum contributes nothing, every contribution's
score is finite in [-1, 1], and the conviction is exactly the sum of the others'
contributions (so nothing of momentum's answer is in it).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.services.helpers import served
from tests.services.test_api import make_settings
from tests.services.test_http_runner import misbehaving

AGENT = "momentum"
RUNS_PER_VARIANT = 4  # under the breaker's 5: every run reaches the misbehaving service
#: The row's three variants (out-of-range twice: 7 and NaN) and the step reason each gives.
VARIANTS = {"e500": "http_5xx", "text": "non_json", "score7": "invalid_values",
            "nan": "invalid_values"}  # fmt: skip


@pytest.fixture(scope="module")
def bad_agent() -> Iterator[str]:
    """A server answering ``/<variant>/run`` the wrong way (uvicorn, loopback)."""
    with served(misbehaving) as url:
        yield url


def valid_number(value: object, lo: float, hi: float) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and lo <= value <= hi


async def _runs(tmp_path: Path, url: str) -> list[dict[str, Any]]:
    from conclave.services.api import create_app

    agents = {"http": {AGENT: True}, "urls": {AGENT: url}}
    app = create_app(make_settings(tmp_path, agents=agents))
    out = []
    async with app.router.lifespan_context(app):
        transport = httpx2.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx2.AsyncClient(transport=transport, base_url="http://t") as api:
            for i in range(RUNS_PER_VARIANT):
                body = {"symbol": ("BTCUSDT", "ETHUSDT")[i % 2], "timeframe": "1h"}
                resp = await api.post("/pipeline/run", json=body)
                assert resp.status_code == 201, resp.text
                stored = await api.get(f"/pipeline/runs/{resp.json()['runId']}")
                out.append(stored.json())
    return out


async def test_c4_every_bad_answer_is_a_failed_step_and_never_reaches_the_decision(
    tmp_path: Path, bad_agent: str
) -> None:
    """C4 (pass figure: 0 invalid values reach the decision; all 3 variants produce degraded
    runs): 4 variants (500, non-JSON, score 7, score NaN) x 4 recorded runs: 16/16 degraded
    naming momentum, its step failed with the variant's reason and score/confidence null,
    its contribution null, every other contribution valid, conviction = the sum of the
    contributions; 0 invalid values in any decision."""
    degraded, invalid_in_decision, runs = 0, 0, 0
    for variant, reason in VARIANTS.items():
        for run in await _runs(tmp_path / variant, f"{bad_agent}/{variant}"):
            runs += 1
            momentum = run["steps"][AGENT]
            assert momentum["meta"]["status"] == "error", (variant, momentum)
            assert momentum["meta"]["reason"].startswith(reason), (variant, momentum)
            assert (momentum["score"], momentum["confidence"]) == (None, None)
            degraded += run["degraded"] is True and AGENT in run["missingAgents"]
            decision = run["decision"]
            parts = decision["contributions"]
            assert parts[AGENT]["score"] is None
            assert parts[AGENT]["contribution"] is None
            for part in parts.values():
                if part["score"] is None:
                    continue
                if not (valid_number(part["score"], -1, 1)
                        and valid_number(part["confidence"], 0, 100)):  # fmt: skip
                    invalid_in_decision += 1
            conviction = decision["conviction"]
            if conviction is not None:
                total = math.fsum(p["contribution"] or 0.0 for p in parts.values())
                assert conviction == pytest.approx(total, abs=1e-12)
                invalid_in_decision += not valid_number(conviction, -1, 1)
                invalid_in_decision += not valid_number(decision["confidence"], 0, 100)
    assert (runs, degraded, invalid_in_decision) == (16, 16, 0)
