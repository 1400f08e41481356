"""A lean entry point for one agent service, used by ``conclave agents start`` and
``conclave agent serve``.

``python -m conclave.services.agent_main NAME --port P --host H [--env-file F]`` imports only
the agent app, not the whole ``conclave`` command line (its accounts, scheduler, store,
backtest and API modules), so an agent process stays small: about 84 MB resident, against
121 MB when served from the process that had imported the whole command line. ``conclave
agent serve`` checks its arguments and then replaces itself with this entry (`exec_lean`).
The agents are those of `conclave.agents.REGISTRY`, read here, at the edge, and so are the
``OTEL_*`` variables (`conclave.observability.tracing`; service ``conclave-agent-<name>``).
Before it listens it runs the start-up check (`conclave.security.startup`): beyond loopback
without ``CONCLAVE_AGENTS__SECRET``, or with a weak one, it exits 2 naming the setting; on
loopback without it, it serves unsigned calls and logs ``agent_unsigned``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from conclave.errors import ConfigurationError
from conclave.settings import Settings, load_settings

if TYPE_CHECKING:
    from conclave.agents.registry import Registry


def serve(
    name: str,
    settings: Settings,
    *,
    registry: Registry,
    port: int,
    host: str,
    now_ms: Callable[[], int],
) -> None:
    """Serve agent ``name`` of ``registry`` with uvicorn until it is told to stop."""
    import uvicorn

    from conclave.services.agent_app import create_agent_app
    from conclave.services.http_server import server_options

    uvicorn.run(
        create_agent_app(name, settings, registry=registry, now_ms=now_ms),
        host=host,
        port=port,
        log_level=settings.log_level.lower(),
        log_config=None,  # uvicorn's records go through `configure_logging`'s handler
        access_log=False,
        server_header=False,
        proxy_headers=False,  # no X-Forwarded-* to read: the caller is the orchestrator
        timeout_keep_alive=30,  # above the client's pooled keep-alive (15 s)
        timeout_graceful_shutdown=5,
        **server_options(settings.agents.body_timeout_s),  # a bounded, timed request head
    )


def exec_lean(name: str, *, port: int, host: str, env_file: Path) -> None:
    """Replace this process with the lean entry serving ``name`` (same pid; never returns)."""
    sys.stdout.flush()
    sys.stderr.flush()
    argv = [sys.executable, "-m", "conclave.services.agent_main", name, "--port", str(port),
            "--host", host, "--env-file", str(env_file)]  # fmt: skip
    os.execv(sys.executable, argv)


def main(argv: list[str] | None = None) -> int:
    """Parse ``NAME [--port P] [--host H] [--env-file F]``, read the settings, serve; 2 on
    bad input."""
    parser = argparse.ArgumentParser(prog="python -m conclave.services.agent_main")
    parser.add_argument("name", help="the agent, e.g. market-structure")
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--host", default=None)
    parser.add_argument("--env-file", default=".env")
    args = parser.parse_args(argv)
    from conclave.agents import REGISTRY  # the agents' modules: after the arguments parse

    try:
        settings = load_settings(args.env_file, registry=REGISTRY)
    except ConfigurationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.name not in REGISTRY:
        print(f"error: unknown agent {args.name!r}: one of {', '.join(REGISTRY)}", file=sys.stderr)
        return 2
    port = args.port or settings.agent_port(args.name, REGISTRY)
    if not 0 < port < 65536:
        print(f"error: --port must be 1 to 65535, got {port}", file=sys.stderr)
        return 2
    from conclave.logging import configure_logging
    from conclave.observability import tracing
    from conclave.security.startup import check_agent_startup

    host = args.host or settings.agents.host
    # safe by default (E10): beyond loopback only with CONCLAVE_AGENTS__SECRET, never a weak one
    verdict = check_agent_startup(host=host, agent_secret=settings.agents.secret)
    if verdict.level == "refuse":
        print(f"error: {verdict.message}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_json)
    if verdict.open:
        import structlog

        structlog.get_logger(__name__).warning("agent_unsigned", message=verdict.message)
    try:  # OTEL_* read here, at the edge; off unless they ask for an exporter
        traces = tracing.tracing_config(
            os.environ, service_name=tracing.AGENT_SERVICE.format(args.name)
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with tracing.tracing_session(traces):  # flushes queued spans when uvicorn returns
        serve(
            args.name,
            settings,
            registry=REGISTRY,
            port=port,
            host=host,
            now_ms=lambda: int(time.time() * 1000),
        )  # the clock is read here, at the edge
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
