"""Micro models that call tools, trained by the fixture itself (micro_reasoner's
training code, other data): one in the DeepSeek R1 format, one in the Qwen3 `<tool_call>`
format (the R1 tokenizer under a Qwen3-style chat template written for these tests).

Its prompts are made by r1local's own Engine.format_chat on the R1 stand-in (the real R1
chat template and tokenizer), so what it learns is exactly what the server will show it:
the tool list r1local writes for the R1 family, its earlier calls, and the `tool` replies
as the template renders them. It answers in the R1 format: reasoning, then either a block
of calls in the DeepSeek format or, once the tools have answered, a sentence built from
what they said (two different tool replies give two different sentences, so a test can
tell that the reply was read).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import micro_reasoner as mr
import model_fixtures

VERSION = 1
R1, QWEN = "deepseek-r1", "qwen3"  # r1local.tool_calls' family names

# A chat template in the Qwen3 style (written for these tests): it renders `tools`, earlier
# `tool_calls` and `tool` replies itself.
QWEN_STYLE_TEMPLATE = (
    "{% if tools %}<|im_start|>system\nTools you may call, one <tool_call></tool_call> block "
    "each:\n<tools>\n{% for t in tools %}{{ t | tojson }}\n{% endfor %}</tools><|im_end|>\n"
    "{% endif %}"
    "{% for m in messages %}"
    "{% if m.role == 'assistant' and m.tool_calls %}<|im_start|>assistant\n"
    "{% for c in m.tool_calls %}<tool_call>\n"
    "{{ {'name': c.function.name, 'arguments': c.function.arguments} | tojson }}\n</tool_call>"
    "{% endfor %}<|im_end|>\n"
    "{% elif m.role == 'tool' %}<|im_start|>user\n<tool_response>\n{{ m.content }}\n"
    "</tool_response><|im_end|>\n"
    "{% else %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather now in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}
CLOCK = {"type": "function", "function": {
    "name": "get_time", "description": "The local time in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}
TOOLS = [WEATHER, CLOCK]

# (question, reasoning, calls as (name, arguments))
CALLS = [
    ("What is the weather in Paris?", "The user asks about the weather in Paris. I will call get_weather.",
     [("get_weather", {"city": "Paris"})]),
    ("What is the weather in Rome?", "The user asks about the weather in Rome. I will call get_weather.",
     [("get_weather", {"city": "Rome"})]),
    ("What is the weather and the time in Paris?",
     "Two things: the weather and the time in Paris. I will call both tools.",
     [("get_weather", {"city": "Paris"}), ("get_time", {"city": "Paris"})]),
]
# question index -> (tool replies, reasoning, answer)
RESULTS = {
    0: (['{"temp_c": 18, "sky": "sunny"}'], "The tool says 18 degrees and sunny.",
        "It is **18°C** and sunny in Paris."),
    1: (['{"temp_c": 5, "sky": "rainy"}'], "The tool says 5 degrees and rainy.",
        "It is **5°C** and rainy in Rome."),
    2: (['{"temp_c": 18, "sky": "sunny"}', '{"time": "10:30"}'],
        "The weather tool says 18 degrees and sunny, the clock says 10:30.",
        "In Paris it is **18°C** and sunny, and the time is **10:30**."),
}
# with tools on offer, a question that needs none
PLAIN = ("Say hello.", "The user wants a greeting.", "Hello!")
# a second Paris reply, for the test that the answer follows the tool's words
PARIS_OTHER = (['{"temp_c": 25, "sky": "cloudy"}'], "The tool says 25 degrees and cloudy.",
               "It is **25°C** and cloudy in Paris.")


def call_messages(i: int, replies: list[str] | None = None) -> list[dict]:
    """The conversation up to the tool replies for question i (as the server builds it)."""
    from r1local.tool_calls import ToolCall

    q, _think, calls = CALLS[i]
    replies = RESULTS[i][0] if replies is None else replies
    tool_calls = [ToolCall(name, args, id=f"call_{i}_{k}") for k, (name, args) in enumerate(calls)]
    return [{"role": "user", "content": q},
            {"role": "assistant", "content": None, "tool_calls": tool_calls},
            *({"role": "tool", "content": r} for r in replies)]


def texts(engine) -> list[tuple[str, int]]:
    from r1local.tool_calls import ToolCall, qwen_call_text, r1_call_text

    call_text = r1_call_text if engine.tool_family.name == R1 else qwen_call_text
    eos = mr.EOS
    out = []

    def add(prompt: str, think: str, answer: str) -> None:
        out.append((f"{prompt}{think}\n</think>\n\n{answer}{eos}", len(prompt)))

    for q, think, calls in CALLS:
        prompt = engine.format_chat([{"role": "user", "content": q}], tools=TOOLS)
        add(prompt, think, call_text([ToolCall(n, a, id="") for n, a in calls]))
    for i, (_replies, think, answer) in RESULTS.items():
        add(engine.format_chat(call_messages(i), tools=TOOLS), think, answer)
    # twice each: two Paris replies that differ in a few tokens only must both be learned
    for _ in range(2):
        add(engine.format_chat(call_messages(0, PARIS_OTHER[0]), tools=TOOLS), PARIS_OTHER[1],
            PARIS_OTHER[2])
        add(engine.format_chat(call_messages(0), tools=TOOLS), RESULTS[0][1], RESULTS[0][2])
    q, think, answer = PLAIN
    add(engine.format_chat([{"role": "user", "content": q}], tools=TOOLS), think, answer)
    for q, think, answer in mr.FACTS[:2]:  # and without tools, as before
        add(engine.format_chat([{"role": "user", "content": q}]), think, answer)
    return out


def _with_template(path: Path, family: str, key: str) -> Path:
    if family == R1:
        return path  # the R1 tokenizer's own template
    return model_fixtures.rewrite_gguf(path, f"{path.stem}-{family}-{key}",
                                       values={"tokenizer.chat_template": QWEN_STYLE_TEMPLATE})[0]


def micro_tool_model_gguf(family: str = R1) -> Path:
    """The micro tool model GGUF of a family, trained and converted once, then cached
    (keyed by its training text, so a change in how r1local writes tool prompts retrains
    it)."""
    from r1local.engine import Engine

    standin = _with_template(model_fixtures.build_r1_standin(), family, "standin")
    with Engine.load(standin, n_ctx=2048) as engine:
        assert engine.tool_family is not None and engine.tool_family.name == family
        data = texts(engine)
    key = hashlib.sha256(json.dumps([VERSION, data]).encode()).hexdigest()[:12]
    base = model_fixtures.cache_dir() / f"micro-tool-model-{key}"
    final = base / "micro-tool-model.gguf"
    if final.exists():
        return _with_template(final, family, key)
    base.mkdir(parents=True, exist_ok=True)
    hf = base / "hf"
    if not (hf / "model.safetensors").exists():
        mr.train_checkpoint(hf, data)
    tmp = base / "micro-tool-model.gguf.new"
    mr._convert(hf, tmp)
    os.replace(tmp, final)
    return _with_template(final, family, key)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    print(micro_tool_model_gguf(sys.argv[1] if len(sys.argv) > 1 else R1))
