"""Agent parameters: typed and frozen; an unknown or misspelled key fails at start-up."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, ValidationError

from conclave.errors import AgentConfigError


class AgentParams(BaseModel):
    """Typed, frozen agent parameters; unknown keys are errors. Build with `from_mapping`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None = None) -> Self:
        """Validate ``values``; raise `AgentConfigError` naming the key (and the nearest name)."""
        values = dict(values or {})
        known = list(cls.model_fields)
        for key in values:
            if key not in cls.model_fields:
                near = difflib.get_close_matches(key, known, n=1)
                hint = f"; did you mean {near[0]!r}?" if near else f"; known: {', '.join(known)}"
                raise AgentConfigError(f"unknown parameter {key!r} for {cls.__name__}{hint}")
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise AgentConfigError(
                f"invalid parameter {where!r} for {cls.__name__}: {first['msg']}"
            ) from exc
