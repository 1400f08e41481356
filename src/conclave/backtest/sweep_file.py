"""A sweep file: the configurations ``conclave backtest --sweep FILE`` runs.

TOML (the standard library reads it) or YAML (``.yaml``/``.yml``; needs PyYAML). A grid,
a list, or both::

    [grid]                      # every combination of the values listed: 3 x 2 x 2 = 12
    fee_rate = [0.001]
    decision.buy_threshold = [0.45, 0.52, 0.59]
    weights.momentum = [1.0, 2.0]
    account.drawdown_limits = [[0.05, 0.10, 0.20], [0.03, 0.06, 0.10]]

    [[configs]]                 # one configuration each, with an optional name
    name = "cautious"
    decision = { buy_threshold = 0.65 }
    account = { max_position_fraction = 0.1 }

The keys (`space`): ``fee_rate``, ``slippage``, ``starting_balance`` (`BacktestSettings`);
``decision.*`` (`DecisionConfig` but its weights); ``weights.<agent>`` for each directional
agent; ``account.*`` (`AccountConfig` but its markets). A key a configuration does not set
takes the command line's value (``--fee``, ``--weights``, ...) or the default. The
configurations are numbered from 1: the list's first, in order, then the grid's, its last
key varying fastest.

Every error is an `InvalidRequestError` (``field`` "sweep") naming the key: an unknown key
(with the nearest known one), a value of the wrong type, an empty list or grid, a value
listed twice, a value out of range, or a combination the settings refuse.
"""

from __future__ import annotations

import difflib
import math
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conclave.backtest.sweep_space import COSTS, Param, SweepSpec, fail, space
from conclave.errors import InvalidRequestError
from conclave.pipeline.decision import ALL_AGENTS

SUFFIXES = (".toml", ".yaml", ".yml")
_EXPECTED = {"number": "a number", "whole": "a whole number", "choice": "one of {}",
             "triple": "a list of three numbers [warn, reduce, halt]"}  # fmt: skip


def _described(value: Any) -> str:
    if isinstance(value, bool):
        return f"true/false ({str(value).lower()})"
    if isinstance(value, str):
        return f"text {value!r}"
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, list | tuple):
        return f"a list {list(value)!r}"
    return repr(value)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


# -- reading -----------------------------------------------------------------------------------


def read_sweep(
    path: Path, *, agents: Sequence[str] = ALL_AGENTS, analysis_agents: int = 8
) -> SweepSpec:
    """Read and check the sweep file at ``path`` (see the module docstring).

    ``agents`` are the agents that run (a weight of another one is an error), and
    ``analysis_agents`` how many of them analyse (a larger ``decision.quorum`` could never
    be met). Raises `InvalidRequestError` (field "sweep") naming the file and the key.
    """
    name = str(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise fail(name, f"a sweep file ends in {', '.join(SUFFIXES)}")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise fail(name, "no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise fail(name, f"cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    data = _parse_yaml(name, text) if suffix != ".toml" else _parse_toml(name, text)
    reader = _Reader(name, yaml=suffix != ".toml", space=space(), agents=agents,
                     analysis=analysis_agents)  # fmt: skip
    return reader.spec(data)


def _parse_toml(name: str, text: str) -> Any:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise fail(name, f"not valid TOML: {exc}") from None


def _parse_yaml(name: str, text: str) -> Any:
    try:
        import yaml
    except ImportError:
        raise fail(name, "reading YAML needs PyYAML (pip install 'conclave[yaml]'); or write the"
                          " sweep as TOML") from None  # fmt: skip
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise fail(name, f"not valid YAML: {exc}") from None


@dataclass(frozen=True, slots=True)
class _Reader:
    name: str
    yaml: bool
    space: Mapping[str, Param]
    agents: Sequence[str]
    analysis: int

    def spec(self, data: Any) -> SweepSpec:
        if not isinstance(data, Mapping) or not data:
            raise fail(self.name, "defines no configuration: give a [grid] table, [[configs]]"
                                   " entries, or both (see examples/sweep.toml)")  # fmt: skip
        for key in data:
            if key not in ("grid", "configs"):
                raise self.unknown(str(key), ("grid", "configs"), "")
        grid = self.grid(data["grid"]) if "grid" in data else ()
        entries = self.entries(data["configs"]) if "configs" in data else ()
        keys = dict.fromkeys([k for _, v in entries for k in v] + [k for k, _ in grid])
        return SweepSpec(self.name, grid, entries, tuple(keys))

    def unknown(self, key: str, known: Sequence[str], where: str) -> InvalidRequestError:
        shown = f"{where}.{key}" if where else key
        flag = {f: k for k, f in COSTS.items()}.get(key)  # the command line's names
        near = [flag] if flag in known else difflib.get_close_matches(key, known, n=1)
        leaf = [k for k in self.space if k.endswith(f".{key}")]
        if near:
            hint = f"; did you mean {near[0]!r}?"
        elif leaf:
            hint = f"; it belongs in a table: {leaf[0]}"
        else:
            hint = f"; known: {', '.join(known)}"
        return fail(self.name, f"{shown}: unknown key{hint}")

    def flat(self, table: Any, where: str, *, named: bool) -> dict[str, Any]:
        """``table``'s keys as dotted names (``decision = {x = 1}`` is ``decision.x``)."""
        if not isinstance(table, Mapping):
            raise fail(self.name, f"{where}: expected a table, got {_described(table)}")
        out: dict[str, Any] = {}
        tops = [*COSTS, "decision", "weights", "account", *(["name"] if named else [])]
        for key, value in table.items():
            key = str(key)
            if (key == "name" and named) or key in COSTS:
                out[key] = value
            elif key in ("decision", "weights", "account"):
                if not isinstance(value, Mapping):
                    raise fail(self.name, f"{where}.{key}: expected a table of keys, got"
                                           f" {_described(value)}")  # fmt: skip
                if not value:
                    raise fail(self.name, f"{where}.{key}: the table is empty")
                for sub, v in value.items():
                    out[self.known(f"{key}.{sub}", where)] = v
            else:
                raise self.unknown(key, tops, where)
        return out

    def known(self, key: str, where: str) -> str:
        section, _, name = key.partition(".")
        if key in self.space:
            if section == "weights" and name not in self.agents:
                raise fail(self.name, f"{where}.{key}: the agent does not run here (--agents)")
            return key
        if section == "weights" and name in ALL_AGENTS:
            raise fail(self.name, f"{where}.{key}: the agent is not directional and takes no"
                                   " weight")  # fmt: skip
        if section == "decision" and name == "weights":
            raise fail(self.name, f"{where}.{key}: weights are their own table: weights.<agent>")
        names = [k.partition(".")[2] for k in self.space if k.startswith(f"{section}.")]
        raise self.unknown(name, names, f"{where}.{section}")

    def value(self, key: str, value: Any, where: str) -> Any:
        """``value`` checked against ``key``'s kind: a float, int, text or triple."""
        p = self.space[key]
        if p.kind == "number" and _number(value):
            return float(value)
        if p.kind == "whole" and isinstance(value, int) and not isinstance(value, bool):
            if key == "decision.quorum" and value > self.analysis:
                raise fail(self.name, f"{where}: {key} = {value}: above the {self.analysis}"
                                       " analysis agents that run")  # fmt: skip
            return value
        if p.kind == "choice" and isinstance(value, str) and value in p.choices:
            return value
        triple = isinstance(value, list | tuple) and len(value) == 3
        if p.kind == "triple" and triple and all(_number(v) for v in value):
            return tuple(float(v) for v in value)
        expected = _EXPECTED[p.kind].format(", ".join(map(repr, p.choices)))
        hint = ""
        if isinstance(value, str) and p.kind in ("number", "whole"):
            hint = (" (YAML reads 1e-3 as text: write 1.0e-3 or 0.001)" if self.yaml
                    else " (write it without quotes)")  # fmt: skip
        elif isinstance(value, str) and p.kind == "choice":
            near = difflib.get_close_matches(value, p.choices, n=1)
            hint = f"; did you mean {near[0]!r}?" if near else ""
        elif isinstance(value, float) and not math.isfinite(value):
            hint = " (finite numbers only)"
        raise fail(self.name, f"{where}: {key}: expected {expected}, got"
                               f" {_described(value)}{hint}")  # fmt: skip

    def grid(self, table: Any) -> tuple[tuple[str, tuple[Any, ...]], ...]:
        flat = self.flat(table, "grid", named=False)
        if not flat:
            raise fail(self.name, "grid: the table is empty: give each key a list of values")
        out = []
        for key, values in flat.items():
            if not isinstance(values, list):
                raise fail(self.name, f"grid.{key}: expected a list of values, e.g."
                                       f" [{values!r}], got {_described(values)}")  # fmt: skip
            if not values:
                raise fail(self.name, f"grid.{key}: the list is empty: give at least one value")
            checked = [self.value(key, v, f"grid.{key}[{i}]") for i, v in enumerate(values)]
            for i, v in enumerate(checked):
                if v in checked[:i]:
                    raise fail(self.name, f"grid.{key}: {values[i]!r} is listed twice")
            out.append((key, tuple(checked)))
        return tuple(out)

    def entries(self, items: Any) -> tuple[tuple[str, Mapping[str, Any]], ...]:
        if not isinstance(items, list):
            raise fail(self.name, f"configs: expected a list of tables ([[configs]]), got"
                                   f" {_described(items)}")  # fmt: skip
        if not items:
            raise fail(self.name, "configs: the list is empty")
        out: list[tuple[str, Mapping[str, Any]]] = []
        for i, item in enumerate(items, start=1):
            where = f"configs entry {i}"
            flat = self.flat(item, where, named=True)
            name = flat.pop("name", "")
            if not isinstance(name, str):
                raise fail(self.name, f"{where}: name: expected text, got {_described(name)}")
            if name and name in (n for n, _ in out):
                raise fail(self.name, f"{where}: name {name!r} is used twice")
            out.append((name, {k: self.value(k, v, where) for k, v in flat.items()}))
        return tuple(out)
