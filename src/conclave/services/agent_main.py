"""A lean entry point for one agent service, used by ``conclave agents start``.

``python -m conclave.services.agent_main NAME --port P --host H`` imports only the agent app,
not the whole ``conclave`` command line (its accounts, scheduler, store and API modules), so
an agent process stays small: about 80 MB resident against 114 MB through ``python -m
conclave agent serve``. Both serve the same app with the same uvicorn options (`serve`).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

from conclave.errors import ConfigurationError
from conclave.settings import AGENT_NAMES, Settings, load_settings


def serve(
    name: str, settings: Settings, *, port: int, host: str, now_ms: Callable[[], int]
) -> None:
    """Serve agent ``name`` with uvicorn until it is told to stop."""
    import uvicorn

    from conclave.services.agent_app import create_agent_app

    uvicorn.run(
        create_agent_app(name, settings, now_ms=now_ms),
        host=host,
        port=port,
        log_level=settings.log_level.lower(),
        access_log=False,
        server_header=False,
        timeout_keep_alive=30,  # above the client's pooled keep-alive (15 s)
        timeout_graceful_shutdown=5,
    )


def main(argv: list[str] | None = None) -> int:
    """Parse ``NAME [--port P] [--host H]``, read the settings, serve; 2 on bad input."""
    parser = argparse.ArgumentParser(prog="python -m conclave.services.agent_main")
    parser.add_argument("name", help="the agent, e.g. market-structure")
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--host", default=None)
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
    except ConfigurationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.name not in AGENT_NAMES:
        print(
            f"error: unknown agent {args.name!r}: one of {', '.join(AGENT_NAMES)}", file=sys.stderr
        )
        return 2
    port = args.port or settings.agents.ports[args.name]
    if not 0 < port < 65536:
        print(f"error: --port must be 1 to 65535, got {port}", file=sys.stderr)
        return 2
    from conclave.logging import configure_logging

    configure_logging(settings.log_level, settings.log_json)
    serve(
        args.name,
        settings,
        port=port,
        host=args.host or settings.agents.host,
        now_ms=lambda: int(time.time() * 1000),
    )  # the clock is read here, at the edge
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
