"""Sweep files: what a grid and a list expand to, and a clear error naming the key for each
kind of bad input."""

from __future__ import annotations

import importlib.util
import textwrap
from pathlib import Path

import pytest

from conclave.accounts.config import AccountConfig
from conclave.backtest.settings import BacktestSettings
from conclave.backtest.sweep_file import read_sweep
from conclave.backtest.sweep_space import space, value_of
from conclave.errors import InvalidRequestError
from conclave.pipeline.decision import DIRECTIONAL_AGENTS, DecisionConfig

GRID = """
[grid]
fee_rate = [0.001, 0.002]
decision.buy_threshold = [0.5, 0.59]
weights.momentum = [1.0, 2.0, 3.0]
account.drawdown_limits = [[0.05, 0.1, 0.2], [0.03, 0.06, 0.1]]

[[configs]]
name = "baseline"

[[configs]]
name = "cautious"
decision = { sell_threshold = 0.4 }
account = { max_position_fraction = 0.1, halt_action = "flatten", cooldown_bars = 4 }
"""

SAME_AS_YAML = """
grid:
  fee_rate: [0.001, 0.002]
  decision:
    buy_threshold: [0.5, 0.59]
  weights: {momentum: [1.0, 2.0, 3.0]}
  account:
    drawdown_limits: [[0.05, 0.1, 0.2], [0.03, 0.06, 0.1]]
configs:
  - name: baseline
  - name: cautious
    decision: {sell_threshold: 0.4}
    account: {max_position_fraction: 0.1, halt_action: flatten, cooldown_bars: 4}
"""


def _file(tmp_path: Path, text: str, suffix: str = ".toml") -> Path:
    path = tmp_path / f"sweep[x]{suffix}"
    path.write_text(textwrap.dedent(text))
    return path


def test_a_grid_and_a_list_expand_in_number_order(tmp_path: Path) -> None:
    """The list's entries come first, then every grid combination with the last key
    varying fastest; a key not set keeps the base settings' value (the command line's)."""
    base = BacktestSettings(fee_rate=0.0005, slippage=0.001)
    spec = read_sweep(_file(tmp_path, GRID))
    assert spec.count == 2 + 2 * 2 * 3 * 2
    assert spec.keys == ("decision.sell_threshold", "account.max_position_fraction",
                         "account.halt_action", "account.cooldown_bars", "fee_rate",
                         "decision.buy_threshold", "weights.momentum",
                         "account.drawdown_limits")  # fmt: skip
    configs = spec.configurations(base)
    assert [c.number for c in configs] == list(range(1, 27))
    assert [c.name for c in configs[:3]] == ["baseline", "cautious", ""]
    assert configs[0].settings.fee_rate == 0.0005  # the base's
    assert configs[0].settings.decision == base.decision
    cautious = configs[1].settings
    assert cautious.account.halt_action == "flatten"
    assert cautious.account.cooldown_bars == 4
    assert cautious.decision.sell_threshold == 0.4
    assert cautious.slippage == 0.001
    first, second, last = configs[2], configs[3], configs[-1]
    assert first.values == {"fee_rate": 0.001, "decision.buy_threshold": 0.5,
                            "weights.momentum": 1.0,
                            "account.drawdown_limits": (0.05, 0.1, 0.2)}  # fmt: skip
    assert second.values["account.drawdown_limits"] == (0.03, 0.06, 0.1)  # fastest
    assert second.values["weights.momentum"] == 1.0
    assert last.values == {"fee_rate": 0.002, "decision.buy_threshold": 0.59,
                           "weights.momentum": 3.0,
                           "account.drawdown_limits": (0.03, 0.06, 0.1)}  # fmt: skip
    assert value_of(last.settings, "weights.momentum") == 3.0
    assert value_of(last.settings, "weights.market-structure") == 0.5  # the default weight
    assert last.settings.account.drawdown_limits == (0.03, 0.06, 0.1)


def test_yaml_reads_as_toml(tmp_path: Path) -> None:
    pytest.importorskip("yaml")
    base = BacktestSettings()
    toml = read_sweep(_file(tmp_path, GRID)).configurations(base)
    yaml = read_sweep(_file(tmp_path, SAME_AS_YAML, ".yaml")).configurations(base)
    assert [(c.name, dict(c.values), c.settings) for c in toml] == [
        (c.name, dict(c.values), c.settings) for c in yaml
    ]


def test_the_examples_define_the_same_thousand_and_two_configurations() -> None:
    """examples/sweep.toml: a 1,000-configuration grid (the benchmark's) and two named
    entries; examples/sweep.yaml: the same, in YAML."""
    examples = Path(__file__).resolve().parents[2] / "examples"
    toml = read_sweep(examples / "sweep.toml")
    assert (toml.count, len(toml.entries)) == (1_002, 2)
    configs = toml.configurations(BacktestSettings())
    assert [c.name for c in configs[:2]] == ["defaults", "cautious"]
    if importlib.util.find_spec("yaml") is not None:
        yaml = read_sweep(examples / "sweep.yaml").configurations(BacktestSettings())
        assert [(c.name, c.settings) for c in yaml] == [(c.name, c.settings) for c in configs]


def test_every_setting_but_the_markets_and_weights_table_may_be_swept() -> None:
    """Each account and decision field (but the account's markets and the weights table,
    swept per agent) and each directional agent's weight is a key."""
    keys = set(space())
    assert {f"account.{f}" for f in AccountConfig.model_fields if f != "markets"} <= keys
    assert {f"decision.{f}" for f in DecisionConfig.model_fields if f != "weights"} <= keys
    assert {f"weights.{a}" for a in DIRECTIONAL_AGENTS} <= keys
    assert {"fee_rate", "slippage", "starting_balance"} <= keys
    assert space()["account.halt_action"].choices == ("block_entries", "flatten")


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "defines no configuration: give a [grid] table"),
        ("[gird]\nfee_rate = [0.001]\n", "gird: unknown key; did you mean 'grid'?"),
        ("[grid]\nfee = [0.001]\n", "grid.fee: unknown key; did you mean 'fee_rate'?"),
        ("[grid]\nbuy_threshold = [0.5]\n",
         "grid.buy_threshold: unknown key; it belongs in a table: decision.buy_threshold"),
        ("[grid]\ndecision.buy_treshold = [0.5]\n",
         "grid.decision.buy_treshold: unknown key; did you mean 'buy_threshold'?"),
        ("[grid]\nweights.momentun = [1.0]\n",
         "grid.weights.momentun: unknown key; did you mean 'momentum'?"),
        ("[grid]\nweights.volatility-regime = [1.0]\n",
         "grid.weights.volatility-regime: the agent is not directional and takes no weight"),
        ("[grid]\ndecision.weights = [1.0]\n", "weights are their own table"),
        ("[grid]\n", "grid: the table is empty"),
        ("[grid.decision]\n", "grid.decision: the table is empty"),
        ("[grid]\ndecision.buy_threshold = []\n",
         "grid.decision.buy_threshold: the list is empty: give at least one value"),
        ("[grid]\ndecision.buy_threshold = 0.5\n",
         "grid.decision.buy_threshold: expected a list of values, e.g. [0.5], got 0.5"),
        ("[grid]\ndecision.buy_threshold = [0.5, 0.5]\n",
         "grid.decision.buy_threshold: 0.5 is listed twice"),
        ('[grid]\ndecision.buy_threshold = ["0.5"]\n',
         "grid.decision.buy_threshold[0]: decision.buy_threshold: expected a number, got text"
         " '0.5' (write it without quotes)"),
        ("[grid]\ndecision.quorum = [6.5]\n",
         "decision.quorum: expected a whole number, got 6.5"),
        ("[grid]\ndecision.quorum = [true]\n",
         "decision.quorum: expected a whole number, got true/false (true)"),
        ("[grid]\ndecision.quorum = [9]\n",
         "decision.quorum = 9: above the 8 analysis agents that run"),
        ("[grid]\naccount.halt_action = ['flaten']\n",
         "account.halt_action: expected one of 'block_entries', 'flatten', got text 'flaten';"
         " did you mean 'flatten'?"),
        ("[grid]\naccount.drawdown_limits = [0.05, 0.1, 0.2]\n",
         "account.drawdown_limits: expected a list of three numbers [warn, reduce, halt], got"
         " 0.05"),
        ("[grid]\nfee_rate = [nan]\n", "fee_rate: expected a number, got nan (finite numbers"
                                       " only)"),
        ("configs = []\n", "configs: the list is empty"),
        ("configs = 3\n", "configs: expected a list of tables ([[configs]]), got 3"),
        ("[[configs]]\nname = 'a'\n[[configs]]\nname = 'a'\n",
         "configs entry 2: name 'a' is used twice"),
        ("[[configs]]\ndecision = { buy_threshold = [0.5] }\n",
         "configs entry 1: decision.buy_threshold: expected a number, got a list [0.5]"),
        ("[grid\n", "not valid TOML"),
    ],
)  # fmt: skip
def test_a_bad_sweep_file_names_the_key(tmp_path: Path, text: str, says: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        read_sweep(_file(tmp_path, text))
    assert info.value.field == "sweep"
    assert str(info.value).startswith(str(tmp_path / "sweep[x].toml"))
    assert says in str(info.value)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("[grid]\ndecision.buy_threshold = [0.5, 1.5]\n",
         "grid: decision.buy_threshold = 1.5: Input should be less than or equal to 1"),
        ("[grid]\naccount.max_position_fraction = [0.0]\n",
         "grid: account.max_position_fraction = 0.0: Input should be greater than 0"),
        ("[grid]\nfee_rate = [0.5]\n", "grid: fee_rate = 0.5: fee must lie in [0, 0.1), got 0.5"),
        ("[[configs]]\nname = 'tight'\naccount = { drawdown_limits = [0.2, 0.1, 0.05] }\n",
         "configs entry 1 (tight): account.drawdown_limits = (0.2, 0.1, 0.05): drawdown_limits"
         " must satisfy 0 < warn <= reduce <= halt < 1"),
        # a combination refused: named with its values, and how many more are
        ("[grid]\ndecision.buy_threshold = [0.5, 0.8, 0.9]\n"
         "decision.strong_threshold = [0.7, 0.95]\n",
         "grid: decision.buy_threshold = 0.8, decision.strong_threshold = 0.7: strong_threshold"
         " must be at least the buy and sell thresholds (2 of 6 configurations refused)"),
        ("[grid]\nweights.momentum = [0.0]\nweights.market-structure = [0.0]\n"
         "weights.order-flow = [0.0]\nweights.multi-timeframe = [0.0]\n"
         "weights.news-sentiment = [0.0]\nweights.pattern-recognition = [0.0]\n"
         "weights.statistical-edge = [0.0]\n",
         "at least one directional agent needs a weight above 0"),
    ],
)  # fmt: skip
def test_values_the_settings_refuse_name_the_key_and_value(
    tmp_path: Path, text: str, says: str
) -> None:
    spec = read_sweep(_file(tmp_path, text))
    with pytest.raises(InvalidRequestError) as info:
        spec.configurations(BacktestSettings())
    assert info.value.field == "sweep"
    assert says in str(info.value)


def test_a_weight_of_an_agent_that_does_not_run_is_an_error(tmp_path: Path) -> None:
    path = _file(tmp_path, "[grid]\nweights.news-sentiment = [1.0, 2.0]\n")
    with pytest.raises(InvalidRequestError, match=r"weights\.news-sentiment: the agent does not"):
        read_sweep(path, agents=("momentum", "risk-manager"), analysis_agents=1)


@pytest.mark.parametrize(
    ("name", "says"),
    [("sweep.json", "a sweep file ends in .toml, .yaml, .yml"), ("absent.toml", "no such file")],
)
def test_a_file_that_cannot_be_a_sweep_says_so(tmp_path: Path, name: str, says: str) -> None:
    path = tmp_path / name
    if name.endswith(".json"):
        path.write_text("{}")
    with pytest.raises(InvalidRequestError, match=says):
        read_sweep(path)


def test_yaml_numbers_written_as_text_get_a_hint(tmp_path: Path) -> None:
    """PyYAML reads ``1e-3`` as text (YAML 1.1): the error says how to write it."""
    pytest.importorskip("yaml")
    path = _file(tmp_path, "grid:\n  fee_rate: [1e-3]\n", ".yml")
    with pytest.raises(InvalidRequestError, match=r"YAML reads 1e-3 as text: write 1\.0e-3"):
        read_sweep(path)
