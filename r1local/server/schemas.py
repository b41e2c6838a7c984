"""Request bodies of both APIs, validated strictly (a wrong type is a 400, not a guess).

Unknown fields are ignored, as Ollama and OpenAI clients send many we do not use.
The tables at the top say which request field becomes which GenerationSettings field.
"""

from __future__ import annotations

from typing import Any, Literal, Union

import re

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from r1local.planner import MIN_CTX
from r1local.server.errors import ApiError, bad_request
from r1local.server.limits import MAX_NUM_CTX, MAX_SEED, MAX_TOP_K

# Ollama `options` key -> GenerationSettings field (num_predict / num_ctx handled apart)
OLLAMA_OPTIONS = {
    "temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "min_p": "min_p",
    "repeat_penalty": "repeat_penalty", "seed": "seed",
    "think_budget": "think_budget",  # r1local's own: reasoning tokens before the answer
}
# OpenAI request field -> GenerationSettings field (top_k, min_p, repeat_penalty: llama.cpp extensions)
OPENAI_FIELDS = {
    "temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "min_p": "min_p",
    "repeat_penalty": "repeat_penalty", "seed": "seed",
}

# pydantic puts union members ("str", "list[str]", "TextPart") into error locations
_TYPE_TAG = re.compile(r"str|int|float|bool|none|(list|literal|dict)\[.*\]|function-.*|[A-Z]\w*")

Think = Union[bool, Literal["high", "medium", "low"], None]
Stop = Union[str, list[str], None]


class _Body(BaseModel):
    # pydantic's JSON reader takes NaN and Infinity: meaningless as settings
    model_config = ConfigDict(strict=True, extra="ignore", allow_inf_nan=False)


class Sampling(_Body):
    temperature: float | None = Field(None, ge=0, le=5)
    top_p: float | None = Field(None, ge=0, le=1)
    top_k: int | None = Field(None, ge=0, le=MAX_TOP_K)
    min_p: float | None = Field(None, ge=0, le=1)
    repeat_penalty: float | None = Field(None, ge=0)
    seed: int | None = Field(None, ge=-1, le=MAX_SEED)  # -1: random, as Ollama's default


class OllamaOptions(Sampling):
    num_ctx: int | None = Field(None, ge=MIN_CTX, le=MAX_NUM_CTX)
    num_predict: int | None = Field(None, ge=-2)  # -1: no limit, -2: fill the context
    think_budget: int | None = Field(None, ge=0)  # r1local's own (the web chat's setting)
    stop: Stop = None


class OllamaMessage(_Body):
    role: Literal["system", "user", "assistant", "tool"]
    content: str = ""
    thinking: str | None = None
    images: list[Any] | None = None
    tool_calls: list[Any] | None = None  # r1local.tool_calls.calls_from_message reads them
    tool_name: str | None = None


class _OllamaCommon(_Body):
    model: str = ""
    stream: bool = True
    options: OllamaOptions | None = None
    keep_alive: Union[str, int, float, None] = None
    think: Think = None
    format: Any = None
    truncate: bool = True  # False: a prompt longer than the context is a 400, no turn dropped


class GenerateRequest(_OllamaCommon):
    prompt: str | None = None
    system: str | None = None
    suffix: str | None = None
    raw: bool = False
    images: list[Any] | None = None


class ChatRequest(_OllamaCommon):
    messages: list[OllamaMessage] = Field(default_factory=list)
    tools: list[Any] | None = None


class ShowRequest(_Body):
    model: str = ""
    name: str = ""  # older clients
    verbose: bool = False


class DeleteRequest(_Body):
    model: str = ""
    name: str = ""  # older clients


class CopyRequest(_Body):
    source: str = ""
    destination: str = ""


class PullRequest(_Body):
    model: str = ""
    name: str = ""  # older clients
    stream: bool = True
    insecure: bool = False


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: str
    text: str | None = None


class OpenAIMessage(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Union[str, list[TextPart], None] = None
    reasoning_content: str | None = None
    name: str | None = None
    tool_calls: list[Any] | None = None  # r1local.tool_calls.calls_from_message reads them
    tool_call_id: str | None = None


class StreamOptions(_Body):
    include_usage: bool = False


class _OpenAICommon(Sampling):
    model: str = ""
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1)
    stop: Stop = None
    n: int = Field(1, ge=1)
    frequency_penalty: float | None = None  # accepted, not used (llama.cpp's are off)
    presence_penalty: float | None = None


ReasoningEffort = Literal["none", "minimal", "low", "medium", "high"]


class ChatCompletionRequest(_OpenAICommon):
    messages: list[OpenAIMessage] = Field(min_length=1)
    reasoning_effort: ReasoningEffort | None = None  # a thinking budget (openai_api)
    max_completion_tokens: int | None = Field(None, ge=1)
    tools: list[Any] | None = None  # checked by r1local.tool_calls.check_tools
    tool_choice: Any = None  # "auto" | "none" | "required" | {"type": "function", ...}
    parallel_tool_calls: bool | None = None
    response_format: Any = None  # checked by r1local.structured (text / json_object / json_schema)


class CompletionRequest(_OpenAICommon):
    prompt: Union[str, list[str]]
    echo: bool = False


def parse(model: type[_Body], raw: bytes) -> Any:
    """Validate a JSON body; every problem becomes one 400 line naming the field."""
    if not raw.strip():
        raw = b"{}"
    try:
        return model.model_validate_json(raw)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()) if not _TYPE_TAG.fullmatch(str(p)))
        if first.get("type") == "json_invalid":
            raise bad_request(f"malformed JSON: {first.get('msg', '')}".rstrip(": ")) from None
        more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
        msg = first.get("msg", "invalid value")
        raise ApiError(400, f"invalid field {where or 'body'}: {msg}{more}",
                       param=where or None) from None


def stop_list(stop: Stop) -> tuple[str, ...]:
    if stop is None:
        return ()
    items = [stop] if isinstance(stop, str) else list(stop)
    return tuple(s for s in items if s)


def message_text(content: Union[str, list[TextPart], None]) -> str:
    """OpenAI content may be a list of parts: text parts are joined, others refused."""
    if content is None or isinstance(content, str):
        return content or ""
    out = []
    for part in content:
        if part.type != "text":
            raise bad_request(f"content parts of type {part.type!r} are not supported (text only)")
        out.append(part.text or "")
    return "".join(out)
