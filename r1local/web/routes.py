"""The web chat's routes. `install(app)` adds them to the server's app.

The page and its files are static and hold nothing private, so they are served without the
API key (a browser cannot send a Bearer header when it navigates); the page then asks for
the key and sends it with every API call. `/web/models` says what the planner thinks of
each model the server lists, so the model picker can mark those that do not fit;
`/web/loading` streams a model's load as llama.cpp reports it, so the page can show it.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, AsyncIterator

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import (FileResponse, JSONResponse, PlainTextResponse, Response,
                               StreamingResponse)
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
    return path.startswith(ASSET_PREFIX) and path not in DATA_PATHS


MODELS_PATH = "/web/models"
LOADING_PATH = "/web/loading"
DATA_PATHS = (MODELS_PATH, LOADING_PATH)  # under /web/ but about models: the key guards them
LOAD_WAIT_S = 60.0  # how long /web/loading waits for a load to begin (the chat resolving it)
POLL_S = 0.05

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
    each model /api/tags lists: store models as `r1local show` plans them, and models
    loaded from a path (`serve --model FILE`) by the plan they were loaded with."""
    loaded = list(request.app.state.manager.loaded.values())
    return JSONResponse({"models": await asyncio.to_thread(_verdicts, loaded)})


def _verdicts(loaded: list[Any]) -> list[dict[str, Any]]:
    from r1local import session
    from r1local.server.names import listed
    from r1local.store import Store

    machine = None
    out = []
    stored_files = set()
    for stored in Store().list():
        entry: dict[str, Any] = {"name": listed(stored.name)}
        try:
            model = session.locate(stored.name)
            stored_files.add(str(model.path.resolve()))
            machine = machine or session.machine(None, model.path.parent)
            entry.update(_verdict(session.plan_model(model, machine)))
        except Exception as err:  # a damaged or missing file: say so rather than fail the list
            entry.update(fits=False, placement="cannot be loaded", reason=str(err), context=0)
        out.append(entry)
    for slot in loaded:  # as /api/tags lists them: loaded files the store does not hold
        if slot.key not in stored_files and slot.plan is not None:
            out.append({"name": listed(slot.name), **_verdict(slot.plan)})
    return out


def _verdict(plan: Any) -> dict[str, Any]:
    return {"fits": bool(plan.fits), "placement": plan.placement, "reason": plan.reason,
            "context": int(plan.n_ctx)}


@router.get(LOADING_PATH)
async def loading(request: Request, model: str = "") -> Response:
    """NDJSON: a model's load as llama.cpp reports it, `{"model", "progress"}` per step
    (0 to 1), then `{"model", "done": true, "loaded", "progress", "error"?}`. It follows
    the load running now, else the last one while the model stays loaded, else waits (up to
    LOAD_WAIT_S) for the next one, which the page's chat request is about to start."""
    from r1local.server.models import key_of

    manager = request.app.state.manager
    key = key_of(await manager.resolve(model))  # an unknown name: its 404, before streaming

    async def lines() -> AsyncIterator[str]:
        stale = manager.loading.get(key)  # a finished load of a model since unloaded
        deadline = time.monotonic() + LOAD_WAIT_S
        while True:  # find the load to follow
            rec = manager.loading.get(key)
            if rec is not None and (not rec.done or key in manager.loaded or rec is not stale):
                break
            if time.monotonic() > deadline:
                yield _line(model=model, done=True, loaded=False,
                            error=f"no load of {model} began within {LOAD_WAIT_S:.0f} s")
                return
            await asyncio.sleep(POLL_S)
        sent = 0
        while True:
            done = rec.done  # read before the fractions: none is added after done
            for fraction in rec.fractions[sent:]:
                yield _line(model=model, progress=round(fraction, 4))
            sent = len(rec.fractions)
            if done:
                error = {"error": rec.error} if rec.error else {}
                yield _line(model=model, done=True, loaded=not rec.error,
                            progress=round(rec.progress, 4), **error)
                return
            await asyncio.sleep(POLL_S)

    return StreamingResponse(lines(), media_type="application/x-ndjson",
                             headers={"Cache-Control": "no-store"})


def _line(**fields: Any) -> str:
    return json.dumps(fields) + "\n"


def install(app: FastAPI) -> None:
    """Add the page, its files, /web/models and /web/loading to ``app``."""
    app.include_router(router)
    app.mount(ASSET_PREFIX.rstrip("/"), StaticFiles(directory=STATIC_DIR), name="web")
