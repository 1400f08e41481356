"""What makes a server-side secret acceptable: set, long enough, not a placeholder.

One rule for every secret Conclave keys an HMAC with (the API-key hashing secret, the
agent signing secret), so start-up (`conclave.security.startup`) and the constructors that
take a secret refuse the same values with the same message, naming the setting (E10).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from conclave.errors import ConfigurationError

if TYPE_CHECKING:  # an annotation only: `conclave --help` (which needs `Scope`) skips pydantic
    from pydantic import SecretStr

#: Fewest characters a secret may have: 32 random characters carry well over 128 bits.
MIN_SECRET_LENGTH = 32

#: Values copied from examples and templates; refused whatever their length, compared
#: case-insensitively with spaces trimmed.
PLACEHOLDERS = frozenset(
    {
        "changeme", "change-me", "change_me", "changethis", "change-this", "secret",
        "default", "password", "conclave", "example", "test", "dev", "xxx", "todo",
        "replace-me", "replace_me", "your-secret-here", "your_secret_here", "insecure",
        "please-change-me", "changeme-please-use-a-long-random-secret",
    }
)  # fmt: skip


def secret_problem(value: SecretStr | str | None) -> str | None:
    """Why ``value`` cannot serve as a secret (``"not set"``, ``"empty"``, ...); None if fine."""
    if value is None:
        return "not set"
    raw = value if isinstance(value, str) else value.get_secret_value()
    stripped = raw.strip()
    if not stripped:
        return "empty"
    lowered = stripped.lower()
    if lowered in PLACEHOLDERS or len(set(stripped)) == 1 or lowered.startswith("changeme"):
        return "a default or placeholder value"
    if len(raw) < MIN_SECRET_LENGTH:
        return f"too short ({len(raw)} characters, at least {MIN_SECRET_LENGTH})"
    return None


def require_secret(value: SecretStr | str | None, setting: str) -> bytes:
    """The secret's bytes; raise `ConfigurationError` naming ``setting`` when it is unfit.

    The message never repeats the value.
    """
    problem = secret_problem(value)
    if problem is not None:
        raise ConfigurationError(
            f"{setting} is {problem}: set it to at least {MIN_SECRET_LENGTH} random characters"
            " (e.g. python -c 'import secrets; print(secrets.token_urlsafe(48))')"
        )
    assert value is not None  # secret_problem refused None
    raw = value if isinstance(value, str) else value.get_secret_value()
    return raw.encode("utf-8")
