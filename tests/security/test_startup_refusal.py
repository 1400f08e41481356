"""Safe by default, as real processes (E10): refuse to start naming the setting, or say OPEN."""

from __future__ import annotations

from pathlib import Path

import httpx2
import pytest

from tests.security.procs import clean_env, conclave, free_port, run_to_exit, started, wait_live

SHORT = "only-20-characters!!"


@pytest.mark.parametrize(
    ("args", "extra", "setting"),
    [
        (("--host", "0.0.0.0"), {}, "CONCLAVE_API__HOST"),
        (("--host", "0.0.0.0"), {"CONCLAVE_SECURITY__KEY_SECRET": "x7" * 24},
         "CONCLAVE_API__HOST"),
        (("--host", "127.0.0.1"), {"CONCLAVE_SECURITY__KEY_SECRET": "changeme"},
         "CONCLAVE_SECURITY__KEY_SECRET"),
        (("--host", "127.0.0.1"), {"CONCLAVE_SECURITY__KEY_SECRET": SHORT},
         "CONCLAVE_SECURITY__KEY_SECRET"),
        (("--host", "0.0.0.0"), {"CONCLAVE_SECURITY__KEY_SECRET": ""},
         "CONCLAVE_SECURITY__KEY_SECRET"),
        (("--host", "127.0.0.1"), {"CONCLAVE_AGENTS__SECRET": "secret"},
         "CONCLAVE_AGENTS__SECRET"),
        (("--host", "127.0.0.1"), {"AGENT_SERVICES_BASE_URL": "http://agents.internal"},
         "CONCLAVE_AGENTS__SECRET"),
    ],
)  # fmt: skip
def test_serve_refuses_an_unsafe_start_naming_the_setting(
    tmp_path: Path, args: tuple[str, ...], extra: dict[str, str], setting: str
) -> None:
    """`conclave serve` beyond loopback with no key, or with a default, empty or short
    secret, or calling remote agents unsigned: exit 2 with one line naming the setting,
    the secret's value never echoed, nothing listening."""
    port = free_port()
    done = run_to_exit(conclave("serve", *args, "--port", str(port)),
                       clean_env(tmp_path, **extra), tmp_path)  # fmt: skip
    out = done.stdout + done.stderr
    assert done.returncode == 2, out
    assert setting in out
    assert "refusing to start" in out
    assert "Traceback" not in out
    for value in extra.values():
        if value and "://" not in value:
            assert value not in out


def test_serve_on_loopback_without_keys_starts_open_and_says_so(tmp_path: Path) -> None:
    """`conclave serve --host 127.0.0.1` with no key: it serves (a run without a key is 201)
    and its log says the API is OPEN, naming the host setting."""
    port = free_port()
    log = tmp_path / "serve.log"
    cmd = conclave("serve", "--host", "127.0.0.1", "--port", str(port))
    with started(cmd, clean_env(tmp_path), tmp_path, log) as proc:
        url = f"http://127.0.0.1:{port}"
        wait_live(url, proc)
        with httpx2.Client(base_url=url, timeout=30.0, trust_env=False) as client:
            ran = client.post("/pipeline/run", json={"symbol": "BTCUSDT", "timeframe": "1h"})
            assert ran.status_code == 201, ran.text
    text = log.read_text()
    assert "api_open" in text
    assert "OPEN" in text
    assert "CONCLAVE_API__HOST" in text


@pytest.mark.parametrize(
    ("host", "secret"), [("0.0.0.0", None), ("127.0.0.1", "changeme"), ("0.0.0.0", SHORT)]
)
def test_agent_serve_refuses_beyond_loopback_unsigned_or_with_a_weak_secret(
    tmp_path: Path, host: str, secret: str | None
) -> None:
    """`conclave agent serve` beyond loopback without CONCLAVE_AGENTS__SECRET, or with a
    default or short one anywhere: exit 2 naming CONCLAVE_AGENTS__SECRET."""
    extra = {} if secret is None else {"CONCLAVE_AGENTS__SECRET": secret}
    cmd = conclave("agent", "serve", "momentum", "--host", host, "--port", str(free_port()))
    done = run_to_exit(cmd, clean_env(tmp_path, **extra), tmp_path)
    out = done.stdout + done.stderr
    assert done.returncode == 2, out
    assert "CONCLAVE_AGENTS__SECRET" in out
    if secret:
        assert secret not in out
