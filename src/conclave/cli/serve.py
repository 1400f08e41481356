"""``conclave serve``, ``conclave up`` and ``conclave demo``: the orchestrator as a server.

- ``serve`` runs the orchestrator API (port 4000 by default) in the foreground; agents run
  in process or over HTTP as the settings say.
- ``up`` is local microservice mode: it starts the nine agent services, the dashboard
  (port 3001, `conclave.dashboard.server`), then the orchestrator with
  ``USE_HTTP_AGENTS=true``, prints the URLs and waits; Ctrl-C (or SIGTERM) stops the
  orchestrator and exactly the processes it started.
- ``demo`` (what ``make run`` calls) serves in monolithic mode, asks itself for one run
  over real HTTP, prints the decision (labelled SIMULATED on sim data), starts the
  dashboard and prints the URLs to try, and keeps serving until Ctrl-C (``--once`` stops
  after the run and starts no dashboard, for tests).

All three first run the start-up check (`conclave.services.edge_auth.startup_verdict`,
RELIABILITY E10): bound beyond loopback with no active API key, or with an empty, default
or short secret, they exit 2 with one line naming the setting; on loopback with no key the
API serves OPEN and logs ``api_open``.

All three stop gracefully: uvicorn finishes in-flight requests for up to
`GRACEFUL_SHUTDOWN_S` seconds, then the app's lifespan closes the store and clients.
Traces (`conclave.observability.tracing`) follow the ``OTEL_*`` variables, read here; the
service is ``conclave-orchestrator`` and the spans still queued are exported on the way out.
Registered on the root app by `conclave.cli`.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import threading
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from conclave.cli.common import ApiHostOption, ApiPortOption, CliState, fail
from conclave.errors import ConclaveError

if TYPE_CHECKING:  # asyncio, uvicorn, the API and the agents load when a command runs
    import asyncio

    import uvicorn

    from conclave.dashboard.server import DashboardProcess
    from conclave.settings import Settings

#: Seconds uvicorn gives in-flight requests on shutdown (RELIABILITY.md: 5-10 s).
GRACEFUL_SHUTDOWN_S = 5
#: Seconds to wait for the orchestrator to bind and open its store.
START_TIMEOUT_S = 30.0


@functools.cache
def _server_class() -> type[uvicorn.Server]:
    """A uvicorn server that does not re-raise the signal that stopped it (defined here, on
    first use, so that only the commands that serve import uvicorn).

    uvicorn re-raises a captured SIGINT/SIGTERM after shutting down, which would kill the
    process before ``up`` stops its agents; here the caller decides what happens next.
    """
    import uvicorn

    class _Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Generator[None, None, None]:
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            stop = (signal.SIGINT, signal.SIGTERM)
            originals = {sig: signal.signal(sig, self.handle_exit) for sig in stop}
            try:
                yield
            finally:
                for sig, handler in originals.items():
                    signal.signal(sig, handler)

    return _Server


def _bound_port(server: uvicorn.Server) -> int | None:
    """The port ``server`` actually bound (useful with ``--port 0``), once started."""
    for listening in getattr(server, "servers", []):
        for sock in listening.sockets:
            return int(sock.getsockname()[1])
    return None


def _bound(settings: Settings, host: str) -> Settings:
    """``settings`` with the API host it is actually bound to (the start-up check reads it)."""
    return settings.model_copy(update={"api": settings.api.model_copy(update={"host": host})})


def _refuse_unsafe(state: CliState, settings: Settings) -> None:
    """Exit 2 naming the setting when the API may not start as configured (E10).

    The app's lifespan checks again; this runs first so a refusal is one clear line.
    """
    import asyncio

    from conclave.agents import REGISTRY
    from conclave.services.edge_auth import agent_urls, startup_verdict
    from conclave.services.runtime import open_store

    async def verdict() -> str | None:
        store = await open_store(settings)
        try:
            found = await startup_verdict(settings, store, agent_urls(settings, REGISTRY))
        finally:
            await store.aclose()
        return found.message if found.level == "refuse" else None

    try:
        refusal = asyncio.run(verdict())
    except ConclaveError as exc:
        fail(state.err, f"the orchestrator could not start: {exc}", 1)
    if refusal is not None:
        fail(state.err, refusal, 2)


def _server(settings: Settings, now_ms: Callable[[], int], host: str, port: int) -> uvicorn.Server:
    import uvicorn

    from conclave.services.api import create_app
    from conclave.services.http_server import server_options

    config = uvicorn.Config(
        create_app(_bound(settings, host), now_ms=now_ms),
        host=host,
        port=port,
        log_config=None,  # conclave.logging is configured at the edge already
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        lifespan="on",
        **server_options(settings.api.body_timeout_s),  # a bounded, timed request head
    )
    return _server_class()(config)


async def _started(server: uvicorn.Server, task: asyncio.Task[None]) -> int:
    """Wait until ``server`` listens; its port. Raises `RuntimeError` if it stopped instead."""
    import asyncio

    async with asyncio.timeout(START_TIMEOUT_S):
        while not server.started:
            if task.done() or server.should_exit:
                raise RuntimeError("the orchestrator stopped during start-up (see the log above)")
            await asyncio.sleep(0.05)
    port = _bound_port(server)
    if port is None:
        raise RuntimeError("the orchestrator is not listening")
    return port


def _urls(out: Console, host: str, port: int) -> None:
    base = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    out.print("\n[bold]Try:[/]")
    for path, what in (
        ("/docs", "OpenAPI, try every endpoint in the browser"),
        ("/pipeline/runs", "recorded runs, newest first"),
        ("/agents", "each agent's mode, URL and health"),
        ("/health", "the orchestrator and its dependencies"),
    ):
        out.print(f"  {base}{path:<16} {what}", highlight=False, soft_wrap=True)
    out.print(
        f"  curl -s -X POST {base}/pipeline/run -H 'Content-Type: application/json' "
        """-d '{"symbol":"BTCUSDT","timeframe":"1h"}'""",
        highlight=False,
        soft_wrap=True,
    )
    out.print("Ctrl-C stops it.\n")


@contextlib.contextmanager
def _tracing(state: CliState) -> Generator[None, None, None]:
    """The orchestrator's tracing from the ``OTEL_*`` variables (off unless they ask)."""
    from conclave.observability import tracing

    try:
        config = tracing.tracing_config(os.environ, service_name=tracing.ORCHESTRATOR_SERVICE)
    except ValueError as exc:
        fail(state.err, str(exc), 2)
    with tracing.tracing_session(config):
        yield


def _serve_blocking(state: CliState, settings: Settings, host: str, port: int) -> None:
    import asyncio

    server = _server(settings, state.now_ms, host, port)
    with _tracing(state):
        try:
            asyncio.run(server.serve())
        except SystemExit:  # uvicorn exits when it cannot bind or its start-up fails
            fail(state.err, f"the orchestrator could not start on {host}:{port} (see above)", 1)


def serve(
    ctx: typer.Context,
    host: ApiHostOption = None,
    port: ApiPortOption = None,
) -> None:
    """Run the orchestrator API (POST /pipeline/run, /docs) in the foreground."""
    state: CliState = ctx.obj
    s = state.settings
    bind_host = host or s.api.host
    _refuse_unsafe(state, _bound(s, bind_host))
    _serve_blocking(state, s, bind_host, s.api.port if port is None else port)


def _base(host: str, port: int) -> str:
    return f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"


def _start_dashboard(state: CliState, settings: Settings, api_url: str) -> DashboardProcess:
    """Start the dashboard (issue 14) as a child process reading ``api_url``; print its URL,
    or why it did not start (the orchestrator goes on without it)."""
    from conclave.dashboard.server import start_process

    log = settings.logs_dir / "dashboard.log"
    started = start_process(settings, api_url, log, env_file=state.env_file)
    if started.error is None:
        state.out.print(f"dashboard: {started.url}", highlight=False, soft_wrap=True)
    else:
        state.err.print(f"dashboard not started: {started.error}", highlight=False,
                        markup=False, soft_wrap=True)  # fmt: skip
    return started


DashboardOption = Annotated[
    bool, typer.Option("--dashboard/--no-dashboard", help="Start the dashboard (port 3001) too.")
]


# -- demo (make run) -----------------------------------------------------------------------


def summary_lines(run: dict[str, Any]) -> list[str]:
    """A few plain lines about a run's wire form: the decision first, SIMULATED when so."""
    d = run.get("decision", {})
    steps = run.get("steps", {})
    ok = sum(1 for s in steps.values() if s.get("meta", {}).get("status") == "ok")
    label = "SIMULATED " if run.get("simulated") else ""
    lines = [
        f"{label}decision: {d.get('action') or 'NO DECISION'} (status {d.get('status')},"
        f" strength {d.get('strength', 0.0):.2f}, tradable {'yes' if d.get('tradable') else 'no'})",
        f"reason: {d.get('reason')}",
        f"run {run.get('runId')}: {run.get('symbol')} {run.get('timeframe')} as of"
        f" {run.get('asOf')}, source {run.get('source')}, {ok}/{len(steps)} agents ok",
    ]
    if run.get("degraded"):
        missing = run.get("missingAgents", [])
        why = [f"missing {', '.join(missing)}"] if missing else []
        why += [f"gaps {tf} {g['missing']} of {g['bars']} bars missing ({g['missingPct']:.2f} %)"
                for tf, g in run.get("gaps", {}).items() if g.get("degraded")]  # fmt: skip
        lines.append(f"degraded: {'; '.join(why)}")
    if run.get("simulated"):
        lines.append("SIMULATED: data from the simulator, not a market; not a trading signal.")
    return lines


async def _demo(
    state: CliState,
    settings: Settings,
    host: str,
    port: int,
    symbol: str,
    tf: str,
    once: bool,
    with_dashboard: bool = True,
) -> None:
    import asyncio

    import httpx2

    server = _server(settings, state.now_ms, host, port)
    task = asyncio.create_task(server.serve())
    dashboard: DashboardProcess | None = None
    try:
        bound = await _started(server, task)
        base = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{bound}"
        state.out.print(f"orchestrator (monolithic, agents in process) at {base}")
        async with httpx2.AsyncClient(base_url=base, timeout=30.0) as client:
            answer = await client.post("/pipeline/run", json={"symbol": symbol, "timeframe": tf})
        if answer.status_code != 201:
            raise RuntimeError(f"POST /pipeline/run answered {answer.status_code}: {answer.text}")
        run = answer.json()
        state.out.print(
            f"\nPOST /pipeline/run -> {answer.status_code}", highlight=False, soft_wrap=True
        )
        for line in summary_lines(run):
            state.out.print(f"  {line}", highlight=False, markup=False, soft_wrap=True)
        state.out.print(
            f"  read it back: {base}/pipeline/runs/{run['runId']}", highlight=False, soft_wrap=True
        )
        if with_dashboard and not once:
            dashboard = await asyncio.to_thread(_start_dashboard, state, settings, base)
        _urls(state.out, host, bound)
    except BaseException:
        server.should_exit = True
        with contextlib.suppress(BaseException):
            await task
        if dashboard is not None:
            dashboard.stop()
        raise
    if once:
        server.should_exit = True
    try:
        await task
    finally:
        if dashboard is not None:
            dashboard.stop()


def demo(
    ctx: typer.Context,
    host: ApiHostOption = None,
    port: ApiPortOption = None,
    symbol: Annotated[str, typer.Option("--symbol", help="Symbol of the first run.")] = "BTCUSDT",
    timeframe: Annotated[str, typer.Option("--timeframe", help="Its timeframe.")] = "1h",
    once: Annotated[bool, typer.Option("--once", help="Stop after the first run.")] = False,
    with_dashboard: DashboardOption = True,
) -> None:
    """Serve in monolithic mode, run the pipeline once, print it and the URLs to try."""
    import asyncio

    state: CliState = ctx.obj
    s = state.settings
    settings = s.model_copy(
        update={"use_http_agents": False, "agents": s.agents.model_copy(update={"http": {}})}
    )
    _refuse_unsafe(state, _bound(settings, host or s.api.host))
    with _tracing(state):
        try:
            asyncio.run(
                _demo(
                    state,
                    settings,
                    host or s.api.host,
                    s.api.port if port is None else port,
                    symbol,
                    timeframe,
                    once,
                    with_dashboard,
                )
            )
        except (RuntimeError, TimeoutError, ConclaveError, OSError) as exc:
            fail(state.err, f"demo failed: {exc or type(exc).__name__}", 1)
        except SystemExit:
            fail(state.err, "the orchestrator could not start (see above; is the port in use?)", 1)


# -- up (local microservice mode) ----------------------------------------------------------


def up(
    ctx: typer.Context,
    host: ApiHostOption = None,
    port: ApiPortOption = None,
    with_dashboard: DashboardOption = True,
) -> None:
    """Start the nine agent services and the orchestrator over them; Ctrl-C stops all."""
    from conclave.agents import REGISTRY
    from conclave.services import procs

    state: CliState = ctx.obj
    s = state.settings
    settings = s.model_copy(update={"use_http_agents": True})
    bind_host, bind_port = host or s.api.host, s.api.port if port is None else port
    _refuse_unsafe(state, _bound(settings, bind_host))  # before any agent starts
    state.out.print(f"starting the {len(REGISTRY)} agent services ...")
    results = procs.start_agents(settings, REGISTRY.names)
    # stop exactly what this command started; services that were already up stay up
    mine = [r.name for r in results if r.status == "started"]
    dashboard: DashboardProcess | None = None
    try:
        for r in results:
            colour = {"started": "green", "already_running": "yellow"}.get(r.status, "red")
            state.out.print(
                f"  [{colour}]{r.status:<15}[/] {r.name:<20} {r.url}"
                + (f"  {r.error}" if r.error else ""),
                highlight=False,
                soft_wrap=True,
            )
        failed = [r.name for r in results if r.status == "failed"]
        if failed:
            fail(state.err, f"agent service(s) did not start: {', '.join(failed)}", 1)
        if with_dashboard:
            dashboard = _start_dashboard(state, settings, _base(bind_host, bind_port))
        _urls(state.out, bind_host, bind_port)
        _serve_blocking(state, settings, bind_host, bind_port)
    finally:
        if dashboard is not None:
            dashboard.stop()
        if mine:
            stopped = procs.stop_recorded(settings, mine)
            left = [r.name for r in stopped if r.outcome == "survived"]
            if left:
                state.err.print(f"[red]still running:[/] {', '.join(left)}")
        state.out.print(f"stopped the orchestrator and {len(mine)} agent service(s)")
