"""The ASGI app: both API families, the request guards (Host, API key, body type and size),
optional CORS, JSON errors, lifespan."""

from __future__ import annotations

import contextlib
from typing import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from r1local import __version__
from r1local.server import embeddings_api, ollama_api, openai_api
from r1local.server.config import ServerConfig
from r1local.server.errors import ApiError, body_for, headers_for
from r1local.server.guards import ApiKeyMiddleware, BodyGuard, HostGuard
from r1local.server.models import ModelManager
from r1local.server.names import NamePolicy
from r1local.server.unsupported import path_error


def create_app(config: ServerConfig | None = None, manager: ModelManager | None = None) -> FastAPI:
    config = config or ServerConfig()
    manager = manager or ModelManager(keep_alive=config.keep_alive, max_queue=config.max_queue,
                                      max_loaded=config.max_loaded, n_ctx=config.n_ctx,
                                      n_threads=config.n_threads,
                                      names=NamePolicy.from_config(config),
                                      parallel=config.parallel, rpc=config.rpc,
                                      experts_on=config.experts_on)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        import asyncio
        from concurrent.futures import ThreadPoolExecutor

        # every generating request holds a worker thread while it streams (streaming.py):
        # the default pool (cores + 4) would cap how many decode together
        asyncio.get_running_loop().set_default_executor(
            ThreadPoolExecutor(max_workers=64, thread_name_prefix="r1local"))
        manager.start()
        if config.model and not any(s.pinned for s in manager.loaded.values()):
            await manager.preload(config.model)  # `r1local serve` preloads before binding
        try:
            yield
        finally:
            await manager.stop()

    app = FastAPI(title="r1local", version=__version__, lifespan=lifespan,
                  docs_url=None, redoc_url=None, openapi_url=None)
    app.state.config = config
    app.state.manager = manager
    app.include_router(ollama_api.router)
    app.include_router(openai_api.router)
    app.include_router(embeddings_api.router)  # its lifespan keeps the embedding models

    # `/`: the web chat for browsers, "r1local is running" for other clients (Ollama's
    # probe); `/web/*`: the page's files (r1local/web)
    from r1local.web import routes as web

    web.install(app)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, err: ApiError) -> JSONResponse:
        return JSONResponse(body_for(request.url.path, err), status_code=err.status,
                            headers=headers_for(err))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        # no route matched: under /api/ and /v1/ that is an endpoint we lack (501), decided
        # here rather than by a catch-all route, which would shadow routes added after it
        api = (path_error(request.method, request.url.path) if err.status_code == 404
               else None) or ApiError(err.status_code, str(err.detail))
        return JSONResponse(body_for(request.url.path, api), status_code=api.status,
                            headers=headers_for(api))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, err: Exception) -> JSONResponse:
        api = ApiError(500, f"internal error: {type(err).__name__}: {err}")
        return JSONResponse(body_for(request.url.path, api), status_code=500)

    # the last added runs first: Host, then CORS (preflights carry no key), key, body
    app.add_middleware(BodyGuard, limit=config.max_body)
    if config.api_key:
        app.add_middleware(ApiKeyMiddleware, key=config.api_key, public=web.is_public)
    if config.cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors_origins),
                           allow_methods=["GET", "POST", "DELETE", "OPTIONS", "HEAD"],
                           allow_headers=["*"], allow_credentials=False)
    app.add_middleware(HostGuard, bound=config.host, allowed=config.allow_hosts)
    return app
