"""Conclave: nine analysis agents, one honest decision (layers: see ``[tool.importlinter]``)."""
