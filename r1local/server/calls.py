"""From validated requests to engine calls: settings, messages, and what to run.

Shared by both API families so they treat the same sampling fields the same way.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from r1local.reasoning import Chunk

from r1local.server.errors import ApiError, bad_request
from r1local.server.limits import refuse_huge_prompt
from r1local.server.schemas import OLLAMA_OPTIONS, OPENAI_FIELDS, OllamaOptions, stop_list
from r1local.server.streaming import NoTokens

EngineCall = Callable[[Any, threading.Event], Iterator[Any]]


def _apply(settings: Any, req: Any, table: dict[str, str]) -> None:
    for key, attr in table.items():
        value = getattr(req, key)
        if key == "seed" and value == -1:
            value = None  # Ollama's "random": unseeded, so the prompt cache still applies
        if value is not None:
            setattr(settings, attr, value)


def settings_from_ollama(options: OllamaOptions | None) -> tuple[Any, int | None, bool]:
    """(GenerationSettings, num_ctx, generate-nothing) from Ollama's `options`."""
    from r1local.engine import GenerationSettings

    s = GenerationSettings()
    if options is None:
        return s, None, False
    _apply(s, options, OLLAMA_OPTIONS)
    s.stop = stop_list(options.stop)
    n = options.num_predict
    if n is not None and n > 0:
        s.max_tokens = n
    return s, options.num_ctx, n == 0  # -1 / -2: until the context is full


def settings_from_openai(req: Any, max_tokens: int | None, *, most_n: int = 1) -> Any:
    """``most_n``: the most choices (`n`) this endpoint serves (chat: batching.MAX_PARALLEL)."""
    from r1local.engine import GenerationSettings

    if not 1 <= req.n <= most_n:
        raise bad_request("only n=1 is supported" if most_n == 1 else
                          f"n must be 1 to {most_n}", param="n")
    s = GenerationSettings()
    _apply(s, req, OPENAI_FIELDS)
    s.stop = stop_list(req.stop)
    s.max_tokens = max_tokens
    return s


def output_grammar(kind: str, value: Any) -> str | None:
    """The answer's grammar for Ollama's `format` (kind "format") or OpenAI's
    `response_format`; None when the reply is free text. A schema the grammar cannot
    enforce is a 400 naming what is unsupported, before any model is loaded."""
    from r1local.structured import (SchemaError, from_ollama_format,
                                    from_openai_response_format, schema_grammar)

    read = from_ollama_format if kind == "format" else from_openai_response_format
    try:
        schema = read(value)
        return schema_grammar(schema) if schema is not None else None
    except SchemaError as err:
        raise bad_request(err.message, param=kind) from None


def tool_request(tools: Any, choice: Any) -> tuple[list[dict] | None, str | None]:
    """(checked tool definitions or None, the choice: None for "auto", "required", or a
    function's name). `tool_choice` "none" means: no tools in this reply."""
    from r1local.tool_calls import ToolError, check_tools

    if not tools or choice == "none":
        return None, None
    try:
        checked = check_tools(tools)
    except ToolError as err:
        raise bad_request(str(err), param="tools") from None
    if choice in (None, "auto"):
        return checked, None
    if choice == "required":
        return checked, "required"
    name = choice.get("function", {}).get("name") if isinstance(choice, dict) else None
    if not isinstance(name, str) or name not in {t["function"]["name"] for t in checked}:
        raise bad_request("tool_choice must be \"auto\", \"none\", \"required\" or "
                          "{\"type\": \"function\", \"function\": {\"name\": NAME}} naming one of "
                          "the tools", param="tool_choice")
    return checked, name


def message_calls(raw: Any, where: str) -> list[Any] | None:
    """An assistant message's earlier tool_calls, as the engine takes them."""
    from r1local.tool_calls import ToolError, calls_from_message

    if not raw:
        return None
    try:
        return calls_from_message(raw)
    except ToolError as err:
        raise bad_request(f"{where}: {err}", param=where) from None


def openai_tool_calls(calls: list[Any]) -> list[dict]:
    return [{"id": c.id, "type": "function",
             "function": {"name": c.name, "arguments": c.arguments_json()}} for c in calls]


def ollama_tool_calls(calls: list[Any]) -> list[dict]:
    return [{"function": {"name": c.name, "arguments": c.arguments}} for c in calls]


def chat_call(messages: list[dict], settings: Any, *, think: bool | None,
              nothing: bool = False, tools: list[dict] | None = None,
              tool_choice: str | None = None, choices: int = 1) -> EngineCall:
    """The engine call for a chat; `think` False asks a reasoning model to skip reasoning
    (an empty `<think></think>`, as Ollama's R1 template does), True requires a reasoning model.
    ``tools``: definitions from tool_request (the model must have a tool-call format).
    ``choices`` > 1: that many replies (OpenAI's n), decoded together, as one Choices stream."""

    def make(engine: Any, cancel: threading.Event) -> Iterator[Any]:
        if think is True and not engine.is_reasoning:
            raise bad_request(f"'{engine.name}' does not support thinking", param="think")
        if tools and engine.tool_family is None:
            raise bad_request(f"'{engine.name}' does not support tools: its chat template has "
                              "no tool-call format r1local knows (DeepSeek R1's, or Qwen3's "
                              "<tool_call>)", param="tools")
        if think is False and engine.is_reasoning:
            settings.think_budget = 0
        # what the engine tokenizes, history stripped
        prompt = engine.format_chat(messages, tools=tools, tool_choice=tool_choice)
        refuse_huge_prompt(engine, prompt)
        if nothing:
            return NoTokens(engine, _check_fits(engine, prompt))
        if choices > 1:
            return Choices(engine.chat_samples(messages, settings.for_samples(choices),
                                               cancel=cancel, tools=tools,
                                               tool_choice=tool_choice))
        return engine.chat(messages, settings, cancel=cancel, tools=tools, tool_choice=tool_choice)

    return make


@dataclass
class ChoiceChunk(Chunk):
    """A chunk of choice ``index``; one with ``finish`` set (and no text) ends that choice."""

    index: int = 0
    finish: str | None = None


class Choices:
    """Several replies to one chat as one iterator of ChoiceChunks, choice after choice
    (they decode together; the later ones wait in their queues). ``stats``: the first
    one's, with every choice's tokens added up (OpenAI's usage)."""

    def __init__(self, streams: list[Any]) -> None:
        self._streams = streams
        self._it = self._chunks()

    def _chunks(self) -> Iterator[ChoiceChunk]:
        for i, stream in enumerate(self._streams):
            for c in stream:
                yield ChoiceChunk(c.kind, c.text, index=i)
            yield ChoiceChunk("answer", "", index=i, finish=finish_reason(stream.stats))

    def __iter__(self) -> "Choices":
        return self

    def __next__(self) -> ChoiceChunk:
        return next(self._it)

    def close(self) -> None:
        for stream in self._streams:
            close = getattr(stream, "close", None)
            if close is not None:
                close()

    @property
    def stats(self) -> Any:
        from dataclasses import replace

        each = [s.stats for s in self._streams if getattr(s, "stats", None) is not None]
        if not each:
            return None
        return replace(each[0], completion_tokens=sum(s.completion_tokens for s in each),
                       thinking_tokens=sum(s.thinking_tokens for s in each))


def completion_call(prompt: str, settings: Any, *, nothing: bool = False) -> EngineCall:
    def make(engine: Any, cancel: threading.Event) -> Iterator[Any]:
        refuse_huge_prompt(engine, prompt)
        if nothing:
            return NoTokens(engine, _check_fits(engine, prompt))
        return engine.complete(prompt, settings, cancel=cancel)

    return make


def _check_fits(engine: Any, prompt: str) -> int:
    n = engine.count_tokens(prompt)
    if n >= engine.n_ctx:
        raise ApiError(400, f"the prompt is {n} tokens but the context holds {engine.n_ctx}",
                       code="context_length_exceeded")
    return n


def think_flag(value: Any) -> bool | None:
    """Ollama's think: true/false, or a level ("high"...) which means true here."""
    if value is None or isinstance(value, bool):
        return value
    return True


def finish_reason(stats: Any) -> str:
    """Engine finish -> the API's: a loop cut by the guard is reported as a stop."""
    reason = getattr(stats, "finish_reason", "stop")
    return "length" if reason == "length" else "stop"
