"""Safe by default (E10): open on loopback without keys, refuse elsewhere or with weak secrets."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from conclave.errors import ConfigurationError
from conclave.security.startup import check_agent_startup, check_api_startup, is_loopback

GOOD = SecretStr("a-proper-random-secret-of-forty-characters")


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.8.9.10", True), ("::1", True), ("[::1]", True),
     ("localhost", True), ("LOCALHOST", True), ("0.0.0.0", False), ("::", False),
     ("10.0.0.5", False), ("api.example.com", False), ("", False)],
)  # fmt: skip
def test_only_loopback_addresses_count_as_local(host: str, loopback: bool) -> None:
    """0.0.0.0, :: and names other than localhost are reachable from elsewhere."""
    assert is_loopback(host) is loopback


def test_loopback_without_keys_stays_open_and_says_so() -> None:
    """127.0.0.1, no key, no secret: open, with a message naming the host setting."""
    verdict = check_api_startup(host="127.0.0.1", active_keys=0, key_secret=None)
    assert verdict.open
    assert verdict.level == "open"
    assert "OPEN" in verdict.message
    assert "CONCLAVE_API__HOST" in verdict.message
    assert verdict.raise_if_refused() is verdict


@pytest.mark.parametrize(
    ("kwargs", "setting"),
    [
        ({"host": "0.0.0.0", "active_keys": 0, "key_secret": GOOD}, "CONCLAVE_API__HOST"),
        ({"host": "0.0.0.0", "active_keys": 3, "key_secret": None},
         "CONCLAVE_SECURITY__KEY_SECRET"),
        ({"host": "10.1.2.3", "active_keys": 1, "key_secret": SecretStr("")},
         "CONCLAVE_SECURITY__KEY_SECRET"),
        ({"host": "127.0.0.1", "active_keys": 0, "key_secret": SecretStr("changeme")},
         "CONCLAVE_SECURITY__KEY_SECRET"),
        ({"host": "127.0.0.1", "active_keys": 2, "key_secret": SecretStr("short")},
         "CONCLAVE_SECURITY__KEY_SECRET"),
        ({"host": "127.0.0.1", "active_keys": 2, "key_secret": None},
         "CONCLAVE_SECURITY__KEY_SECRET"),
        ({"host": "127.0.0.1", "active_keys": 1, "key_secret": GOOD,
          "agent_secret": SecretStr("default")}, "CONCLAVE_AGENTS__SECRET"),
        ({"host": "127.0.0.1", "active_keys": 1, "key_secret": GOOD,
          "agent_urls": ["http://127.0.0.1:5001", "http://agents.internal:5002"]},
         "CONCLAVE_AGENTS__SECRET"),
    ],
)  # fmt: skip
def test_exposed_or_weakly_secured_apis_refuse_naming_the_setting(
    kwargs: dict[str, object], setting: str
) -> None:
    """No key beyond loopback, or a default, empty or short secret: refuse, naming it."""
    verdict = check_api_startup(**kwargs)  # type: ignore[arg-type]
    assert verdict.level == "refuse"
    assert setting in verdict.message
    with pytest.raises(ConfigurationError, match=setting):
        verdict.raise_if_refused()
    for value in ("changeme", "short", "default"):
        assert f"={value}" not in verdict.message


def test_a_locked_api_is_ok_anywhere() -> None:
    """Keys and a proper secret: ok on loopback and beyond, with signed remote agents."""
    for host in ("127.0.0.1", "0.0.0.0"):
        verdict = check_api_startup(
            host=host, active_keys=2, key_secret=GOOD, agent_secret=GOOD,
            agent_urls=["http://10.0.0.9:5001"],
        )  # fmt: skip
        assert verdict.level == "ok"
        assert not verdict.open


@pytest.mark.parametrize(
    ("host", "secret", "level"),
    [("127.0.0.1", None, "open"), ("0.0.0.0", None, "refuse"), ("0.0.0.0", GOOD, "ok"),
     ("127.0.0.1", GOOD, "ok"), ("127.0.0.1", SecretStr(""), "refuse"),
     ("0.0.0.0", SecretStr("x" * 40), "refuse")],
)  # fmt: skip
def test_agent_services_need_the_secret_beyond_loopback(
    host: str, secret: SecretStr | None, level: str
) -> None:
    """An agent beyond loopback without CONCLAVE_AGENTS__SECRET, or with a weak one, refuses."""
    verdict = check_agent_startup(host=host, agent_secret=secret)
    assert verdict.level == level
    if level != "ok":
        assert "CONCLAVE_AGENTS__SECRET" in verdict.message
