"""Every error Conclave raises, grouped by what the caller should do.

Callers catch the *group*, not the leaf: the group says what to do next, the leaf says why.
Vendor errors (httpx2, redis, ccxt, the exchange's JSON error codes) are translated at the
boundary with ``raise OurError(...) from exc`` so nothing above the data layer sees them.

    ConclaveError                      base; ``reason`` is a stable snake_case code
    ├── RetryLaterError                transient: the same call may succeed after a pause
    │   ├── ExchangeUnavailableError   5xx, connection refused, protocol error
    │   │   └── ExchangeTimeoutError   connect or read timeout
    │   ├── RateLimitedError           429: every caller pauses for ``retry_after_s``
    │   │   └── IPBannedError          418: the IP is banned until ``retry_after_s`` passes
    │   └── StoreUnavailableError      the database cannot be reached, or stayed locked
    ├── SkipStepError                  this step cannot give a signal: record it, go on
    │   ├── ExchangeDataError          the exchange answered, but not with usable data
    │   ├── InvalidCandlesError        candles break an invariant that cannot be repaired
    │   ├── StaleDataError             newest closed candle older than 2 x tf + 5 min
    │   ├── InsufficientDataError      fewer candles than the step needs
    │   ├── NewsUnavailableError       a configured news feed could not be read
    │   └── AgentError                 an agent failed; ``agent`` names it
    │       └── AgentOutputError       an agent returned out-of-range or non-finite values
    └── StopError                      retrying cannot help: fix the input or the setup
        ├── ConfigurationError         an unknown or invalid setting
        │   └── AgentConfigError       an unknown or invalid agent parameter
        ├── InvalidRequestError        a bad argument, caught before any I/O
        │   ├── InvalidSymbolError     symbol fails the pattern or the allowlist
        │   ├── InvalidTimeframeError  timeframe is not one we know (case-sensitive)
        │   └── UnknownSymbolError     the exchange does not list the symbol (-1121)
        ├── ExchangeRejectedError      the exchange refused the request (other 4xx codes)
        └── StoreRejectedError         the database refused a write (duplicate id, constraint)

A failed step is recorded with its ``reason``; it never becomes a score of 0.
"""

from __future__ import annotations


class ConclaveError(Exception):
    """Base of every Conclave error; ``reason`` is a stable code for logs and records."""

    reason: str = "error"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason

    def __str__(self) -> str:
        return self.message


# -- retry later ---------------------------------------------------------------------------


class RetryLaterError(ConclaveError):
    """A transient failure: the same call may succeed after a pause."""

    reason = "retry_later"


class ExchangeUnavailableError(RetryLaterError):
    """The exchange could not be reached or answered with a server error (5xx)."""

    reason = "exchange_unavailable"


class ExchangeTimeoutError(ExchangeUnavailableError):
    """The exchange did not answer within the connect or read timeout."""

    reason = "exchange_timeout"


class RateLimitedError(RetryLaterError):
    """The exchange said 429: nobody may call it again for ``retry_after_s`` seconds."""

    reason = "rate_limited"

    def __init__(self, message: str, *, retry_after_s: float, reason: str | None = None) -> None:
        super().__init__(message, reason=reason)
        self.retry_after_s = retry_after_s


class IPBannedError(RateLimitedError):
    """The exchange said 418: this IP is banned for ``retry_after_s`` seconds."""

    reason = "ip_banned"


class StoreUnavailableError(RetryLaterError):
    """The run store cannot be reached, timed out, or stayed locked past its busy timeout.

    The message is safe to show a client: it never holds a URL, a password or SQL.
    """

    reason = "store_unavailable"


# -- skip this step ------------------------------------------------------------------------


class SkipStepError(ConclaveError):
    """This step cannot produce a signal now; record why and carry on without it."""

    reason = "skip_step"


class ExchangeDataError(SkipStepError):
    """The exchange answered, but the body is not usable data (HTML, truncated, wrong types)."""

    reason = "exchange_data"


class InvalidCandlesError(SkipStepError):
    """Candles break an invariant (OHLC order, finiteness, sign) that cannot be repaired."""

    reason = "invalid_candles"


class StaleDataError(SkipStepError):
    """The newest closed candle is too old to trade on (older than 2 x timeframe + 5 min)."""

    reason = "stale_data"

    def __init__(self, message: str, *, newest_open_ms: int | None, as_of_ms: int) -> None:
        super().__init__(message)
        self.newest_open_ms = newest_open_ms
        self.as_of_ms = as_of_ms


class InsufficientDataError(SkipStepError):
    """Fewer candles than the step needs (for example a 200-bar moving average)."""

    reason = "insufficient_data"


class NewsUnavailableError(SkipStepError):
    """A configured news feed could not be fetched or parsed."""

    reason = "news_unavailable"


class AgentError(SkipStepError):
    """An agent raised while computing; ``agent`` names it and the cause is chained."""

    reason = "error"

    def __init__(self, message: str, *, agent: str, reason: str | None = None) -> None:
        super().__init__(message, reason=reason)
        self.agent = agent


class AgentOutputError(AgentError):
    """An agent returned values outside the contract (score in [-1, 1], confidence 0-100)."""

    reason = "invalid_output"


# -- stop ----------------------------------------------------------------------------------


class StopError(ConclaveError):
    """Retrying cannot help: the input or the configuration must change."""

    reason = "stop"


class ConfigurationError(StopError):
    """A setting is unknown or invalid; the message names it."""

    reason = "configuration"


class AgentConfigError(ConfigurationError):
    """An agent parameter is unknown (the message suggests the nearest name) or invalid."""

    reason = "agent_config"


class InvalidRequestError(StopError):
    """An argument is invalid; raised before any I/O. ``field`` names the argument."""

    reason = "invalid_request"

    def __init__(self, message: str, *, field: str, reason: str | None = None) -> None:
        super().__init__(message, reason=reason)
        self.field = field


class InvalidSymbolError(InvalidRequestError):
    """The symbol fails the pattern (for example lower case, path characters, too long)."""

    reason = "invalid_symbol"

    def __init__(self, message: str) -> None:
        super().__init__(message, field="symbol")


class InvalidTimeframeError(InvalidRequestError):
    """The timeframe is not one we know; checked case-sensitively (``1M`` is a month)."""

    reason = "invalid_timeframe"

    def __init__(self, message: str) -> None:
        super().__init__(message, field="timeframe")


class UnknownSymbolError(InvalidRequestError):
    """The exchange does not list this symbol (Binance ``-1121 Invalid symbol.``)."""

    reason = "unknown_symbol"

    def __init__(self, message: str) -> None:
        super().__init__(message, field="symbol")


class ExchangeRejectedError(StopError):
    """The exchange refused the request (a 4xx other than 429/418); ``code`` is its code."""

    reason = "exchange_rejected"

    def __init__(self, message: str, *, code: int | None, status: int) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


class StoreRejectedError(StopError):
    """The run store refused a write: a run id saved twice, an idempotency key owned by
    another run, or a value that breaks a constraint. Nothing of the write was kept."""

    reason = "store_rejected"
