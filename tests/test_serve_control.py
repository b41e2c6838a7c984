"""`r1local serve`: auth, CORS, the queue (none lost, 503 when full), client disconnects
stopping generation, and the command line itself (warning, one-line errors, real start)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import ollama
import openai
import pytest

from r1local.server.background import BackgroundServer
from r1local.server.config import ServerConfig, exposure_warning, parse_duration
from test_serve_ollama import FIXTURE_DIRS

ROOT = Path(__file__).resolve().parents[1]
LONG_SAMPLING = {"temperature": 1.0, "top_k": 100}
LONG = {"num_predict": 100000, **LONG_SAMPLING}  # runs until the context is full


def test_api_key_required_everywhere(smollm2):
    cfg = ServerConfig(port=0, api_key="s3cret", allow_paths=FIXTURE_DIRS)
    with BackgroundServer(cfg) as srv:
        for method, path in (("GET", "/api/tags"), ("GET", "/api/version"), ("GET", "/v1/models"),
                             ("POST", "/api/generate"), ("POST", "/v1/chat/completions"),
                             ("GET", "/")):
            r = httpx.request(method, srv.url + path, json={})
            assert r.status_code == 401, path
        assert httpx.get(srv.url + "/api/tags",
                         headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert httpx.get(srv.url + "/v1/models").json()["error"]["code"] == "invalid_api_key"
        good = ollama.Client(host=srv.url, headers={"Authorization": "Bearer s3cret"})
        assert good.generate(model=str(smollm2), prompt="Hi",
                             options={"num_predict": 2}).eval_count == 2
        with pytest.raises(ollama.ResponseError) as err:
            ollama.Client(host=srv.url).list()
        assert err.value.status_code == 401
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=srv.url + "/v1", api_key="nope", max_retries=0).models.list()
        assert openai.OpenAI(base_url=srv.url + "/v1", api_key="s3cret").models.list() is not None


def test_cors_headers_only_for_allowed_origins():
    with BackgroundServer(ServerConfig(port=0)) as srv:
        r = httpx.get(srv.url + "/api/version", headers={"Origin": "http://evil.example"})
        assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
    cfg = ServerConfig(port=0, cors_origins=("http://app.example",), api_key="k")
    with BackgroundServer(cfg) as srv:
        auth = {"Authorization": "Bearer k"}
        ok = httpx.get(srv.url + "/api/version", headers={"Origin": "http://app.example", **auth})
        assert ok.headers["access-control-allow-origin"] == "http://app.example"
        other = httpx.get(srv.url + "/api/version", headers={"Origin": "http://evil.example", **auth})
        assert "access-control-allow-origin" not in other.headers
        pre = httpx.options(srv.url + "/v1/chat/completions", headers={
            "Origin": "http://app.example", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type"})
        assert pre.status_code == 200  # preflight carries no key and must still pass
        assert pre.headers["access-control-allow-origin"] == "http://app.example"


def _cancelled_soon(srv, path, max_tokens_seen: int, within: float = 10.0):
    """Wait until the model is idle again; return its last stats."""
    key = str(Path(path).resolve())
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        q = srv.manager._queues.get(key)
        if q is not None and q.pending == 0:
            return srv.manager.loaded[key].engine.last_stats
        time.sleep(0.05)
    raise AssertionError("generation still running after the client left")


def test_disconnect_stops_generation(r1_standin, smollm2):
    with BackgroundServer(ServerConfig(port=0, allow_paths=FIXTURE_DIRS)) as srv:
        # random weights: no end-of-sequence in sight, so only the disconnect can stop it
        body = {"model": str(r1_standin), "prompt": "Tell me a very long story.", "options": LONG}
        with httpx.stream("POST", srv.url + "/api/generate", json=body, timeout=60) as r:
            lines = []
            for line in r.iter_lines():
                lines.append(line)
                if len(lines) == 3:
                    break  # leave mid-stream: the connection closes
        stats = _cancelled_soon(srv, r1_standin, 3)
        assert stats.finish_reason == "cancelled" and stats.completion_tokens < 1000
        # the same for a non-streaming request whose client gives up
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(srv.url + "/api/generate", json={**body, "stream": False}, timeout=1.0)
        stats = _cancelled_soon(srv, r1_standin, 0)
        assert stats.finish_reason == "cancelled" and stats.completion_tokens < 1000
        # and an OpenAI stream
        oa = openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0)
        stream = oa.chat.completions.create(model=str(r1_standin), stream=True, max_tokens=100000,
                                            messages=[{"role": "user", "content": "Go on and on."}])
        for i, _ in enumerate(stream):
            if i == 3:
                break
        stream.close()
        stats = _cancelled_soon(srv, r1_standin, 0)
        assert stats.finish_reason == "cancelled"


def test_queue_serves_everyone_then_503_when_full(r1_standin):
    # the R1 stand-in's random weights never end a reply on their own: it holds the model busy
    model = str(r1_standin)
    # one request at a time (--parallel 1): test_serve_parallel has the queue beside N slots
    with BackgroundServer(ServerConfig(port=0, max_queue=2, parallel=1,
                                       allow_paths=FIXTURE_DIRS)) as srv:
        client = ollama.Client(host=srv.url)
        client.generate(model=model, keep_alive=-1)  # loaded before the queue forms
        results: dict[int, object] = {}

        def ask(i: int) -> None:
            try:
                results[i] = client.generate(model=model, prompt=f"Count to {i}.",
                                             options={"num_predict": 24, "seed": i, **LONG_SAMPLING})
            except ollama.ResponseError as err:
                results[i] = err

        with httpx.stream("POST", srv.url + "/api/generate", timeout=60,
                          json={"model": model, "prompt": "Tell a long story.",
                                "options": LONG}) as hold:
            lines = hold.iter_lines()
            next(lines)  # the model is busy now (keep the iterator: dropping it closes the stream)
            threads = [threading.Thread(target=ask, args=(i,)) for i in range(2)]
            for t in threads:
                t.start()
            deadline = time.monotonic() + 10
            key = str(r1_standin.resolve())
            while srv.manager._queues[key].pending < 3 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert srv.manager._queues[key].pending == 3, results
            # one running + two waiting: the queue is full
            over = httpx.post(srv.url + "/api/generate", timeout=10, json={
                "model": model, "prompt": "hi", "options": {"num_predict": 1}})
            assert over.status_code == 503 and "busy" in over.json()["error"], (
                over.text, list(hold.iter_lines())[-2:])
            over = httpx.post(srv.url + "/v1/completions", timeout=10,
                              json={"model": model, "prompt": "hi"})
            assert over.status_code == 503 and over.json()["error"]["code"] == "queue_full"
            assert all(t.is_alive() for t in threads)  # still waiting, not refused
        for t in threads:
            t.join(60)
        assert all(getattr(results[i], "eval_count", 0) == 24 for i in range(2)), results


def test_many_concurrent_clients_none_lost(smollm2):
    with BackgroundServer(ServerConfig(port=0, allow_paths=FIXTURE_DIRS)) as srv:
        oa = openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0)
        out: list = []

        def ask(i: int) -> None:
            r = oa.completions.create(model=str(smollm2), prompt=f"{i} + {i} =", max_tokens=3,
                                      temperature=0)
            out.append(r.usage.completion_tokens)

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert out == [3] * 12


def test_config_parsing_and_exposure_warning():
    assert parse_duration("5m") == 300 and parse_duration("1h30m") == 5400
    assert parse_duration(0) == 0 and parse_duration("-1") < 0 and parse_duration("250ms") == 0.25
    for bad in ("soon", "5 minutes", "", True):
        with pytest.raises(ValueError):
            parse_duration(bad)
    assert exposure_warning("127.0.0.1", None) is None and exposure_warning("::1", None) is None
    assert exposure_warning("0.0.0.0", "key") is None
    assert "R1LOCAL_API_KEY" in exposure_warning("0.0.0.0", None)


def _r1local(*args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "R1LOCAL_HOME": kw.pop("home"), "PYTHONUNBUFFERED": "1",
           **kw.pop("extra_env", {})}
    env.pop("R1LOCAL_API_KEY", None)
    return subprocess.Popen([sys.executable, "-m", "r1local", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _address(p: subprocess.Popen) -> str:
    for line in p.stderr:
        m = re.search(r"serving on (http://127\.0\.0\.1:\d+)", line)
        if m:
            return m.group(1)
    raise AssertionError("the server did not report its address")


def test_cli_warns_when_exposed_and_fails_in_one_line(tmp_path):
    p = _r1local("serve", "--host", "0.0.0.0", "--port", "0", "--model",
                 str(tmp_path / "missing.gguf"), home=str(tmp_path))
    out, err = p.communicate(timeout=60)
    lines = err.strip().splitlines()
    assert p.returncode != 0 and len(lines) == 2, err
    assert "without an API key" in lines[0]
    assert lines[1].startswith("r1local: error: cannot serve --model") and "not found" in lines[1]
    p = _r1local("serve", "--keep-alive", "forever", home=str(tmp_path))
    _, err = p.communicate(timeout=60)
    assert p.returncode == 2 and "--keep-alive" in err and "Traceback" not in err


def test_cli_serves_the_documented_curl_request(tmp_path, micro_reasoner):
    p = _r1local("serve", "--port", "0", "--model", str(micro_reasoner), home=str(tmp_path))
    try:
        url = _address(p)
        # requests that name no model use --model
        r = httpx.post(url + "/api/generate", timeout=60, content=json.dumps(
            {"model": str(micro_reasoner), "prompt": "Say hello.", "stream": False,
             "options": {"temperature": 0}}))
        assert r.status_code == 200 and r.json()["response"] == "Hello!"
        r = httpx.post(url + "/api/chat", timeout=60, json={
            "messages": [{"role": "user", "content": "Say hello."}], "stream": False,
            "options": {"temperature": 0}})
        assert r.json()["message"] == {"role": "assistant", "content": "Hello!",
                                       "thinking": "The user wants a greeting."}
        # a busy port is one clear line
        port = url.rsplit(":", 1)[1]
        busy = _r1local("serve", "--port", port, home=str(tmp_path))
        _, err = busy.communicate(timeout=60)
        assert busy.returncode != 0 and "already in use" in err and "Traceback" not in err
    finally:
        p.send_signal(signal.SIGINT)
        p.wait(timeout=30)
    assert p.returncode == 0


def test_pull_through_the_api_then_serve_by_tag(tmp_path, loopback_hub, r1_standin):
    """/api/pull streams the hub's progress (the real huggingface-hub against the loopback
    hub), then the pulled model is listed and served by its catalog tag."""
    from loopback_hub import layout_variant, unpinned_catalog

    from r1local.catalog import load_catalog

    layout_variant(loopback_hub, load_catalog().resolve("7b").variant, r1_standin)
    # the stand-in is not the file the catalog pins: an unpinned copy of the catalog lets
    # the pull take the hub's file (the refusal itself is tested in test_pull.py)
    env = {"HF_ENDPOINT": loopback_hub.url, "HF_HOME": str(tmp_path / "hf"),
           "HF_HUB_DISABLE_TELEMETRY": "1",
           "R1LOCAL_CATALOG": str(unpinned_catalog(tmp_path / "models.toml"))}
    p = _r1local("serve", "--port", "0", home=str(tmp_path / "r1"), extra_env=env)
    try:
        url = _address(p)
        client = ollama.Client(host=url)
        events = list(client.pull("7b:Q4_K_M", stream=True))
        assert events[-1].status == "success"
        assert any(e.total and e.completed == e.total for e in events), events
        assert "7b:Q4_K_M" in {m.model for m in client.list().models}
        r = client.generate(model="7b", prompt="Hi", options={"num_predict": 3, "seed": 1})
        assert r.eval_count == 3
        with pytest.raises(ollama.ResponseError) as err:
            list(client.pull("9000b", stream=True))
        assert err.value.status_code == 404
    finally:
        p.send_signal(signal.SIGINT)
        p.wait(timeout=30)
