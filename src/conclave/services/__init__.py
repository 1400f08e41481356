"""HTTP services: one app factory for the nine agents, the shared HTTP pieces, processes."""
