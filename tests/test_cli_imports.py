"""What the command line imports: each command loads the heavy modules it needs when it runs.

``conclave --help`` must not load the data stack, the agents, the store or the servers (nor
the settings: the root callback, which loads them, does not run for the root's help), and
``conclave data show --source sim`` must not load the agents, the store or the servers.
Speed itself is measured by ``benchmarks/cli.py``; these tests hold the cause of it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

#: Run in a fresh interpreter: the command line as ``conclave ARGS`` runs it, then the names
#: of every module it loaded and its exit code, as JSON, into the file named first.
PROBE = """
import json, sys
from conclave.cli import app
out, args = sys.argv[1], sys.argv[2:]
try:
    app(args, prog_name="conclave")
    code = 0
except SystemExit as exc:
    code = exc.code
with open(out, "w") as fh:
    json.dump({"code": code, "modules": sorted(sys.modules)}, fh)
"""

#: What a command that opens no database, runs no agent and serves nothing never needs.
NOT_FOR_DATA = (
    "talib", "pandas", "sqlalchemy", "alembic", "asyncpg", "aiosqlite", "fastapi",
    "starlette", "uvicorn", "aiohttp", "httpx", "ccxt", "numba",
    "conclave.agents", "conclave.pipeline", "conclave.store", "conclave.services",
    "conclave.accounts", "conclave.backtest", "conclave.scheduler", "conclave.dashboard",
)  # fmt: skip

#: What the list of commands never needs: the above, the data stack, settings and logging.
NOT_FOR_HELP = (
    *NOT_FOR_DATA,
    "numpy", "pyarrow", "orjson", "redis", "httpx2", "pydantic", "pydantic_settings",
    "structlog", "opentelemetry", "prometheus_client",
    "conclave.market", "conclave.news", "conclave.settings", "conclave.logging",
    "conclave.observability", "conclave.timeframes",
)  # fmt: skip


def loaded(args: list[str], tmp_path: Path) -> set[str]:
    """The modules ``conclave ARGS`` loaded, run in ``tmp_path`` on the default settings."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("CONCLAVE_") and k not in ("DATABASE_URL", "REDIS_URL")}  # fmt: skip
    out = tmp_path / "modules.json"
    done = subprocess.run([sys.executable, "-c", PROBE, str(out), *args], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    found = json.loads(out.read_text())
    assert found["code"] == 0, done.stdout + done.stderr
    return set(found["modules"])


def heavy(modules: set[str], banned: tuple[str, ...]) -> list[str]:
    """The packages of ``banned`` that ``modules`` holds (or a module of)."""
    return sorted(b for b in banned if any(m == b or m.startswith(b + ".") for m in modules))


def test_root_help_loads_no_heavy_module(tmp_path: Path) -> None:
    """``conclave --help`` imports every command module, and none of them loads anything
    heavy at import time: typer, rich and the standard library only."""
    modules = loaded(["--help"], tmp_path)
    assert "conclave.cli.serve" in modules  # every command module was imported
    assert (found := heavy(modules, NOT_FOR_HELP)) == [], f"--help loads {found}"


def test_a_command_help_loads_settings_and_logging_only(tmp_path: Path) -> None:
    """A command's ``--help`` runs the root callback (settings, logging), never the command:
    ``run --help`` loads no agent, store or server."""
    modules = loaded(["run", "--help"], tmp_path)
    assert "conclave.settings" in modules  # the root callback ran
    assert (found := heavy(modules, NOT_FOR_DATA)) == [], f"run --help loads {found}"


def test_data_show_on_sim_loads_no_agent_store_or_server(tmp_path: Path) -> None:
    """``data show --source sim`` reads candles: the market modules, not the agents, the
    store, the HTTP servers or pandas."""
    args = ["data", "show", "--source", "sim", "--symbol", "BTCUSDT", "--timeframe", "1h"]
    modules = loaded([*args, "--json"], tmp_path)
    assert "conclave.market.sources.sim" in modules  # it did read the simulator
    assert (found := heavy(modules, NOT_FOR_DATA)) == [], f"data show loads {found}"


def test_run_on_a_csv_file_loads_neither_pandas_nor_polars(
    tmp_path: Path, candles_dir: Path
) -> None:
    """``run`` on the file source runs the nine agents (TA-Lib) on a CSV file without
    loading pandas or polars (TA-Lib's optional support, about 0.3 s), the parts of Arrow
    a CSV of numbers does not need, httpx2 (news feeds over HTTP) or prometheus_client (the
    candle cache's metrics: no cache here)."""
    args = ["run", "--symbol", "BTCUSDT", "--timeframe", "1h", "--source", f"file:{candles_dir}"]
    modules = loaded([*args, "--as-of", "2022-10-11T11:00", "--json"], tmp_path)
    assert {"talib", "conclave.agents", "pyarrow.csv"} <= modules  # it did parse and analyse
    banned = ("pandas", "polars", "pyarrow.compute", "pyarrow.parquet", "httpx2",
              "prometheus_client")  # fmt: skip
    assert (found := heavy(modules, banned)) == [], f"run loads {found}"


#: In a fresh interpreter: TA-Lib as the agents load it, then pandas, then the JSON answer.
TALIB_THEN_PANDAS = """
import json, sys
import numpy as np
from conclave.agents.indicators.talib_numpy import talib
before = "pandas" in sys.modules
finders = [type(f).__name__ for f in sys.meta_path]
import pandas
out = talib.SMA(np.arange(8, dtype=np.float64), timeperiod=5)
print(json.dumps({"before": before, "finders": finders, "pandas": pandas.__name__,
                  "sma": out.tolist()[4:6], "type": type(out).__name__}))
"""

#: In a fresh interpreter: pandas first, then TA-Lib as the agents load it.
PANDAS_THEN_TALIB = """
import json
import pandas as pd
from conclave.agents.indicators.talib_numpy import talib
out = talib.SMA(pd.Series([1.0, 2.0, 3.0, 4.0]), timeperiod=2)
print(json.dumps({"type": type(out).__name__, "sma": out.tolist()[1:]}))
"""


def fresh(code: str) -> dict[str, object]:
    """The JSON line ``code`` prints, run in a fresh interpreter."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def test_talib_loads_without_pandas_and_pandas_still_imports_after() -> None:
    """The agents' TA-Lib does not load pandas, leaves no import hook behind, and pandas
    imports normally afterwards; TA-Lib then takes and returns numpy arrays as before."""
    out = fresh(TALIB_THEN_PANDAS)
    assert out["before"] is False
    assert "_SkipInThisThread" not in out["finders"]  # type: ignore[operator]
    assert out["pandas"] == "pandas"
    assert (out["type"], out["sma"]) == ("ndarray", [2.0, 3.0])


def test_talib_loaded_after_pandas_keeps_its_pandas_support() -> None:
    """When pandas is already loaded, TA-Lib loads as it always did: series in, series out."""
    assert fresh(PANDAS_THEN_TALIB) == {"type": "Series", "sma": [1.5, 2.5, 3.5]}


def test_the_skip_applies_to_the_loading_thread_only() -> None:
    """Another thread importing pandas while TA-Lib loads is not refused."""
    from conclave.agents.indicators.talib_numpy import _SkipInThisThread

    finder = _SkipInThisThread(("pandas",))
    with pytest.raises(ModuleNotFoundError) as caught:
        finder.find_spec("pandas")
    assert caught.value.name == "pandas"  # what TA-Lib reads as "not installed"
    assert finder.find_spec("numpy") is None
    seen: list[object] = []
    worker = threading.Thread(target=lambda: seen.append(finder.find_spec("pandas")))
    worker.start()
    worker.join()
    assert seen == [None]
