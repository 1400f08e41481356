"""``conclave agent serve`` and ``conclave agents start|stop|health|check``.

``agent serve NAME`` runs one agent's HTTP service in the foreground (uvicorn, the port from
``CONCLAVE_AGENTS__PORTS`` unless ``--port``). ``agents start`` runs the nine in the
background, records them and waits for their health; ``agents stop`` stops exactly the
recorded processes; ``agents health`` prints a table; ``agents check URL`` runs the
agent contract (`conclave.services.agent_contract`) against any service, in any language.
Each exits non-zero when any agent failed, is down or breaks the contract. Registered on
the root app by `conclave.cli`.
"""

from __future__ import annotations

import logging
from typing import Annotated, NoReturn

import typer
from rich.table import Table

from conclave.cli.common import CliState, fail

agent_cli = typer.Typer(help="One agent as an HTTP service.", no_args_is_help=True)
agents_cli = typer.Typer(
    help="The nine agent services as background processes.", no_args_is_help=True
)

ONLY_HELP = "Only this agent; repeat for more (default: all nine)."


def _unknown(state: CliState, name: str) -> NoReturn:
    """Exit 2 naming the nearest agent and listing the nine."""
    from conclave.agents import REGISTRY
    from conclave.services.agent_app import unknown_agent_message

    fail(state.err, unknown_agent_message(name, REGISTRY), 2)


def _check_names(state: CliState, names: list[str] | None) -> list[str] | None:
    # one INFO line per health probe from the HTTP client would drown the table
    logging.getLogger("httpx2").setLevel(logging.WARNING)
    if names:
        from conclave.agents import REGISTRY

        for name in names:
            if name not in REGISTRY:
                _unknown(state, name)
    return names or None


def _refuse_unsafe(state: CliState, host: str) -> None:
    """Exit 2 naming the setting when agents may not listen on ``host`` as configured."""
    from conclave.security.startup import check_agent_startup

    verdict = check_agent_startup(host=host, agent_secret=state.settings.agents.secret)
    if verdict.level == "refuse":
        fail(state.err, verdict.message, 2)


@agent_cli.command("serve")
def serve(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The agent, e.g. market-structure.")],
    port: Annotated[int | None, typer.Option("--port", help="Port (default: its own).")] = None,
    host: Annotated[str | None, typer.Option("--host", help="Interface to bind.")] = None,
) -> None:
    """Serve one agent: GET /health, GET /info, POST /run."""
    from conclave.agents import REGISTRY
    from conclave.services.agent_main import exec_lean

    state: CliState = ctx.obj
    settings = state.settings
    if name not in REGISTRY:
        _unknown(state, name)
    if port is not None and not 0 < port < 65536:
        fail(state.err, f"--port: must be 1 to 65535, got {port}", 2)
    _refuse_unsafe(state, host or settings.agents.host)
    # the same app from the lean entry, in this process's place: it does not carry the whole
    # command line's modules (121 MB resident instead of 84 MB, against a 120 MB budget)
    exec_lean(name, port=port or settings.agent_port(name, REGISTRY),
              host=host or settings.agents.host, env_file=state.env_file)  # fmt: skip


@agents_cli.command("start")
def start(
    ctx: typer.Context,
    only: Annotated[list[str] | None, typer.Option("--only", help=ONLY_HELP)] = None,
) -> None:
    """Start the agent services in the background and wait until each is healthy."""
    from conclave.services.procs import pidfile_path, start_agents

    state: CliState = ctx.obj
    names = _check_names(state, only)
    _refuse_unsafe(state, state.settings.agents.host)
    results = start_agents(state.settings, names)
    table = Table(title="agent services")
    for col in ("agent", "url", "status", "pid", "detail"):
        table.add_column(col, overflow="fold")
    for r in results:
        colour = "red" if r.status == "failed" else "green"
        table.add_row(r.name, r.url, f"[{colour}]{r.status}[/]", str(r.pid or "-"), r.error)
    state.out.print(table)
    state.out.print(f"recorded in {pidfile_path(state.settings)}; logs in "
                    f"{state.settings.logs_dir}/<agent>.log")  # fmt: skip
    failed = [r.name for r in results if r.status == "failed"]
    if failed:
        fail(state.err, f"failed to start: {', '.join(failed)}", 1)


@agents_cli.command("stop")
def stop(
    ctx: typer.Context,
    only: Annotated[list[str] | None, typer.Option("--only", help=ONLY_HELP)] = None,
) -> None:
    """Stop exactly the recorded services: SIGTERM, then SIGKILL after the stop timeout."""
    from conclave.services.procs import stop_recorded

    state: CliState = ctx.obj
    results = stop_recorded(state.settings, _check_names(state, only))
    if not results:
        state.out.print("no recorded agent services")
        return
    for r in results:
        state.out.print(f"{r.name:<20} pid {r.pid:<8} {r.outcome}")
    stuck = [r.name for r in results if r.outcome == "survived"]
    if stuck:
        fail(state.err, f"still running after SIGKILL: {', '.join(stuck)}", 1)


@agents_cli.command("health")
def health(
    ctx: typer.Context,
    only: Annotated[list[str] | None, typer.Option("--only", help=ONLY_HELP)] = None,
) -> None:
    """Print each service's health; exit 1 when any is down."""
    from conclave.services.procs import health_table

    state: CliState = ctx.obj
    rows = health_table(state.settings, _check_names(state, only))
    table = Table(title="agent services")
    for col in ("agent", "url", "status", "latency ms", "pid", "detail"):
        right = col in ("latency ms", "pid")
        table.add_column(col, justify="right" if right else "left", no_wrap=col != "detail")
    for r in rows:
        status = "[green]ok[/]" if r.status == "ok" else "[red]down[/]"
        latency = "-" if r.latency_ms is None else f"{r.latency_ms:.1f}"
        table.add_row(r.name, r.url, status, latency, str(r.pid or "-"), r.error)
    state.out.print(table)
    down = [r.name for r in rows if r.status != "ok"]
    if down:
        fail(state.err, f"down: {', '.join(down)}", 1)


@agents_cli.command("check")
def check(
    ctx: typer.Context,
    url: Annotated[str, typer.Argument(help="The agent service, e.g. http://127.0.0.1:5003.")],
    symbol: Annotated[str, typer.Option("--symbol", help="Symbol of the test runs.")] = "BTCUSDT",
    timeframe: Annotated[str, typer.Option("--timeframe", help="Their timeframe.")] = "1h",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Check a running agent service, in any language, against the agent contract.

    Calls are signed with CONCLAVE_AGENTS__SECRET when it is set (and unsigned calls must
    then be refused); exit 0 when every check passes, 1 when one fails.
    """
    import json
    from urllib.parse import urlsplit

    from conclave.cli.common import run_or_fail
    from conclave.services.agent_contract import check_agent

    state: CliState = ctx.obj
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        fail(state.err, f"URL: expected http(s)://host:port, got {url!r}", 2)
    settings = state.settings
    checks = run_or_fail(state, check_agent(
        url, settings, secret=settings.agents.secret, symbol=symbol, timeframe=timeframe,
        now_ms=state.now_ms))  # fmt: skip
    failed = [c.name for c in checks if c.outcome == "fail"]
    if as_json:
        rows = [{"check": c.name, "outcome": c.outcome, "detail": c.detail} for c in checks]
        typer.echo(json.dumps({"url": url, "passed": not failed, "checks": rows}))
    else:
        table = Table(title=f"agent contract: {url}")
        for col in ("check", "result", "detail"):
            table.add_column(col, overflow="fold", no_wrap=col != "detail")
        colour = {"pass": "green", "fail": "red", "skip": "yellow"}
        for c in checks:
            table.add_row(c.name, f"[{colour[c.outcome]}]{c.outcome}[/]", c.detail)
        state.out.print(table)
    if failed:
        fail(state.err, f"failed: {', '.join(failed)}", 1)
