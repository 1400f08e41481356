"""TA-Lib loaded for numpy arrays only: without its optional pandas and polars support.

``import talib`` tries ``import polars`` and ``import pandas`` (in its ``__init__`` and in
its extension module) to accept their series; pandas alone costs about 0.3 s of start-up
(a third of ``conclave run``), and the agents pass numpy arrays only. While TA-Lib loads, this
module makes those two imports fail with ``ModuleNotFoundError`` in the loading thread
only, which TA-Lib reads as "not installed". Nothing is left behind: pandas and polars
import normally afterwards, in every thread; only TA-Lib does not convert their series.
When pandas or polars is already loaded (or TA-Lib is), TA-Lib loads as it always does.
Import ``talib`` and ``abstract`` from here, never TA-Lib directly.
"""

from __future__ import annotations

import sys
import threading
from importlib.machinery import ModuleSpec
from types import ModuleType

#: TA-Lib's optional imports that it does without.
SKIPPED = ("pandas", "polars")


class _SkipInThisThread:
    """A meta path finder failing the import of ``names`` in one thread, as if absent."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self.names = names
        self.thread = threading.get_ident()

    def find_spec(
        self, name: str, path: object = None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if name in self.names and threading.get_ident() == self.thread:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


# not for a TA-Lib already loaded (then as it is), nor for pandas or polars already loaded;
# new lists, not changes in place: an import running in another thread walks the old one
_finder = _SkipInThisThread(tuple(n for n in SKIPPED if n not in sys.modules))
_hooked = bool(_finder.names) and "talib" not in sys.modules
if _hooked:
    sys.meta_path = [_finder, *sys.meta_path]
try:
    import talib
    from talib import abstract
finally:
    if _hooked:
        sys.meta_path = [f for f in sys.meta_path if f is not _finder]

__all__ = ["SKIPPED", "abstract", "talib"]
