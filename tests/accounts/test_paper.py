"""Paper arithmetic and risk rules as pure functions."""

from __future__ import annotations

import pytest

from conclave.accounts import paper, risk
from conclave.accounts.config import AccountConfig
from conclave.accounts.paper import Position
from conclave.timeframes import DAY_MS
from tests.accounts.conftest import T0, H, bar


def test_buy_pays_open_plus_slippage_and_the_fee_on_the_notional() -> None:
    """A BUY fills at open x (1 + slip) with fee = notional x fee rate."""
    f = paper.fill_at_open("BUY", 1000.0, bar(1, 200.0, 250.0), slippage=0.002,
                           fee_rate=0.001, cash=5000.0, position=Position())  # fmt: skip
    assert f is not None
    assert f.price == pytest.approx(200.4)
    assert f.qty == pytest.approx(1000.0 / 200.4)
    assert f.fee == pytest.approx(1.0)


def test_sell_gets_open_minus_slippage_and_realises_against_cost_with_fees() -> None:
    """Realised P&L = qty x price - fee - qty x avg cost (buy fees in the cost)."""
    pos, cash, pnl = paper.apply_fill(Position(), paper.Fill("BUY", 10.0, 100.0, 1.0))
    assert (pos.avg_cost, cash, pnl) == (pytest.approx(100.1), -1001.0, 0.0)
    f = paper.fill_at_open("SELL", 550.0, bar(2, 110.0, 90.0), slippage=0.01, fee_rate=0.001,
                           cash=0.0, position=pos)  # fmt: skip
    assert f is not None
    assert f.price == pytest.approx(108.9)
    after, _cash2, pnl2 = paper.apply_fill(pos, f)
    assert pnl2 == pytest.approx(f.qty * 108.9 - f.fee - f.qty * 100.1)
    assert after.qty == pytest.approx(10.0 - f.qty)
    assert after.unrealised(90.0) == pytest.approx(after.qty * (90.0 - 100.1))


def test_sizing_stays_within_the_position_limit_and_the_minimum() -> None:
    """A BUY never takes the position past max fraction of equity; tiny orders are not sent."""
    kw = {"max_position_fraction": 0.2, "min_order_notional": 10.0}
    n, _ = paper.order_notional("BUY", equity=10_000, size_multiplier=0.5, position_value=0, **kw)
    assert n == pytest.approx(1000.0)
    n, _ = paper.order_notional("BUY", equity=10_000, size_multiplier=1, position_value=1500, **kw)
    assert n == pytest.approx(500.0)
    n, why = paper.order_notional("BUY", equity=10_000, size_multiplier=1, position_value=1995,
                                  **kw)  # fmt: skip
    assert n == 0.0
    assert "no order" in why
    n, why = paper.order_notional("SELL", equity=10_000, size_multiplier=1, position_value=0,
                                  **kw)  # fmt: skip
    assert n == 0.0
    assert "long-only" in why


def test_drawdown_is_from_the_peak_and_loss_today_from_midnight() -> None:
    """Peak 12,000 then 10,800: drawdown 10 % (not 0 % from the 10,000 start)."""
    day = (T0 // DAY_MS + 1) * DAY_MS
    times = [day - 2 * H, day - H, day + H, day + 2 * H]
    eq = [10_000.0, 12_000.0, 11_500.0, 10_800.0]
    s = risk.assess(times, eq, exposure=0.0, config=AccountConfig(), starting_balance=10_000)
    assert s.peak_equity == 12_000.0
    assert s.drawdown == pytest.approx(0.10)
    assert s.loss_today == pytest.approx(1 - 10_800 / 12_000)
    assert s.level == "halt"  # loss today 10 % is past the 5 % daily halt


def test_halted_resumes_only_past_the_hysteresis_band() -> None:
    """Halt at 20 %; back at 17 % is still halted; at 14 % (band 5 %) active, with why."""
    cfg = AccountConfig(hysteresis=0.05, daily_loss_limits=(0.5, 0.6, 0.9))

    def snap(dd: float) -> risk.RiskSnapshot:
        return risk.RiskSnapshot(1 - dd, 1.0, dd, 0.0, 0.0, "halt" if dd >= 0.2 else "reduce", "")

    assert risk.transition("active", snap(0.21), cfg)[0] == "halted"
    assert risk.transition("halted", snap(0.17), cfg) == ("halted", "")
    status, why = risk.transition("halted", snap(0.14), cfg)
    assert status == "active"
    assert "hysteresis" in why
    assert risk.transition("paused", snap(0.0), cfg) == ("paused", "")


def test_streak_guard_and_cooldown() -> None:
    """A loss starts a cooldown on entries only; three in a row pause every order."""
    cfg = AccountConfig(stoploss_streak=3, stoploss_pause_bars=10, cooldown_bars=2)
    p = risk.Protections()
    p, why = risk.after_trade(p, -5.0, T0, H, cfg)
    assert "cooldown" in why
    assert p.blocks("BUY", T0 + H)
    assert not p.blocks("SELL", T0 + H)
    assert not p.blocks("BUY", T0 + 2 * H)
    p, _ = risk.after_trade(p, -5.0, T0, H, cfg)
    p, why = risk.after_trade(p, -5.0, T0, H, cfg)
    assert "streak" in why
    assert p.blocks("SELL", T0 + 9 * H)
    assert not p.blocks("SELL", T0 + 10 * H)
    p2, _ = risk.after_trade(risk.Protections(2), 1.0, T0, H, cfg)
    assert p2.loss_streak == 0
