"""Reading candle files: Arrow columns reach numpy unchanged, and without loading pandas."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pytest

from conclave.market.sources.file_formats import _arrow, _numpy

BTC_1H = "binance_BTCUSDT_1h_20170817-20221011.csv"

#: In a fresh interpreter: parse the CSV file named first, write it as CSV and Parquet into
#: the folder named second, read the Parquet back, then the JSON answer.
ROUND_TRIP = """
import json, sys
from pathlib import Path
from typing import Any
from conclave.market.sources.file_formats import read_candles, write_candles
candles = read_candles(sys.argv[1])
compute = "pyarrow.compute" in sys.modules
write_candles(Path(sys.argv[2]) / "BTCUSDT_1h.csv", candles)
write_candles(Path(sys.argv[2]) / "BTCUSDT_1h.parquet", candles)
back = read_candles(Path(sys.argv[2]) / "BTCUSDT_1h.parquet")
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("pandas", "polars"))
print(json.dumps({"rows": len(candles), "same": back.equals(candles), "heavy": heavy,
                  "compute": compute}))
"""


def chunked(values: list[list[float]], typ: pa.DataType) -> pa.ChunkedArray:
    return pa.chunked_array([pa.array(np.asarray(v), type=typ) for v in values], type=typ)


@pytest.mark.parametrize(
    ("column", "dtype"),
    [
        (chunked([[1.5, 2.25], [], [3.0, -0.1]], pa.float64()), np.float64),
        (chunked([[1, 2], [3, 2**60]], pa.int64()), np.int64),
        (chunked([[1, 2], [3, 2**60]], pa.int64()), np.float64),
        (chunked([[1, 2], [3]], pa.int32()), np.int64),
        (chunked([[0.1, 2.5]], pa.float32()), np.float64),
        (pa.array(np.arange(10, dtype=np.float64)).slice(3, 4), np.float64),
        (chunked([[1.0, 2.0, 3.0, 4.0]], pa.float64()).slice(1, 2), np.float64),
        (pa.chunked_array([], type=pa.float64()), np.float64),
    ],
    ids=["f64-chunks", "i64", "i64-as-f64", "i32", "f32", "sliced", "sliced-chunked", "empty"],
)
def test_numpy_equals_arrows_own_conversion(
    column: pa.ChunkedArray | pa.Array, dtype: type[np.generic]
) -> None:
    """Columns read from the Arrow buffers equal ``np.asarray(col.to_numpy(), dtype)``:
    same values, same dtype, across chunks and slices."""
    expected = np.asarray(column.to_numpy(), dtype=dtype)
    got = _numpy(column, dtype)
    assert got.dtype == expected.dtype
    assert got.tobytes() == expected.tobytes()


@pytest.mark.parametrize(
    "values",
    [np.array([1.5, -0.0, 3e300]), np.array([1, 2**62, -5]), np.arange(12.0)[2:9],
     np.array([], dtype=np.float64), np.array([1.5, 2.5], dtype=np.float32)],
    ids=["f64", "i64", "sliced", "empty", "f32"],
)  # fmt: skip
def test_arrow_equals_pa_array(values: npt.NDArray[Any]) -> None:
    """Columns handed to Arrow over the numpy buffer equal ``pa.array(values)``."""
    got = _arrow(values)
    assert got.type == pa.array(values).type
    assert got.equals(pa.array(values))


def test_reading_and_writing_candle_files_loads_no_pandas(
    candles_dir: Path, tmp_path: Path
) -> None:
    """A CSV of numbers parses without pandas, polars or Arrow's compute module, and
    candles written as CSV or Parquet and read back load no pandas either (each costs
    start-up time: ``conclave run`` reads one file)."""
    done = subprocess.run([sys.executable, "-c", ROUND_TRIP, str(candles_dir / BTC_1H),
                           str(tmp_path)], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert found == {"rows": 45024, "same": True, "heavy": [], "compute": False}
