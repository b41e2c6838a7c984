"""The hyper-parameters llama.cpp trusts: what a GGUF's metadata must satisfy before
llama.cpp is handed the file, because llama.cpp asserts on some of these (a NaN or negative
norm epsilon aborts the process) and sizes arrays by others (a block count of 2**31).

One set of rules for both directions: the converter checks the values it is about to
write, and r1local checks a header before it loads a file. Values are given by their GGUF
keys without the architecture prefix (``block_count``, ``attention.head_count``, ...).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

# llama.cpp's own limits (LLAMA_MAX_LAYERS, LLAMA_MAX_EXPERTS), and bounds no real model
# comes near, so that a corrupt number is refused instead of allocated
MAX_LAYERS = 512
MAX_EXPERTS = 512
MAX_CONTEXT = 1 << 24
MAX_WIDTH = 1 << 20  # embedding, feed-forward and head widths
MAX_HEADS = 1 << 12
MAX_VOCAB = 1 << 24


class Invalid(ValueError):
    """A value llama.cpp would crash on or could not use; the message names it."""


def _whole(name: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise Invalid(f"{name} is {value!r}, not a whole number")
    if not low <= value <= high:
        raise Invalid(f"{name} is {value}, outside {low}..{high}")
    return value


def _per_layer(name: str, value: Any, n_layers: int, low: int, high: int) -> list[int]:
    """A number, or one per layer (as llama.cpp reads arrays for hybrid models)."""
    if isinstance(value, (list, tuple)):
        if len(value) < n_layers:
            raise Invalid(f"{name} lists {len(value)} values for {n_layers} layers")
        return [_whole(f"{name}[{i}]", v, low, high) for i, v in enumerate(value[:n_layers])]
    return [_whole(name, value, low, high)] * n_layers


def _real(name: str, value: Any, *, positive: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Invalid(f"{name} is {value!r}, not a number")
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        raise Invalid(f"{name} is {value}: it must be a finite number "
                      + ("above 0" if positive else "of 0 or more"))
    return float(value)


def check(values: Mapping[str, Any], *, n_vocab: int | None = None,
          shapes: Mapping[str, tuple[int, ...]] | None = None) -> None:
    """Raise Invalid for the first value llama.cpp could not take.

    ``values``: the architecture's keys (``block_count`` ...); ``n_vocab``: the number of
    tokens; ``shapes``: tensor name -> shape in GGUF order (fastest-varying dimension
    first), for the tensors whose size the numbers above fix. (Special token ids are not
    checked: llama.cpp itself replaces one that is out of range.)"""
    get = values.get
    n_layers = _whole("block_count", get("block_count"), 1, MAX_LAYERS)
    n_embd = _whole("embedding_length", get("embedding_length"), 1, MAX_WIDTH)
    if get("context_length") is not None:
        _whole("context_length", get("context_length"), 1, MAX_CONTEXT)
    if get("feed_forward_length") is not None:
        _per_layer("feed_forward_length", get("feed_forward_length"), n_layers, 0, MAX_WIDTH)
    heads = _per_layer("attention.head_count", get("attention.head_count", 1), n_layers, 0,
                       MAX_HEADS)
    if max(heads) == 0:
        raise Invalid("attention.head_count is 0 in every layer")
    kv_heads = _per_layer("attention.head_count_kv", get("attention.head_count_kv", heads),
                          n_layers, 0, MAX_HEADS)
    for i, (h, kv) in enumerate(zip(heads, kv_heads)):
        if kv and h % kv:
            raise Invalid(f"attention.head_count_kv ({kv}) does not divide "
                          f"attention.head_count ({h}) in layer {i}")
    first = next(h for h in heads if h)  # llama.cpp sizes heads by the first layer's count
    head_k = get("attention.key_length")
    if head_k is None:
        if n_embd % first:
            raise Invalid(f"embedding_length {n_embd} is not a multiple of "
                          f"attention.head_count {first}")
        head_k = n_embd // first
    head_k = _whole("attention.key_length", head_k, 1, MAX_WIDTH)
    if get("attention.value_length") is not None:
        _whole("attention.value_length", get("attention.value_length"), 1, MAX_WIDTH)
    if get("rope.dimension_count") is not None:
        _whole("rope.dimension_count", get("rope.dimension_count"), 1, MAX_WIDTH)
    for key in ("attention.layer_norm_rms_epsilon", "attention.layer_norm_epsilon"):
        if get(key) is not None:
            _real(key, get(key), positive=False)
    for key in ("rope.freq_base", "rope.scaling.factor"):
        if get(key) is not None:
            _real(key, get(key), positive=key == "rope.freq_base")
    n_expert = _whole("expert_count", get("expert_count", 0), 0, MAX_EXPERTS)
    used = _whole("expert_used_count", get("expert_used_count", 0), 0, n_expert)
    if n_expert and not used:
        raise Invalid(f"expert_used_count is 0 for {n_expert} experts")
    # expert groups (DeepSeek's routing), as llama.cpp asserts them
    groups = _whole("expert_group_count", get("expert_group_count", 0), 0, MAX_EXPERTS)
    if groups and (not n_expert or groups >= n_expert):
        raise Invalid(f"expert_group_count is {groups} for {n_expert} experts: it must be fewer")
    if groups > 1:
        if n_expert % groups:
            raise Invalid(f"expert_group_count ({groups}) does not divide expert_count ({n_expert})")
        g_used = _whole("expert_group_used_count", get("expert_group_used_count", 0), 0, MAX_EXPERTS)
        if not 0 < g_used < groups:
            raise Invalid(f"expert_group_used_count is {g_used} for {groups} expert groups: it "
                          "must be at least 1 and fewer than the groups")
    if n_vocab is not None:
        _whole("vocabulary size", n_vocab, 1, MAX_VOCAB)
    # the tensors these numbers size: (GGUF order) input width, then output width
    expected = {"token_embd.weight": (n_embd, None),
                "blk.0.attn_q.weight": (n_embd, heads[0] * head_k),
                "blk.0.attn_k.weight": (n_embd, kv_heads[0] * head_k)}
    for name, shape in (shapes or {}).items():
        want = expected.get(name)
        if want is None or len(shape) != 2:
            continue
        if shape[0] != want[0] or (want[1] is not None and shape[1] != want[1]):
            raise Invalid(f"tensor {name} is {shape[0]}x{shape[1]}, which does not match "
                          f"embedding_length {n_embd} and the head counts")
