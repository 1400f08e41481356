"""Fixtures of the services tests: a redis-server and a PostgreSQL of the test's own."""

from tests.services.test_health_outages import own_postgres, own_redis

__all__ = ["own_postgres", "own_redis"]
