"""The dashboard's door (issue 14, item 5), against a real orchestrator that requires keys:
the key login into an HttpOnly, SameSite=Strict cookie, the scopes enforced by the API, CSRF
on every form, a strict Content-Security-Policy, and what it renders escaped."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.dashboard.conftest import REPO, Stack, stack_env, start_stack
from tests.security.conftest import SECRET
from tests.security.procs import conclave, run_to_exit


def _key(tmp: Path, scope: str) -> str:
    done = run_to_exit(
        conclave("keys", "create", "--name", f"dash-{scope}", "--scope", scope, "--json"),
        stack_env(tmp, isolated=True, CONCLAVE_SECURITY__KEY_SECRET=SECRET),
        REPO,
    )
    assert done.returncode == 0, done.stderr
    key: str = json.loads(done.stdout)["key"]
    return key


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, dict[str, str]]]:
    tmp = tmp_path_factory.mktemp("keyed")
    keys = {scope: _key(tmp, scope) for scope in ("read", "admin")}
    for stack in start_stack(tmp, tmp, isolated=True, CONCLAVE_SECURITY__KEY_SECRET=SECRET):
        yield stack, keys


def _client(stack: Stack) -> httpx2.Client:
    return httpx2.Client(base_url=stack.dashboard, trust_env=False, follow_redirects=False,
                         timeout=30)  # fmt: skip


def _csrf(client: httpx2.Client) -> str:
    client.get("/dashboard/login")
    token: str = client.cookies["conclave_csrf"]
    return token


def _login(client: httpx2.Client, key: str) -> httpx2.Response:
    token = _csrf(client)
    return client.post("/dashboard/login", data={"csrf": token, "key": key,
                                                  "next": "/dashboard/accounts"})  # fmt: skip


def test_without_a_key_every_page_asks_for_one(keyed: tuple[Stack, dict[str, str]]) -> None:
    stack, _ = keyed
    with _client(stack) as c:
        answer = c.get("/dashboard/runs?status=ok")
        assert answer.status_code == 303
        assert (
            answer.headers["location"] == "/dashboard/login?next=%2Fdashboard%2Fruns%3Fstatus%3Dok"
        )


def test_a_wrong_key_is_refused_and_a_right_one_kept_in_a_strict_cookie(
    keyed: tuple[Stack, dict[str, str]],
) -> None:
    stack, keys = keyed
    with _client(stack) as c:
        wrong = _login(c, "not-a-key")
        assert wrong.status_code == 401
        assert "conclave_key" not in c.cookies
        right = _login(c, keys["read"])
        assert right.status_code == 303
        assert right.headers["location"] == "/dashboard/accounts"
        cookie = next(v for k, v in right.headers.multi_items()
                      if k == "set-cookie" and v.startswith("conclave_key="))  # fmt: skip
        flags = {p.strip().lower() for p in cookie.split(";")}
        assert {"httponly", "samesite=strict", "path=/dashboard"} <= flags
        assert c.get("/dashboard/accounts").status_code == 200


def test_forms_need_the_csrf_token(keyed: tuple[Stack, dict[str, str]]) -> None:
    stack, keys = keyed
    with _client(stack) as c:
        assert _login(c, keys["admin"]).status_code == 303
        body = {"symbol": "BTCUSDT", "timeframe": "1h", "bars": "100"}
        refused = c.post("/dashboard/backtests", data=body)  # no token
        assert refused.status_code == 403
        forged = c.post("/dashboard/backtests", data=body | {"csrf": "x" * 43})
        assert forged.status_code == 403
        other = c.post("/dashboard/backtests", data=body | {"csrf": c.cookies["conclave_csrf"]},
                       headers={"Origin": "https://evil.example"})  # fmt: skip
        assert other.status_code == 403
        listed = httpx2.get(
            stack.api + "/backtests",
            trust_env=False,
            headers={"Authorization": f"Bearer {keys['admin']}"},
        ).json()
        assert listed["items"] == []  # nothing reached the API


def test_acting_needs_an_admin_key(keyed: tuple[Stack, dict[str, str]]) -> None:
    stack, keys = keyed
    admin = {"Authorization": f"Bearer {keys['admin']}"}
    account = httpx2.post(
        stack.api + "/accounts",
        headers=admin,
        trust_env=False,
        json={"name": "<script>alert(1)</script>", "balance": 1000, "quote": "USDT"},
    ).json()
    path = f"/dashboard/accounts/{account['id']}"
    with _client(stack) as reader:
        assert _login(reader, keys["read"]).status_code == 303
        page = reader.get(path)
        assert page.status_code == 200
        assert "<script>alert(1)</script>" not in page.text  # escaped, never markup
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
        token = reader.cookies["conclave_csrf"]
        refused = reader.post(path + "/pause", data={"csrf": token, "reason": "test"})
        assert refused.status_code == 403
        assert "admin" in refused.text
    with _client(stack) as admin_c:
        assert _login(admin_c, keys["admin"]).status_code == 303
        token = admin_c.cookies["conclave_csrf"]
        done = admin_c.post(path + "/pause", data={"csrf": token, "reason": "by the test"})
        assert done.status_code == 303
    state = httpx2.get(stack.api + f"/accounts/{account['id']}", headers=admin,
                       trust_env=False).json()  # fmt: skip
    assert state["status"] == "paused"


def test_every_answer_carries_a_strict_policy(keyed: tuple[Stack, dict[str, str]]) -> None:
    stack, _ = keyed
    with _client(stack) as c:
        for path in ("/dashboard/login", "/dashboard/static/app.js", "/dashboard/nowhere"):
            headers: Any = c.get(path).headers
            csp = headers["content-security-policy"]
            assert "script-src 'self';" in csp
            assert "unsafe-inline" not in csp
            assert "unsafe-eval" not in csp
            assert "frame-ancestors 'none'" in csp
            assert headers["x-content-type-options"] == "nosniff"


def test_the_one_allowed_inline_style_is_the_chart_logo_rule() -> None:
    """The CSP's style hash is the vendored chart library's attribution rule, exactly."""
    import base64
    import hashlib
    import re

    from conclave.dashboard.web import CHART_LOGO_STYLE

    lib = (REPO / "src/conclave/dashboard/static/vendor/lightweight-charts-5.2.1/"
           "lightweight-charts.standalone.production.js").read_text()  # fmt: skip
    rules = re.findall(r'innerText="(a#tv-attr-logo\{[^"]*)"', lib)
    assert len(rules) == 1
    digest = base64.b64encode(hashlib.sha256(rules[0].encode()).digest()).decode()
    assert f"'sha256-{digest}'" == CHART_LOGO_STYLE
