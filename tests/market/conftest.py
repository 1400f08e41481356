"""Fixtures for the market tests: Stub-BX, the fake Binance server on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakes import FakeBinance


@pytest.fixture
def stub(shared_data: Path) -> Iterator[FakeBinance]:
    """A running Stub-BX serving the real recorded responses; it must end with no errors."""
    with FakeBinance(shared_data).running() as fake:
        yield fake
    assert fake.server_errors == []
