"""Fixtures of the deployment tests: a PostgreSQL database of their own, a headlines file.

The compose services open the database as a container would (its ``public`` schema, the
migrations run at start), so each test gets a fresh database on the server named by
``DATABASE_URL``, dropped afterwards: nothing else on that server is touched.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path

import pytest

from tests.store.conftest import own_database, pg_url  # noqa: F401 - fixtures


@pytest.fixture
def fresh_headlines(tmp_path: Path) -> Path:
    """A headlines CSV with BTC news of the last hours, so news-sentiment has its input as
    of now (the simulated market's clock); made here, nothing from outside."""
    path = tmp_path / "headlines.csv"
    now = int(time.time() * 1000)
    rows = [
        (now - 2 * 3_600_000, "Bitcoin rallies as ETF inflows surge to a record"),
        (now - 5 * 3_600_000, "BTC miners report strong growth and rising hash rate"),
        (now - 9 * 3_600_000, "Bitcoin slips as traders take profit after the breakout"),
    ]
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["published_ms", "headline", "assets"])
        out.writerows((ms, title, "BTC") for ms, title in rows)
    return path
