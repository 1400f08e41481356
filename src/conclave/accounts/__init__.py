"""Paper accounts: sizing and fills (`paper`), risk and protections (`risk`), the store-backed
`AccountService` and the pipeline's `StoreAccountReader`."""

from __future__ import annotations

from conclave.accounts.config import AccountConfig
from conclave.accounts.paper import Bar
from conclave.accounts.reader import StoreAccountReader
from conclave.accounts.service import AccountService, UnknownAccountError

__all__ = ["AccountConfig", "AccountService", "Bar", "StoreAccountReader", "UnknownAccountError"]
