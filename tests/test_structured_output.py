"""Structured output (issue 17): Ollama's `format` and OpenAI's `response_format` bind the
answer to a JSON schema through a llama.cpp grammar, while a reasoning model's reasoning
stays free. Real models, a live server, the official clients; every reply is parsed
strictly and validated with `jsonschema`."""

from __future__ import annotations

import json

import jsonschema
import ollama
import openai
import pytest

from micro_reasoner import FACTS
from r1local.server.background import BackgroundServer
from r1local.server.config import ServerConfig
from test_run import one_line_error, r1local
from test_serve_ollama import FIXTURE_DIRS

SKY_Q, SKY_THINK, SKY_ANSWER = FACTS[0]
GREEDY = {"temperature": 0.0}
# Free JSON ("json" / json_object) leaves strings unbounded: a prompt that SmolLM2 answers
# with a short object, whatever the seed (the micro reasoner knows no JSON: its strings
# never end, so it is tested with schemas that bound them)
JSON_Q = "What is the capital of France? Answer in JSON."

# One schema per feature the grammar has to carry.
SCHEMAS = {
    "nested": {
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 24},
            "where": {"type": "object",
                      "properties": {"lat": {"type": "number"}, "lon": {"type": "number"}},
                      "required": ["lat", "lon"], "additionalProperties": False},
        },
        "required": ["city", "where"], "additionalProperties": False,
    },
    "array_enum": {
        "type": "object",
        "properties": {
            "colors": {"type": "array", "minItems": 1, "maxItems": 3,
                       "items": {"type": "string", "enum": ["red", "green", "blue"]}},
            "mood": {"enum": ["happy", "sad", None]},
        },
        "required": ["colors", "mood"], "additionalProperties": False,
    },
    "numbers": {
        "type": "object",
        "properties": {"count": {"type": "integer"}, "ratio": {"type": "number"},
                       "ok": {"type": "boolean"}, "note": {"type": ["string", "null"], "maxLength": 12}},
        "required": ["count", "ratio", "ok", "note"], "additionalProperties": False,
    },
    "optional_and_pattern": {
        "type": "object",
        "properties": {"code": {"type": "string", "pattern": "^[A-Z]{2}-[0-9]{3}$"},
                       "extra": {"type": "string", "maxLength": 10}},
        "required": ["code"], "additionalProperties": False,
    },
    "refs": {
        "$defs": {"item": {"type": "object", "properties": {"id": {"type": "integer"},
                                                            "tag": {"const": "x"}},
                           "required": ["id", "tag"], "additionalProperties": False}},
        "type": "object",
        "properties": {"items": {"type": "array", "items": {"$ref": "#/$defs/item"},
                                 "maxItems": 2}},
        "required": ["items"], "additionalProperties": False,
    },
}


def valid(text: str, schema: dict) -> object:
    value = json.loads(text)  # strict: no raw control characters inside strings
    jsonschema.validate(value, schema)
    return value


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


def _json_schema(name: str, schema: dict) -> dict:
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}


# ---- the answer is bound, the reasoning is not ------------------------------------------------

@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_openai_json_schema_on_the_micro_reasoner(oai, micro_reasoner, name):
    schema = SCHEMAS[name]
    r = oai.chat.completions.create(model=str(micro_reasoner), temperature=0,
                                    messages=[{"role": "user", "content": SKY_Q}],
                                    response_format=_json_schema(name, schema), max_tokens=400)
    msg = r.choices[0].message
    assert r.choices[0].finish_reason == "stop"
    valid(msg.content, schema)
    # the reasoning is exactly the free model's: the grammar started after </think>
    assert msg.reasoning_content == SKY_THINK


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_ollama_format_schema_streamed_on_smollm2(oll, smollm2, name):
    schema = SCHEMAS[name]
    parts = list(oll.chat(model=str(smollm2), format=schema, stream=True, options={"seed": 3},
                          messages=[{"role": "user", "content": "Describe a city as JSON."}]))
    assert parts[-1].done and parts[-1].done_reason == "stop"
    text = "".join(p.message.content for p in parts)
    assert len([p for p in parts if p.message.content]) > 1  # it did stream
    valid(text, schema)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_sampled_replies_validate_every_time(oai, oll, micro_reasoner, smollm2, seed):
    # sampling at the default temperature, both models, both APIs, every schema
    for model in (micro_reasoner, smollm2):
        for name, schema in SCHEMAS.items():
            if seed % 2:
                r = oai.chat.completions.create(
                    model=str(model), seed=seed * 7 + len(name), max_tokens=400,
                    messages=[{"role": "user", "content": "What is 2+3?"}],
                    response_format=_json_schema(name, schema))
                assert r.choices[0].finish_reason == "stop"
                valid(r.choices[0].message.content, schema)
            else:
                r = oll.chat(model=str(model), format=schema, stream=False,
                             options={"seed": seed * 7 + len(name), "num_predict": 400},
                             messages=[{"role": "user", "content": "What is 2+3?"}])
                assert r.done_reason == "stop"
                valid(r.message.content, schema)


def test_json_object_mode_streamed(oai, micro_reasoner, smollm2):
    # any JSON object: free strings, so a model that writes JSON (the micro reasoner's
    # strings never end), and greedy so that this model's reply is the same everywhere
    stream = oai.chat.completions.create(
        model=str(smollm2), temperature=0, stream=True, max_tokens=300,
        response_format={"type": "json_object"},
        messages=[{"role": "user", "content": JSON_Q}])
    chunks = [c for c in stream if c.choices]
    content = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert len(chunks) > 5 and chunks[-1].choices[0].finish_reason == "stop"
    assert isinstance(valid(content, {"type": "object"}), dict)
    # a schema that bounds every string, streamed from the reasoner: the reasoning as free
    schema = SCHEMAS["array_enum"]
    stream = oai.chat.completions.create(
        model=str(micro_reasoner), temperature=0, stream=True, max_tokens=300,
        response_format=_json_schema("colors", schema),
        messages=[{"role": "user", "content": "What is 1+4?"}])
    deltas = [c.choices[0].delta for c in stream if c.choices]
    content = "".join(d.content or "" for d in deltas)
    reasoning = "".join(getattr(d, "reasoning_content", None) or "" for d in deltas)
    assert reasoning == "I need to add 1 and 4. one plus four is five."
    valid(content, schema)


def test_response_format_text_is_the_plain_answer(oai, micro_reasoner):
    r = oai.chat.completions.create(model=str(micro_reasoner), temperature=0,
                                    response_format={"type": "text"},
                                    messages=[{"role": "user", "content": SKY_Q}])
    assert r.choices[0].message.content == SKY_ANSWER


def test_ollama_generate_format_json_and_think_false(oll, micro_reasoner, smollm2):
    r = oll.generate(model=str(smollm2), prompt=JSON_Q,
                     format="json", options={"temperature": 0, "num_predict": 300})
    assert isinstance(json.loads(r.response), dict) and r.done_reason == "stop"
    # no reasoning at all: the grammar binds the reply from its first token
    r = oll.generate(model=str(micro_reasoner), prompt=SKY_Q, think=False, options=GREEDY,
                     format=SCHEMAS["numbers"])
    assert not r.thinking
    valid(r.response, SCHEMAS["numbers"])


def test_raw_generate_is_bound_from_the_first_token(oll, smollm2):
    schema = {"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 4}
    r = oll.generate(model=str(smollm2), prompt="Numbers: ", raw=True, format=schema,
                     options={"seed": 9, "num_predict": 200})
    valid(r.response, schema)


# ---- what cannot be enforced is refused, clearly ----------------------------------------------

def test_unsupported_schemas_are_400s_naming_the_keyword(oai, oll, micro_reasoner):
    bounded = {"type": "object", "properties": {"age": {"type": "integer", "minimum": 0}}}
    with pytest.raises(openai.BadRequestError) as err:
        oai.chat.completions.create(model=str(micro_reasoner), messages=[{"role": "user", "content": "x"}],
                                    response_format=_json_schema("person", bounded))
    body = err.value.body
    assert "'minimum'" in body["message"] and "properties.age" in body["message"]
    assert body["param"] == "response_format"
    with pytest.raises(ollama.ResponseError) as err:
        oll.chat(model=str(micro_reasoner), messages=[{"role": "user", "content": "x"}],
                 format={"type": "string", "pattern": "[a-z]+"})
    assert err.value.status_code == 400 and "anchored" in err.value.error
    with pytest.raises(ollama.ResponseError) as err:
        oll.generate(model=str(micro_reasoner), prompt="x",
                     format={"$ref": "https://example.com/schema.json"})
    assert err.value.status_code == 400 and "local references" in err.value.error


@pytest.mark.parametrize("fmt, words", [
    ({"type": "yaml"}, "response_format type 'yaml' is not supported"),
    ({"type": "json_schema"}, "must be an object with a \"name\""),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "tuple"}}},
     "unknown type 'tuple'"),
    ("json", "response_format must be an object"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {
        "type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a", "b"]}}},
     "schema.required names 'b', which schema.properties does not declare"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"anyOf": []}}},
     "schema.anyOf must be a non-empty list"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {
        "type": "object", "properties": {"tags": {"type": "array", "uniqueItems": True}}}}},
     "'uniqueItems' (at schema.properties.tags)"),
])
def test_bad_response_formats(server, fmt, words):
    import httpx

    r = httpx.post(server.url + "/v1/chat/completions", timeout=30, json={
        "model": "any", "messages": [{"role": "user", "content": "x"}], "response_format": fmt})
    assert r.status_code == 400, r.text
    assert words in r.json()["error"]["message"]


def test_bad_ollama_format(server):
    import httpx

    r = httpx.post(server.url + "/api/chat", timeout=30, json={
        "model": "any", "messages": [{"role": "user", "content": "x"}], "format": "yaml"})
    assert r.status_code == 400 and "format must be \"json\" or a JSON schema" in r.json()["error"]


# ---- the engine: the thinking budget closes the reasoning, then the grammar applies -------------

def test_forced_close_then_grammar(micro_reasoner, r1_standin):
    from r1local.engine import Engine, GenerationSettings
    from r1local.structured import schema_grammar

    schema = SCHEMAS["numbers"]
    with Engine.load(micro_reasoner, n_ctx=1024) as e:
        chunks = list(e.chat([{"role": "user", "content": SKY_Q}],
                             GenerationSettings(think_budget=3, grammar=schema_grammar(schema),
                                                seed=2, max_tokens=300)))
        assert e.last_stats.forced_answer and e.last_stats.thinking_tokens == 3
        valid("".join(c.text for c in chunks if c.kind == "answer"), schema)
    # random weights never close their reasoning: the answer reserve does, then JSON follows
    small = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
             "additionalProperties": False}
    with Engine.load(r1_standin, n_ctx=512) as e:
        chunks = list(e.chat([{"role": "user", "content": "hi"}],
                             GenerationSettings(grammar=schema_grammar(small), seed=1)))
        st = e.last_stats
        assert st.forced_answer and st.finish_reason == "stop"
        assert st.thinking_tokens > 300
        valid("".join(c.text for c in chunks if c.kind == "answer"), small)


# ---- the CLI ------------------------------------------------------------------------------------

def test_run_format_json_and_schema_file(micro_reasoner, smollm2, tmp_path):
    p = r1local("run", str(smollm2), JSON_Q, "--format", "json",
                "--temperature", "0")
    assert p.returncode == 0, p.stderr
    assert isinstance(json.loads(p.stdout), dict) and p.stdout == p.stdout.strip() + "\n"
    for model, schema in ((micro_reasoner, SCHEMAS["nested"]), (smollm2, SCHEMAS["refs"])):
        schema_file = tmp_path / "schema.json"
        schema_file.write_text(json.dumps(schema))
        p = r1local("run", str(model), SKY_Q, "--format", str(schema_file), "--seed", "5")
        assert p.returncode == 0, p.stderr
        valid(p.stdout, schema)  # stdout is the JSON answer and nothing else
        assert p.stdout == p.stdout.strip() + "\n"
        if model == micro_reasoner:
            assert SKY_THINK in p.stderr  # the reasoning: on stderr, as always


def test_run_format_errors_are_one_line(micro_reasoner, tmp_path):
    line = one_line_error(r1local("run", str(micro_reasoner), "x", "--format", str(tmp_path / "no.json")))
    assert "cannot read the schema file" in line
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert "not valid JSON" in one_line_error(r1local("run", str(micro_reasoner), "x", "--format", str(bad)))
    bad.write_text(json.dumps({"type": "number", "maximum": 3}))
    assert "'maximum'" in one_line_error(r1local("run", str(micro_reasoner), "x", "--format", str(bad)))
    # an answer cut off is no JSON: nothing on stdout, and a failure
    p = r1local("run", str(micro_reasoner), SKY_Q, "--format", "json", "--max-tokens", "14",
                "--think-budget", "2", "--seed", "1")
    assert p.returncode == 1 and p.stdout == ""
    assert p.stderr.strip().splitlines()[-1].startswith(
        "r1local: error: the JSON answer was cut off (length after 14 tokens)")


# ---- the frameworks that use it ---------------------------------------------------------------

def test_langchain_with_structured_output(server, micro_reasoner, smollm2):
    from langchain_openai import ChatOpenAI
    from pydantic import BaseModel, Field

    class Weather(BaseModel):
        """A weather report."""
        city: str = Field(max_length=20)
        sky: str = Field(json_schema_extra={"enum": ["blue", "grey"]})
        rain: bool

    for model in (micro_reasoner, smollm2):
        llm = ChatOpenAI(model=str(model), base_url=server.url + "/v1", api_key="unused",
                         temperature=0, max_retries=0)
        out = llm.with_structured_output(Weather, method="json_schema").invoke(SKY_Q)
        assert isinstance(out, Weather) and out.sky in ("blue", "grey")


def test_pydantic_ai_native_output(server, micro_reasoner):
    from pydantic import BaseModel, Field
    from pydantic_ai import Agent, NativeOutput
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.providers.openai import OpenAIProvider

    class Answer(BaseModel):
        value: int
        unit: str = Field(max_length=10)

    model = OpenAIChatModel(str(micro_reasoner),
                            provider=OpenAIProvider(base_url=server.url + "/v1", api_key="unused"))
    agent = Agent(model, output_type=NativeOutput(Answer))
    result = agent.run_sync("What is 2+2?", model_settings={"temperature": 0.0})
    assert isinstance(result.output, Answer)
