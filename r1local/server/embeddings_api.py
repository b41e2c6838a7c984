"""Embeddings on both APIs: Ollama's /api/embed (and the older /api/embeddings) and OpenAI's
/v1/embeddings, over r1local.embeddings.

Names resolve through the chat ModelManager (the same NamePolicy, store names, tags and
allowed paths), but an embedding context is a llama.cpp context of its own, so the loaded
embedders live in their own small pool here: at most MAX_LOADED, one request at a time each,
unloaded after their keep_alive as chat models are.

Vectors: /api/embed and /v1/embeddings return unit vectors (what Ollama returns; `dimensions`
keeps the first N values and normalizes again); the legacy /api/embeddings returns the raw
pooled vector, as Ollama's own does. Too-long inputs: Ollama truncates unless
`"truncate": false`; OpenAI refuses them (400), as OpenAI does, unless the request adds
`"truncate": true` (an r1local extension).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, AsyncIterator, Literal, Sequence, Union

import numpy as np
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from r1local.planner import MIN_CTX
from r1local.server.errors import ApiError, bad_request, from_r1local
from r1local.server.limits import MAX_NUM_CTX
from r1local.server.models import key_of
from r1local.server.ollama_api import keep_alive_seconds
from r1local.server.schemas import parse

if TYPE_CHECKING:
    from r1local.embeddings import Embedder
    from r1local.session import ModelFile

MAX_LOADED = 2  # embedding models kept loaded at once (besides the chat models)
SWEEP_SECONDS = 0.5


# ---- request bodies ------------------------------------------------------------------

class _Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", allow_inf_nan=False)


class EmbedOptions(_Body):
    num_ctx: int | None = Field(None, ge=MIN_CTX, le=MAX_NUM_CTX)  # other options: ignored


class _OllamaEmbedCommon(_Body):
    model: str = ""
    keep_alive: Union[str, int, float, None] = None
    options: EmbedOptions | None = None


class EmbedRequest(_OllamaEmbedCommon):
    input: Union[str, list[str]] = ""
    truncate: bool = True
    dimensions: int | None = Field(None, ge=1)


class LegacyEmbeddingsRequest(_OllamaEmbedCommon):
    prompt: str = ""


class OpenAIEmbeddingRequest(_Body):
    model: str = ""
    input: Union[str, list[str], list[int], list[list[int]]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)
    user: str | None = None
    truncate: bool = False  # r1local's: OpenAI itself refuses a too-long input


# ---- the pool of loaded embedders ----------------------------------------------------

@dataclass
class _Slot:
    key: str  # the file (models.key_of)
    embedder: "Embedder"
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0  # requests holding or waiting for it
    last_used: float = 0.0  # time.monotonic()
    expires_at: float | None = None  # None while in use or kept forever


@dataclass
class Use:
    embedder: "Embedder"
    load_seconds: float


class Embedders:
    """Loaded embedding models: loaded on first use (one load at a time), each used by one
    request at a time (FIFO), reloaded when a request needs another context, the least
    recently used idle one closed to make room."""

    def __init__(self, *, keep_alive: float, n_threads: int | None,
                 max_loaded: int = MAX_LOADED) -> None:
        self.keep_alive = keep_alive
        self.n_threads = n_threads
        self.max_loaded = max(1, max_loaded)
        self.loaded: dict[str, _Slot] = {}
        self.loads = 0
        self._loading = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def use(self, model: "ModelFile", n_ctx: int | None,
                  keep_alive: float | None) -> AsyncIterator[Use]:
        slot, load_seconds = await self._acquire(model, n_ctx)
        try:
            yield Use(slot.embedder, load_seconds)
        finally:
            slot.lock.release()
            slot.users -= 1
            ka = self.keep_alive if keep_alive is None else keep_alive
            slot.last_used = now = time.monotonic()
            if slot.users == 0:
                slot.expires_at = None if ka < 0 else now + ka
                if ka == 0 and self.loaded.get(slot.key) is slot:
                    await self._close(slot.key)

    async def _acquire(self, model: "ModelFile", n_ctx: int | None) -> tuple[_Slot, float]:
        """This model's slot with its lock held, loaded (or reloaded for ``n_ctx``) first."""
        from r1local.embeddings import embedding_ctx

        key = key_of(model)
        try:
            # no num_ctx means the default one: the same request gets the same context (and
            # so the same truncation) whatever was asked before
            want = embedding_ctx(model.header, n_ctx)
        except Exception as err:
            raise _client_error(err, "num_ctx") from None
        while True:
            load_seconds = 0.0
            slot = self.loaded.get(key)
            if slot is None or slot.embedder.n_ctx != want:
                async with self._loading:
                    slot = self.loaded.get(key)
                    if slot is not None and slot.embedder.n_ctx != want:
                        await self._close(key)  # after the requests already holding it
                        slot = None
                    if slot is None:
                        await self._make_room()
                        t0 = time.monotonic()
                        embedder = await asyncio.to_thread(_load, model, n_ctx, self.n_threads)
                        load_seconds = time.monotonic() - t0
                        slot = self.loaded[key] = _Slot(key, embedder)
                        self.loads += 1
            slot.users += 1
            slot.expires_at = None
            try:
                await slot.lock.acquire()
            except BaseException:
                slot.users -= 1
                raise
            if self.loaded.get(key) is slot:
                return slot, load_seconds
            slot.lock.release()  # closed while this request waited: take the new one
            slot.users -= 1

    async def _make_room(self) -> None:
        while len(self.loaded) >= self.max_loaded:
            idle = [s for s in self.loaded.values() if s.users == 0]
            if not idle:
                return  # all busy: load anyway rather than fail the request
            await self._close(min(idle, key=lambda s: s.last_used).key)

    async def _close(self, key: str) -> None:
        slot = self.loaded.pop(key, None)
        if slot is not None:
            async with slot.lock:  # never under a running embed
                await asyncio.to_thread(slot.embedder.close)

    async def sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_SECONDS)
            now = time.monotonic()
            for key, slot in list(self.loaded.items()):
                if slot.users == 0 and slot.expires_at is not None and slot.expires_at <= now:
                    await self._close(key)

    async def stop(self) -> None:
        for key in list(self.loaded):
            await self._close(key)


def _load(model: "ModelFile", n_ctx: int | None, n_threads: int | None) -> "Embedder":
    from r1local import session

    try:
        embedder, _plan = session.open_embedder(model, ctx=n_ctx, threads=n_threads)
    except ApiError:
        raise
    except Exception as err:  # R1LocalError and llama.cpp's own
        raise _client_error(err, "num_ctx" if n_ctx else "model") from None
    return embedder


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    config = app.state.config
    pool = app.state.embedders = Embedders(keep_alive=config.keep_alive,
                                           n_threads=config.n_threads)
    sweeper = asyncio.get_running_loop().create_task(pool.sweep_forever())
    try:
        yield
    finally:
        sweeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sweeper
        await pool.stop()


router = APIRouter(lifespan=lifespan)


# ---- running a request ---------------------------------------------------------------

def _client_error(err: Exception, param: str) -> ApiError:
    api = from_r1local(err)
    api.param = api.param or param
    return api


@dataclass
class Result:
    vectors: list[np.ndarray]  # raw pooled vectors
    tokens: int
    load_seconds: float


async def _embed(request: Request, name: str, inputs: Sequence["str | list[int]"], *,
                 truncate: bool, n_ctx: int | None, keep_alive: float | None,
                 dimensions: int | None = None) -> Result:
    """Resolve the name as chat requests do, then embed every input in one worker call."""
    name = name or (request.app.state.config.model or "")
    model = await request.app.state.manager.resolve(name)
    for i, item in enumerate(inputs):
        if not item:
            raise bad_request(f"input[{i}] is empty: there is nothing to embed", param="input")
    async with request.app.state.embedders.use(model, n_ctx, keep_alive) as use:
        emb = use.embedder
        if dimensions is not None and dimensions > emb.n_embd:
            raise bad_request(f"dimensions {dimensions} is more than {model.path.name}'s "
                              f"{emb.n_embd}; ask for {emb.n_embd} or fewer", param="dimensions")
        if not inputs:
            return Result([], 0, use.load_seconds)

        def work() -> Any:
            return emb.embed(emb.tokens_for(inputs, truncate=truncate))

        try:
            done = await asyncio.to_thread(work)
        except Exception as err:
            raise _client_error(err, "input") from None
    return Result(done.vectors, done.total_tokens, use.load_seconds)


def _unit(vectors: list[np.ndarray], dimensions: int | None) -> list[np.ndarray]:
    from r1local.embeddings import normalized, shortened

    return [shortened(v, dimensions) if dimensions else normalized(v) for v in vectors]


def _ns(seconds: float) -> int:
    return int(max(0.0, seconds) * 1e9)


# ---- Ollama --------------------------------------------------------------------------

@router.post("/api/embed")
async def embed(request: Request) -> JSONResponse:
    started = time.monotonic()
    req = parse(EmbedRequest, await request.body())
    # "" (the ollama client's default) or [] only loads the model, as Ollama does
    inputs = req.input if isinstance(req.input, list) else [req.input] if req.input else []
    res = await _embed(request, req.model, inputs, truncate=req.truncate,
                       n_ctx=req.options.num_ctx if req.options else None,
                       keep_alive=keep_alive_seconds(req.keep_alive), dimensions=req.dimensions)
    return JSONResponse({
        "model": req.model or (request.app.state.config.model or ""),
        "embeddings": [v.tolist() for v in _unit(res.vectors, req.dimensions)],
        "total_duration": _ns(time.monotonic() - started),
        "load_duration": _ns(res.load_seconds),
        "prompt_eval_count": res.tokens})


@router.post("/api/embeddings")
async def embeddings_legacy(request: Request) -> JSONResponse:
    req = parse(LegacyEmbeddingsRequest, await request.body())
    res = await _embed(request, req.model, [req.prompt] if req.prompt else [], truncate=True,
                       n_ctx=req.options.num_ctx if req.options else None,
                       keep_alive=keep_alive_seconds(req.keep_alive))
    return JSONResponse({"embedding": res.vectors[0].tolist() if res.vectors else []})


# ---- OpenAI --------------------------------------------------------------------------

def _openai_inputs(value: Union[str, list[str], list[int], list[list[int]]]) -> list:
    if isinstance(value, str):
        return [value]
    if value and all(isinstance(v, int) for v in value):
        return [value]  # one input given as token ids
    if not value:
        raise bad_request("input is empty: give a string, a list of strings or token ids",
                          param="input")
    return list(value)


def _encoded(vector: np.ndarray, fmt: str) -> Any:
    if fmt == "base64":  # little-endian float32, as OpenAI sends it
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return vector.tolist()


@router.post("/v1/embeddings")
async def embeddings_openai(request: Request) -> JSONResponse:
    req = parse(OpenAIEmbeddingRequest, await request.body())
    res = await _embed(request, req.model, _openai_inputs(req.input), truncate=req.truncate,
                       n_ctx=None, keep_alive=None, dimensions=req.dimensions)
    return JSONResponse({
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": _encoded(v, req.encoding_format)}
                 for i, v in enumerate(_unit(res.vectors, req.dimensions))],
        "model": req.model or (request.app.state.config.model or ""),
        "usage": {"prompt_tokens": res.tokens, "total_tokens": res.tokens}})
