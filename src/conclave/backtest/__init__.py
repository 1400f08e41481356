"""The backtester: the live agents, decision, paper execution and risk rules over history.

`history` loads what the backtest reads (candles with the agents' warm-up, higher
timeframes, news); `signals` runs every agent's series and the decision over it, vectorized;
`account_loop` runs the account and the risk manager bar by bar; `engine` orchestrates the
three (`engine.run_backtest`) under a `settings.BacktestSettings`. `checks` proves parity
with the live pipeline and the absence of lookahead. `metrics`, `skill`, `export`,
`summary`, `chart` and `report` turn a `result.BacktestResult` into figures, tables, files,
the JSON summary, a PNG chart and an HTML report. ``conclave backtest``
(`conclave.cli.backtest`) is the command.
"""
