"""`r1local serve`, OpenAI API: the official `openai` client against a live server on real
models; the reasoning in `reasoning_content` as DeepSeek's API puts it, `content` only the answer."""

from __future__ import annotations

import httpx
import openai
import pytest

from micro_reasoner import FACTS
from r1local.server.background import BackgroundServer
from r1local.server.config import ServerConfig
from test_serve_ollama import FIXTURE_DIRS

SKY_Q, SKY_THINK, SKY_ANSWER = FACTS[0]


@pytest.fixture(scope="module")
def server():
    with BackgroundServer(ServerConfig(port=0, allow_paths=FIXTURE_DIRS)) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def test_chat_completion_reasoning_content(client, micro_reasoner):
    r = client.chat.completions.create(model=str(micro_reasoner), temperature=0,
                                       messages=[{"role": "user", "content": SKY_Q}])
    msg = r.choices[0].message
    assert msg.content == SKY_ANSWER
    assert msg.reasoning_content == SKY_THINK
    assert r.choices[0].finish_reason == "stop" and r.object == "chat.completion"
    u = r.usage
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens
    assert 0 < u.completion_tokens_details.reasoning_tokens < u.completion_tokens


def test_chat_stream_deltas_and_usage(client, micro_reasoner):
    stream = client.chat.completions.create(
        model=str(micro_reasoner), temperature=0, stream=True,
        stream_options={"include_usage": True},
        messages=[{"role": "system", "content": "Be brief."},
                  {"role": "user", "content": "What is 1+4?"}])
    chunks = list(stream)
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    content = "".join(d.content or "" for d in deltas)
    reasoning = "".join(getattr(d, "reasoning_content", None) or "" for d in deltas)
    assert reasoning == "I need to add 1 and 4. one plus four is five."
    assert content == "1 + 4 = **5**."
    assert deltas[0].role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop" and not any(finishes[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    assert all(c.usage is None for c in chunks[:-1])


def test_chat_history_keeps_earlier_reasoning_out(client, micro_reasoner):
    r = client.chat.completions.create(model=str(micro_reasoner), temperature=0, messages=[
        {"role": "user", "content": SKY_Q},
        {"role": "assistant", "content": SKY_ANSWER, "reasoning_content": SKY_THINK},
        {"role": "user", "content": [{"type": "text", "text": "What is 2+2?"}]}])
    assert r.choices[0].message.content == "2 + 2 = **4**."
    assert "two plus two is four" in r.choices[0].message.reasoning_content


def test_max_tokens_and_length(client, smollm2):
    r = client.chat.completions.create(model=str(smollm2), max_tokens=4,
                                       messages=[{"role": "user", "content": "Tell me a story."}])
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 4
    assert r.choices[0].message.content and getattr(r.choices[0].message, "reasoning_content", None) is None


def test_completions_raw_and_streamed(client, smollm2):
    r = client.completions.create(model=str(smollm2), prompt="The capital of France is",
                                  max_tokens=5, temperature=0)
    assert r.object == "text_completion" and r.usage.completion_tokens == 5
    text = r.choices[0].text
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model=str(smollm2), prompt="The capital of France is", max_tokens=5, temperature=0,
        stream=True) if c.choices)
    assert streamed == text and text.strip()


def test_models_list(client, micro_reasoner, smollm2):
    client.completions.create(model=str(smollm2), prompt="a", max_tokens=1)
    ids = {m.id for m in client.models.list()}
    assert str(smollm2) in ids


def test_openai_style_errors(client, server, micro_reasoner):
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="no-such-model",
                                       messages=[{"role": "user", "content": "hi"}])
    assert "no-such-model" in err.value.body["message"]
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=str(micro_reasoner), temperature=9,
                                       messages=[{"role": "user", "content": "hi"}])
    assert err.value.body["param"] == "temperature"
    r = httpx.post(server.url + "/v1/chat/completions", content=b"{not json", timeout=30)
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_request_error"
    assert "malformed JSON" in r.json()["error"]["message"]
    r = httpx.post(server.url + "/v1/chat/completions", timeout=30,
                   json={"model": str(micro_reasoner), "messages": "hi"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"


def test_prompt_longer_than_context_is_400(client, smollm2):
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model=str(smollm2), prompt=" ".join(str(i) for i in range(3000)),
                                  max_tokens=1)
    assert err.value.body["code"] == "context_length_exceeded"
    assert "the prompt is" in err.value.body["message"] and "context holds" in err.value.body["message"]


def test_reasoning_that_never_closes_still_answers(client, r1_standin):
    # as on the Ollama API: the answer reserve closes the reasoning, finish_reason says length
    r = client.chat.completions.create(model=str(r1_standin), max_tokens=160, seed=1,
                                       messages=[{"role": "user", "content": "Why?"}])
    choice = r.choices[0]
    assert choice.finish_reason == "length" and r.usage.completion_tokens == 160
    assert choice.message.reasoning_content.strip() and choice.message.content.strip()
    reasoning_tokens = r.usage.completion_tokens_details.reasoning_tokens
    assert 0 < reasoning_tokens < r.usage.completion_tokens
