"""OpenAI's API: /v1/chat/completions, /v1/completions, /v1/models, /v1/models/{id}.

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
from r1local.server.calls import (finish_reason, message_calls, openai_tool_calls,
                                  output_grammar, settings_from_openai, tool_request)
from r1local.server.errors import ApiError, bad_request, openai_body
from r1local.server.names import canonical, listed, shown
from r1local.server.schemas import (ChatCompletionRequest, CompletionRequest, message_text,
                                    parse)
from r1local.server.unsupported import not_implemented, refuse_openai
from r1local.server.window import OPENAI_REFUSAL, windowed_chat, windowed_completion
from r1local.tool_calls import ToolStream, split_reply

COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
OWNER = "r1local"
# reasoning_effort -> the thinking budget in tokens (GenerationSettings.think_budget):
# "none" skips the reasoning, "high" leaves it bounded only by the context's answer reserve
REASONING_EFFORT: dict[str, int | None] = {
    "none": 0, "minimal": 256, "low": 1024, "medium": 4096, "high": None,
}

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
    raw = await request.body()
    req = parse(ChatCompletionRequest, raw)
    refuse_openai(raw)
    tools, tool_choice = tool_request(req.tools, req.tool_choice)
    name = _model_name(request, req.model)
    from r1local.batching import MAX_PARALLEL

    settings = settings_from_openai(req, req.max_completion_tokens or req.max_tokens,
                                    most_n=MAX_PARALLEL)
    settings.grammar = output_grammar("response_format", req.response_format)
    messages = [{"role": "system" if m.role == "developer" else m.role,
                 "content": message_text(m.content),
                 **({"tool_calls": message_calls(m.tool_calls, f"messages[{i}].tool_calls")}
                    if m.tool_calls else {})} for i, m in enumerate(req.messages)]
    manager = request.app.state.manager
    make = windowed_chat(manager, messages, settings, n_ctx=None, truncate=False, think=None,
                         refusal=OPENAI_REFUSAL, tools=tools, tool_choice=tool_choice, choices=req.n)
    if req.reasoning_effort is not None:
        settings.think_budget = REASONING_EFFORT[req.reasoning_effort]
        make = _reasoning_only(make, req.reasoning_effort)
    gen = await streaming.start(manager, request, name, make, keep_alive=None, n_ctx=None)
    cid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
    reasoning = gen.lease.engine.is_reasoning
    # calls are looked for only when tools were offered: else the answer is all content
    family = gen.lease.engine.tool_family if tools else None
    if req.n > 1:
        return await _choices(gen, req, cid, created, name, reasoning, family)

    if not req.stream:
        out = await gen.collect()
        content, calls = split_reply(family, out.answer)
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if reasoning:
            message["reasoning_content"] = out.thinking
        if calls:
            message.update(content=content or None, tool_calls=openai_tool_calls(calls))
        return JSONResponse({
            "id": cid, "object": "chat.completion", "created": created, "model": name,
            "choices": [{"index": 0, "message": message, "logprobs": None,
                         "finish_reason": "tool_calls" if calls else finish_reason(out.stats)}],
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

    def content_delta(text: str) -> dict:
        return chunk({"content": text, "reasoning_content": None} if reasoning else {"content": text})

    async def events() -> AsyncIterator[bytes]:
        yield _sse(chunk({"role": "assistant", "content": ""}))
        calls_out = ToolStream(family)  # text that may be a call is held back
        async for c in gen.chunks():
            if c.kind == "thinking":
                yield _sse(chunk({"content": None, "reasoning_content": c.text}))
            elif (text := calls_out.feed(c.text)):
                yield _sse(content_delta(text))
        rest, calls = calls_out.finish()
        if rest:
            yield _sse(content_delta(rest))
        if calls:
            yield _sse(chunk({"tool_calls": [{"index": i, **call} for i, call
                                             in enumerate(openai_tool_calls(calls))]}))
        async for event in _stream_end(
                gen, lambda out: chunk({}, "tool_calls" if calls else finish_reason(out.stats)),
                usage_head if include_usage else None):
            yield event

    return StreamingResponse(streaming.joined(events(), gen), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache"})


async def _choices(gen: Any, req: ChatCompletionRequest, cid: str, created: int, name: str,
                   reasoning: bool, family: Any) -> Any:
    """`n` > 1: the choices decoded together (calls.Choices), each its own message, and
    r1local's `vote`: the majority answer over them (r1local.vote)."""
    from r1local.vote import majority

    head = {"id": cid, "created": created, "model": name}

    def message(thinking: str, answer: str) -> tuple[dict, bool]:
        content, calls = split_reply(family, answer)
        m: dict[str, Any] = {"role": "assistant", "content": content}
        if reasoning:
            m["reasoning_content"] = thinking
        if calls:
            m.update(content=content or None, tool_calls=openai_tool_calls(calls))
        return m, bool(calls)

    if not req.stream:
        parts = [{"thinking": [], "answer": [], "finish": "stop"} for _ in range(req.n)]
        async for c in gen.chunks():
            if c.finish is not None:
                parts[c.index]["finish"] = c.finish
            else:
                parts[c.index][c.kind].append(c.text)
        out = await gen.outcome()
        if out.error is not None:
            raise out.error
        choices, answers = [], []
        for i, p in enumerate(parts):
            answers.append("".join(p["answer"]))
            m, called = message("".join(p["thinking"]), answers[-1])
            choices.append({"index": i, "message": m, "logprobs": None,
                            "finish_reason": "tool_calls" if called else p["finish"]})
        return JSONResponse({**head, "object": "chat.completion", "choices": choices,
                             "usage": _usage(out), "vote": majority(answers).as_dict()})

    include_usage = bool(req.stream_options and req.stream_options.include_usage)

    def chunk(i: int, delta: dict, finish: str | None = None) -> dict:
        body = {**head, "object": "chat.completion.chunk",
                "choices": [{"index": i, "delta": delta, "logprobs": None,
                             "finish_reason": finish}]}
        if include_usage:
            body["usage"] = None
        return body

    async def events() -> AsyncIterator[bytes]:
        answers = [""] * req.n
        held = [ToolStream(family) for _ in range(req.n)]
        started: set[int] = set()
        async for c in gen.chunks():
            i = c.index
            if i not in started:
                started.add(i)
                yield _sse(chunk(i, {"role": "assistant", "content": ""}))
            if c.finish is not None:
                rest, calls = held[i].finish()
                if rest:
                    yield _sse(chunk(i, {"content": rest}))
                if calls:
                    yield _sse(chunk(i, {"tool_calls": [{"index": k, **call} for k, call
                                                        in enumerate(openai_tool_calls(calls))]}))
                yield _sse(chunk(i, {}, "tool_calls" if calls else c.finish))
            elif c.kind == "thinking":
                yield _sse(chunk(i, {"content": None, "reasoning_content": c.text}))
            else:
                answers[i] += c.text
                if (text := held[i].feed(c.text)):
                    yield _sse(chunk(i, {"content": text}))
        out = await gen.outcome()
        if out.error is not None:
            yield _sse(openai_body(out.error))
        else:
            yield _sse({**head, "object": "chat.completion.chunk", "choices": [],
                        "vote": majority(answers).as_dict()})
            if include_usage:
                yield _sse({**head, "object": "chat.completion.chunk", "choices": [],
                            "usage": _usage(out)})
        yield b"data: [DONE]\n\n"

    return StreamingResponse(streaming.joined(events(), gen), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache"})


def _reasoning_only(make: Any, effort: str) -> Any:
    """reasoning_effort on a model that does not reason is refused, not ignored."""

    def checked(engine: Any, cancel: Any) -> Any:
        if not engine.is_reasoning:
            raise bad_request(f"'{engine.name}' is not a reasoning model: reasoning_effort "
                              f"{effort!r} cannot apply (leave it out)",
                              param="reasoning_effort")
        return make(engine, cancel)

    return checked


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
    raw = await request.body()
    req = parse(CompletionRequest, raw)
    refuse_openai(raw)
    prompt = req.prompt
    if isinstance(prompt, list):
        if len(prompt) != 1:
            raise bad_request("give one prompt (a string, or a list of one)", param="prompt")
        prompt = prompt[0]
    if req.echo:
        raise not_implemented("echo is not supported by r1local", param="echo")
    name = _model_name(request, req.model)
    settings = settings_from_openai(req, req.max_tokens or COMPLETIONS_DEFAULT_MAX_TOKENS)
    manager = request.app.state.manager
    gen = await streaming.start(manager, request, name,
                                windowed_completion(manager, prompt, settings, n_ctx=None,
                                                    hint=OPENAI_REFUSAL),
                                keep_alive=None, n_ctx=None)
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

    return StreamingResponse(streaming.joined(events(), gen), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache"})


def _model_entries(request: Request) -> list[dict]:
    """Every model as OpenAI lists one (blocking); ids as /api/tags names them."""
    from r1local.server.ollama_api import known_models

    out = []
    for m in known_models(request):
        try:
            created = int(m["path"].stat().st_mtime)
        except OSError:
            continue
        out.append({"id": listed(m["name"]), "object": "model", "created": created,
                    "owned_by": OWNER})
    return out


@router.get("/v1/models")
async def models(request: Request) -> dict:
    return {"object": "list", "data": await asyncio.to_thread(_model_entries, request)}


@router.get("/v1/models/{model_id:path}")
async def model(request: Request, model_id: str) -> dict:
    """One model: listed under this id or its other spelling ("micro" / "micro:latest");
    any other name the server would load (a catalog tag pulled under its quant's name)."""
    want = canonical(model_id).lower()
    entries = await asyncio.to_thread(_model_entries, request)
    hit = next((e for e in entries if canonical(e["id"]).lower() == want), None)
    if hit is None:
        try:
            res = await request.app.state.manager.resolve(model_id)
            created = int(res.path.stat().st_mtime)
        except (ApiError, OSError):
            raise ApiError(404, f"the model '{shown(model_id)}' does not exist (GET /v1/models "
                           "lists them)", code="model_not_found", param="model") from None
        hit = {"id": model_id, "object": "model", "created": created, "owned_by": OWNER}
    return hit
