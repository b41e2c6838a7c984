"""`r1local serve` as a drop-in for Ollama and OpenAI clients (issue 17): `name:latest`,
/v1/models/{id}, /api/delete and /api/copy on the store, /api/show's fields, a per-request
context that never leaks into later requests, long chats losing their oldest turns, 501 for
what is not supported, and the default port 11434 with a busy port named by its holder.

Live servers on loopback, the official `ollama` and `openai` clients, real llama.cpp."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import ollama
import openai
import pytest

from micro_reasoner import FACTS
from r1local.server.background import BackgroundServer
from r1local.server.config import DEFAULT_PORT, ServerConfig, parse_host
from r1local.server.window import drop_oldest
from r1local.store import Store
from test_serve_ollama import FIXTURE_DIRS

ROOT = Path(__file__).resolve().parents[1]
SKY_Q, SKY_THINK, SKY_ANSWER = FACTS[0]
GREEDY = {"temperature": 0.0}


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory, micro_reasoner):
    """A store holding the micro reasoner as "micro" (a copy: hard links are tested on it)."""
    root = tmp_path_factory.mktemp("store")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("R1LOCAL_MODELS", str(root))
        Store(root).import_file(micro_reasoner, "micro")
        yield root


@pytest.fixture(scope="module")
def server(store_dir):
    with BackgroundServer(ServerConfig(port=0, max_loaded=3, allow_paths=FIXTURE_DIRS)) as srv:
        yield srv


@pytest.fixture(scope="module")
def oc(server):
    return ollama.Client(host=server.url)


@pytest.fixture(scope="module")
def ai(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def _ps(oc) -> dict:
    return {m.model: m for m in oc.ps().models}


def _default_ctx(url: str, model: str) -> int:
    """r1local's own /api/ps field (the ollama client drops fields it does not know)."""
    models = httpx.get(url + "/api/ps").json()["models"]
    return next(m["default_context_length"] for m in models if m["model"] == model)


# ---- 1. name:latest is name -----------------------------------------------------------

def test_latest_names_the_same_model_everywhere(oc, ai):
    r = oc.chat(model="micro:latest", messages=[{"role": "user", "content": SKY_Q}],
                options=GREEDY)
    assert (r.message.thinking, r.message.content) == (SKY_THINK, SKY_ANSWER)
    assert oc.generate(model="micro", prompt=SKY_Q, options=GREEDY).response == SKY_ANSWER
    assert "micro:latest" in {m.model for m in oc.list().models}  # listed as Ollama does
    assert "micro:latest" in _ps(oc)
    assert oc.show("micro:latest").capabilities == oc.show("micro").capabilities
    c = ai.chat.completions.create(model="micro:latest", temperature=0,
                                   messages=[{"role": "user", "content": SKY_Q}])
    assert c.choices[0].message.content == SKY_ANSWER
    assert "micro:latest" in {m.id for m in ai.models.list().data}
    assert ai.models.retrieve("micro:latest").id == "micro:latest"
    assert ai.models.retrieve("micro").id == "micro:latest"
    with pytest.raises(openai.NotFoundError) as err:
        ai.models.retrieve("no-such-model")
    assert err.value.body["code"] == "model_not_found" and "no-such-model" in err.value.message
    with pytest.raises(ollama.ResponseError) as oerr:
        oc.show("no-such-model:latest")
    assert oerr.value.status_code == 404


def test_models_retrieve_takes_a_path_the_server_may_load(ai, micro_reasoner, tmp_path):
    assert ai.models.retrieve(str(micro_reasoner)).id == str(micro_reasoner)
    with pytest.raises(openai.NotFoundError):  # outside --allow-paths: not found, like chat
        ai.models.retrieve(str(tmp_path / "x.gguf"))


# ---- 2. /api/show -----------------------------------------------------------------------

def test_show_has_the_fields_clients_read(oc, smollm2):
    r = oc.show("micro:latest")
    # (other capabilities, such as tools, come from their own rules)
    assert r.capabilities[:2] == ["completion", "thinking"] and "embedding" not in r.capabilities
    d = r.details
    assert d.format == "gguf" and d.family and d.families == [d.family]
    assert d.parameter_size and d.quantization_level
    info = r.modelinfo
    arch = info["general.architecture"]
    assert arch == d.family
    for key in ("context_length", "embedding_length", "block_count"):
        assert isinstance(info[f"{arch}.{key}"], int) and info[f"{arch}.{key}"] > 0, key
    assert info[f"{arch}.context_length"] == 4096 and info["general.parameter_count"] > 0
    assert r.template
    plain = oc.show(str(smollm2))
    assert "completion" in plain.capabilities and "thinking" not in plain.capabilities
    assert plain.modelinfo["llama.context_length"] == 8192


# ---- 3. /api/copy and /api/delete ------------------------------------------------------

def test_copy_shares_the_bytes_and_delete_leaves_the_copy(oc, ai, store_dir):
    store = Store(store_dir)
    try:
        oc.chat(model="micro", messages=[{"role": "user", "content": SKY_Q}],
                options={**GREEDY, "num_predict": 1})  # loaded: delete must unload it first
        assert oc.copy("micro:latest", "micro-copy:latest").status == "success"
        src, dst = store.get("micro"), store.get("micro-copy")
        assert dst is not None and dst.path != src.path and dst.quant == src.quant
        assert os.stat(dst.path).st_ino == os.stat(src.path).st_ino  # a hard link, no copy
        assert dst.sha256 == src.sha256
        assert {"micro:latest", "micro-copy:latest"} <= {m.model for m in oc.list().models}
        assert "micro-copy:latest" in {m.id for m in ai.models.list().data}

        assert oc.delete("micro:latest").status == "success"
        assert store.get("micro") is None and not src.path.exists()
        assert "micro:latest" not in _ps(oc)  # unloaded before its file went
        assert dst.path.is_file() and os.stat(dst.path).st_nlink == 1
        r = oc.generate(model="micro-copy", prompt=SKY_Q, options=GREEDY)
        assert r.response == SKY_ANSWER
        with pytest.raises(ollama.ResponseError) as err:
            oc.delete("micro")
        assert err.value.status_code == 404 and "micro" in err.value.error
        # and back: a copy of the copy, then the copy deleted
        oc.copy("micro-copy", "micro")
        oc.delete("micro-copy")
        assert store.get("micro-copy") is None and store.get("micro").path.is_file()
        assert not (store_dir / "micro-copy").exists()
    finally:
        if store.get("micro") is None and store.get("micro-copy") is not None:
            store.copy("micro-copy", "micro")


def test_copy_and_delete_refuse_what_they_cannot_do(oc, server, micro_reasoner, store_dir):
    cases = [("micro", "a/b", 400, "cannot be a model name"),
             ("micro", "micro", 400, "already in the store"),
             ("micro", "7b", 400, "catalog name"),
             ("micro", "x:Q4_K_M", 400, "cannot be a model name"),
             ("nope", "other", 404, "not found"),
             (str(micro_reasoner), "other", 404, "not found")]  # a path is no store name
    for source, dest, status, words in cases:
        with pytest.raises(ollama.ResponseError) as err:
            oc.copy(source, dest)
        assert err.value.status_code == status and words in err.value.error, (source, dest,
                                                                               err.value.error)
    assert sorted(p.name for p in store_dir.iterdir() if p.is_dir()) == ["micro"]
    r = httpx.request("DELETE", server.url + "/api/delete", json={})
    assert r.status_code == 400 and "model" in r.json()["error"]
    with pytest.raises(ollama.ResponseError) as err:
        oc.delete(str(micro_reasoner))
    assert err.value.status_code == 404 and micro_reasoner.exists()


def test_deleting_a_name_keeps_files_another_name_lists(tmp_path, smollm2):
    # two entries naming one file (a linked import and its copy): removing one keeps it
    store = Store(tmp_path)
    store.import_file(smollm2, "small", link=True)
    store.copy("small", "small2")
    assert store.get("small2").path == smollm2.resolve() and store.get("small2").linked
    store.remove("small")
    assert smollm2.exists() and store.get("small2") is not None


# ---- 4. a request's context never leaks --------------------------------------------------

def _words(n: int) -> str:
    return " ".join(f"w{i}" for i in range(n))


def test_num_ctx_is_one_request_s_window(server, oc, ai, smollm2):
    model = str(smollm2)
    r = oc.generate(model=model, prompt="Hi", options={"num_ctx": 256, "num_predict": 2})
    assert r.eval_count == 2
    ps = _ps(oc)[model]
    default = ps.context_length
    assert default == 8192  # loaded with its default: a small num_ctx runs inside it
    assert _default_ctx(server.url, model) == default
    # the case: a 331+ token OpenAI request after the num_ctx 256 one
    c = ai.chat.completions.create(model=model, max_tokens=2, temperature=0,
                                   messages=[{"role": "user", "content": _words(200)}])
    assert c.usage.prompt_tokens > 331
    # the same prompt with num_ctx 256: too long for the window (nothing to drop)
    with pytest.raises(ollama.ResponseError) as err:
        oc.generate(model=model, prompt=_words(200), options={"num_ctx": 256, "num_predict": 2})
    assert err.value.status_code == 400
    assert "context holds 256 (of 8192 loaded)" in err.value.error and "the prompt is" in \
        err.value.error
    # a reply stops where the window ends, inside the loaded context
    r = oc.generate(model=model, prompt=_words(60), raw=True,
                    options={"num_ctx": 256, "num_predict": -1, "temperature": 1.0})
    assert r.prompt_eval_count + r.eval_count <= 256 and r.done_reason == "length"
    # a larger num_ctx reloads; ps says so; the default stays what requests without one get
    r = oc.generate(model=model, prompt="Hi", options={"num_ctx": 9000, "num_predict": 1})
    ps = _ps(oc)[model]
    assert ps.context_length == 9216 and _default_ctx(server.url, model) == default
    c = ai.chat.completions.create(model=model, max_tokens=1,
                                   messages=[{"role": "user", "content": "Hi"}])
    assert c.choices[0].finish_reason == "length"
    assert _ps(oc)[model].context_length == 9216  # no reload for the default window
    oc.generate(model=model, keep_alive=0)  # unload: the next test loads it afresh


def test_the_default_window_bounds_requests_in_a_larger_load(smollm2):
    # --ctx 512 is the server's default; a num_ctx 1024 request loads 1024, and a request
    # without num_ctx still gets 512
    cfg = ServerConfig(port=0, n_ctx=512, allow_paths=FIXTURE_DIRS)
    with BackgroundServer(cfg) as srv:
        oc = ollama.Client(host=srv.url)
        oc.generate(model=str(smollm2), prompt="Hi", options={"num_ctx": 1024, "num_predict": 1})
        assert _ps(oc)[str(smollm2)].context_length == 1024
        with pytest.raises(ollama.ResponseError) as err:
            oc.generate(model=str(smollm2), prompt=_words(300), options={"num_predict": 1})
        assert "context holds 512 (of 1024 loaded)" in err.value.error
        ai = openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0)
        with pytest.raises(openai.BadRequestError) as oerr:
            ai.completions.create(model=str(smollm2), prompt=_words(300), max_tokens=1)
        assert oerr.value.body["code"] == "context_length_exceeded"
        assert "truncate" not in oerr.value.message  # no Ollama advice on the OpenAI side


# ---- 5. a chat longer than its window -----------------------------------------------------

def test_a_long_chat_drops_its_oldest_turns(server, oc, smollm2):
    system = {"role": "system", "content": "You are terse."}
    old = [{"role": "user", "content": _words(80)}, {"role": "assistant", "content": "ok"}] * 3
    last = {"role": "user", "content": "Say yes."}
    messages = [system, *old, last]
    r = oc.chat(model=str(smollm2), messages=messages,
                options={"num_ctx": 512, "num_predict": 4, **GREEDY})
    assert 0 < r.prompt_eval_count <= 512 - 4
    full = oc.chat(model=str(smollm2), messages=messages, options={"num_predict": 1})
    assert full.prompt_eval_count > 512  # the whole chat did not fit in the window
    body = {"model": str(smollm2), "messages": messages, "stream": False, "truncate": False,
            "options": {"num_ctx": 512, "num_predict": 4}}
    refused = httpx.post(server.url + "/api/chat", json=body, timeout=60)
    assert refused.status_code == 400 and "truncate" in refused.json()["error"], refused.text
    # one message that cannot fit alone is refused, truncate or not
    with pytest.raises(ollama.ResponseError) as err:
        oc.chat(model=str(smollm2), messages=[system, {"role": "user", "content": _words(400)}],
                options={"num_ctx": 256, "num_predict": 1})
    assert err.value.status_code == 400 and "context holds 256" in err.value.error


def test_an_old_turn_larger_than_any_window_is_dropped_too(oc, smollm2):
    huge = "word " * (1 << 19)  # 2.5 MiB: far more than num_ctx tokens could hold
    r = oc.chat(model=str(smollm2), options={"num_ctx": 512, "num_predict": 2},
                messages=[{"role": "user", "content": huge},
                          {"role": "assistant", "content": "ok"},
                          {"role": "user", "content": "Say yes."}])
    assert r.eval_count == 2 and r.prompt_eval_count < 100


def test_dropping_keeps_system_messages_and_the_last_turn():
    s, u1, a1, u2, a2, u3 = ({"role": r, "content": str(i)} for i, r in enumerate(
        ("system", "user", "assistant", "user", "assistant", "user")))
    chat = [s, u1, a1, u2, a2, u3]
    assert drop_oldest(chat, 0) == chat
    assert drop_oldest(chat, 1) == [s, u2, a2, u3]  # whole turns: the reply goes too
    assert drop_oldest(chat, 2) == [s, u3]
    assert drop_oldest(chat, 9) == [s, u3]


# ---- 6. what is not supported is said: 501 ---------------------------------------------

def test_unknown_endpoints_are_501_in_each_family_s_shape(server, oc, ai):
    for method, path, words in (("POST", "/api/create", "r1local import"),
                                ("POST", "/api/push", "no registry"),
                                ("HEAD", "/api/blobs/sha256:abc", ""),
                                ("POST", "/api/blobs/sha256:abc", "blob"),
                                ("GET", "/api/no-such-thing", "GET /api/no-such-thing")):
        r = httpx.request(method, server.url + path, json={} if method == "POST" else None)
        assert r.status_code == 501, (path, r.status_code, r.text)
        if method != "HEAD":
            assert words in r.json()["error"], (path, r.text)
    with pytest.raises(ollama.ResponseError) as err:
        oc.create(model="mine", from_="micro")
    assert err.value.status_code == 501 and "r1local import" in err.value.error
    with pytest.raises(ollama.ResponseError) as err:
        oc.push("micro")
    assert err.value.status_code == 501
    for path in ("/v1/audio/speech", "/v1/responses", "/v1/images/generations", "/v1/nope"):
        r = httpx.post(server.url + path, json={})
        e = r.json()["error"]
        assert r.status_code == 501 and e["code"] == "not_implemented" and e["message"], path
        assert r.headers["x-should-retry"] == "false"
    retrying = openai.OpenAI(base_url=server.url + "/v1", api_key="x")  # default retries
    t0 = time.monotonic()
    with pytest.raises(openai.APIStatusError) as oerr:
        retrying.audio.speech.create(model="micro", voice="alloy", input="hi")
    assert oerr.value.status_code == 501 and time.monotonic() - t0 < 0.5  # not retried
    assert httpx.get(server.url + "/nothing-here").status_code == 404  # outside the APIs


def test_the_501_fallback_never_shadows_routes_added_later(server):
    assert httpx.get(server.url + "/api/added-later").status_code == 501

    async def later() -> dict:
        return {"ok": True}

    server.app.router.add_api_route("/api/added-later", later, methods=["GET"])
    assert httpx.get(server.url + "/api/added-later").json() == {"ok": True}


def test_openai_fields_not_supported_are_501(ai, smollm2):
    msg = [{"role": "user", "content": "Hi"}]
    for extra, param in (({"logprobs": True}, "logprobs"),
                         ({"logprobs": True, "top_logprobs": 3}, "logprobs"),
                         ({"top_logprobs": 2}, "top_logprobs"),
                         ({"frequency_penalty": 0.5}, "frequency_penalty"),
                         ({"logit_bias": {"1": 5}}, "logit_bias")):
        with pytest.raises(openai.APIStatusError) as err:
            ai.chat.completions.create(model=str(smollm2), messages=msg, max_tokens=1, **extra)
        assert err.value.status_code == 501 and err.value.body["param"] == param, extra
    with pytest.raises(openai.APIStatusError) as err:
        ai.completions.create(model=str(smollm2), prompt="a", max_tokens=1, logprobs=1)
    assert err.value.status_code == 501 and "logprobs" in err.value.message
    with pytest.raises(openai.APIStatusError) as err:
        ai.completions.create(model=str(smollm2), prompt="a", max_tokens=1, echo=True)
    assert err.value.status_code == 501 and err.value.body["param"] == "echo"
    ok = ai.chat.completions.create(model=str(smollm2), messages=msg, max_tokens=1,
                                    logprobs=False, frequency_penalty=0, presence_penalty=0)
    assert ok.choices[0].logprobs is None


def test_reasoning_effort_is_the_thinking_budget(ai, micro_reasoner, smollm2):
    msg = [{"role": "user", "content": SKY_Q}]
    none = ai.chat.completions.create(model=str(micro_reasoner), messages=msg, temperature=0,
                                      reasoning_effort="none")
    assert none.choices[0].message.reasoning_content == ""
    assert none.choices[0].message.content and none.usage.completion_tokens_details \
        .reasoning_tokens == 0
    high = ai.chat.completions.create(model=str(micro_reasoner), messages=msg, temperature=0,
                                      reasoning_effort="high")
    assert high.choices[0].message.content == SKY_ANSWER
    assert high.choices[0].message.reasoning_content == SKY_THINK
    with pytest.raises(openai.BadRequestError) as err:  # no reasoning: refused, not ignored
        ai.chat.completions.create(model=str(smollm2), messages=msg, max_tokens=1,
                                   reasoning_effort="low")
    assert err.value.body["param"] == "reasoning_effort"
    with pytest.raises(openai.BadRequestError) as err:
        ai.chat.completions.create(model=str(micro_reasoner), messages=msg, max_tokens=1,
                                   extra_body={"reasoning_effort": "extreme"})
    assert err.value.body["param"] == "reasoning_effort"


def test_ollama_fields_not_supported_are_501(oc, smollm2):
    for kw in ({"options": {"mirostat": 2}}, {"options": {"typical_p": 0.5}},
               {"logprobs": True}, {"context": [1, 2, 3]}, {"template": "{{ .Prompt }}"},
               {"suffix": "end"}, {"images": [b"\x89PNG\r\n"]}):
        with pytest.raises(ollama.ResponseError) as err:
            oc.generate(model=str(smollm2), prompt="Hi", **kw)
        assert err.value.status_code == 501 and "not supported" in err.value.error, kw
    r = oc.generate(model=str(smollm2), prompt="Hi",
                    options={"num_predict": 1, "mirostat": 0, "typical_p": 1.0, "num_thread": 2})
    assert r.eval_count == 1  # the off values, and a load-time knob, pass
    with pytest.raises(ollama.ResponseError) as err:
        oc.chat(model=str(smollm2), messages=[{"role": "user", "content": "Hi",
                                               "images": [b"\x89PNG\r\n"]}])
    assert err.value.status_code == 501 and "images" in err.value.error


# ---- 7. the default port, and a busy one ---------------------------------------------------

def test_default_port_is_ollama_s_and_ollama_host_is_read_as_ollama_reads_it():
    assert DEFAULT_PORT == 11434 and ollama.Client()._client.base_url.port == DEFAULT_PORT
    assert parse_host("0.0.0.0") == ("0.0.0.0", 11434)
    assert parse_host("localhost:8080") == ("localhost", 8080)
    assert parse_host("http://127.0.0.1:9999") == ("127.0.0.1", 9999)
    assert parse_host(":1234") == ("127.0.0.1", 1234)
    assert parse_host("[::1]:5") == ("::1", 5)
    with pytest.raises(ValueError):
        parse_host("ftp://host")


def _serve(*args: str, env: dict[str, str], home: Path) -> subprocess.Popen:
    full = {k: v for k, v in os.environ.items()
            if k not in ("R1LOCAL_HOST", "OLLAMA_HOST", "R1LOCAL_API_KEY")}
    full.update({"R1LOCAL_HOME": str(home), "PYTHONUNBUFFERED": "1", **env})
    return subprocess.Popen([sys.executable, "-m", "r1local", "serve", *args], cwd=ROOT,
                            env=full, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _held_port() -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    return s


def _one_line_error(p: subprocess.Popen) -> str:
    _, err = p.communicate(timeout=60)
    lines = err.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_cli_names_who_holds_a_busy_port_and_how_to_choose_another(tmp_path):
    held = _held_port()
    port = held.getsockname()[1]
    try:
        line = _one_line_error(_serve("--port", str(port), env={}, home=tmp_path))
        assert f"port {port} on 127.0.0.1 is already in use" in line
        assert f"(pid {os.getpid()})" in line  # this test's own process holds it
        assert "--port" in line and "OLLAMA_HOST" in line
        # the port from OLLAMA_HOST (as Ollama reads it) and from R1LOCAL_HOST
        for var in ("OLLAMA_HOST", "R1LOCAL_HOST"):
            line = _one_line_error(_serve(env={var: f"http://127.0.0.1:{port}"}, home=tmp_path))
            assert f"port {port} on 127.0.0.1 is already in use" in line, (var, line)
    finally:
        held.close()
    line = _one_line_error(_serve(env={"OLLAMA_HOST": "127.0.0.1:http"}, home=tmp_path))
    assert "OLLAMA_HOST" in line and "not a number" in line


FAKE_OLLAMA = textwrap.dedent("""
    import http.server, sys
    with open("/proc/self/comm", "w") as f:
        f.write("ollama")  # the name the process table shows, as a real Ollama's
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200); self.end_headers(); self.wfile.write(b"Ollama is running")
        def log_message(self, *a): pass
    srv = http.server.HTTPServer(("127.0.0.1", 0), H)
    print(srv.server_address[1], flush=True)
    srv.serve_forever()
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="renames itself via /proc")
def test_cli_says_when_ollama_holds_the_port(tmp_path):
    fake = subprocess.Popen([sys.executable, "-c", FAKE_OLLAMA], stdout=subprocess.PIPE,
                            text=True)
    try:
        port = int(fake.stdout.readline())
        line = _one_line_error(_serve(env={"OLLAMA_HOST": f"127.0.0.1:{port}"}, home=tmp_path))
        assert f"already in use by Ollama (pid {fake.pid})" in line, line
    finally:
        fake.kill()
        fake.wait()


def test_cli_listens_where_ollama_host_says(tmp_path):
    p = _serve(env={"OLLAMA_HOST": "http://127.0.0.1:0"}, home=tmp_path)
    try:
        for line in p.stderr:
            m = re.search(r"serving on (http://127\.0\.0\.1:\d+)", line)
            if m:
                break
        else:
            raise AssertionError("the server did not report its address")
        assert ollama.Client(host=m.group(1)).list() is not None
    finally:
        p.terminate()
        p.wait(timeout=30)
