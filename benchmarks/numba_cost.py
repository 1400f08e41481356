"""What the compiled account loop costs: install size, import, first call cold and cached.

Prints the size on disk of the numba and llvmlite packages in this environment, then, in
fresh child processes with an empty numba cache directory (``NUMBA_CACHE_DIR``):

- ``import numba`` (s);
- the first `simulate_compiled` call with nothing cached: the kernel compiles (s);
- the first call in a second process: the kernel loads from the cache (s);
- a warm call on the same 45,024-bar-sized input, for scale (ms).

    .venv/bin/python benchmarks/numba_cost.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = """
import json, time
t0 = time.perf_counter()
import numba
t_import = time.perf_counter() - t0
import numpy as np
from conclave.backtest.fast_loop import simulate_compiled
from conclave.backtest.settings import BacktestSettings
from conclave.backtest.signals import PreDecision
from conclave.market.candles import Candles
n = 45_024
rng = np.random.default_rng(1)
c = 20_000 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
t = 1_600_000_000_000 + 3_600_000 * np.arange(n, dtype=np.int64)
bars = Candles.from_arrays("BTCUSDT", "1h", t, c, c * 1.01, c * 0.99, c, np.ones(n))
act = rng.choice([1, 2, 3], size=n, p=[0.98, 0.01, 0.01]).astype(np.int8)  # HOLD, BUY, SELL
pre = PreDecision(act > 0, np.zeros(n), np.zeros(n), act, rng.random(n), np.ones(n))
s = BacktestSettings()
t0 = time.perf_counter()
simulate_compiled(bars, pre, s)
first = time.perf_counter() - t0
warm = []
for _ in range(5):
    t0 = time.perf_counter()
    trace = simulate_compiled(bars, pre, s)
    warm.append(time.perf_counter() - t0)
warm = sorted(warm)[2]
print(json.dumps({"import": t_import, "first": first, "warm": warm, "fills": len(trace.fills)}))
"""


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _child(cache: str) -> dict[str, float]:  # the figures of CHILD
    env = {**os.environ, "NUMBA_CACHE_DIR": cache}
    src = Path(__file__).resolve().parents[1] / "src"
    env["PYTHONPATH"] = str(src)
    out = subprocess.run(
        [sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, check=True
    )
    got: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return got


def main() -> None:
    import llvmlite  # type: ignore[import-untyped]
    import numba

    load = os.getloadavg()[0]
    print(f"$ {Path(sys.executable).name} benchmarks/numba_cost.py  (load {load:.2f})")
    sizes = {m.__name__: _size(Path(str(m.__file__)).parent) for m in (numba, llvmlite)}
    each = ", ".join(f"{k} {v / 1e6:.0f} MB" for k, v in sizes.items())
    total = sum(sizes.values()) / 1e6
    print(f"numba {numba.__version__}, llvmlite {llvmlite.__version__}: {each} ({total:.0f} MB)")
    with tempfile.TemporaryDirectory() as cache:
        cold = _child(cache)
        cached = _child(cache)
    print(f"import numba: {cold['import']:.2f} s (cold), {cached['import']:.2f} s (second process)")
    print(f"first call, nothing cached (compiles): {cold['first']:.2f} s")
    print(f"first call, kernel cached on disk: {cached['first']:.3f} s")
    fills = int(cached["fills"])
    print(f"a warm call (median of 5), 45,024 bars, {fills} fills: {1e3 * cached['warm']:.2f} ms")


if __name__ == "__main__":
    main()
