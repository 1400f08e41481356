"""Market data: the candles type, its validation, sources, cache and the gateway."""
