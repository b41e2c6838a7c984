"""One request's share of a loaded context: its num_ctx (or the model's default), the turns
of a chat that fit in it, and its reply bounded to what is left.

A chat longer than its window loses its oldest turns, as Ollama does: every system message
and the last message stay, whole user turns (a user message and the replies after it) go
from the front until the prompt leaves room for a reply. `truncate: false` refuses instead
(400). A prompt that cannot fit even alone is refused (400 context_length_exceeded): the
last message is never cut, since a question missing its start is not the question asked.
"""

from __future__ import annotations

import threading
from typing import Any, Iterator

from r1local.server.calls import EngineCall, chat_call, completion_call
from r1local.server.errors import ApiError
from r1local.server.limits import longest_token_bytes

# the reply's room when a chat must lose turns: its max_tokens or the answer reserve, at
# most this share of the window (so a short window still keeps some history)
REPLY_SHARE = 4


def _too_long(what: str, limit: int, loaded: int, hint: str) -> ApiError:
    where = f"the context holds {limit}" + (f" (of {loaded} loaded)" if limit < loaded else "")
    return ApiError(400, f"the prompt is {what} but {where}; {hint}",
                    code="context_length_exceeded")


def _refuse_by_bytes(engine: Any, prompt: str, limit: int, hint: str) -> None:
    """The early refusal (limits.py's rule, for this window): a prompt of more bytes than
    `limit` tokens can hold is refused before anything tokenizes it."""
    longest = longest_token_bytes(getattr(engine, "path", None) or "")
    size = len(prompt.encode("utf-8", "surrogatepass"))
    if longest and size > limit * longest:
        raise _too_long(f"{size} bytes, more than {limit} tokens of this model could hold "
                        f"({longest} bytes at most each),", limit, engine.n_ctx, hint)


def reply_room(settings: Any, limit: int) -> int:
    from r1local.planner import answer_reserve

    want = settings.max_tokens or answer_reserve(limit)
    return max(1, min(want, limit // REPLY_SHARE))


def drop_oldest(messages: list[dict], k: int) -> list[dict]:
    """The messages without the first ``k`` non-system turns (system messages and the last
    message always stay)."""
    if k <= 0:
        return messages
    last = len(messages) - 1
    users = [i for i, m in enumerate(messages) if m.get("role") == "user" and i < last]
    # cut up to (not including) the (k+1)-th user message, or everything before the last
    cut = users[k] if k < len(users) else last
    return [m for i, m in enumerate(messages) if i >= cut or m.get("role") == "system"]


OLLAMA_REFUSAL = ("shorten it, ask for a larger num_ctx, or leave out `truncate: false` to "
                  "drop the oldest turns")
OPENAI_REFUSAL = "shorten it or send fewer earlier messages"


def fit_turns(engine: Any, messages: list[dict], limit: int, room: int,
              truncate: bool, refusal: str = OLLAMA_REFUSAL,
              tools: list[dict] | None = None) -> tuple[list[dict], int]:
    """(the messages to send, their prompt tokens) within ``limit`` tokens; ``refusal``:
    what to do, for a prompt refused because ``truncate`` is off."""
    hint = refusal if not truncate else "shorten the last message or ask for a larger num_ctx"
    count = lambda msgs: engine.count_tokens(engine.format_chat(msgs, tools=tools))  # noqa: E731
    users = sum(1 for m in messages[:-1] if m.get("role") == "user")
    smallest = drop_oldest(messages, users)
    _refuse_by_bytes(engine, engine.format_chat(smallest if truncate else messages, tools=tools),
                     limit, hint)
    # turns whose text alone is more than the window could hold go without being tokenized
    # (with truncate off, _refuse_by_bytes has refused such a prompt already)
    longest = longest_token_bytes(getattr(engine, "path", None) or "") or 0

    def fits_bytes(k: int) -> bool:
        text = engine.format_chat(drop_oldest(messages, k), tools=tools)
        return not longest or len(text.encode("utf-8", "surrogatepass")) <= limit * longest

    first = next((k for k in range(users + 1) if fits_bytes(k)), users)
    n = count(messages) if first == 0 else limit + 1
    if n + (room if truncate else 0) <= limit or (not truncate and n < limit):
        return messages, n
    if not truncate:
        raise _too_long(f"{n} tokens", limit, engine.n_ctx, refusal)
    lo, hi = max(1, first), users  # the fewest turns to drop so that the reply has its room
    best = (smallest, count(smallest)) if users else (messages, n)
    while lo <= hi:
        mid = (lo + hi) // 2
        msgs = drop_oldest(messages, mid)
        m = count(msgs)
        if m + room <= limit:
            best, hi = (msgs, m), mid - 1
        else:
            lo = mid + 1
    if best[1] >= limit:
        raise _too_long(f"{best[1]} tokens" + (" without its oldest turns" if users else ""),
                        limit, engine.n_ctx, hint)
    return best


def bound_reply(settings: Any, limit: int, loaded: int, prompt_tokens: int) -> None:
    """Inside a larger loaded context, stop the reply where the window ends."""
    from r1local.planner import answer_reserve

    if limit >= loaded:
        return  # the engine's own end of context is the window's
    left = max(1, limit - prompt_tokens)
    settings.max_tokens = min(settings.max_tokens or left, left)
    if settings.answer_reserve is None:
        settings.answer_reserve = answer_reserve(limit)


def windowed_chat(manager: Any, messages: list[dict], settings: Any, *, n_ctx: int | None,
                  truncate: bool, think: bool | None, nothing: bool = False,
                  refusal: str = OLLAMA_REFUSAL, tools: list[dict] | None = None,
                  tool_choice: str | None = None, choices: int = 1) -> EngineCall:
    """chat_call inside this request's window (the turns that fit, the reply bounded)."""

    def make(engine: Any, cancel: threading.Event) -> Iterator[Any]:
        limit = manager.window(engine, n_ctx)
        # (tools count too, where the model can take them: chat_call refuses them otherwise)
        kept, n = fit_turns(engine, messages, limit, reply_room(settings, limit), truncate,
                            refusal, tools if engine.tool_family is not None else None)
        bound_reply(settings, limit, engine.n_ctx, n)
        return chat_call(kept, settings, think=think, nothing=nothing, tools=tools,
                         tool_choice=tool_choice, choices=choices)(engine, cancel)

    return make


def windowed_completion(manager: Any, prompt: str, settings: Any, *, n_ctx: int | None,
                        nothing: bool = False,
                        hint: str = "shorten it or ask for a larger num_ctx") -> EngineCall:
    """completion_call inside this request's window: a raw prompt has no turns to drop."""

    def make(engine: Any, cancel: threading.Event) -> Iterator[Any]:
        limit = manager.window(engine, n_ctx)
        _refuse_by_bytes(engine, prompt, limit, hint)
        n = engine.count_tokens(prompt)
        if n >= limit:
            raise _too_long(f"{n} tokens", limit, engine.n_ctx, hint)
        bound_reply(settings, limit, engine.n_ctx, n)
        return completion_call(prompt, settings, nothing=nothing)(engine, cancel)

    return make

