"""`Registry`: the agents by name, in order, with their service ports and decision roles.

The registry is the one place that lists the agents (`conclave.agents.REGISTRY` holds the
nine). Its order is the order of a run's steps, of a decision's contributions and of the
services' default ports (``first_port``, 5001, onwards). Each agent has one role in the
decision:

- ``risk``: exactly one, the risk manager; it runs last and may veto or scale the trade;
- ``sizing``: exactly one, the volatility regime; its ``size_multiplier`` scales the size;
- ``directional``: every other agent; its score is weighted into the conviction.

The analysis agents (counted by the decision's quorum) are all but the risk agent. A
registry is immutable: `with_agent` and `replacing` answer a changed copy.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import Any, Literal, NoReturn

from conclave.agents.base import Agent

Role = Literal["directional", "sizing", "risk"]
#: The port of the first agent's service; the others follow in registry order.
FIRST_PORT = 5001
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")


class Registry(Mapping[str, type[Agent]]):
    """Agent names to agent classes, in order; each agent's default port and role.

    ``classes`` maps each name to its class (whose ``name`` must be that name); ``sizing``
    and ``risk`` name the agents with those roles, the others are directional. Raises
    `ValueError` naming what is inconsistent.
    """

    __slots__ = ("_classes", "analysis", "directional", "first_port", "ports", "risk", "sizing")

    _classes: Mapping[str, type[Agent]]
    #: Default service port of each agent, in registry order.
    ports: Mapping[str, int]
    #: Every agent but the risk agent, in registry order (the decision's quorum counts them).
    analysis: tuple[str, ...]
    #: The analysis agents but the sizing agent, in registry order (they take weights).
    directional: tuple[str, ...]
    sizing: str
    risk: str
    first_port: int

    def __init__(
        self,
        classes: Mapping[str, type[Agent]],
        *,
        sizing: str,
        risk: str,
        first_port: int = FIRST_PORT,
    ) -> None:
        entries = dict(classes)
        _check(entries, sizing=sizing, risk=risk, first_port=first_port)
        init = object.__setattr__
        init(self, "_classes", MappingProxyType(entries))
        init(self, "ports", MappingProxyType({n: first_port + i for i, n in enumerate(entries)}))
        init(self, "analysis", tuple(n for n in entries if n != risk))
        init(self, "directional", tuple(n for n in entries if n not in (risk, sizing)))
        init(self, "sizing", sizing)
        init(self, "risk", risk)
        init(self, "first_port", first_port)

    def __getitem__(self, name: str) -> type[Agent]:
        return self._classes[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._classes)

    def __len__(self) -> int:
        return len(self._classes)

    @property
    def names(self) -> tuple[str, ...]:
        """Every agent's name, in registry order."""
        return tuple(self._classes)

    def role(self, name: str) -> Role:
        """The role of agent ``name`` in the decision (`KeyError` if unknown)."""
        if name not in self._classes:
            raise KeyError(name)
        return "risk" if name == self.risk else "sizing" if name == self.sizing else "directional"

    def suggest(self, name: str) -> str | None:
        """The registered name nearest to ``name`` (a likely typo of it), or None."""
        near = difflib.get_close_matches(name, self.names, n=1)
        return near[0] if near else None

    def with_agent(self, name: str, cls: type[Agent], *, role: Role = "directional") -> Registry:
        """A copy with agent ``name`` added last (its port follows the others').

        The registry has one sizing and one risk agent: adding another with either role
        is a `ValueError` (swap the class behind a name with `replacing`).
        """
        if name in self._classes:
            raise ValueError(f"agent {name!r} is already registered (see Registry.replacing)")
        if role != "directional":
            holder = self.sizing if role == "sizing" else self.risk
            raise ValueError(f"the {role} agent is {holder!r}: a registry has one")
        return self._copy({**self._classes, name: cls})

    def replacing(self, name: str, cls: type[Agent]) -> Registry:
        """A copy in which agent ``name`` (same place, port and role) is ``cls``."""
        if name not in self._classes:
            raise KeyError(name)
        return self._copy({**self._classes, name: cls})

    def _copy(self, classes: Mapping[str, type[Agent]]) -> Registry:
        return Registry(classes, sizing=self.sizing, risk=self.risk, first_port=self.first_port)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Registry):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def _key(self) -> tuple[Any, ...]:
        return tuple(self._classes.items()), self.sizing, self.risk, self.first_port

    def __repr__(self) -> str:
        names = ", ".join(self._classes)
        return f"Registry([{names}], sizing={self.sizing!r}, risk={self.risk!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return _rebuild, (dict(self._classes), self.sizing, self.risk, self.first_port)

    def __setattr__(self, name: str, value: object) -> NoReturn:
        raise AttributeError("a Registry is immutable; with_agent answers an extended copy")

    def __delattr__(self, name: str) -> NoReturn:
        raise AttributeError("a Registry is immutable")


def _rebuild(classes: dict[str, type[Agent]], sizing: str, risk: str, first_port: int) -> Registry:
    return Registry(classes, sizing=sizing, risk=risk, first_port=first_port)


def _check(classes: dict[str, type[Agent]], *, sizing: str, risk: str, first_port: int) -> None:
    for name, cls in classes.items():
        if not NAME_PATTERN.match(name):
            raise ValueError(f"agent name {name!r} must be lower-case words joined by hyphens")
        if not (isinstance(cls, type) and issubclass(cls, Agent)):
            raise ValueError(f"agent {name!r} must be an Agent subclass, got {cls!r}")
        own = getattr(cls, "name", None)
        if own != name:
            raise ValueError(f"agent {name!r} is registered with a class named {own!r}")
    for role, name in (("sizing", sizing), ("risk", risk)):
        if name not in classes:
            raise ValueError(f"the {role} agent {name!r} is not in the registry")
    if sizing == risk:
        raise ValueError(f"{risk!r} cannot be both the sizing and the risk agent")
    if not (first_port > 0 and first_port + len(classes) - 1 < 65536):
        raise ValueError(f"ports {first_port} onwards must lie in 1 to 65535")
