"""Write a frozen slotted dataclass's fields without its generated ``__init__``.

The hot value objects (candles, an agent's input and output, a pipeline step) are built
thousands of times a run; calling each slot's descriptor ``__set__`` directly takes about half
the time of the generated ``__init__`` of a frozen dataclass, which goes through
``object.__setattr__`` per field.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any


def slot_setters(cls: type) -> tuple[Any, ...]:
    """The ``__set__`` of each slot of the dataclass ``cls``, in field order."""
    return tuple(cls.__dict__[f.name].__set__ for f in fields(cls))
