"""``conclave dashboard``: the dashboard on port 3001 at ``/dashboard`` (issue 14).

It reads everything from the orchestrator's API at ``CONCLAVE_DASHBOARD__API_URL``
(``--api-url``), so it runs beside a local orchestrator or against a remote deployment; it
holds no data and opens no database. ``conclave up`` and ``conclave demo`` start it as a
child process (`conclave.dashboard.server.start_process`). Registered on the root app by
`conclave.cli`.
"""

from __future__ import annotations

from typing import Annotated

import typer

from conclave.cli.common import CliState, fail


def dashboard(
    ctx: typer.Context,
    host: Annotated[
        str | None, typer.Option("--host", help="Default: CONCLAVE_DASHBOARD__HOST.")
    ] = None,
    port: Annotated[
        int | None, typer.Option("--port", help="Default: CONCLAVE_DASHBOARD__PORT (3001).")
    ] = None,
    api_url: Annotated[
        str | None,
        typer.Option("--api-url", help="The orchestrator; default CONCLAVE_DASHBOARD__API_URL."),
    ] = None,
) -> None:
    """Serve the dashboard (market, runs, agents, accounts, backtests) over the API."""
    from conclave.dashboard.server import public_url, serve

    state: CliState = ctx.obj
    conf = state.settings.dashboard
    if api_url is not None and not api_url.startswith(("http://", "https://")):
        fail(state.err, f"--api-url must start with http:// or https://, got {api_url!r}", 2)
    updates = {
        k: v for k, v in (("host", host), ("port", port), ("api_url", api_url)) if v is not None
    }
    settings = state.settings.model_copy(update={"dashboard": conf.model_copy(update=updates)})
    d = settings.dashboard
    state.out.print(
        f"dashboard at {public_url(d.host, d.port)} reading {d.api_url}",
        highlight=False,
        soft_wrap=True,
    )
    try:
        serve(settings, d.host, d.port)
    except SystemExit:  # uvicorn exits when it cannot bind
        fail(state.err, f"the dashboard could not start on {d.host}:{d.port} (in use?)", 1)
