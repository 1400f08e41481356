"""The dashboard's one way to the data: the orchestrator's HTTP API.

The dashboard stores nothing; every page is read from ``dashboard.api_url`` with the
viewer's key (from their cookie) as ``Authorization: Bearer``. Failures are typed so each
page can be honest about them: `ApiDownError` (nothing answered: the banner, never an empty
page), `ApiUnavailableError` (it answered 5xx: up, but a dependency of it is down),
`ApiRefusedError` (401: log in; 403: the key's scope is too low) and `ApiFailedError` (any
other error answer, with the API's own message).
"""

from __future__ import annotations

from typing import Any

import httpx2


class ApiDownError(Exception):
    """The orchestrator did not answer (connection refused, timed out)."""


class ApiUnavailableError(Exception):
    """The orchestrator answered 5xx: up, but it cannot serve this now (its database, the
    market source); the message is the API's own."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class ApiRefusedError(Exception):
    """The orchestrator refused the key: 401 (none or invalid) or 403 (scope too low)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class ApiFailedError(Exception):
    """Any other error answer (4xx), with the API's message and field."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.field = field


def _message(answer: httpx2.Response) -> tuple[str, str | None]:
    try:
        error = answer.json().get("error", {})
        return str(error.get("message", answer.reason_phrase)), error.get("field")
    except Exception:
        return f"HTTP {answer.status_code}", None


class ApiClient:
    """A pooled client of one orchestrator; `aclose` it with the app."""

    def __init__(self, base_url: str, timeout_s: float) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx2.AsyncClient(base_url=self.base_url, timeout=timeout_s, trust_env=False)

    async def request(
        self,
        method: str,
        path: str,
        key: str | None,
        *,
        params: dict[str, Any] | None = None,
        json: Any = None,
        allow: tuple[int, ...] = (),
    ) -> Any:
        """The decoded JSON answer of ``method path``; raises the errors above, except for
        a status in ``allow`` (``/health`` is 503 with its report when the database is down)."""
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        clean = {k: v for k, v in (params or {}).items() if v not in (None, "")}
        try:
            answer = await self._http.request(
                method, path, params=clean, json=json, headers=headers
            )
        except httpx2.HTTPError as exc:
            raise ApiDownError(f"{type(exc).__name__} reaching {self.base_url}") from None
        if answer.status_code in allow:
            return answer.json()
        if answer.status_code in (401, 403):
            raise ApiRefusedError(answer.status_code, _message(answer)[0])
        if answer.status_code >= 500:  # it answered: say what it could not do
            raise ApiUnavailableError(answer.status_code, _message(answer)[0])
        if answer.status_code >= 400:
            raise ApiFailedError(answer.status_code, *_message(answer))
        return answer.json()

    async def get(self, path: str, key: str | None, **params: Any) -> Any:
        """``GET path`` with ``params`` (None and empty values left out)."""
        return await self.request("GET", path, key, params=params)

    async def post(self, path: str, key: str | None, body: Any) -> Any:
        """``POST path`` with a JSON ``body``."""
        return await self.request("POST", path, key, json=body)

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()


__all__ = ["ApiClient", "ApiDownError", "ApiFailedError", "ApiRefusedError", "ApiUnavailableError"]
