"""The web chat's routes. `install(app)` adds them to the server's app.

The page and its files are static and hold nothing private, so they are served without the
API key (a browser cannot send a Bearer header when it navigates); the page then asks for
the key and sends it with every API call. `/web/models` says what the planner thinks of
each store model on this machine, so the model picker can mark those that do not fit.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from starlette.staticfiles import StaticFiles

from r1local.web import ASSET_PREFIX, STATIC_DIR

RUNNING = "r1local is running"  # Ollama clients probe `/` for "... is running"

# The page runs no inline script and loads nothing from elsewhere; KaTeX sets inline
# styles on what it draws, hence style-src 'unsafe-inline'.
PAGE_HEADERS = {
    "Content-Security-Policy": ("default-src 'self'; script-src 'self'; "
                                "style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
                                "font-src 'self'; connect-src 'self'; object-src 'none'; "
                                "base-uri 'none'; frame-ancestors 'none'"),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
    "Vary": "Accept",
}


def wants_page(accept: str) -> bool:
    """A browser navigating asks for text/html; API clients and probes ask for */* or
    nothing, and keep getting the plain "is running" text."""
    return any(part.split(";", 1)[0].strip().lower() in ("text/html", "application/xhtml+xml")
               for part in accept.split(","))


def is_public(scope: dict) -> bool:
    """Requests the API key does not guard (an ASGI scope): the page, when a browser asks
    for it, and its static files. `/` for other clients and /web/models still need the key."""
    if scope.get("method") not in ("GET", "HEAD"):
        return False
    path = scope.get("path", "")
    if path == "/":
        accept = dict(scope.get("headers") or []).get(b"accept", b"").decode("latin-1")
        return wants_page(accept)
    return path.startswith(ASSET_PREFIX) and path != MODELS_PATH


MODELS_PATH = "/web/models"

router = APIRouter()


@router.get("/")
@router.head("/")
async def root(request: Request) -> Response:
    if wants_page(request.headers.get("accept", "")):
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html",
                            headers=PAGE_HEADERS)
    return PlainTextResponse(RUNNING, headers={"Vary": "Accept"})


@router.get(MODELS_PATH)
async def models(request: Request) -> JSONResponse:
    """{"models": [{name, fits, placement, reason, context}]}: the planner's verdict for
    each store model on this machine (as `r1local show` gives it)."""
    return JSONResponse({"models": await asyncio.to_thread(_verdicts)})


def _verdicts() -> list[dict[str, Any]]:
    from r1local import session
    from r1local.server.names import listed
    from r1local.store import Store

    machine = None
    out = []
    for stored in Store().list():
        entry: dict[str, Any] = {"name": listed(stored.name)}
        try:
            model = session.locate(stored.name)
            machine = machine or session.machine(None, model.path.parent)
            plan = session.plan_model(model, machine)
            entry.update(fits=plan.fits, placement=plan.placement, reason=plan.reason,
                         context=int(plan.n_ctx))
        except Exception as err:  # a damaged or missing file: say so rather than fail the list
            entry.update(fits=False, placement="cannot be loaded", reason=str(err), context=0)
        out.append(entry)
    return out


def install(app: FastAPI) -> None:
    """Add the page, its files and /web/models to ``app``."""
    app.include_router(router)
    app.mount(ASSET_PREFIX.rstrip("/"), StaticFiles(directory=STATIC_DIR), name="web")
