"""What a sweep may set and what its configurations are: keys, values, settings.

`space` lists the keys a sweep file may set (see `conclave.backtest.sweep_file`), each
with the kind of value it takes; a `SweepSpec` holds a file's grid and list once read and
checked, counts them, and expands them into `SweepConfig`s: the base settings (the command
line's) with each configuration's values, each validated by the settings' own models, so a
value out of range or a combination refused names its key and value.
"""

from __future__ import annotations

import itertools
import math
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ValidationError

from conclave.accounts.config import AccountConfig
from conclave.backtest.settings import BacktestSettings
from conclave.errors import InvalidRequestError
from conclave.pipeline.decision import DIRECTIONAL_AGENTS, DecisionConfig

Kind = Literal["number", "whole", "triple", "choice"]
M = TypeVar("M", bound=BaseModel)
#: The `BacktestSettings` keys a sweep may set, and the command-line option of each.
COSTS = {"fee_rate": "fee", "slippage": "slippage", "starting_balance": "balance"}


@dataclass(frozen=True, slots=True)
class Param:
    """One key a sweep may set: its dotted name, the kind of value, the choices if any."""

    key: str
    kind: Kind
    choices: tuple[str, ...] = ()


def _kind(annotation: Any) -> tuple[Kind, tuple[str, ...]] | None:
    if annotation is float:
        return "number", ()
    if annotation is int:
        return "whole", ()
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is tuple and args == (float, float, float):
        return "triple", ()
    if origin is Literal:
        return "choice", tuple(str(a) for a in args)
    alias = getattr(annotation, "__value__", None)  # a `type X = Literal[...]` alias
    return _kind(alias) if alias is not None else None


def space() -> dict[str, Param]:
    """Every key a sweep may set, by dotted name (`conclave.backtest.sweep_file` lists
    them): each `DecisionConfig` field but the weights, each `AccountConfig` field but the
    markets, each directional agent's weight, and the costs (`COSTS`)."""
    out = {k: Param(k, "number") for k in COSTS}
    for section, model, skip in (("decision", DecisionConfig, "weights"),
                                 ("account", AccountConfig, "markets")):  # fmt: skip
        for name, info in model.model_fields.items():
            found = _kind(info.annotation)
            if name != skip and found is not None:
                out[f"{section}.{name}"] = Param(f"{section}.{name}", *found)
    out.update({f"weights.{a}": Param(f"weights.{a}", "number") for a in DIRECTIONAL_AGENTS})
    return out


@dataclass(frozen=True, slots=True)
class SweepConfig:
    """One configuration: its number (from 1), name, the keys it sets, its settings."""

    number: int
    name: str
    values: Mapping[str, Any]
    settings: BacktestSettings


def fail(where: str, message: str) -> InvalidRequestError:
    """The error of a bad sweep: ``where`` (the file), then what is wrong (field sweep)."""
    return InvalidRequestError(f"{where}: {message}", field="sweep")


@dataclass(frozen=True, slots=True)
class SweepSpec:
    """A sweep file read and checked: its grid (key, values) and list entries (name,
    values), every key set anywhere (first appearance first), ready to expand."""

    path: str
    grid: tuple[tuple[str, tuple[Any, ...]], ...]
    entries: tuple[tuple[str, Mapping[str, Any]], ...]
    keys: tuple[str, ...]

    @property
    def count(self) -> int:
        """How many configurations the file defines (the list's plus the grid's)."""
        grid = math.prod(len(v) for _, v in self.grid) if self.grid else 0
        return len(self.entries) + grid

    def combinations(self) -> list[tuple[str, dict[str, Any]]]:
        """(name, values) of every configuration, in number order."""
        out = [(name, dict(values)) for name, values in self.entries]
        if self.grid:
            keys = [k for k, _ in self.grid]
            for combo in itertools.product(*(v for _, v in self.grid)):
                out.append(("", dict(zip(keys, combo, strict=True))))
        return out

    def configurations(self, base: BacktestSettings) -> tuple[SweepConfig, ...]:
        """Every configuration's settings: ``base`` with the configuration's values.

        Raises `InvalidRequestError` naming the key and value the settings refuse (or the
        configuration, for a combination refused), and how many configurations fail so.
        """
        out: list[SweepConfig] = []
        errors: dict[str, list[int]] = {}
        decisions: dict[tuple[Any, ...], DecisionConfig | str] = {}
        accounts: dict[tuple[Any, ...], AccountConfig | str] = {}
        for number, (name, values) in enumerate(self.combinations(), start=1):
            try:
                settings = _settings(base, values, decisions, accounts, self._where(number))
            except InvalidRequestError as exc:
                errors.setdefault(str(exc), []).append(number)
                continue
            out.append(SweepConfig(number, name, values, settings))
        if errors:
            message = next(iter(errors))
            refused = sum(len(v) for v in errors.values())
            more = f" ({refused:,} of {self.count:,} configurations refused)" if refused > 1 else ""
            raise fail(self.path, message + more)
        return tuple(out)

    def _where(self, number: int) -> str:
        if number <= len(self.entries):
            name = self.entries[number - 1][0]
            return f"configs entry {number}" + (f" ({name})" if name else "")
        return "grid"


def value_of(settings: BacktestSettings, key: str) -> Any:
    """The value of dotted ``key`` in ``settings`` (a triple as a tuple)."""
    section, _, name = key.partition(".")
    if not name:
        return getattr(settings, section)
    if section == "weights":
        return settings.decision.weight(name)
    return getattr(getattr(settings, section), name)


def _settings(
    base: BacktestSettings,
    values: Mapping[str, Any],
    decisions: dict[tuple[Any, ...], DecisionConfig | str],
    accounts: dict[tuple[Any, ...], AccountConfig | str],
    where: str,
) -> BacktestSettings:
    """``base`` with ``values``; each distinct decision and account validated once."""
    parts: dict[str, dict[str, Any]] = {"decision": {}, "weights": {}, "account": {}, "": {}}
    for key, value in values.items():
        section, _, name = key.partition(".")
        parts[section if name else ""][name or key] = value
    d_key = (*sorted(parts["decision"].items()), *sorted(parts["weights"].items()))
    decisions.setdefault((), base.decision)  # nothing set: the base's own, as given
    accounts.setdefault((), base.account)
    if d_key not in decisions:
        fields = base.decision.model_dump() | parts["decision"]
        fields["weights"] = dict(base.decision.weights) | parts["weights"]
        decisions[d_key] = _validated(DecisionConfig, fields, "decision", values, where)
    a_key = tuple(sorted(parts["account"].items()))
    if a_key not in accounts:
        fields = base.account.model_dump() | parts["account"]
        accounts[a_key] = _validated(AccountConfig, fields, "account", values, where)
    decision, account = decisions[d_key], accounts[a_key]
    for got in (decision, account):
        if isinstance(got, str):
            raise InvalidRequestError(got, field="sweep")
    assert isinstance(decision, DecisionConfig)
    assert isinstance(account, AccountConfig)
    costs = parts[""]
    try:
        return BacktestSettings(
            starting_balance=float(costs.get("starting_balance", base.starting_balance)),
            fee_rate=float(costs.get("fee_rate", base.fee_rate)),
            slippage=float(costs.get("slippage", base.slippage)),
            account=account, decision=decision, resample=base.resample,
        )  # fmt: skip
    except InvalidRequestError as exc:
        key = next(k for k, flag in COSTS.items() if flag == exc.field)
        raise InvalidRequestError(f"{where}: {key} = {values.get(key)!r}: {exc}",
                                  field="sweep") from None  # fmt: skip


def _validated(
    model: type[M], fields: dict[str, Any], section: str, values: Mapping[str, Any], where: str
) -> M | str:
    """The model, or the text of its first error naming the key and value (or the
    combination, for an error of the whole model)."""
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        msg = str(first["msg"]).removeprefix("Value error, ")
        loc = [str(p) for p in first["loc"]]
        if loc and loc[0] == "weights":
            return f"{where}: weights: {msg}"
        if loc:
            key = f"{section}.{loc[0]}"
            shown = values.get(key, fields.get(loc[0]))
            return f"{where}: {key} = {shown!r}: {msg}"
        combo = ", ".join(f"{k} = {v!r}" for k, v in values.items() if k.startswith(section))
        return f"{where}: {combo or section}: {msg}"
