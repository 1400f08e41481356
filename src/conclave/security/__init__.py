"""Locking the doors (issue 12): API keys, their scopes, rate limits, signed agent calls.

Building blocks, each free of HTTP frameworks so the apps wire them in a few lines:

- `conclave.security.keys`: key generation, the keyed hash, scopes, `required_scope`
- `conclave.security.auth`: `KeyAuthenticator` (200 / 401 / 403) over a cached `KeyLookup`
- `conclave.security.ratelimit`: `KeyRateLimiter` (per key, Redis-shared, fails open)
- `conclave.security.signing`: `Signer` / `Verifier` of agent calls (HMAC-SHA256, 5 s)
- `conclave.security.startup`: the safe-by-default check run before a service listens

This package sits below the store (which keeps the keys, `conclave.store.keys_repo`) and
the pipeline (whose agent client signs calls); it imports neither.
"""
