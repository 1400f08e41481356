"""The ``conclave`` command line: the root app, its callback, and every command registered on it.

This is an edge: settings are loaded here once, logging is configured here, and the clock is
read here (`wall_clock_ms`) and passed down in `CliState`. Each command group lives in its
own module (``conclave.cli.data``, ``.run``, ``.backtest``, ``.scheduler``, ``.serve``,
``.accounts``, ``.agents``, ``.dashboard``); they share only ``conclave.cli.common`` and
never import this module or each other. The registrations below are the whole command
list, in help order.

Every module here imports only typer, rich, the standard library and light conclave
modules at import time; each command imports what it needs when it runs, so ``conclave
--help`` stays fast (``tests/test_cli_imports.py`` holds the list of modules it must not
load, ``benchmarks/cli.py`` prints the times).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from conclave.cli import accounts, agents, backtest, dashboard, data, keys, run, scheduler, serve
from conclave.cli.common import CliState, fail
from conclave.errors import ConfigurationError

app = typer.Typer(
    name="conclave",
    help="Conclave: multi-agent crypto trading signals.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def wall_clock_ms() -> int:
    """Now, in ms since the epoch (UTC): the one clock the CLI reads."""
    return time.time_ns() // 1_000_000


@app.callback()
def root(
    ctx: typer.Context,
    env_file: Annotated[
        Path, typer.Option("--env-file", help="Settings file read after the environment.")
    ] = Path(".env"),
) -> None:
    """Load settings once and configure logging for whichever command runs."""
    # here, not at the top: ``conclave --help`` never runs this callback
    from conclave.logging import configure_logging
    from conclave.settings import load_settings

    err = Console(stderr=True)
    try:
        settings = load_settings(env_file)
    except ConfigurationError as exc:
        fail(err, str(exc), 2)
    configure_logging(settings.log_level, settings.log_json)
    # `wall_clock_ms` is looked up on this module at each invocation: tests replace it there
    ctx.obj = CliState(settings, wall_clock_ms, Console(), err, env_file)


# `conclave --help` lists the commands, then the groups, each in the order registered here.
app.add_typer(data.data_app, name="data")
app.add_typer(accounts.accounts_app, name="accounts")
app.add_typer(keys.keys_app, name="keys")
app.add_typer(agents.agent_cli, name="agent")
app.add_typer(agents.agents_cli, name="agents")
app.command("backtest")(backtest.backtest)
app.command("run")(run.run)
app.command("scheduler")(scheduler.scheduler)
app.command("serve")(serve.serve)
app.command("demo")(serve.demo)
app.command("up")(serve.up)
app.command("dashboard")(dashboard.dashboard)


def main() -> None:
    """Entry point of the ``conclave`` script."""
    app()


__all__ = ["CliState", "app", "main", "wall_clock_ms"]
