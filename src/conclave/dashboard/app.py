"""The dashboard app (port 3001, path ``/dashboard``): server-rendered pages over the API.

`create_dashboard` builds a FastAPI app (no OpenAPI of its own: it is a site, not an API)
that reads everything from the orchestrator at ``settings.dashboard.api_url``, so one
dashboard can watch a remote deployment. Pages are Jinja2 templates; their live parts
arrive as server-sent events (`conclave.dashboard.live`, swapped in by ``static/app.js``);
TradingView's lightweight-charts (vendored, Apache-2.0, attribution in the
footer and the chart's logo) draws the charts from JSON data blocks, never inline script.
Static files are served from the package (`static/`); nothing is fetched at run time.

``/health/live`` answers while the process serves (for the container's probe);
``/health/ready`` is 200 when the orchestrator answers its own ``/health/live``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.staticfiles import StaticFiles

from conclave.dashboard import ops, pages
from conclave.dashboard.client import ApiClient, ApiDownError, ApiUnavailableError
from conclave.dashboard.live import router as live_router
from conclave.dashboard.web import PREFIX, SecurityHeaders, render
from conclave.settings import Settings

STATIC = Path(__file__).parent / "static"


def create_dashboard(settings: Settings) -> FastAPI:
    """The dashboard for ``settings.dashboard`` (API URL, timeout, cookie flags)."""
    conf = settings.dashboard

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.api = ApiClient(conf.api_url, conf.api_timeout_s)
        try:
            yield
        finally:
            await app.state.api.aclose()

    app = FastAPI(
        title="Conclave dashboard",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        lifespan=lifespan,
    )
    app.state.cookie_secure = conf.cookie_secure
    app.add_middleware(SecurityHeaders)
    app.mount(PREFIX + "/static", StaticFiles(directory=STATIC), name="static")
    app.include_router(pages.router)
    app.include_router(ops.router)
    app.include_router(live_router)

    @app.get("/")
    async def root() -> Response:
        return RedirectResponse(PREFIX, status_code=307)

    @app.get(PREFIX + "/")
    async def slash() -> Response:
        return RedirectResponse(PREFIX, status_code=307)

    @app.get("/health/live")
    async def live() -> Response:
        return JSONResponse({"status": "ok"})

    @app.get("/health/ready")
    async def ready(request: Request) -> Response:
        try:
            await request.app.state.api.get("/health/live", None)
        except (ApiDownError, ApiUnavailableError) as exc:
            return JSONResponse({"status": "not_ready", "reasons": [str(exc)]}, 503)
        return JSONResponse({"status": "ready", "reasons": []})

    @app.exception_handler(404)
    async def not_found(request: Request, exc: Exception) -> Response:
        if not request.url.path.startswith(PREFIX) or request.url.path.startswith(
            PREFIX + "/static"
        ):
            return JSONResponse({"error": {"code": "not_found", "message": "not found"}}, 404)
        return render(request, "error.html", 404, title="Not found", error="no such page")

    return app


__all__ = ["create_dashboard"]
