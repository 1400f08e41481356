"""Settings: the seed's names, the CONCLAVE_ prefix with __ nesting, .env, loud failures."""

from __future__ import annotations

from pathlib import Path

import pytest

from conclave.agents import REGISTRY
from conclave.errors import ConfigurationError
from conclave.settings import load_settings

SEED_AND_OURS = (
    "USE_HTTP_AGENTS", "AGENT_SERVICES_BASE_URL", "REDIS_URL", "DATABASE_URL",
)  # fmt: skip


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("CONCLAVE_") or name in SEED_AND_OURS:
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def test_defaults_are_the_embedded_ones() -> None:
    """With nothing set: in-process agents, no Redis, no database URL, the sim market."""
    s = load_settings()
    assert s.use_http_agents is False
    assert s.redis_url is None
    assert s.database_url is None
    assert s.market.source == "sim"
    assert s.market.binance.weight_budget == 4800


def test_seed_names_are_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    """USE_HTTP_AGENTS, AGENT_SERVICES_BASE_URL, REDIS_URL, DATABASE_URL work unprefixed."""
    monkeypatch.setenv("USE_HTTP_AGENTS", "true")
    monkeypatch.setenv("AGENT_SERVICES_BASE_URL", "http://agents.local")
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:6379/3")
    monkeypatch.setenv("DATABASE_URL", "postgresql+asyncpg://u@h/db")
    s = load_settings()
    assert s.use_http_agents is True
    assert s.agent_services_base_url == "http://agents.local"
    assert s.redis_url == "redis://127.0.0.1:6379/3"
    assert s.database_url == "postgresql+asyncpg://u@h/db"


def test_prefix_and_nesting(monkeypatch: pytest.MonkeyPatch) -> None:
    """CONCLAVE_MARKET__BINANCE__BASE_URL reaches the nested setting."""
    monkeypatch.setenv("CONCLAVE_MARKET__BINANCE__BASE_URL", "http://127.0.0.1:9999")
    monkeypatch.setenv("CONCLAVE_MARKET__CACHE__TTL_S", "12.5")
    s = load_settings()
    assert s.market.binance.base_url == "http://127.0.0.1:9999"
    assert s.market.cache.ttl_s == 12.5


def test_dotenv_file_is_read(tmp_path: Path) -> None:
    """A .env file in the working directory is read; the environment wins over it."""
    (tmp_path / ".env").write_text("CONCLAVE_LOG_LEVEL=DEBUG\nREDIS_URL=redis://127.0.0.1:1/0\n")
    s = load_settings()
    assert s.log_level == "DEBUG"
    assert s.redis_url == "redis://127.0.0.1:1/0"


def test_unknown_setting_stops_with_its_name_and_a_suggestion(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A typo in a CONCLAVE_ name fails loudly and suggests the nearest real name."""
    monkeypatch.setenv("CONCLAVE_MARKET__BINANCE__BASEURL", "http://x")
    with pytest.raises(ConfigurationError) as err:
        load_settings()
    assert "CONCLAVE_MARKET__BINANCE__BASEURL" in str(err.value)
    assert "did you mean CONCLAVE_MARKET__BINANCE__BASE_URL" in str(err.value)


def test_a_dotenv_shared_with_docker_compose_is_read(tmp_path: Path) -> None:
    """One .env serves compose too: names other programs read (``POSTGRES_PASSWORD``) are
    left to them, ours are read, and the unprefixed aliases (DATABASE_URL) still count."""
    (tmp_path / ".env").write_text(
        "POSTGRES_PASSWORD=pw\nCOMPOSE_PROJECT_NAME=conclave\nCONCLAVE_API__PORT=4100\n"
        "DATABASE_URL=postgresql+asyncpg://postgres@127.0.0.1:5432/test\n"
    )
    s = load_settings()
    assert s.api.port == 4100
    assert s.database_url == "postgresql+asyncpg://postgres@127.0.0.1:5432/test"


def test_unknown_setting_in_dotenv_stops(tmp_path: Path) -> None:
    """Unknown names in .env are caught as well."""
    (tmp_path / ".env").write_text("CONCLAVE_SOURCE=binance\n")
    with pytest.raises(ConfigurationError, match="CONCLAVE_SOURCE"):
        load_settings()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("CONCLAVE_MARKET__BINANCE__READ_TIMEOUT_S", "abc"),
        ("CONCLAVE_MARKET__BINANCE__BUDGET_SHARE", "1.5"),
        ("USE_HTTP_AGENTS", "maybe"),
        ("REDIS_URL", "http://not-redis"),
        ("CONCLAVE_LOG_LEVEL", "LOUD"),
        ("CONCLAVE_MARKET__TIMEFRAMES", '["1H"]'),
        ("CONCLAVE_MARKET__SYMBOLS", '["btcusdt"]'),
    ],
)
def test_invalid_value_stops_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    """An invalid value fails at start-up with the variable's name in the message."""
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError) as err:
        load_settings()
    assert name in str(err.value)


def test_settings_are_frozen() -> None:
    """Settings are read once and cannot be changed afterwards."""
    s = load_settings()
    with pytest.raises(ValueError, match="frozen"):
        s.use_http_agents = True  # type: ignore[misc]


def test_agent_ports_follow_the_registry_order() -> None:
    """Ports 5001 to 5009 in the architecture table's order, the registry's order."""
    s = load_settings(registry=REGISTRY)
    assert list(REGISTRY.ports) == list(REGISTRY)
    assert [s.agent_port(n, REGISTRY) for n in REGISTRY] == list(range(5001, 5010))
    assert s.agent_url("momentum", REGISTRY) == "http://127.0.0.1:5003"
    assert s.api.port == 4000


def test_agent_urls_and_modes_per_agent(monkeypatch: pytest.MonkeyPatch) -> None:
    """A per-agent URL overrides base+port; per-agent mode overrides USE_HTTP_AGENTS; a
    request's useHttpAgents overrides both."""
    monkeypatch.setenv("AGENT_SERVICES_BASE_URL", "http://agents.internal")
    monkeypatch.setenv("CONCLAVE_AGENTS__URLS", '{"risk-manager": "http://risk:9000/"}')
    monkeypatch.setenv("CONCLAVE_AGENTS__HTTP", '{"momentum": true}')
    monkeypatch.setenv("CONCLAVE_AGENTS__PORTS", '{"order-flow": 6002}')
    s = load_settings(registry=REGISTRY)
    assert s.agent_port("order-flow", REGISTRY) == 6002
    assert s.agent_port("momentum", REGISTRY) == 5003
    assert s.agent_url("risk-manager", REGISTRY) == "http://risk:9000"
    assert s.agent_url("order-flow", REGISTRY) == "http://agents.internal:6002"
    assert s.agent_uses_http("momentum") is True
    assert s.agent_uses_http("order-flow") is False
    assert s.agent_uses_http("momentum", request_override=False) is False


def test_unknown_agent_name_in_a_map_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """A typo in an agent name fails at start-up with a suggestion."""
    monkeypatch.setenv("CONCLAVE_AGENTS__PORTS", '{"momentun": 5003}')
    with pytest.raises(ConfigurationError, match="did you mean momentum"):
        load_settings(registry=REGISTRY)
