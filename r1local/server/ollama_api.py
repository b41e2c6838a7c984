"""Ollama's API: /api/generate, /api/chat, /api/tags, /api/ps, /api/show, /api/version,
/api/pull, /api/delete, /api/copy.

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
from r1local.server.calls import (finish_reason, message_calls, ollama_tool_calls,
                                  output_grammar, settings_from_ollama, think_flag,
                                  tool_request)
from r1local.server.config import parse_duration
from r1local.server.errors import ApiError, bad_request, ollama_body
from r1local.server.names import canonical, listed, shown
from r1local.server.schemas import (ChatRequest, CopyRequest, DeleteRequest, GenerateRequest,
                                    PullRequest, ShowRequest, parse)
from r1local.server.unsupported import not_implemented, refuse_ollama
from r1local.server.window import windowed_chat, windowed_completion
from r1local.tool_calls import ToolStream, split_reply

# The Ollama API version we speak (`think` arrived in 0.9); clients gate features on it.
OLLAMA_API_VERSION = "0.9.0"
NDJSON = "application/x-ndjson"

router = APIRouter()


def _ns(seconds: float) -> int:
    return int(max(0.0, seconds) * 1e9)


def keep_alive_seconds(value: Any) -> float | None:
    """Ollama's keep_alive field (seconds or a duration string) in seconds; a bad one is a 400."""
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
        raise not_implemented("images are not supported: r1local serves text models",
                              param="images")
    if getattr(req, "suffix", None):
        raise not_implemented("\"suffix\" (fill-in-the-middle) is not supported",
                              param="suffix")


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
                   stream: bool, piece, family: Any = None) -> Any:
    """Stream NDJSON lines, or gather one JSON object. `piece(thinking, answer)` builds the
    per-chunk body (`response`/`thinking` or `message`). ``family``: a chat's tool-call
    format, when tools were offered (calls go into `message.tool_calls`)."""
    if not stream:
        out = await gen.collect()
        content, calls = split_reply(family, out.answer)
        body = {"model": name, "created_at": describe.now_iso(), **piece(out.thinking, content),
                **_final_fields(gen, out, started)}
        if calls:
            body["message"]["tool_calls"] = ollama_tool_calls(calls)
        return JSONResponse(body)

    async def lines() -> AsyncIterator[bytes]:
        calls_out = ToolStream(family)  # text that may be a call is held back
        async for chunk in gen.chunks():
            thinking, answer = (chunk.text, "") if chunk.kind == "thinking" else ("", chunk.text)
            answer = calls_out.feed(answer) if answer else ""
            if thinking or answer:
                yield _line({"model": name, "created_at": describe.now_iso(),
                             **piece(thinking, answer), "done": False})
        rest, calls = calls_out.finish()
        if rest or calls:
            body = piece("", rest)
            if calls:
                body["message"]["tool_calls"] = ollama_tool_calls(calls)
            yield _line({"model": name, "created_at": describe.now_iso(), **body, "done": False})
        out = await gen.outcome()
        if out.error is not None:
            yield _line(ollama_body(out.error))
            return
        yield _line({"model": name, "created_at": describe.now_iso(), **piece("", ""),
                     **_final_fields(gen, out, started)})

    return StreamingResponse(streaming.joined(lines(), gen), media_type=NDJSON)


def _line(obj: dict) -> bytes:
    return (json.dumps(obj, ensure_ascii=False) + "\n").encode()


@router.post("/api/generate")
async def generate(request: Request) -> Any:
    started = time.monotonic()
    raw = await request.body()
    req = parse(GenerateRequest, raw)
    refuse_ollama(raw)
    name = _model_name(request, req.model)
    keep_alive = keep_alive_seconds(req.keep_alive)
    _unsupported(req)
    if not req.prompt and not req.system:
        return await _load_only(request, name, keep_alive, {"response": ""})
    settings, num_ctx, nothing = settings_from_ollama(req.options)
    settings.grammar = output_grammar("format", req.format)
    think = think_flag(req.think)
    manager = request.app.state.manager
    if req.raw:
        make = windowed_completion(manager, req.prompt or "", settings, n_ctx=num_ctx,
                                   nothing=nothing)
    else:
        messages = ([{"role": "system", "content": req.system}] if req.system else []) + [
            {"role": "user", "content": req.prompt or ""}]
        make = windowed_chat(manager, messages, settings, n_ctx=num_ctx,
                             truncate=req.truncate, think=think, nothing=nothing)
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
    raw = await request.body()
    req = parse(ChatRequest, raw)
    refuse_ollama(raw)
    name = _model_name(request, req.model)
    keep_alive = keep_alive_seconds(req.keep_alive)
    _unsupported(req)
    empty_message = {"message": {"role": "assistant", "content": ""}}
    if not req.messages:
        return await _load_only(request, name, keep_alive, empty_message)
    if any(m.images for m in req.messages):
        raise not_implemented("images are not supported: r1local serves text models",
                              param="messages.images")
    settings, num_ctx, nothing = settings_from_ollama(req.options)
    settings.grammar = output_grammar("format", req.format)
    tools, _ = tool_request(req.tools, None)
    messages = [{"role": m.role, "content": m.content,
                 **({"tool_calls": message_calls(m.tool_calls, f"messages[{i}].tool_calls")}
                    if m.tool_calls else {})} for i, m in enumerate(req.messages)]
    make = windowed_chat(request.app.state.manager, messages, settings, n_ctx=num_ctx,
                         truncate=req.truncate, think=think_flag(req.think), nothing=nothing,
                         tools=tools)
    gen = await streaming.start(request.app.state.manager, request, name, make,
                                keep_alive=keep_alive, n_ctx=num_ctx)

    def piece(thinking: str, answer: str) -> dict:
        msg: dict[str, Any] = {"role": "assistant", "content": answer}
        if thinking:
            msg["thinking"] = thinking
        return {"message": msg}

    family = gen.lease.engine.tool_family if tools else None
    return await _respond(request, name, gen, started, req.stream, piece, family)


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
    name = listed(name)  # as Ollama lists names: "micro:latest"
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
        # context_length: what is allocated; r1local's own fields: how it was loaded, and
        # the context a request without num_ctx gets (a smaller window inside it)
        entry.update({"expires_at": describe.iso(now + min(remaining, 1e9)),
                      "size_vram": slot.vram_bytes, "context_length": slot.engine.n_ctx,
                      "default_context_length": slot.default_ctx,
                      # requests decoded together, each with context_length of its own
                      "parallel": slot.engine.n_parallel, "active": slot.active,
                      "plan": slot.plan.as_dict()})
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
    ref = canonical(req.model or req.name)
    if not ref:
        raise bad_request("the request names no model (field \"model\")", param="model")
    request.app.state.manager.names.check(ref)  # a pull names a catalog tag, never a path
    from r1local.session import pull_model
    from r1local.server.pulling import run_pull

    return await run_pull(pull_model, ref, req.stream)


# ---- the store: delete, copy --------------------------------------------------------

def _store_entry(request: Request, name: str, field: str) -> Any:
    """The store entry a request names (blocking), 404 when the store has none."""
    from r1local.catalog import load_catalog
    from r1local.store import Store

    request.app.state.manager.names.check(name)  # a path is no store name
    found = Store().find(name, load_catalog())
    if found is None:
        raise ApiError(404, f"model '{shown(name)}' not found in the store (`r1local list`, "
                       "or GET /api/tags, shows what is there)", code="model_not_found",
                       param=field)
    return found


def _usage_error(err: Exception, field: str) -> ApiError:
    from r1local.errors import R1LocalError
    from r1local.server.errors import from_r1local

    if isinstance(err, ApiError):
        return err
    api = from_r1local(err) if isinstance(err, R1LocalError) else ApiError(500, str(err))
    api.param = api.param or field
    return api


@router.delete("/api/delete")
async def delete(request: Request) -> JSONResponse:
    req = parse(DeleteRequest, await request.body())
    name = canonical(req.model or req.name)
    if not name:
        raise bad_request("the request names no model (field \"model\")", param="model")
    manager = request.app.state.manager
    try:
        found = await asyncio.to_thread(_store_entry, request, name, "model")
    except Exception as err:
        raise _usage_error(err, "model") from None
    files = {f.resolve() for f in found.files}
    for slot in list(manager.loaded.values()):
        if slot.model.path.resolve() in files:
            if slot.pinned:
                raise bad_request(f"'{shown(name)}' is the model this server was started "
                                  "with (--model); stop the server to delete it", param="model")
            await manager.unload_key(slot.key)  # waits for a request still using it
    from r1local.store import Store

    try:
        await asyncio.to_thread(Store().remove, found.name)
    except Exception as err:
        raise _usage_error(err, "model") from None
    return JSONResponse({"status": "success"})


@router.post("/api/copy")
async def copy(request: Request) -> JSONResponse:
    req = parse(CopyRequest, await request.body())
    source, dest = canonical(req.source), canonical(req.destination)
    for field, value in (("source", source), ("destination", dest)):
        if not value:
            raise bad_request(f"the request names no {field} model (field \"{field}\")",
                              param=field)

    def work() -> None:
        from r1local.catalog import load_catalog
        from r1local.errors import UnknownModelError, UsageError
        from r1local.store import Store, check_name

        found = _store_entry(request, source, "source")
        try:
            check_name(dest)
        except UsageError as err:
            raise bad_request(f"'{shown(dest)}' cannot be a model name: {err.hint}",
                              param="destination") from None
        try:
            ref = load_catalog().resolve(dest)
        except UnknownModelError:
            pass
        else:  # an import of a catalog name would make `7b` ambiguous, as `r1local import` says
            raise bad_request(f"'{shown(dest)}' is a catalog name ({ref.variant.tag}): choose "
                              "another destination", param="destination")
        Store().copy(found.name, dest)

    try:
        await asyncio.to_thread(work)
    except Exception as err:
        raise _usage_error(err, "destination") from None
    return JSONResponse({"status": "success"})
