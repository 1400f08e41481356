"""RELIABILITY C5: the risk manager (port 5009) down is critical: the decision is ``blocked``,
never tradable.

Pass figure of the row: **100 % of such runs have no actionable signal.** The decision is
taken over a grid of agent scores from -1 to +1 (most of which decide BUY or SELL with the
risk manager up: the control) with the risk manager missing in each way a run can see it
(no step, error, timeout, stale data, NaN confidence, a verdict that is not a boolean, a
size multiplier of 2 or NaN, no verdict): every one is ``BLOCKED``, not tradable, size 0.
Then through ``POST /pipeline/run`` with the risk manager's service down (a closed port) over
both symbols and four timeframes: every recorded run is ``blocked``.
"""

from __future__ import annotations

import math
from pathlib import Path

import httpx2
import numpy as np

from conclave.pipeline import DecisionConfig, StepResult, decide
from tests.pipeline.helpers import risk, step, steps
from tests.services.test_api import closed_port, make_settings

CONFIG = DecisionConfig()
RISK = "risk-manager"
#: The risk manager's step when it is down or its answer cannot be used (None: no step).
RISK_DOWN: dict[str, StepResult | None] = {
    "absent": None,
    "error": StepResult.failed(RISK, "error", "connection_refused: nothing on 5009"),
    "timeout": StepResult.failed(RISK, "timeout", "timeout: no answer within 2000 ms"),
    "stale data": StepResult.failed(RISK, "stale_data", "stale_data"),
    "NaN confidence": step(RISK, 0.0, math.nan, payload=risk().payload),
    "allowed not a boolean": risk(allowed="yes"),
    "size multiplier 2": risk(mult=2.0),
    "size multiplier NaN": risk(mult=math.nan),
    "no verdict": step(RISK, 0.0, 100.0, payload={}),
}
SCORES = np.linspace(-1.0, 1.0, 41)
CONFIDENCES = (10.0, 50.0, 90.0)


def test_c5_every_run_without_a_usable_risk_verdict_is_blocked() -> None:
    """C5 (pass figure: 100 % of such runs have no actionable signal): 41 scores x 3
    confidences x 9 ways the risk manager is down = 1,107 decisions, all ``blocked`` /
    ``BLOCKED``, not tradable, size 0, naming the risk manager; with it up, the same grid
    gives 54 tradable BUY/SELL decisions (the control)."""
    blocked, actionable, control = 0, 0, 0
    for score in SCORES:
        for confidence in CONFIDENCES:
            healthy = steps(float(score), confidence)
            control += decide(healthy, CONFIG).tradable
            for down in RISK_DOWN.values():
                s = dict(healthy)
                if down is None:
                    del s[RISK]
                else:
                    s[RISK] = down
                d = decide(s, CONFIG)
                if d.tradable or d.action in ("BUY", "SELL") or d.size_multiplier:
                    actionable += 1
                    continue
                assert (d.status, d.action) == ("blocked", "BLOCKED")
                assert d.reason.startswith("risk_manager_unavailable")
                assert RISK in d.missing_agents
                blocked += 1
    assert (blocked, actionable) == (len(SCORES) * len(CONFIDENCES) * len(RISK_DOWN), 0)
    assert control == 18 * len(CONFIDENCES)  # |score| >= 0.59: 9 scores each side of 0


async def test_c5_through_the_api_the_risk_service_down_blocks_every_run(tmp_path: Path) -> None:
    """C5 end to end: risk-manager called over HTTP on a closed port (its service down), the
    other eight in process: 2 symbols x 4 timeframes = 8 runs via ``POST /pipeline/run``, each
    201 and recorded ``blocked``, action ``BLOCKED``, not tradable, size 0, the risk step
    failed (``connection_refused``, then ``circuit_open``): 8/8 without an actionable
    signal."""
    from conclave.services.api import create_app

    agents = {"http": {RISK: True}, "ports": {RISK: closed_port()}, "timeout_s": 1.0}
    app = create_app(make_settings(tmp_path, agents=agents))
    runs = []
    async with app.router.lifespan_context(app):
        transport = httpx2.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx2.AsyncClient(transport=transport, base_url="http://t") as api:
            for symbol in ("BTCUSDT", "ETHUSDT"):
                for tf in ("15m", "1h", "4h", "1d"):
                    resp = await api.post("/pipeline/run", json={"symbol": symbol, "timeframe": tf})
                    assert resp.status_code == 201, resp.text
                    runs.append(resp.json())
    no_signal = 0
    for run in runs:
        d = run["decision"]
        # refused, or skipped once its breaker opened after 5 refusals (C9)
        reason = run["steps"][RISK]["meta"]["reason"]
        assert reason.startswith(("connection_refused", "circuit_open")), reason
        if (d["status"], d["action"], d["tradable"], d["sizeMultiplier"]) == (
            "blocked", "BLOCKED", False, 0.0,
        ):  # fmt: skip
            no_signal += 1
    assert no_signal == len(runs) == 8
