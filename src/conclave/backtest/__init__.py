"""The backtester: the live agents, decision, paper execution and risk rules over history.

`engine` loads the history and runs it (agents and decision vectorized, the account bar by
bar); `checks` proves parity with the live pipeline and the absence of lookahead;
`metrics`, `skill`, `export` and `report` turn a `result.BacktestResult` into figures,
tables, files and an HTML report. ``conclave backtest`` (`conclave.cli_backtest`) is the
command.
"""
