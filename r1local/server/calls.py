"""From validated requests to engine calls: settings, messages, and what to run.

Shared by both API families so they treat the same sampling fields the same way.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Iterator

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


def settings_from_openai(req: Any, max_tokens: int | None) -> Any:
    from r1local.engine import GenerationSettings

    if req.n != 1:
        raise bad_request("only n=1 is supported", param="n")
    s = GenerationSettings()
    _apply(s, req, OPENAI_FIELDS)
    s.stop = stop_list(req.stop)
    s.max_tokens = max_tokens
    return s


def chat_call(messages: list[dict], settings: Any, *, think: bool | None,
              nothing: bool = False) -> EngineCall:
    """The engine call for a chat; `think` False asks a reasoning model to skip reasoning
    (an empty `<think></think>`, as Ollama's R1 template does), True requires a reasoning model."""

    def make(engine: Any, cancel: threading.Event) -> Iterator[Any]:
        if think is True and not engine.is_reasoning:
            raise bad_request(f"'{engine.name}' does not support thinking", param="think")
        if think is False and engine.is_reasoning:
            settings.think_budget = 0
        prompt = engine.format_chat(messages)  # what the engine tokenizes, history stripped
        refuse_huge_prompt(engine, prompt)
        if nothing:
            return NoTokens(engine, _check_fits(engine, prompt))
        return engine.chat(messages, settings, cancel=cancel)

    return make


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
