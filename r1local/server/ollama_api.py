"""Ollama's API: /api/generate, /api/chat, /api/tags, /api/ps, /api/show, /api/version, /api/pull.

Field names and units follow Ollama's docs/api.md: streaming is NDJSON unless
`"stream": false`; durations are nanoseconds; the reasoning of R1 models goes into
`thinking` (`message.thinking` for chat), never into `response` / `content`.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from r1local import __version__
from r1local.server import describe, streaming
from r1local.server.calls import (chat_call, completion_call, finish_reason,
                                  settings_from_ollama, think_flag)
from r1local.server.config import parse_duration
from r1local.server.errors import bad_request, ollama_body
from r1local.server.schemas import (ChatRequest, GenerateRequest, PullRequest, ShowRequest,
                                    parse)

# The Ollama API version we speak (`think` arrived in 0.9); clients gate features on it.
OLLAMA_API_VERSION = "0.9.0"
NDJSON = "application/x-ndjson"

router = APIRouter()


def _ns(seconds: float) -> int:
    return int(max(0.0, seconds) * 1e9)


def _keep_alive(value: Any) -> float | None:
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as err:
        raise bad_request(str(err), param="keep_alive") from None


def _model_name(request: Request, name: str) -> str:
    return name or (request.app.state.config.model or "")


def _unsupported(req: Any) -> None:
    if getattr(req, "images", None):
        raise bad_request("this server's models do not take images")
    if req.format not in (None, ""):
        raise bad_request("\"format\" (JSON mode / schemas) is not supported", param="format")
    if getattr(req, "suffix", None):
        raise bad_request("\"suffix\" (fill-in-the-middle) is not supported", param="suffix")
    if getattr(req, "tools", None):
        raise bad_request("tools are not supported by these models", param="tools")


def _final_fields(gen: streaming.Generation, out: streaming.Outcome, started: float) -> dict:
    st = out.stats
    return {
        "done": True,
        "done_reason": finish_reason(st),
        "total_duration": _ns(time.monotonic() - started),
        "load_duration": _ns(gen.lease.load_seconds),
        "prompt_eval_count": st.prompt_tokens if st else 0,
        "prompt_eval_duration": _ns(st.prompt_seconds) if st else 0,
        "eval_count": st.completion_tokens if st else 0,
        "eval_duration": _ns(st.decode_seconds) if st else 0,
    }


async def _load_only(request: Request, name: str, keep_alive: float | None,
                     shape: dict) -> JSONResponse:
    """Ollama: no prompt / no messages loads the model; with keep_alive 0 it unloads it."""
    manager = request.app.state.manager
    if keep_alive is not None and keep_alive == 0:
        await manager.unload(name)
        reason = "unload"
    else:
        lease = await manager.acquire(name, keep_alive=keep_alive)
        manager.release(lease, keep_alive)
        reason = "load"
    return JSONResponse({"model": name, "created_at": describe.now_iso(), **shape,
                         "done": True, "done_reason": reason})


async def _respond(request: Request, name: str, gen: streaming.Generation, started: float,
                   stream: bool, piece) -> Any:
    """Stream NDJSON lines, or gather one JSON object. `piece(thinking, answer)` builds the
    per-chunk body (`response`/`thinking` or `message`)."""
    if not stream:
        out = await gen.collect()
        body = {"model": name, "created_at": describe.now_iso(), **piece(out.thinking, out.answer),
                **_final_fields(gen, out, started)}
        return JSONResponse(body)

    async def lines() -> AsyncIterator[bytes]:
        async for chunk in gen.chunks():
            thinking, answer = (chunk.text, "") if chunk.kind == "thinking" else ("", chunk.text)
            yield _line({"model": name, "created_at": describe.now_iso(),
                         **piece(thinking, answer), "done": False})
        out = await gen.outcome()
        if out.error is not None:
            yield _line(ollama_body(out.error))
            return
        yield _line({"model": name, "created_at": describe.now_iso(), **piece("", ""),
                     **_final_fields(gen, out, started)})

    return StreamingResponse(lines(), media_type=NDJSON)


def _line(obj: dict) -> bytes:
    return (json.dumps(obj, ensure_ascii=False) + "\n").encode()


@router.post("/api/generate")
async def generate(request: Request) -> Any:
    started = time.monotonic()
    req = parse(GenerateRequest, await request.body())
    name = _model_name(request, req.model)
    keep_alive = _keep_alive(req.keep_alive)
    _unsupported(req)
    if not req.prompt and not req.system:
        return await _load_only(request, name, keep_alive, {"response": ""})
    settings, num_ctx, nothing = settings_from_ollama(req.options)
    think = think_flag(req.think)
    if req.raw:
        make = completion_call(req.prompt or "", settings, nothing=nothing)
    else:
        messages = ([{"role": "system", "content": req.system}] if req.system else []) + [
            {"role": "user", "content": req.prompt or ""}]
        make = chat_call(messages, settings, think=think, nothing=nothing)
    gen = await streaming.start(request.app.state.manager, request, name, make,
                                keep_alive=keep_alive, n_ctx=num_ctx)

    def piece(thinking: str, answer: str) -> dict:
        d: dict[str, Any] = {"response": answer}
        if thinking:
            d["thinking"] = thinking
        return d

    return await _respond(request, name, gen, started, req.stream, piece)


@router.post("/api/chat")
async def chat(request: Request) -> Any:
    started = time.monotonic()
    req = parse(ChatRequest, await request.body())
    name = _model_name(request, req.model)
    keep_alive = _keep_alive(req.keep_alive)
    _unsupported(req)
    empty_message = {"message": {"role": "assistant", "content": ""}}
    if not req.messages:
        return await _load_only(request, name, keep_alive, empty_message)
    if any(m.images for m in req.messages):
        raise bad_request("this server's models do not take images")
    settings, num_ctx, nothing = settings_from_ollama(req.options)
    messages = [{"role": m.role, "content": m.content} for m in req.messages]
    make = chat_call(messages, settings, think=think_flag(req.think), nothing=nothing)
    gen = await streaming.start(request.app.state.manager, request, name, make,
                                keep_alive=keep_alive, n_ctx=num_ctx)

    def piece(thinking: str, answer: str) -> dict:
        msg: dict[str, Any] = {"role": "assistant", "content": answer}
        if thinking:
            msg["thinking"] = thinking
        return {"message": msg}

    return await _respond(request, name, gen, started, req.stream, piece)


# ---- model listings ------------------------------------------------------------------

def known_models(request: Request) -> list[dict]:
    """Store entries, then loaded models and --model that are not in the store (paths)."""
    from r1local.store import Store

    out: dict[str, dict] = {}
    for m in Store().list():
        out[str(m.path.resolve())] = {"name": m.name, "path": m.path, "stored": m}
    manager = request.app.state.manager
    for slot in manager.loaded.values():
        out.setdefault(slot.key, {"name": slot.name, "path": slot.model.path,
                                  "stored": slot.model.stored})
    return list(out.values())


def _entry(name: str, path, stored: Any) -> dict:
    return {"name": name, "model": name, "modified_at": describe.modified_at(path, stored),
            "size": stored.size if stored is not None else path.stat().st_size,
            "digest": describe.digest(path, stored),
            "details": describe.details(path, stored)}


@router.get("/api/tags")
async def tags(request: Request) -> dict:
    models = await asyncio.to_thread(
        lambda: [_entry(m["name"], m["path"], m["stored"]) for m in known_models(request)
                 if m["path"].is_file()])
    return {"models": models}


@router.get("/api/ps")
async def ps(request: Request) -> dict:
    out = []
    now_mono, now = time.monotonic(), time.time()
    for slot in list(request.app.state.manager.loaded.values()):
        entry = _entry(slot.name, slot.model.path, slot.model.stored)
        # expires_at: in use or kept forever -> far future, as Ollama shows for keep_alive -1
        remaining = (slot.expires_at - now_mono) if slot.expires_at is not None else 1e9
        entry.update({"expires_at": describe.iso(now + min(remaining, 1e9)),
                      "size_vram": slot.vram_bytes, "context_length": slot.engine.n_ctx,
                      "plan": slot.plan.as_dict()})  # r1local's own: how it was loaded
        del entry["modified_at"]
        out.append(entry)
    return {"models": out}


@router.post("/api/show")
async def show(request: Request) -> dict:
    req = parse(ShowRequest, await request.body())
    name = req.model or req.name
    res = await request.app.state.manager.resolve(name)

    def build() -> dict:
        f = describe.facts(res.path)
        return {"modelfile": f"# r1local\nFROM {res.path}\n", "parameters": "",
                "template": f["template"], "details": describe.details(res.path, res.stored),
                "model_info": f["model_info"], "capabilities": describe.capabilities(res.path),
                "modified_at": describe.modified_at(res.path, res.stored)}

    try:
        return await asyncio.to_thread(build)
    except Exception as err:
        from r1local.server.errors import from_r1local

        raise from_r1local(err) from None


@router.get("/api/version")
async def version() -> dict:
    return {"version": OLLAMA_API_VERSION, "r1local": __version__}


@router.post("/api/pull")
async def pull(request: Request) -> Any:
    req = parse(PullRequest, await request.body())
    ref = req.model or req.name
    if not ref:
        raise bad_request("the request names no model (field \"model\")", param="model")
    request.app.state.manager.names.check(ref)  # a pull names a catalog tag, never a path
    from r1local.session import pull_model
    from r1local.server.pulling import run_pull

    return await run_pull(pull_model, ref, req.stream)
