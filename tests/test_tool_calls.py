"""Tool calls (issue 17): tool definitions into the prompt the way the model's family
expects, calls parsed out of the answer into `tool_calls`, `tool` messages fed back.

The round trips run on real llama.cpp output: a micro R1 model trained (tests/
micro_tool_model.py) to call tools in the DeepSeek format and to answer from what the tools
said, behind a live server, through the official `openai` and `ollama` clients."""

from __future__ import annotations

import json

import httpx
import ollama
import openai
import pytest

import micro_tool_model as mt
import model_fixtures
from r1local.server.background import BackgroundServer
from r1local.server.config import ServerConfig
from r1local.tool_calls import (FAMILIES, QWEN, R1, ToolCall, ToolStream, family_of,
                                r1_call_text, split_reply)
from test_serve_ollama import FIXTURE_DIRS

PARIS_Q, PARIS_THINK, _ = mt.CALLS[0]
BOTH_Q, BOTH_THINK, _ = mt.CALLS[2]
PARIS_REPLY, _, PARIS_ANSWER = mt.RESULTS[0]
GREEDY = {"temperature": 0.0}

QWEN_STYLE_TEMPLATE = mt.QWEN_STYLE_TEMPLATE


@pytest.fixture(scope="module", params=[R1, QWEN])
def tool_model(request):
    """The micro tool model of each family: the round trips run on both."""
    return mt.micro_tool_model_gguf(request.param)


@pytest.fixture(scope="module")
def r1_tool_model():
    return mt.micro_tool_model_gguf(R1)


@pytest.fixture(scope="module")
def qwen_style(smollm2):
    return model_fixtures.rewrite_gguf(smollm2, "smollm2-qwen-style-tools",
                                       values={"tokenizer.chat_template": QWEN_STYLE_TEMPLATE})[0]


@pytest.fixture(scope="module")
def server():
    with BackgroundServer(ServerConfig(port=0, max_loaded=3, allow_paths=FIXTURE_DIRS)) as srv:
        yield srv


@pytest.fixture(scope="module")
def oai(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def oll(server):
    return ollama.Client(host=server.url)


# ---- the whole round trip, OpenAI ------------------------------------------------------------

def test_openai_round_trip(oai, tool_model):
    msgs = [{"role": "user", "content": PARIS_Q}]
    r = oai.chat.completions.create(model=str(tool_model), messages=msgs, tools=mt.TOOLS,
                                    temperature=0)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None and choice.message.reasoning_content == PARIS_THINK
    [call] = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    # the call and the tool's reply go back; the answer is built from that reply
    msgs += [choice.message.model_dump(exclude_none=True),
             {"role": "tool", "tool_call_id": call.id, "content": PARIS_REPLY[0]}]
    r = oai.chat.completions.create(model=str(tool_model), messages=msgs, tools=mt.TOOLS,
                                    temperature=0)
    assert r.choices[0].finish_reason == "stop" and not r.choices[0].message.tool_calls
    assert r.choices[0].message.content == PARIS_ANSWER
    # another reply from the tool, another answer: the model read the tool message
    msgs[-1]["content"] = mt.PARIS_OTHER[0][0]
    r = oai.chat.completions.create(model=str(tool_model), messages=msgs, tools=mt.TOOLS,
                                    temperature=0)
    assert r.choices[0].message.content == mt.PARIS_OTHER[2]


def test_openai_parallel_calls_streamed(oai, tool_model):
    msgs = [{"role": "user", "content": BOTH_Q}]
    chunks = list(oai.chat.completions.create(model=str(tool_model), messages=msgs,
                                              tools=mt.TOOLS, temperature=0, stream=True))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert "".join(getattr(d, "reasoning_content", None) or "" for d in deltas) == BOTH_THINK
    assert not "".join(d.content or "" for d in deltas)  # the call text is not content
    calls = [tc for d in deltas for tc in (d.tool_calls or [])]
    assert [(tc.index, tc.function.name) for tc in calls] == [(0, "get_weather"), (1, "get_time")]
    assert all(json.loads(tc.function.arguments) == {"city": "Paris"} for tc in calls)
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    msgs.append({"role": "assistant", "content": None, "tool_calls": [
        {"id": tc.id, "type": "function",
         "function": {"name": tc.function.name, "arguments": tc.function.arguments}} for tc in calls]})
    msgs += [{"role": "tool", "tool_call_id": tc.id, "content": reply}
             for tc, reply in zip(calls, mt.RESULTS[2][0])]
    chunks = list(oai.chat.completions.create(model=str(tool_model), messages=msgs,
                                              tools=mt.TOOLS, temperature=0, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == mt.RESULTS[2][2]
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_a_question_that_needs_no_tool_is_answered(oai, tool_model):
    r = oai.chat.completions.create(model=str(tool_model), tools=mt.TOOLS, temperature=0,
                                    messages=[{"role": "user", "content": mt.PLAIN[0]}])
    assert r.choices[0].message.content == mt.PLAIN[2] and not r.choices[0].message.tool_calls
    assert r.choices[0].finish_reason == "stop"


def test_tool_choice_none_leaves_the_tools_out(oai, tool_model):
    kw = dict(model=str(tool_model), temperature=0, max_tokens=40,
              messages=[{"role": "user", "content": PARIS_Q}])
    offered = oai.chat.completions.create(tools=mt.TOOLS, **kw)
    none = oai.chat.completions.create(tools=mt.TOOLS, tool_choice="none", **kw)
    bare = oai.chat.completions.create(**kw)
    assert none.usage.prompt_tokens == bare.usage.prompt_tokens < offered.usage.prompt_tokens
    assert not none.choices[0].message.tool_calls and none.choices[0].finish_reason != "tool_calls"
    named = oai.chat.completions.create(
        tools=mt.TOOLS, tool_choice={"type": "function", "function": {"name": "get_time"}}, **kw)
    assert named.usage.prompt_tokens > offered.usage.prompt_tokens  # "you must call get_time"


# ---- the whole round trip, Ollama ------------------------------------------------------------

def test_ollama_round_trip(oll, tool_model):
    msgs = [{"role": "user", "content": PARIS_Q}]
    r = oll.chat(model=str(tool_model), messages=msgs, tools=mt.TOOLS, options=GREEDY)
    assert r.message.thinking == PARIS_THINK and not r.message.content
    [call] = r.message.tool_calls
    assert call.function.name == "get_weather" and call.function.arguments == {"city": "Paris"}
    msgs += [r.message, {"role": "tool", "content": PARIS_REPLY[0], "tool_name": "get_weather"}]
    r = oll.chat(model=str(tool_model), messages=msgs, tools=mt.TOOLS, options=GREEDY)
    assert r.message.content == PARIS_ANSWER and not r.message.tool_calls


def test_ollama_parallel_calls_streamed(oll, tool_model):
    msgs = [{"role": "user", "content": BOTH_Q}]
    parts = list(oll.chat(model=str(tool_model), messages=msgs, tools=mt.TOOLS, options=GREEDY,
                          stream=True))
    assert "".join(p.message.thinking or "" for p in parts) == BOTH_THINK
    assert not "".join(p.message.content or "" for p in parts)
    calls = [c for p in parts for c in (p.message.tool_calls or [])]
    assert [(c.function.name, c.function.arguments) for c in calls] == [
        ("get_weather", {"city": "Paris"}), ("get_time", {"city": "Paris"})]
    assert parts[-1].done and parts[-1].done_reason == "stop"
    msgs.append({"role": "assistant", "content": "", "tool_calls": calls})
    msgs += [{"role": "tool", "content": reply} for reply in mt.RESULTS[2][0]]
    parts = list(oll.chat(model=str(tool_model), messages=msgs, tools=mt.TOOLS, options=GREEDY,
                          stream=True))
    assert "".join(p.message.content or "" for p in parts) == mt.RESULTS[2][2]


def test_capabilities_list_tools(oll, tool_model, smollm2, qwen_style):
    assert "tools" in oll.show(str(tool_model)).capabilities
    assert "tools" in oll.show(str(qwen_style)).capabilities
    assert "tools" not in oll.show(str(smollm2)).capabilities


# ---- what cannot work is refused, clearly ----------------------------------------------------

def test_a_model_without_a_tool_format_refuses_tools(oai, oll, smollm2):
    with pytest.raises(openai.BadRequestError) as err:
        oai.chat.completions.create(model=str(smollm2), tools=mt.TOOLS,
                                    messages=[{"role": "user", "content": "hi"}])
    assert "does not support tools" in err.value.body["message"]
    assert err.value.body["param"] == "tools"
    with pytest.raises(ollama.ResponseError) as err:
        oll.chat(model=str(smollm2), tools=mt.TOOLS, messages=[{"role": "user", "content": "hi"}])
    assert err.value.status_code == 400 and "does not support tools" in err.value.error


@pytest.mark.parametrize("body, param, words", [
    ({"tools": [{"type": "retrieval"}]}, "tools", "tools[0] must be"),
    ({"tools": [{"type": "function", "function": {"description": "x"}}]}, "tools",
     "tools[0].function.name"),
    ({"tools": mt.TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     "tool_choice", "naming one of the tools"),
    ({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": None,
      "tool_calls": [{"id": "a", "type": "function",
                      "function": {"name": "get_weather", "arguments": "{oops"}}]}]},
     "messages[1].tool_calls", "not valid JSON"),
])
def test_bad_tool_requests_are_400s(server, r1_tool_model, body, param, words):
    r = httpx.post(server.url + "/v1/chat/completions", timeout=60, json={
        "model": str(r1_tool_model), "messages": [{"role": "user", "content": "x"}], **body})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert words in err["message"] and err["param"] == param


# ---- the Qwen3 family: its template renders the tools ----------------------------------------

def test_qwen_style_template_gets_tools_calls_and_replies(server, qwen_style):
    from r1local.engine import Engine

    with Engine.load(qwen_style, n_ctx=2048) as e:
        assert e.tool_family.name == QWEN and not e.is_reasoning
        prompt = e.format_chat(mt.call_messages(0), tools=mt.TOOLS)
    # the template's own tojson, of the definitions with their keys in one order
    assert ('{"type": "function", "function": {"name": "get_weather", "description": "The '
            'weather now in a city.", "parameters": {"properties": {"city": {"type": "string"}}, '
            '"required": ["city"], "type": "object"}}}') in prompt
    assert ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
            in prompt)
    assert f"<tool_response>\n{PARIS_REPLY[0]}\n</tool_response>" in prompt
    # and the server takes tools for it (the model is SmolLM2: it will not call them)
    r = httpx.post(server.url + "/v1/chat/completions", timeout=60, json={
        "model": str(qwen_style), "tools": mt.TOOLS, "max_tokens": 8,
        "messages": [{"role": "user", "content": PARIS_Q}]})
    assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] > 100


# ---- parsing, on its own ---------------------------------------------------------------------

R1_FAMILY, QWEN_FAMILY = FAMILIES
CALL_A, CALL_B = ToolCall("get_weather", {"city": "Paris"}), ToolCall("get_time", {"city": "Rome, IT"})
QWEN_TEXT = ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
             '<tool_call>\n{"name": "get_time", "arguments": {"city": "Rome, IT"}}\n</tool_call>')


@pytest.mark.parametrize("family, text", [(R1_FAMILY, r1_call_text([CALL_A, CALL_B])),
                                          (QWEN_FAMILY, QWEN_TEXT)])
def test_streamed_calls_parse_the_same_however_the_text_is_cut(family, text):
    whole = "Let me look that up.\n\n" + text
    expected = ("Let me look that up.", [("get_weather", {"city": "Paris"}),
                                         ("get_time", {"city": "Rome, IT"})])
    content, calls = split_reply(family, whole)
    assert (content, [(c.name, c.arguments) for c in calls]) == expected
    for size in (1, 2, 3, 7, 50):
        s = ToolStream(family)
        out = "".join(s.feed(whole[i:i + size]) for i in range(0, len(whole), size))
        rest, calls = s.finish()
        assert ((out + rest).strip(), [(c.name, c.arguments) for c in calls]) == expected


@pytest.mark.parametrize("text", [
    "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>f\n```json\n{oops\n```<｜tool▁call▁end｜>",
    "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>f\n```json\n{}",  # cut off
    "Plain text with a < and <｜tool in it",
])
def test_what_is_not_a_well_formed_call_stays_the_answer(text):
    content, calls = split_reply(R1_FAMILY, text)
    assert content == text and calls == []
    s = ToolStream(R1_FAMILY)
    out = "".join(s.feed(ch) for ch in text)
    rest, calls = s.finish()
    assert out + rest == text and calls == []


def test_families_are_found_from_templates(r1_header):
    assert family_of(r1_header.get("tokenizer.chat_template")).name == R1
    assert family_of(QWEN_STYLE_TEMPLATE).name == QWEN
    assert family_of("{{ messages }}") is None and family_of(None) is None


# ---- LangChain's bind_tools ------------------------------------------------------------------

def test_langchain_bind_tools_round_trip(server, tool_model):
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(model=str(tool_model), base_url=server.url + "/v1", api_key="unused",
                     temperature=0, max_retries=0).bind_tools(mt.TOOLS)
    msgs = [HumanMessage(PARIS_Q)]
    ai = llm.invoke(msgs)
    assert [(c["name"], c["args"]) for c in ai.tool_calls] == [("get_weather", {"city": "Paris"})]
    msgs += [ai, ToolMessage(PARIS_REPLY[0], tool_call_id=ai.tool_calls[0]["id"])]
    assert llm.invoke(msgs).content == PARIS_ANSWER
