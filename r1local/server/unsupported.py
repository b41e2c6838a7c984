"""What r1local does not do, said as such: 501 Not Implemented naming the endpoint or the
request field, in the API family's error shape, rather than a bare 404 or a field dropped
in silence. (Fields that are merely metadata, such as OpenAI's `user`, are not listed:
ignoring them changes nothing a client gets back.)

The tables say what is refused and what to do instead; the functions apply them.
"""

from __future__ import annotations

import json
from typing import Any, Callable

from r1local.server.errors import ApiError

NOT_IMPLEMENTED = 501

# unknown paths of the two API families, by prefix: what is missing and what to use instead
PATHS: tuple[tuple[str, str], ...] = (
    ("/api/create", "creating models (Modelfiles) is not supported by r1local; add a GGUF to "
                    "the store with `r1local import FILE --name NAME`, or name a copy with "
                    "/api/copy"),
    ("/api/blobs", "blob uploads (for /api/create) are not supported by r1local; add a GGUF "
                   "with `r1local import FILE --name NAME`"),
    ("/api/push", "pushing models is not supported: r1local has no registry to push to"),
    ("/v1/audio", "audio (speech, transcription, translation) is not supported: r1local "
                  "serves text models"),
    ("/v1/images", "image generation is not supported: r1local serves text models"),
    ("/v1/responses", "the Responses API is not supported by r1local; use "
                      "/v1/chat/completions"),
    ("/v1/moderations", "moderation is not supported by r1local"),
    ("/v1/files", "file uploads are not supported by r1local"),
    ("/v1/batches", "batches are not supported by r1local; send the requests one by one"),
    ("/v1/fine_tuning", "fine-tuning is not supported by r1local"),
    ("/v1/assistants", "the Assistants API is not supported by r1local; use "
                       "/v1/chat/completions"),
    ("/v1/threads", "the Assistants API is not supported by r1local; use /v1/chat/completions"),
    ("/v1/realtime", "the Realtime API is not supported by r1local"),
)
API_PREFIXES = ("/api/", "/v1/")

# each value: does this field's value ask for something (False: absent, off or the default)
Asks = Callable[[Any], bool]


def _set(v: Any) -> bool:
    return v is not None and v is not False and v != "" and v != [] and v != {}


def _not(default: float) -> Asks:
    return lambda v: v is not None and v != default


def _more_than_one(v: Any) -> bool:
    return v is not None and v != 1


def _not_text_only(v: Any) -> bool:
    return v is not None and v != ["text"]


# request fields, per endpoint family: field -> (asks for it?, what is not supported)
OPENAI_FIELDS: dict[str, tuple[Asks, str]] = {
    "logprobs": (_set, "logprobs are not supported by r1local"),
    "top_logprobs": (lambda v: v is not None and v != 0, "top_logprobs (log probabilities) "
                     "are not supported by r1local"),
    "logit_bias": (_set, "logit_bias is not supported by r1local"),
    "frequency_penalty": (_not(0), "frequency_penalty is not supported by r1local (use "
                          "repeat_penalty, a llama.cpp extension)"),
    "presence_penalty": (_not(0), "presence_penalty is not supported by r1local (use "
                         "repeat_penalty, a llama.cpp extension)"),
    "audio": (_set, "audio output is not supported: r1local serves text models"),
    "modalities": (_not_text_only, "only the \"text\" modality is supported"),
    "prediction": (_set, "predicted outputs are not supported by r1local"),
    "web_search_options": (_set, "web search is not supported by r1local"),
    "best_of": (_more_than_one, "best_of is not supported by r1local (one completion per "
                "request)"),
    "suffix": (_set, "suffix (fill-in-the-middle) is not supported by r1local"),
}
OLLAMA_FIELDS: dict[str, tuple[Asks, str]] = {
    "logprobs": (_set, "logprobs are not supported by r1local"),
    "top_logprobs": (lambda v: v is not None and v != 0, "top_logprobs are not supported by "
                     "r1local"),
    "context": (_set, "the deprecated \"context\" of /api/generate is not supported; send "
                "the conversation as /api/chat messages"),
    "template": (_set, "a per-request \"template\" is not supported: r1local uses the chat "
                 "template in the GGUF (send \"raw\": true with your own formatted prompt)"),
    "width": (_set, "image generation is not supported: r1local serves text models"),
    "height": (_set, "image generation is not supported: r1local serves text models"),
    "steps": (_set, "image generation is not supported: r1local serves text models"),
}
# Ollama `options` that change the output and that r1local's sampler does not have, with
# the value that means "off" (Ollama's default); the load-time knobs (num_gpu, num_thread,
# num_batch, use_mmap, ...) are the planner's to choose and are ignored, as the README says
OLLAMA_OPTIONS: dict[str, tuple[Asks, str]] = {
    "mirostat": (_not(0), "mirostat sampling is not supported by r1local"),
    "typical_p": (_not(1.0), "typical_p is not supported by r1local"),
    "tfs_z": (_not(1.0), "tfs_z is not supported by r1local"),
    "presence_penalty": (_not(0), "presence_penalty is not supported by r1local (use "
                         "repeat_penalty)"),
    "frequency_penalty": (_not(0), "frequency_penalty is not supported by r1local (use "
                          "repeat_penalty)"),
    "repeat_last_n": (_not(64), "repeat_last_n other than 64 is not supported by r1local"),
}


def not_implemented(message: str, param: str | None = None) -> ApiError:
    return ApiError(NOT_IMPLEMENTED, message, code="not_implemented", param=param)


def path_error(method: str, path: str) -> ApiError | None:
    """The 501 for a path of an API family that has no route here; None outside them."""
    if not path.startswith(API_PREFIXES):
        return None
    for prefix, why in PATHS:
        if path == prefix or path.startswith(prefix.rstrip("/") + "/"):
            return not_implemented(why)
    shown = "".join(c for c in path[:80] if c.isprintable())
    return not_implemented(f"{method} {shown} is not an endpoint r1local supports (see the "
                           "README's table of endpoints)")


def _fields(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw or b"{}")
    except ValueError:
        return {}  # the schema's parse has refused it already
    return body if isinstance(body, dict) else {}


def _check(body: dict[str, Any], table: dict[str, tuple[Asks, str]], where: str = "") -> None:
    for field, (asks, why) in table.items():
        if field in body and asks(body[field]):
            raise not_implemented(why, param=where + field)


def refuse_openai(raw: bytes) -> None:
    """501 for the first OpenAI request field that asks for what r1local does not do."""
    _check(_fields(raw), OPENAI_FIELDS)


def refuse_ollama(raw: bytes) -> None:
    """501 for the first Ollama request field (or `options` key) r1local does not do."""
    body = _fields(raw)
    _check(body, OLLAMA_FIELDS)
    options = body.get("options")
    if isinstance(options, dict):
        _check(options, OLLAMA_OPTIONS, "options.")
