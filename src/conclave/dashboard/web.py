"""What every dashboard page shares: templates, the viewer's key, CSRF, headers, failures.

- **The key** lives in an HttpOnly, SameSite=Strict cookie (`KEY_COOKIE`, path
  ``/dashboard``): scripts cannot read it and no other site's request carries it. The API
  decides what it may do (``read`` to view, ``admin`` to act); the dashboard only forwards it.
- **CSRF**: a random token in its own SameSite=Strict cookie, repeated in a hidden field of
  every form and compared in constant time on every POST (double submit), and the POST's
  ``Origin``, when sent, must be this host.
- **Headers**: a strict Content-Security-Policy (scripts, styles and connections from this
  origin only: no inline script, no eval), no framing, no sniffing, no referrer.
- **Failures** (`page`): the orchestrator not answering renders the banner page (503,
  retried every 5 s), a refused key the login page, never a traceback or an empty page.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

from fastapi import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from conclave.dashboard import fmt
from conclave.dashboard.client import (
    ApiClient,
    ApiDownError,
    ApiFailedError,
    ApiRefusedError,
    ApiUnavailableError,
)

PREFIX = "/dashboard"
KEY_COOKIE = "conclave_key"
CSRF_COOKIE = "conclave_csrf"
#: The one inline style allowed, by its hash: the rule lightweight-charts injects for its
#: TradingView attribution logo (kept, as its licence's NOTICE asks for attribution);
#: tests/dashboard check it against the vendored file, so an upgrade cannot drift.
CHART_LOGO_STYLE = "'sha256-3pRED1tOXas1FXFoPb9TGCjmYe9XQsmO9OV23khV2nY='"
CSP = (
    "default-src 'none'; script-src 'self'; "
    f"style-src 'self' {CHART_LOGO_STYLE}; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; form-action 'self'; frame-ancestors 'none'; "
    "base-uri 'none'"
)
_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
]

templates = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
fmt.install(templates.env)


class SecurityHeaders:
    """Pure ASGI: the headers above on every answer (pages, fragments, static files)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), *_HEADERS]}
            await send(message)

        await self.app(scope, receive, with_headers)


def api(request: Request) -> ApiClient:
    """The app's API client."""
    client: ApiClient = request.app.state.api
    return client


def key_of(request: Request) -> str | None:
    """The viewer's API key, from their cookie."""
    return request.cookies.get(KEY_COOKIE) or None


def csrf_token(request: Request) -> str:
    """The viewer's CSRF token (made for this request when they have none yet)."""
    token = request.cookies.get(CSRF_COOKIE)
    if not token or len(token) != 43:
        token = getattr(request.state, "new_csrf", None) or secrets.token_urlsafe(32)
        request.state.new_csrf = token
    return token


def set_cookie(request: Request, response: Response, name: str, value: str) -> None:
    """An HttpOnly, SameSite=Strict cookie for the dashboard's path."""
    response.set_cookie(
        name,
        value,
        httponly=True,
        samesite="strict",
        path=PREFIX,
        secure=request.app.state.cookie_secure,
        max_age=12 * 3600,
    )


async def form(request: Request) -> dict[str, str]:
    """The POSTed form (urlencoded), after the CSRF and Origin checks (`ForbiddenError` else)."""
    body = (await request.body()).decode("utf-8", "replace")
    fields = {k: v[-1] for k, v in parse_qs(body, keep_blank_values=True).items()}
    expected = request.cookies.get(CSRF_COOKIE, "")
    sent = fields.get("csrf", "")
    if not expected or not hmac.compare_digest(expected.encode(), sent.encode()):
        raise ForbiddenError("the form's CSRF token is missing or wrong; reload the page")
    origin = request.headers.get("origin")
    if origin and origin not in (f"{request.url.scheme}://{request.url.netloc}", "null"):
        raise ForbiddenError("a form from another origin is refused")
    return fields


class ForbiddenError(Exception):
    """A POST refused before reaching the API (CSRF, origin)."""


def render(request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
    """Render template ``name`` with the shared context (CSRF token, API URL, nav)."""
    context |= {
        "csrf": csrf_token(request),
        "api_url": api(request).base_url,
        "path": request.url.path,
        "logged_in": key_of(request) is not None,
    }
    response = templates.TemplateResponse(request, name, context, status_code=status)
    new = getattr(request.state, "new_csrf", None)
    if new:
        set_cookie(request, response, CSRF_COOKIE, new)
    return response


Handler = Callable[[Request], Awaitable[Response]]


async def page(request: Request, build: Handler, *, fragment: bool = False) -> Response:
    """``build(request)``, with the honest answers for the API's failures."""
    try:
        return await build(request)
    except ApiDownError as exc:  # a fragment answers 200: the banner is swapped in
        if fragment:
            return render(request, "_down.html", error=str(exc))
        return render(request, "down.html", 503, error=str(exc))
    except ApiRefusedError as exc:
        if fragment:
            return render(request, "error_fragment.html", error=f"the API refused the key: {exc}")
        if exc.status == 401:
            target = quote(
                request.url.path + (f"?{request.url.query}" if request.url.query else ""), safe=""
            )
            return RedirectResponse(f"{PREFIX}/login?next={target}", status_code=303)
        return render(request, "error.html", 403, title="Not allowed", error=str(exc))
    except ApiUnavailableError as exc:  # up, but a dependency of it is not: say which
        error = f"the orchestrator answered {exc.status}: {exc}"
        if fragment:
            return render(request, "_down.html", answered=True, error=error)
        return render(request, "down.html", 503, answered=True, error=error)
    except ApiFailedError as exc:
        return render(
            request,
            "error.html",
            exc.status if exc.status < 500 else 502,
            title="Not found" if exc.status == 404 else "The API refused the request",
            error=str(exc),
        )
    except ForbiddenError as exc:
        return render(request, "error.html", 403, title="Refused", error=str(exc))


def fingerprint(value: Any) -> str:
    """A short digest of ``value`` (JSON): a live part's state, to send it only on change."""
    raw = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.blake2b(raw, digest_size=12).hexdigest()


def safe_next(value: str | None) -> str:
    """A post-login target inside the dashboard only (no open redirect)."""
    if value and value.startswith(PREFIX) and not value.startswith("//") and "\\" not in value:
        return value
    return PREFIX


__all__ = [
    "CHART_LOGO_STYLE",
    "CSP",
    "CSRF_COOKIE",
    "KEY_COOKIE",
    "PREFIX",
    "ForbiddenError",
    "SecurityHeaders",
    "api",
    "csrf_token",
    "fingerprint",
    "form",
    "key_of",
    "page",
    "render",
    "safe_next",
    "set_cookie",
    "templates",
]
