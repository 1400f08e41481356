"""What a running Conclave tells its operators: Prometheus metrics and OpenTelemetry traces.

The package sits at the bottom of the layers (with `conclave.errors` and `conclave.logging`):
any layer records into it, and it imports nothing of Conclave's above it.
"""
