"""RELIABILITY F1 and F2, the short version the suite runs: behaviour, not speed.

``benchmarks/load.py`` (locust as a library, in its own process: locust patches the
standard library with gevent) drives a real orchestrator for a few seconds with 8 users,
then 16 with an admission limit of 11 (8 running at once, the default, and 3 queued). Held
here: under load nothing answers 5xx, and overload is shed with 503 ``overloaded`` only. The
figures (p99 against 500 ms, shedding within 50 ms, recovery) are the benchmark's to print, on
a quiet machine.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.security.procs import clean_env

ROOT = Path(__file__).resolve().parents[2]


def test_f1_f2_no_5xx_under_load_and_overload_is_shed_with_503(tmp_path: Path) -> None:
    """F1: 8 users for 4 s, every answer 201. F2: 16 users with 11 admitted, every answer
    201 or 503 ``overloaded`` (counted as shed), none other; runs were admitted in both."""
    cmd = [sys.executable, str(ROOT / "benchmarks" / "load.py"), "--users", "8", "--seconds",
           "4", "--mode", "monolithic", "--json"]  # fmt: skip
    done = subprocess.run(cmd, env=clean_env(tmp_path), cwd=tmp_path, capture_output=True,
                          text=True, timeout=240, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    f1, f2 = out["f1"], out["f2"]
    assert out["limit"] == 11
    assert f1["failures"] == 0
    assert set(f1["statuses"]) == {"201"}, f1["statuses"]
    assert f1["runs"] > 0
    assert f2["failures"] == 0
    assert set(f2["statuses"]) <= {"201", "503"}, f2["statuses"]
    assert f2["runs"] > 0
    assert f2["shed"] == f2["statuses"].get("503", 0)
    assert out["after"]["failures"] == 0
