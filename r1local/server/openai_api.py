"""OpenAI's API: /v1/chat/completions, /v1/completions, /v1/models.

The reasoning goes into `reasoning_content` (`delta.reasoning_content` when streaming), as
DeepSeek's own API does, and `content` holds only the answer. Streams are SSE ending in
`data: [DONE]`; `stream_options.include_usage` adds the usage chunk before it.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any, AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from r1local.server import streaming
from r1local.server.calls import (chat_call, completion_call, finish_reason,
                                  settings_from_openai)
from r1local.server.errors import bad_request, openai_body
from r1local.server.schemas import (ChatCompletionRequest, CompletionRequest, message_text,
                                    parse)

COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
OWNER = "r1local"

router = APIRouter()


def _usage(out: streaming.Outcome) -> dict:
    st = out.stats
    prompt = st.prompt_tokens if st else 0
    completion = st.completion_tokens if st else 0
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "completion_tokens_details": {"reasoning_tokens": st.thinking_tokens if st else 0}}


def _sse(obj: Any) -> bytes:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n".encode()


def _model_name(request: Request, name: str) -> str:
    return name or (request.app.state.config.model or "")


@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Any:
    req = parse(ChatCompletionRequest, await request.body())
    if req.tools:
        raise bad_request("tools are not supported by these models", param="tools")
    name = _model_name(request, req.model)
    settings = settings_from_openai(req, req.max_completion_tokens or req.max_tokens)
    messages = [{"role": "system" if m.role == "developer" else m.role,
                 "content": message_text(m.content)} for m in req.messages]
    gen = await streaming.start(request.app.state.manager, request, name,
                                chat_call(messages, settings, think=None),
                                keep_alive=None, n_ctx=None)
    cid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
    reasoning = gen.lease.engine.is_reasoning

    if not req.stream:
        out = await gen.collect()
        message: dict[str, Any] = {"role": "assistant", "content": out.answer}
        if reasoning:
            message["reasoning_content"] = out.thinking
        return JSONResponse({
            "id": cid, "object": "chat.completion", "created": created, "model": name,
            "choices": [{"index": 0, "message": message, "logprobs": None,
                         "finish_reason": finish_reason(out.stats)}],
            "usage": _usage(out)})

    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    usage_head = {"id": cid, "object": "chat.completion.chunk", "created": created,
                  "model": name, "choices": []}

    def chunk(delta: dict, finish: str | None = None) -> dict:
        body = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": name,
                "choices": [{"index": 0, "delta": delta, "logprobs": None,
                             "finish_reason": finish}]}
        if include_usage:
            body["usage"] = None
        return body

    async def events() -> AsyncIterator[bytes]:
        yield _sse(chunk({"role": "assistant", "content": ""}))
        async for c in gen.chunks():
            if c.kind == "thinking":
                yield _sse(chunk({"content": None, "reasoning_content": c.text}))
            else:
                yield _sse(chunk({"content": c.text, "reasoning_content": None}
                                 if reasoning else {"content": c.text}))
        async for event in _stream_end(gen, lambda out: chunk({}, finish_reason(out.stats)),
                                       usage_head if include_usage else None):
            yield event

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache"})


async def _stream_end(gen: Any, final: Any, usage_head: dict | None) -> AsyncIterator[bytes]:
    """The end of an SSE stream: the error, or the finish chunk (and usage when asked),
    then [DONE]. Shared by chat and plain completions."""
    out = await gen.outcome()
    if out.error is not None:
        yield _sse(openai_body(out.error))
    else:
        yield _sse(final(out))
        if usage_head is not None:
            yield _sse({**usage_head, "usage": _usage(out)})
    yield b"data: [DONE]\n\n"


@router.post("/v1/completions")
async def completions(request: Request) -> Any:
    req = parse(CompletionRequest, await request.body())
    prompt = req.prompt
    if isinstance(prompt, list):
        if len(prompt) != 1:
            raise bad_request("give one prompt (a string, or a list of one)", param="prompt")
        prompt = prompt[0]
    if req.echo:
        raise bad_request("echo is not supported", param="echo")
    name = _model_name(request, req.model)
    settings = settings_from_openai(req, req.max_tokens or COMPLETIONS_DEFAULT_MAX_TOKENS)
    gen = await streaming.start(request.app.state.manager, request, name,
                                completion_call(prompt, settings), keep_alive=None, n_ctx=None)
    cid, created = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())

    def body(text: str, finish: str | None) -> dict:
        return {"id": cid, "object": "text_completion", "created": created, "model": name,
                "choices": [{"text": text, "index": 0, "logprobs": None,
                             "finish_reason": finish}]}

    if not req.stream:
        out = await gen.collect()
        return JSONResponse({**body(out.answer, finish_reason(out.stats)), "usage": _usage(out)})

    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    usage_head = {"id": cid, "object": "text_completion", "created": created,
                  "model": name, "choices": []}

    async def events() -> AsyncIterator[bytes]:
        async for c in gen.chunks():
            yield _sse(body(c.text, None))
        async for event in _stream_end(gen, lambda out: body("", finish_reason(out.stats)),
                                       usage_head if include_usage else None):
            yield event

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache"})


@router.get("/v1/models")
async def models(request: Request) -> dict:
    from r1local.server.ollama_api import known_models

    def build() -> list[dict]:
        out = []
        for m in known_models(request):
            try:
                created = int(m["path"].stat().st_mtime)
            except OSError:
                continue
            out.append({"id": m["name"], "object": "model", "created": created,
                        "owned_by": OWNER})
        return out

    return {"object": "list", "data": await asyncio.to_thread(build)}
