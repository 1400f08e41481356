"""Fakes of external services for tests (Stub-BX, the fake Binance REST server)."""

from tests.fakes.fake_binance import FakeBinance, FakeClock, Fault, Hit, TaggedTransport

__all__ = ["FakeBinance", "FakeClock", "Fault", "Hit", "TaggedTransport"]
