"""Settings, read once at the edge (CLI, app factory) and passed down; nothing else reads env.

Sources, highest first: keyword arguments, environment variables, the ``.env`` file, the
defaults below. Everything lives under the ``CONCLAVE_`` prefix with ``__`` for nesting
(``CONCLAVE_MARKET__BINANCE__BASE_URL``), except the seed's names, which are honoured as
they are: ``USE_HTTP_AGENTS``, ``AGENT_SERVICES_BASE_URL``, ``REDIS_URL``, ``DATABASE_URL``.

An unknown ``CONCLAVE_*`` name or an invalid value stops start-up with a
`ConfigurationError` naming the variable (and the nearest known name for a typo). The
sections (market, agents, API, ...) live in `conclave.settings.sections`.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any, Literal

from dotenv import dotenv_values
from pydantic import (
    AliasChoices,
    BaseModel,
    Field,
    ValidationError,
    field_validator,
)
from pydantic_settings import (
    BaseSettings,
    DotEnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from conclave.errors import ConfigurationError
from conclave.settings.sections import (
    SYMBOL_PATTERN,
    AgentCatalog,
    AgentServiceSettings,
    ApiSettings,
    BinanceSettings,
    BreakerSettings,
    CacheSettings,
    DashboardSettings,
    MarketSettings,
    MetricsSettings,
    NewsSettings,
    PipelineSettings,
    ScheduledJobSettings,
    SchedulerSettings,
    SecuritySettings,
)

PREFIX = "CONCLAVE_"
_SEED_NAMES = {
    "use_http_agents": "USE_HTTP_AGENTS",
    "agent_services_base_url": "AGENT_SERVICES_BASE_URL",
    "redis_url": "REDIS_URL",
    "database_url": "DATABASE_URL",
}


class _OwnNamesDotEnv(DotEnvSettingsSource):
    """The ``.env`` file without the names other programs read from it: one ``.env`` serves
    docker compose too (``POSTGRES_PASSWORD``), and those names are not ours to refuse.
    Unknown ``CONCLAVE_*`` names are still refused (`check_unknown_names`)."""

    def __call__(self) -> dict[str, Any]:
        ours = {name.lower() for name in _field_names(self.settings_cls)}
        return {k: v for k, v in super().__call__().items()
                if k.lower() in ours or k.lower().startswith(PREFIX.lower())}  # fmt: skip


def _field_names(cls: type[BaseSettings]) -> set[str]:
    """Each field's name and every alias it is read under."""
    names: set[str] = set()
    for name, info in cls.model_fields.items():
        names.add(name)
        alias = info.validation_alias
        if isinstance(alias, str):
            names.add(alias)
        elif isinstance(alias, AliasChoices):
            names.update(c for c in alias.choices if isinstance(c, str))
    return names


class Settings(BaseSettings):
    """Everything configurable about Conclave; see the README for each name."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """The usual sources, the ``.env`` file read through `_OwnNamesDotEnv`."""
        assert isinstance(dotenv_settings, DotEnvSettingsSource)
        dotenv = _OwnNamesDotEnv(
            settings_cls,
            env_file=dotenv_settings.env_file,
            env_file_encoding=dotenv_settings.env_file_encoding,
        )
        return init_settings, env_settings, dotenv, file_secret_settings

    model_config = SettingsConfigDict(
        env_prefix=PREFIX,
        env_nested_delimiter="__",
        env_file=".env",
        extra="forbid",
        frozen=True,
        populate_by_name=True,
    )

    use_http_agents: bool = Field(
        False, validation_alias=AliasChoices("USE_HTTP_AGENTS", "CONCLAVE_USE_HTTP_AGENTS")
    )
    agent_services_base_url: str = Field(
        "http://127.0.0.1",
        validation_alias=AliasChoices(
            "AGENT_SERVICES_BASE_URL", "CONCLAVE_AGENT_SERVICES_BASE_URL"
        ),
    )
    redis_url: str | None = Field(
        None, validation_alias=AliasChoices("REDIS_URL", "CONCLAVE_REDIS_URL")
    )
    database_url: str | None = Field(
        None, validation_alias=AliasChoices("DATABASE_URL", "CONCLAVE_DATABASE_URL")
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_json: bool = False
    data_dir: Path = Path("data")
    logs_dir: Path = Path("logs")
    market: MarketSettings = MarketSettings()
    news: NewsSettings = NewsSettings()
    agents: AgentServiceSettings = AgentServiceSettings()
    api: ApiSettings = ApiSettings()
    metrics: MetricsSettings = MetricsSettings()
    pipeline: PipelineSettings = PipelineSettings()
    scheduler: SchedulerSettings = SchedulerSettings()
    security: SecuritySettings = SecuritySettings()
    dashboard: DashboardSettings = DashboardSettings()

    def agent_port(self, name: str, agents: AgentCatalog) -> int:
        """The port of agent ``name``'s service: its override, else its default in ``agents``."""
        port = self.agents.ports.get(name)
        return port if port is not None else agents.ports[name]

    def agent_url(self, name: str, agents: AgentCatalog) -> str:
        """The URL of agent ``name``'s service: its override, else base URL plus its port."""
        if name in self.agents.urls:
            return self.agents.urls[name].rstrip("/")
        return f"{self.agent_services_base_url.rstrip('/')}:{self.agent_port(name, agents)}"

    def agent_uses_http(self, name: str, request_override: bool | None = None) -> bool:
        """Whether agent ``name`` is called over HTTP: request, then per-agent, then global."""
        if request_override is not None:
            return request_override
        return self.agents.http.get(name, self.use_http_agents)

    @field_validator("redis_url", "database_url", mode="before")
    @classmethod
    def _blank_is_none(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value


def _env_name(loc: tuple[str | int, ...]) -> str:
    head = str(loc[0]) if loc else ""
    if head in _SEED_NAMES.values():
        return head
    if head.upper().startswith(PREFIX):
        head = head[len(PREFIX) :]
    if head.lower() in _SEED_NAMES and len(loc) == 1:
        return _SEED_NAMES[head.lower()]
    return PREFIX + "__".join(str(p).upper() for p in (head, *loc[1:]))


def _known_paths(model: type[BaseModel], prefix: str = "") -> set[str]:
    out: set[str] = set()
    for name, info in model.model_fields.items():
        path = f"{prefix}{name.upper()}"
        out.add(path)
        ann = info.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out |= _known_paths(ann, path + "__")
    return out


def check_unknown_names(names: list[str]) -> None:
    """Raise `ConfigurationError` for any ``CONCLAVE_*`` name that is not a setting."""
    known = _known_paths(Settings)
    for raw in names:
        if not raw.upper().startswith(PREFIX):
            continue
        path = raw.upper()[len(PREFIX) :]
        if path in known or any(k.startswith(path + "__") for k in known):
            continue
        near = difflib.get_close_matches(path, sorted(known), n=1, cutoff=0.6)
        hint = f"; did you mean {PREFIX}{near[0]}?" if near else ""
        raise ConfigurationError(f"unknown setting {raw}{hint}")


def check_agent_settings(settings: Settings, agents: AgentCatalog) -> Settings:
    """Answer ``settings`` when every agent it names is one of ``agents``; else raise
    `ConfigurationError` naming the setting and each unknown name (and the nearest known one).
    """
    known = list(agents.ports)
    problems = []
    for field in ("ports", "urls", "http"):
        unknown = [k for k in getattr(settings.agents, field) if k not in agents.ports]
        if not unknown:
            continue
        near = {k: difflib.get_close_matches(k, known, n=1) for k in unknown}
        hints = [f"{k} (did you mean {v[0]}?)" if v else k for k, v in near.items()]
        problems.append(f"{PREFIX}AGENTS__{field.upper()}: unknown agent(s): {', '.join(hints)}")
    if problems:
        raise ConfigurationError("invalid setting(s): " + "; ".join(problems))
    return settings


def load_settings(
    env_file: str | Path | None = ".env", *, registry: AgentCatalog | None = None, **overrides: Any
) -> Settings:
    """Read settings once; raise `ConfigurationError` naming any unknown or invalid one.

    This is the one place that reads the process environment. With ``registry`` (the
    agents, e.g. `conclave.agents.REGISTRY`) the agent names in the settings are checked
    against it too (`check_agent_settings`); the app factories check them in any case.
    """
    file_values: dict[str, str | None] = {}
    if env_file is not None and Path(env_file).is_file():
        file_values = dict(dotenv_values(env_file))
    check_unknown_names([*os.environ, *file_values])
    try:
        settings = Settings(_env_file=env_file, **overrides)
    except ValidationError as exc:
        problems = [f"{_env_name(tuple(e['loc']))}: {e['msg']}" for e in exc.errors()]
        raise ConfigurationError("invalid setting(s): " + "; ".join(problems)) from None
    return settings if registry is None else check_agent_settings(settings, registry)


__all__ = [
    "PREFIX",
    "SYMBOL_PATTERN",
    "AgentCatalog",
    "AgentServiceSettings",
    "ApiSettings",
    "BinanceSettings",
    "BreakerSettings",
    "CacheSettings",
    "DashboardSettings",
    "MarketSettings",
    "MetricsSettings",
    "NewsSettings",
    "PipelineSettings",
    "ScheduledJobSettings",
    "SchedulerSettings",
    "SecuritySettings",
    "Settings",
    "check_agent_settings",
    "check_unknown_names",
    "load_settings",
]
