"""Paper arithmetic and risk rules as pure functions."""

from __future__ import annotations

import pytest
from hypothesis import assume, event, given, settings
from hypothesis import strategies as st

from conclave.accounts import paper, risk
from conclave.accounts.config import AccountConfig
from conclave.accounts.paper import Position
from conclave.timeframes import DAY_MS
from tests.accounts.conftest import T0, H, bar

LOTS = {"min_order_notional": 10.0, "qty_step": 1e-8}


def test_buy_pays_open_plus_slippage_and_the_fee_on_the_notional() -> None:
    """A BUY fills at open x (1 + slip) with fee = notional x fee rate."""
    order = paper.Order("BUY", 1000.0, 0.0, "")
    f, _ = paper.fill_at_open(order, bar(1, 200.0, 250.0), slippage=0.002, fee_rate=0.001,
                              cash=5000.0, position=Position(), **LOTS)  # fmt: skip
    assert f is not None
    assert f.price == pytest.approx(200.4)
    assert f.qty == pytest.approx(1000.0 / 200.4, abs=1e-8)
    assert f.qty == paper.floor_step(f.qty, 1e-8)  # whole steps, rounded down
    assert f.fee == pytest.approx(1.0, rel=1e-6)


def test_sell_gets_open_minus_slippage_and_realises_against_cost_with_fees() -> None:
    """Realised P&L = qty x price - fee - qty x avg cost (buy fees in the cost)."""
    pos, cash, pnl = paper.apply_fill(Position(), paper.Fill("BUY", 10.0, 100.0, 1.0))
    assert (pos.avg_cost, cash, pnl) == (pytest.approx(100.1), -1001.0, 0.0)
    order = paper.Order("SELL", 550.0, 5.0, "")
    f, _ = paper.fill_at_open(order, bar(2, 110.0, 90.0), slippage=0.01, fee_rate=0.001,
                              cash=0.0, position=pos, **LOTS)  # fmt: skip
    assert f is not None
    assert f.qty == 5.0  # a SELL is for a quantity, whatever the open
    assert f.price == pytest.approx(108.9)
    after, _cash2, pnl2 = paper.apply_fill(pos, f)
    assert pnl2 == pytest.approx(f.qty * 108.9 - f.fee - f.qty * 100.1)
    assert after.qty == pytest.approx(10.0 - f.qty)
    assert after.unrealised(90.0) == pytest.approx(after.qty * (90.0 - 100.1))


def test_sizing_stays_within_the_position_limit_and_the_minimum() -> None:
    """A BUY never takes the position past max fraction of equity; tiny orders are not sent."""
    kw = {"max_position_fraction": 0.2, "equity": 10_000.0, "price": 100.0, **LOTS}
    o, _ = paper.size_order("BUY", size_multiplier=0.5, position_qty=0, **kw)
    assert o is not None
    assert o.notional == pytest.approx(1000.0)
    o, _ = paper.size_order("BUY", size_multiplier=1, position_qty=15, **kw)
    assert o is not None
    assert o.notional == pytest.approx(500.0)
    o, why = paper.size_order("BUY", size_multiplier=1, position_qty=19.95, **kw)
    assert o is None
    assert "no order" in why
    o, why = paper.size_order("SELL", size_multiplier=1, position_qty=0, **kw)
    assert o is None
    assert "long-only" in why


def test_a_sale_sells_a_quantity_and_never_leaves_dust() -> None:
    """A partial SELL is a whole number of steps; one that would leave a remainder under
    the minimum sells the position whole; a sale under the minimum is not sent."""
    kw = {"max_position_fraction": 0.2, "equity": 10_000.0, "price": 100.0, **LOTS}
    o, _ = paper.size_order("SELL", size_multiplier=0.25, position_qty=15.0, **kw)
    assert o is not None
    assert (o.qty, o.notional) == (pytest.approx(5.0), pytest.approx(500.0))
    o, why = paper.size_order("SELL", size_multiplier=0.25, position_qty=5.05, **kw)
    assert o is not None
    assert o.qty == 5.05  # 0.05 left x 100 = 5 < 10: the whole position
    assert why.startswith("sell all")
    o, why = paper.size_order("SELL", size_multiplier=0.004, position_qty=15.0, **kw)
    assert o is None  # 8 < 10 and the remainder is not dust
    assert "minimum" in why


def test_a_sell_all_closes_the_position_whatever_the_next_open() -> None:
    """Sized at the decision close 100, a sell-all filled at an open of 130 sells it all."""
    pos = Position(2.5, 90.0)
    o, _ = paper.size_order("SELL", size_multiplier=1.0, equity=1000.0,
                            max_position_fraction=1.0, position_qty=pos.qty, price=100.0,
                            **LOTS)  # fmt: skip
    assert o is not None
    f, _ = paper.fill_at_open(o, bar(1, 130.0, 130.0), slippage=0.001, fee_rate=0.001,
                              cash=0.0, position=pos, **LOTS)  # fmt: skip
    assert f is not None
    after, _, _ = paper.apply_fill(pos, f)
    assert f.qty == 2.5
    assert after.qty == 0.0


@settings(max_examples=1000, deadline=None)
@given(
    held=st.floats(1e-6, 1e3),
    price=st.floats(1.0, 1e5),
    ratio=st.floats(0.3, 3.0),
    cash=st.floats(0.0, 1e6),
    mult=st.floats(0.0, 1.0),
    fraction=st.sampled_from([0.1, 0.25, 1.0]),
    minimum=st.sampled_from([0.0, 10.0, 100.0]),
    step=st.sampled_from([1e-8, 1e-5, 1e-3]),
    slippage=st.sampled_from([0.0, 0.0005, 0.01]),
)
def test_a_sale_leaves_nothing_or_a_sellable_position_whatever_the_next_open(
    held: float, price: float, ratio: float, cash: float, mult: float, fraction: float,
    minimum: float, step: float, slippage: float,
) -> None:  # fmt: skip
    """Any SELL sized at a close of ``price`` and filled at an open of ``ratio`` x it: the
    fill is on the step and at least the minimum (but the sale of a whole position worth
    less), what remains is 0 or at least the step and the minimum at the fill price, and a
    sell-all leaves nothing."""
    qty = paper.floor_step(held, step)
    assume(qty > 0)
    lots = {"min_order_notional": minimum, "qty_step": step}
    order, why = paper.size_order("SELL", equity=cash + qty * price, size_multiplier=mult,
                                  max_position_fraction=fraction, position_qty=qty,
                                  price=price, **lots)  # fmt: skip
    if order is None:
        assert "minimum" in why
        return
    pos = Position(qty, price)
    fill, why = paper.fill_at_open(order, bar(1, price * ratio, price), slippage=slippage,
                                   fee_rate=0.001, cash=cash, position=pos, **lots)  # fmt: skip
    if fill is None:
        assert "minimum" in why
        assert order.qty < qty
        return
    after, _, _ = paper.apply_fill(pos, fill)
    assert abs(fill.qty / step - round(fill.qty / step)) <= 1e-6 * max(1.0, fill.qty / step)
    assert after.qty == 0.0 or fill.qty * fill.price >= minimum
    assert after.qty == 0.0 or (after.qty >= step and after.qty * fill.price >= minimum)
    if order.qty == qty:
        assert after.qty == 0.0
        event("sell all")
    event(f"position left: {after.qty > 0}")


@settings(max_examples=500, deadline=None)
@given(
    cash=st.floats(0.0, 1e6),
    price=st.floats(1.0, 1e5),
    ratio=st.floats(0.3, 3.0),
    mult=st.floats(0.0, 1.0),
    minimum=st.sampled_from([0.0, 10.0, 100.0]),
    step=st.sampled_from([1e-8, 1e-3, 1.0]),
)
def test_a_buy_is_on_the_step_within_the_cash_and_at_least_the_minimum(
    cash: float, price: float, ratio: float, mult: float, minimum: float, step: float
) -> None:
    """A BUY fills a whole number of steps, costs at most the cash, and is at least the
    minimum order at the fill price, or is not filled."""
    lots = {"min_order_notional": minimum, "qty_step": step}
    order, _ = paper.size_order("BUY", equity=cash, size_multiplier=mult,
                                max_position_fraction=1.0, position_qty=0.0, price=price,
                                **lots)  # fmt: skip
    if order is None:
        return
    nxt = bar(1, price * ratio, price)
    fill, _ = paper.fill_at_open(order, nxt, slippage=0.0005, fee_rate=0.001, cash=cash,
                                 position=Position(), **lots)  # fmt: skip
    if fill is None:
        return
    assert fill.qty == paper.floor_step(fill.qty, step)
    assert fill.qty * fill.price >= minimum
    assert fill.qty * fill.price + fill.fee <= cash * (1 + 1e-12)


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
    """A loss starts a cooldown on entries; three in a row pause entries; exits never wait."""
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
    assert p.blocks("BUY", T0 + 9 * H)
    assert p.paused(T0 + 9 * H)
    assert not p.blocks("SELL", T0 + 9 * H)
    assert not p.blocks("BUY", T0 + 10 * H)
    p2, _ = risk.after_trade(risk.Protections(2), 1.0, T0, H, cfg)
    assert p2.loss_streak == 0
