"""``conclave scheduler``: run the configured jobs at each candle close (plus the offset).

- ``conclave scheduler`` runs every job (settings' ``CONCLAVE_SCHEDULER__JOBS`` and those
  added through ``POST /scheduler/jobs``) until Ctrl-C or SIGTERM, then lets in-flight
  runs finish.
- ``--once`` runs every job that is due now and exits (for cron and tests): 0 when nothing
  failed, 1 when a due run failed or the store could not be used.
- ``--symbol S --timeframe TF [--account ID]`` schedules that one job instead;
  ``--source`` overrides ``CONCLAVE_MARKET__SOURCE``.
- while it serves, ``GET /metrics`` answers on ``CONCLAVE_SCHEDULER__METRICS_HOST`` /
  ``_METRICS_PORT`` (127.0.0.1:9464; port 0: none): slot lag, slots by outcome, the runs.

An edge like the rest of the CLI: settings and the clock come from the root callback.
Registered on the root app by `conclave.cli`.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated

import typer

from conclave.cli.common import CliState, SourceOption, check_series, fail, run_or_fail
from conclave.errors import ConfigurationError, InvalidRequestError

if TYPE_CHECKING:  # the scheduler, the runtime and the metrics load when the command runs
    from conclave.scheduler import Job, Outcome
    from conclave.settings import Settings
    from conclave.timeframes import Timeframe

#: Outcome statuses after which ``--once`` exits non-zero.
FAILING = frozenset({"failed", "error"})


async def _scheduler(
    settings: Settings, state: CliState, only: Job | None, once: bool
) -> list[Outcome]:
    import asyncio

    from conclave.services.execute import build_scheduler
    from conclave.services.runtime import Runtime

    runtime = await Runtime.open(settings, now_ms=state.now_ms)
    try:
        scheduler = build_scheduler(settings, runtime, only=only)
        if once:
            return await scheduler.run_due_once()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        jobs = await scheduler.jobs()
        state.err.print(f"scheduler: {len(jobs)} job(s): {', '.join(j.id for j in jobs) or '-'}")
        with _metrics_server(settings, state):
            await scheduler.serve_forever(stop)
        return []
    finally:
        await runtime.aclose()


@contextlib.contextmanager
def _metrics_server(settings: Settings, state: CliState) -> Iterator[None]:
    """``GET /metrics`` of this process on ``scheduler.metrics_host:metrics_port`` (a thread
    of prometheus-client's own server) while the scheduler runs; port 0: none."""
    s = settings.scheduler
    if not settings.metrics.enabled or s.metrics_port == 0:
        yield
        return
    from prometheus_client import start_http_server

    try:
        server, thread = start_http_server(s.metrics_port, s.metrics_host)
    except OSError as exc:
        raise ConfigurationError(
            f"scheduler metrics port {s.metrics_host}:{s.metrics_port}: {exc.strerror or exc}"
            " (set CONCLAVE_SCHEDULER__METRICS_PORT, 0 for none)"
        ) from None
    state.err.print(f"scheduler: metrics at http://{s.metrics_host}:{s.metrics_port}/metrics")
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _only(
    settings: Settings, spec: str, account: str | None, symbol: str | None, timeframe: str | None
) -> Job | None:
    from conclave.scheduler import Job

    if symbol is None and timeframe is None:
        if account is not None:
            raise InvalidRequestError("--account needs --symbol and --timeframe", field="account")
        return None
    if symbol is None or timeframe is None:
        raise InvalidRequestError("give --symbol and --timeframe together", field="symbol")
    tf: Timeframe = check_series(settings, spec, symbol, timeframe)
    return Job(account, symbol, tf.name)


def scheduler(
    ctx: typer.Context,
    once: Annotated[bool, typer.Option("--once", help="Run every due job once and exit.")] = False,
    account: Annotated[str | None, typer.Option("--account", help="Account of the job.")] = None,
    symbol: Annotated[str | None, typer.Option("--symbol", help="Run only this symbol.")] = None,
    timeframe: Annotated[
        str | None, typer.Option("--timeframe", help="Timeframe of that job, e.g. 1h.")
    ] = None,
    source: SourceOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="With --once: one JSON line.")] = False,
) -> None:
    """Run the scheduled jobs at each candle close plus the offset (never the open bar)."""
    from conclave.observability import tracing
    from conclave.services.execute import settings_jobs

    state: CliState = ctx.obj
    settings = state.settings
    if source is not None:
        settings = settings.model_copy(
            update={"market": settings.market.model_copy(update={"source": source})}
        )
    spec = settings.market.source
    try:
        only = _only(settings, spec, account, symbol, timeframe)
    except InvalidRequestError as exc:
        fail(state.err, f"--{exc.field}: {exc}", 2)
    if only is None and not settings.scheduler.enabled:
        fail(state.err, "the scheduler is disabled (CONCLAVE_SCHEDULER__ENABLED=false)", 2)
    if only is None and not once and not settings_jobs(settings.scheduler):
        state.err.print("scheduler: no jobs in settings; waiting for jobs added through the API")
    try:  # the OTEL_* variables, read here at the edge (tracing is off unless they ask)
        traces = tracing.tracing_config(os.environ, service_name=tracing.SCHEDULER_SERVICE)
    except ValueError as exc:
        fail(state.err, str(exc), 2)
    with tracing.tracing_session(traces):  # spans still queued are exported at the end
        outcomes = run_or_fail(state, _scheduler(settings, state, only, once))
    if not once:
        return
    if as_json:
        typer.echo(json.dumps({"outcomes": [_wire(o) for o in outcomes]}))
    else:
        for o in outcomes:
            slot = f" slot {o.slot.open_ms} missed {o.slot.missed}" if o.slot else ""
            run = f" run {o.run_id}" if o.run_id else ""
            why = f" ({o.reason})" if o.reason else ""
            state.out.print(f"{o.job_id}: {o.status}{slot}{run}{why}", highlight=False)
    if any(o.status in FAILING for o in outcomes):
        raise typer.Exit(1)


def _wire(o: Outcome) -> dict[str, object]:
    return {
        "jobId": o.job_id,
        "status": o.status,
        "slotOpenMs": o.slot.open_ms if o.slot else None,
        "slotCloseMs": o.slot.close_ms if o.slot else None,
        "missed": o.slot.missed if o.slot else None,
        "runId": o.run_id,
        "reason": o.reason,
    }
