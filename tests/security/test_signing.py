"""Signed agent calls (E8): valid calls pass; unsigned, tampered, stale or replayed ones are 401."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conclave.errors import ConfigurationError
from conclave.security.signing import (
    HEADER_NONCE,
    HEADER_SIGNATURE,
    HEADER_TIMESTAMP,
    Signer,
    Verifier,
)

SECRET = "agent-signing-secret-for-the-tests-0123456789"
T0 = 1_700_000_000_000
BODY = b'{"accountId":"a1","symbol":"BTCUSDT","timeframe":"1h"}'


class Clock:
    def __init__(self) -> None:
        self.ms = T0

    def __call__(self) -> int:
        return self.ms


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def signer(clock: Clock) -> Signer:
    return Signer(SECRET, now_ms=clock)


@pytest.fixture
def verifier(clock: Clock) -> Verifier:
    return Verifier([SECRET], max_age_s=5.0, now_ms=clock)


def check(verifier: Verifier, headers: dict[str, str], body: bytes = BODY,
          method: str = "POST", path: str = "/run") -> str:  # fmt: skip
    return verifier.verify(method, path, body, timestamp=headers.get(HEADER_TIMESTAMP),
                           nonce=headers.get(HEADER_NONCE),
                           signature=headers.get(HEADER_SIGNATURE)).reason  # fmt: skip


def test_a_signed_call_passes_once(signer: Signer, verifier: Verifier) -> None:
    """The headers of a call verify; the exact same headers again are a replay."""
    headers = signer.headers("POST", "/run", BODY)
    assert set(headers) == {HEADER_TIMESTAMP, HEADER_NONCE, HEADER_SIGNATURE}
    assert headers[HEADER_SIGNATURE].startswith("v1=")
    assert check(verifier, headers) == "ok"
    assert check(verifier, headers) == "replayed"


def test_an_unsigned_or_partly_signed_call_is_refused(signer: Signer, verifier: Verifier) -> None:
    """No headers, or any one missing: unsigned; garbage timestamp: malformed."""
    headers = signer.headers("POST", "/run", BODY)
    assert check(verifier, {}) == "unsigned"
    for name in headers:
        assert check(verifier, {k: v for k, v in headers.items() if k != name}) == "unsigned"
    assert check(verifier, {**headers, HEADER_TIMESTAMP: "soon"}) == "malformed"
    assert check(verifier, {**headers, HEADER_NONCE: ""}) == "malformed"
    assert check(verifier, headers) == "ok"  # the refusals did not burn the signature


@pytest.mark.parametrize(
    ("body", "method", "path"),
    [(BODY + b" ", "POST", "/run"), (BODY.replace(b"1h", b"4h"), "POST", "/run"),
     (BODY, "POST", "/run2"), (BODY, "PUT", "/run"), (b"", "POST", "/run")],
)  # fmt: skip
def test_a_tampered_body_path_or_method_is_refused(
    signer: Signer, verifier: Verifier, body: bytes, method: str, path: str
) -> None:
    """Changing any signed part breaks the signature."""
    headers = signer.headers("POST", "/run", BODY)
    assert check(verifier, headers, body, method, path) == "bad_signature"


def test_a_tampered_timestamp_nonce_or_signature_is_refused(
    signer: Signer, verifier: Verifier
) -> None:
    """Headers are signed too: moving the time or changing the nonce breaks the signature."""
    headers = signer.headers("POST", "/run", BODY)
    assert check(verifier, {**headers, HEADER_TIMESTAMP: str(T0 + 1)}) == "bad_signature"
    assert check(verifier, {**headers, HEADER_NONCE: "0" * 24}) == "bad_signature"
    flipped = headers[HEADER_SIGNATURE][:-1] + (
        "0" if headers[HEADER_SIGNATURE][-1] != "0" else "1"
    )
    assert check(verifier, {**headers, HEADER_SIGNATURE: flipped}) == "bad_signature"


def test_another_secret_is_refused_and_a_previous_one_accepted_during_rotation(
    clock: Clock,
) -> None:
    """A call signed with an unknown secret fails; a verifier given old and new accepts both."""
    old = Signer("the-previous-agent-secret-0123456789abcdef", now_ms=clock)
    new = Signer(SECRET, now_ms=clock)
    only_new = Verifier([SECRET], now_ms=clock)
    both = Verifier([SECRET, "the-previous-agent-secret-0123456789abcdef"], now_ms=clock)
    assert check(only_new, old.headers("POST", "/run", BODY)) == "bad_signature"
    assert check(both, old.headers("POST", "/run", BODY)) == "ok"
    assert check(both, new.headers("POST", "/run", BODY)) == "ok"


def test_calls_older_or_newer_than_the_window_are_refused(
    signer: Signer, verifier: Verifier, clock: Clock
) -> None:
    """5 s either way is accepted; 5.001 s late is expired, 5.001 s early is future."""
    edge = signer.headers("POST", "/run", BODY)
    clock.ms = T0 + 5_000
    assert check(verifier, edge) == "ok"
    stale = signer.headers("POST", "/run", BODY)
    clock.ms += 5_001
    assert check(verifier, stale) == "expired"
    clock.ms = T0 + 100_000
    ahead = Signer(SECRET, now_ms=lambda: T0 + 100_000 + 5_001).headers("POST", "/run", BODY)
    assert check(verifier, ahead) == "future"


def test_a_replay_after_the_window_is_expired_and_memory_is_bounded(clock: Clock) -> None:
    """A replayed call more than 5 s later is refused by age; old entries are dropped."""
    verifier = Verifier([SECRET], now_ms=clock, replay_capacity=50)
    signer = Signer(SECRET, now_ms=clock)
    first = signer.headers("POST", "/run", BODY)
    assert check(verifier, first) == "ok"
    clock.ms += 6_000
    assert check(verifier, first) == "expired"
    for _ in range(200):
        clock.ms += 1
        assert check(verifier, signer.headers("POST", "/run", BODY)) == "ok"
    assert len(verifier._seen) <= 50


def test_asgi_headers_verify_like_named_ones(signer: Signer, verifier: Verifier) -> None:
    """verify_asgi reads the lower-case byte headers an ASGI scope carries."""
    headers = signer.headers("POST", "/run", BODY)
    raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    raw.append((b"content-type", b"application/json"))
    assert verifier.verify_asgi("POST", "/run", BODY, raw).ok
    assert verifier.verify_asgi("POST", "/run", BODY, raw).reason == "replayed"
    assert verifier.verify_asgi("POST", "/run", BODY, raw[-1:]).status == 401


@pytest.mark.parametrize("secret", [None, "", "changeme", "too-short-secret"])
def test_a_weak_agent_secret_is_refused_naming_the_setting(secret: str | None) -> None:
    """Signer and Verifier refuse what start-up refuses, naming CONCLAVE_AGENTS__SECRET."""
    with pytest.raises(ConfigurationError, match="CONCLAVE_AGENTS__SECRET"):
        Signer(secret)
    with pytest.raises(ConfigurationError, match="CONCLAVE_AGENTS__SECRET"):
        Verifier([secret or ""])
    assert SECRET not in repr(Signer(SECRET)) + repr(Verifier([SECRET]))


_METHODS = st.sampled_from(["GET", "POST", "PUT", "DELETE", "post"])
_PATHS = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=40)


@settings(max_examples=200, deadline=None)
@given(method=_METHODS, path=_PATHS, body=st.binary(max_size=2048))
def test_any_call_round_trips(method: str, path: str, body: bytes) -> None:
    """Whatever the method, path and body, what one side signs the other verifies."""
    clock = Clock()
    headers = Signer(SECRET, now_ms=clock).headers(method, "/" + path, body)
    assert check(Verifier([SECRET], now_ms=clock), headers, body, method, "/" + path) == "ok"


@settings(max_examples=200, deadline=None)
@given(body=st.binary(min_size=1, max_size=512), data=st.data())
def test_any_one_byte_change_of_the_body_is_refused(body: bytes, data: st.DataObject) -> None:
    """Flipping any bit of any byte of the body makes the signature fail."""
    clock = Clock()
    headers = Signer(SECRET, now_ms=clock).headers("POST", "/run", body)
    i = data.draw(st.integers(0, len(body) - 1))
    bit = data.draw(st.integers(0, 7))
    tampered = body[:i] + bytes([body[i] ^ (1 << bit)]) + body[i + 1 :]
    assert check(Verifier([SECRET], now_ms=clock), headers, tampered) == "bad_signature"
