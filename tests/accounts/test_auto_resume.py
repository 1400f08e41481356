"""Through the live `AccountService`: a halted account that holds nothing resumes by itself.

Flat, its equity cannot move, so drawdown from the peak never recovers: after
``halt_resume_s`` it resumes with the peak restarted (as a manual resume does). An account
still holding a position, or paused by hand, is not resumed; ``flatten`` sells even on a
run without a risk verdict (BLOCKED).
"""

from __future__ import annotations

from typing import Any

from conclave.accounts import AccountService, paper
from tests.accounts.conftest import bar, new_account, run

LIMITS: dict[str, Any] = {"max_position_fraction": 1.0, "drawdown_limits": (0.02, 0.05, 0.1),
                          "daily_loss_limits": (0.1, 0.2, 0.5)}  # fmt: skip


async def halt_on_a_fall(service: AccountService, acct: str, action: str = "HOLD") -> dict:
    """All in at 100, then 15 % down: halted at bar 2's close (a run of ``action`` there)."""
    await service.process_run(acct, run("BUY"), bars=[bar(0, 100, 100)])
    await service.process_run(acct, run("HOLD"), bars=[bar(0, 100, 100), bar(1, 100, 100)])
    out = await service.process_run(acct, run(action), bars=[bar(1, 100, 100), bar(2, 100, 85)])
    assert out["status"] == "halted"
    return out


async def test_a_halted_flat_account_resumes_after_halt_resume_s(
    service: AccountService,
) -> None:
    acct = await new_account(service, halt_action="flatten", halt_resume_s=6 * 3600, **LIMITS)
    halted = await halt_on_a_fall(service, acct)
    assert halted["order"]["side"] == "SELL"  # flatten
    # the flatten fills at bar 3's open; halted at bar 2's close (T0 + 3h): resumes at
    # the first close 6 h later, bar 8's (T0 + 9h), not before
    for i in range(3, 8):
        out = await service.process_run(acct, run("HOLD"), bars=[bar(i - 1, 85, 85),
                                                                 bar(i, 85, 85)])  # fmt: skip
        assert out["status"] == "halted", i
    shown = await service.get(acct)
    assert shown is not None
    assert sum(p["qty"] for p in shown["positions"]) <= paper.QTY_EPS
    out = await service.process_run(acct, run("HOLD"), bars=[bar(7, 85, 85), bar(8, 85, 85)])
    assert out["status"] == "active"
    assert out["drawdown"] == 0.0
    assert out["riskLevel"] == "ok"
    assert [e["kind"] for e in out["events"]] == ["resume"]
    assert out["events"][0]["reason"].startswith("resume: flat, 6h after halt")
    shown = await service.get(acct)
    assert shown is not None
    assert shown["status"] == "active"
    assert shown["drawdown"] == 0.0
    assert shown["peakEquity"] == shown["equity"]
    # entries are allowed again
    out = await service.process_run(acct, run("BUY"), bars=[bar(8, 85, 85), bar(9, 85, 85)])
    assert out["order"] is not None
    assert out["order"]["side"] == "BUY"


async def test_a_halted_account_holding_a_position_is_not_auto_resumed(
    service: AccountService,
) -> None:
    acct = await new_account(service, halt_resume_s=3600, **LIMITS)  # block_entries
    await halt_on_a_fall(service, acct)
    for i in range(3, 40):
        out = await service.process_run(acct, run("HOLD"), bars=[bar(i, 85, 85)])
        assert out["status"] == "halted", i
    assert not any(e["kind"] == "resume" for e in (await service.get(acct) or {})["riskEvents"])


async def test_a_pause_by_hand_is_never_auto_resumed(service: AccountService) -> None:
    acct = await new_account(service, halt_action="flatten", halt_resume_s=3600, **LIMITS)
    await halt_on_a_fall(service, acct)
    await service.process_run(acct, run("HOLD"), bars=[bar(2, 100, 85), bar(3, 85, 85)])
    await service.pause(acct, "operator", now_ms=bar(3, 85, 85).close_ms)
    for i in range(4, 40):
        out = await service.process_run(acct, run("HOLD"), bars=[bar(i, 85, 85)])
        assert out["status"] == "paused", i


async def test_zero_disables_the_automatic_resume(service: AccountService) -> None:
    acct = await new_account(service, halt_action="flatten", halt_resume_s=0, **LIMITS)
    await halt_on_a_fall(service, acct)
    await service.process_run(acct, run("HOLD"), bars=[bar(2, 100, 85), bar(3, 85, 85)])
    for i in range(4, 60):
        out = await service.process_run(acct, run("HOLD"), bars=[bar(i, 85, 85)])
        assert out["status"] == "halted", i


async def test_flatten_sells_on_a_blocked_run(service: AccountService) -> None:
    """Closing needs no risk verdict: a halted ``flatten`` account sells all on a BLOCKED
    run; a BLOCKED run on an active account places nothing."""
    acct = await new_account(service, halt_action="flatten", **LIMITS)
    none = await service.process_run(acct, run("BLOCKED", 0.0), bars=[bar(0, 100, 100)])
    assert none["order"] is None
    out = await halt_on_a_fall(service, acct, action="BLOCKED")
    shown = await service.get(acct)
    assert shown is not None
    qty = sum(p["qty"] for p in shown["positions"])
    assert qty > 0
    assert (out["order"]["side"], out["order"]["qty"]) == ("SELL", qty)
    assert out["order"]["reason"].startswith("sell all: halt_action flatten")
