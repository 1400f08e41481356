"""Safe by default: the check each service runs before it listens (issue 12, RELIABILITY E10).

On loopback with no API key the API stays open and says so (a laptop needs no ceremony).
Bound to any other address with no key, or with a default, empty or too short secret, the
process refuses to start with a message naming the setting to fix. A secret that is set
must be fit wherever the process listens: a weak secret is a mistake, never a choice.

The same for agent services: beyond loopback they need ``CONCLAVE_AGENTS__SECRET`` (every
``/run`` call signed); on loopback without it they accept unsigned calls and say so.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

from pydantic import SecretStr

from conclave.errors import ConfigurationError
from conclave.security.keys import KEY_SECRET_SETTING
from conclave.security.secret_rules import secret_problem
from conclave.security.signing import AGENT_SECRET_SETTING

API_HOST_SETTING = "CONCLAVE_API__HOST"
AGENT_HOST_SETTING = "CONCLAVE_AGENTS__HOST"
_CREATE_HINT = "create one with `conclave keys create --name NAME --scope admin`"


@dataclass(frozen=True, slots=True)
class StartupVerdict:
    """``ok`` (locked), ``open`` (no auth, loopback only: log ``message`` as a warning) or
    ``refuse`` (exit non-zero with ``message``, which names the setting)."""

    level: Literal["ok", "open", "refuse"]
    message: str

    @property
    def open(self) -> bool:
        """Whether the service should serve without authentication."""
        return self.level == "open"

    def raise_if_refused(self) -> StartupVerdict:
        """Raise `ConfigurationError` with the message when refused; else answer self."""
        if self.level == "refuse":
            raise ConfigurationError(self.message)
        return self


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) only accepts local connections.

    ``0.0.0.0``, ``::`` and any other name count as reachable from elsewhere.
    """
    name = host.strip().strip("[]").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _bad_secret(value: SecretStr | None, setting: str) -> StartupVerdict | None:
    """A refusal when ``value`` is set (even empty) but unfit; None when unset or fine."""
    if value is None:
        return None
    problem = secret_problem(value)
    if problem is None:
        return None
    return StartupVerdict(
        "refuse", f"refusing to start: {setting} is {problem}; set at least 32 random characters"
    )


def check_api_startup(
    *,
    host: str,
    active_keys: int,
    key_secret: SecretStr | None,
    agent_secret: SecretStr | None = None,
    agent_urls: Iterable[str] = (),
) -> StartupVerdict:
    """The verdict for the orchestrator's API bound to ``host``.

    ``active_keys`` counts keys neither revoked nor expired (`KeyRepo.count_active`);
    ``agent_urls`` are the agent services it calls over HTTP: any beyond loopback needs
    the agent secret to sign the calls.
    """
    for value, setting in ((key_secret, KEY_SECRET_SETTING), (agent_secret, AGENT_SECRET_SETTING)):
        bad = _bad_secret(value, setting)
        if bad is not None:
            return bad
    remote = sorted(
        {h for h in (urlsplit(u).hostname or "" for u in agent_urls) if not is_loopback(h)}
    )
    if remote and agent_secret is None:
        return StartupVerdict(
            "refuse",
            f"refusing to start: agents at {', '.join(remote)} are "
            f"beyond loopback and {AGENT_SECRET_SETTING} is not set",
        )
    if is_loopback(host):
        if active_keys == 0:
            return StartupVerdict(
                "open",
                f"the API is OPEN: no API keys and bound to {host} "
                f"({API_HOST_SETTING}, loopback only); {_CREATE_HINT}",
            )
        if key_secret is None:
            return StartupVerdict(
                "refuse",
                f"refusing to start: {active_keys} API key(s) exist "
                f"but {KEY_SECRET_SETTING} is not set",
            )
        return StartupVerdict("ok", f"API keys required ({active_keys} active)")
    if key_secret is None:
        return StartupVerdict(
            "refuse",
            f"refusing to start: bound to {host} ({API_HOST_SETTING},"
            f" beyond loopback) and {KEY_SECRET_SETTING} is not set",
        )
    if active_keys == 0:
        return StartupVerdict(
            "refuse",
            f"refusing to start: bound to {host} ({API_HOST_SETTING},"
            f" beyond loopback) with no API key; {_CREATE_HINT}",
        )
    return StartupVerdict("ok", f"API keys required ({active_keys} active)")


def check_agent_startup(*, host: str, agent_secret: SecretStr | None) -> StartupVerdict:
    """The verdict for an agent service bound to ``host``."""
    bad = _bad_secret(agent_secret, AGENT_SECRET_SETTING)
    if bad is not None:
        return bad
    if agent_secret is not None:
        return StartupVerdict("ok", "signed calls required on /run")
    if is_loopback(host):
        return StartupVerdict(
            "open",
            f"agent /run accepts UNSIGNED calls: {AGENT_SECRET_SETTING}"
            f" is not set (bound to {host}, loopback only)",
        )
    return StartupVerdict(
        "refuse",
        f"refusing to start: bound to {host} ({AGENT_HOST_SETTING}, "
        f"beyond loopback) and {AGENT_SECRET_SETTING} is not set",
    )
