"""What a ``POST /pipeline/run`` request is: its body model, its Idempotency-Key, its hash.

Split out of `conclave.services.api` (the app and its routes) so the request's rules sit
in one module: `run_request_model` builds the body model with this deployment's
allowlists (checked before any I/O, E4), `validate_run_request` answers a bad body 422
naming the field as every route does, `check_idempotency_key` refuses a malformed key,
and `request_hash` is the digest a key is bound to (the same key with another body is
422, RELIABILITY G2).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from typing import Any

import orjson
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import PydanticCustomError

from conclave.pipeline.wire import ACCOUNT_ID_PATTERN
from conclave.services.http_common import ApiError
from conclave.settings import SYMBOL_PATTERN, Settings

#: An ``Idempotency-Key``: 1 to 255 visible ASCII characters.
IDEMPOTENCY_KEY_PATTERN = re.compile(r"^[\x21-\x7e]{1,255}$")


def check_idempotency_key(key: str | None) -> None:
    """`ApiError` 422 naming ``Idempotency-Key`` unless absent or of the pattern."""
    if key is not None and not IDEMPOTENCY_KEY_PATTERN.match(key):
        raise ApiError(
            422,
            "invalid_request",
            "expected 1 to 255 visible ASCII characters",
            field="Idempotency-Key",
        )


def run_request_model(settings: Settings) -> type[BaseModel]:
    """The ``POST /pipeline/run`` body model, with this deployment's allowlists."""
    symbols, timeframes = settings.market.symbols, settings.market.timeframes
    allowed_s, allowed_t = ", ".join(symbols), ", ".join(timeframes)

    def _optional_enum(values: tuple[str, ...]) -> Callable[[dict[str, Any]], None]:
        # documented as an optional string of the allowlist (null is accepted, not advertised)
        def extra(schema: dict[str, Any]) -> None:
            branches = schema.pop("anyOf", [])
            schema.update(next((b for b in branches if b.get("type") == "string"), {}))
            schema.pop("default", None)
            schema["enum"] = list(values)

        return extra

    class RunRequest(BaseModel):
        """One pipeline run: which account (optional), symbol and timeframe, and the mode;
        or, with only ``accountId``, a run of each of the account's markets."""

        model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

        account_id: str | None = Field(
            None, alias="accountId", pattern=ACCOUNT_ID_PATTERN.pattern, max_length=64
        )
        # symbol and timeframe go together; neither runs the account's markets (account_runs)
        symbol: str | None = Field(
            None,
            alias="symbol",
            max_length=20,
            pattern=SYMBOL_PATTERN.pattern,
            json_schema_extra=_optional_enum(symbols),
        )
        timeframe: str | None = Field(
            None, alias="timeframe", max_length=8, json_schema_extra=_optional_enum(timeframes)
        )
        use_http_agents: bool | None = Field(None, alias="useHttpAgents")

        @field_validator("symbol")
        @classmethod
        def _allowed_symbol(cls, value: str | None) -> str | None:
            if value is not None and value not in symbols:
                raise PydanticCustomError(
                    "not_allowed", "not in the symbol allowlist: {allowed}", {"allowed": allowed_s}
                )
            return value

        @field_validator("timeframe")
        @classmethod
        def _allowed_timeframe(cls, value: str | None) -> str | None:
            # case-sensitive: 1m is a minute, 1M a month
            if value is not None and value not in timeframes:
                raise PydanticCustomError(
                    "not_allowed",
                    "not in the timeframe allowlist: {allowed}",
                    {"allowed": allowed_t},
                )
            return value

    return RunRequest


def request_hash(body: BaseModel) -> str:
    """SHA-256 of the request's canonical JSON (validated fields, sorted keys)."""
    canonical = orjson.dumps(body.model_dump(by_alias=True), option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).hexdigest()


def validate_run_request(model: type[BaseModel], data: Any) -> Any:
    """``data`` (parsed JSON) as an instance of ``model``; a `RequestValidationError` (422
    naming the field under ``body``, the input never echoed) otherwise."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_input=False)]
        ) from None
