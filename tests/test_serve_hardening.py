"""`r1local serve` against hostile input, through a live server on real models: web pages
(DNS rebinding, cross-site "simple" POSTs), paths as model names, oversized bodies and
prompts, out-of-range settings, and names no file system takes. Each one gets a JSON error
with a 4xx status, and the server keeps serving."""

from __future__ import annotations

import json
import select
import shutil
import socket
import subprocess

import httpx
import pytest

from r1local.engine import Engine
from r1local.server.background import BackgroundServer
from r1local.server.config import ServerConfig
from test_serve_control import _r1local
from test_serve_ollama import FIXTURE_DIRS

ONE_TOKEN = {"num_predict": 1, "temperature": 0}


@pytest.fixture(scope="module")
def server():
    with BackgroundServer(ServerConfig(port=0, allow_paths=FIXTURE_DIRS)) as srv:
        yield srv


def _generate(model: str, **extra) -> dict:
    return {"model": str(model), "prompt": "Say hello.", "stream": False,
            "options": ONE_TOKEN, **extra}


# ---- 1. web pages --------------------------------------------------------------------

def test_a_host_header_naming_another_site_is_refused(server, micro_reasoner):
    body = _generate(micro_reasoner)
    evil = httpx.post(server.url + "/api/generate", json=body, headers={"Host": "evil.example"})
    assert evil.status_code == 403, evil.text
    assert "--allow-host evil.example" in evil.json()["error"]
    oa = httpx.get(server.url + "/v1/models", headers={"Host": "evil.example:11435"})
    assert oa.status_code == 403 and oa.json()["error"]["code"] == "host_not_allowed"
    for host in ("localhost", f"localhost:{server.port}", f"127.0.0.1:{server.port}",
                 f"[::1]:{server.port}", "LOCALHOST."):
        r = httpx.get(server.url + "/api/version", headers={"Host": host})
        assert r.status_code == 200, (host, r.text)
    with BackgroundServer(ServerConfig(port=0, allow_hosts=("box.lan",))) as srv:
        assert httpx.get(srv.url + "/api/version", headers={"Host": "box.lan:80"}).status_code == 200
        assert httpx.get(srv.url + "/api/version", headers={"Host": "evil.example"}).status_code == 403


def test_cross_site_simple_posts_are_415(server, micro_reasoner, tmp_path, monkeypatch):
    # a pull that got through would try the hub: point it at a closed port, in a scratch home
    monkeypatch.setenv("R1LOCAL_HOME", str(tmp_path))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    page = {"Origin": "http://evil.example"}
    cases = [
        ("/api/pull", {"Content-Type": "text/plain"}, {"model": "7b", "stream": False}),
        ("/api/generate", {"Content-Type": "text/plain;charset=UTF-8"}, _generate(micro_reasoner)),
        ("/api/generate", {"Content-Type": "multipart/form-data; boundary=x"},
         _generate(micro_reasoner)),
        ("/api/generate", {"Content-Type": "application/x-www-form-urlencoded", **page},
         _generate(micro_reasoner)),
        ("/api/chat", page, {"model": str(micro_reasoner), "stream": False,
                             "messages": [{"role": "user", "content": "hi"}]}),
        ("/v1/completions", {"Content-Type": "text/plain"},
         {"model": str(micro_reasoner), "prompt": "hi", "max_tokens": 1}),
    ]
    for path, headers, body in cases:
        r = httpx.post(server.url + path, content=json.dumps(body), headers=headers, timeout=60)
        assert r.status_code == 415, (path, headers, r.text)
        err = r.json()["error"]
        assert "application/json" in (err["message"] if path.startswith("/v1") else err)
    # what real clients send: JSON (any charset), and `curl -d` (a form type, no Origin)
    for headers in ({"Content-Type": "application/json; charset=utf-8"},
                    {"Content-Type": "application/x-www-form-urlencoded"}, {}):
        r = httpx.post(server.url + "/api/generate", content=json.dumps(_generate(micro_reasoner)),
                       headers=headers, timeout=60)
        assert r.status_code == 200, (headers, r.text)


# ---- 2. paths are not model names ----------------------------------------------------

def test_paths_outside_the_allowed_folders_are_not_found_alike(server, tmp_path, monkeypatch,
                                                               smollm2):
    secret = tmp_path / "secret.gguf"
    secret.write_text("TOPSECRET " * 10)
    missing = tmp_path / "missing.gguf"
    answers = {}
    for name in (str(secret), str(missing), "/etc/passwd", "/etc/no-such-file"):
        r = httpx.post(server.url + "/api/show", json={"model": name})
        assert r.status_code == 404, (name, r.text)
        answers[name] = r.json()["error"].replace(name, "NAME")
        assert "TOPS" not in r.text and ":0:0:" not in r.text
    assert len(set(answers.values())) == 1, answers  # nothing tells which exist
    # a real GGUF outside the allowed folders is not loaded either
    copy = tmp_path / "copy.gguf"
    shutil.copy(smollm2, copy)
    r = httpx.post(server.url + "/api/generate", json=_generate(copy))
    assert r.status_code == 404, r.text
    # nor a file in the server's working folder named like a store entry
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes").write_text("TOPSECRET")
    r = httpx.post(server.url + "/api/show", json={"model": "notes"})
    assert r.status_code == 404 and "TOPS" not in r.text, r.text


def test_allow_paths_means_the_real_path_inside(tmp_path, smollm2, micro_reasoner, r1_standin):
    allowed = tmp_path / "models"
    allowed.mkdir()
    inside = allowed / "smollm2.gguf"
    shutil.copy(smollm2, inside)
    (allowed / "out.gguf").symlink_to(smollm2)  # a link inside that points outside
    cfg = ServerConfig(port=0, allow_paths=(str(allowed),), model=str(micro_reasoner))
    with BackgroundServer(cfg) as srv:
        assert httpx.post(srv.url + "/api/generate", json=_generate(inside),
                          timeout=60).status_code == 200
        for name in (str(allowed / "out.gguf"), f"{allowed}/../models/../{smollm2.name}",
                     str(allowed) + "-other/x.gguf"):
            r = httpx.post(srv.url + "/api/generate", json=_generate(name))
            assert r.status_code == 404, (name, r.text)
        # the --model file the operator gave may be named by its path; its neighbours not
        assert httpx.post(srv.url + "/api/generate", json=_generate(micro_reasoner),
                          timeout=60).status_code == 200
        other = httpx.post(srv.url + "/api/show", json={"model": str(r1_standin)})
        assert other.status_code == 404, other.text


# ---- 3. sizes ------------------------------------------------------------------------

def _raw_post(port: int, total: int, *, chunked: bool, declared: int | None = None) -> tuple[int, dict, int]:
    """POST /api/generate by hand, stopping as soon as the server answers:
    (status, JSON body, bytes of body sent)."""
    piece = b"x" * 65536
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        framing = ("Transfer-Encoding: chunked" if chunked
                   else f"Content-Length: {declared if declared is not None else total}")
        s.sendall(f"POST /api/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                  f"application/json\r\n{framing}\r\n\r\n".encode())
        sent = 0
        while sent < total and not select.select([s], [], [], 0)[0]:
            s.sendall(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
            sent += len(piece)
        if chunked and not select.select([s], [], [], 0)[0]:
            s.sendall(b"0\r\n\r\n")
        data = b""
        while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
            more = s.recv(65536)
            if not more:
                break
            data += more
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body), sent


def test_bodies_over_the_limit_are_413_while_reading(server):
    # chunked: no length announced, so the count must be kept as the body arrives
    status, body, sent = _raw_post(server.port, 64 << 20, chunked=True)
    assert status == 413 and "--max-body" in body["error"], body
    assert sent < 24 << 20  # cut off near the 8 MiB default, not read to the end
    # an announced length over the limit is refused before any of it is read
    status, body, sent = _raw_post(server.port, 64 << 10, chunked=False, declared=64 << 20)
    assert status == 413 and sent <= 64 << 10
    with BackgroundServer(ServerConfig(port=0, max_body=4096)) as srv:
        r = httpx.post(srv.url + "/v1/completions", json={"model": "x", "prompt": "y" * 5000})
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
        r = httpx.post(srv.url + "/api/show", json={"model": "no-such-model"})
        assert r.status_code == 404  # a body under the limit goes through


@pytest.fixture
def tokenized(monkeypatch):
    """The longest text (in characters) the engine tokenized during the test."""
    seen = [0]
    for name in ("tokenize", "_prompt_tokens"):
        original = getattr(Engine, name)

        def spy(self, text, *a, _original=original, **kw):
            seen[0] = max(seen[0], len(text))
            return _original(self, text, *a, **kw)

        monkeypatch.setattr(Engine, name, spy)
    return seen


def test_a_prompt_that_cannot_fit_is_refused_before_tokenizing(server, micro_reasoner, tokenized):
    huge = "word " * (1 << 20)  # 5 MiB: under the body limit, far over any context
    r = httpx.post(server.url + "/api/generate", timeout=120, json={
        **_generate(micro_reasoner), "prompt": huge})
    assert r.status_code == 400 and "context holds" in r.json()["error"], r.text
    r = httpx.post(server.url + "/v1/chat/completions", timeout=120, json={
        "model": str(micro_reasoner), "max_tokens": 1,
        "messages": [{"role": "user", "content": huge}]})
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    assert tokenized[0] < len(huge) // 4, tokenized[0]


def test_a_long_prompt_of_long_tokens_still_fits(server, smollm2):
    # runs of "=" take ~64 bytes a token: far more bytes than a fixed 8-per-token guess allows
    prompt = "=" * 20000
    r = httpx.post(server.url + "/api/generate", timeout=120, json={
        "model": str(smollm2), "prompt": prompt, "raw": True, "stream": False,
        "options": {"num_ctx": 1024, "num_predict": 1}})
    assert r.status_code == 200, r.text
    assert r.json()["prompt_eval_count"] < 1024


# ---- 4. settings and names -----------------------------------------------------------

def test_out_of_range_settings_are_400(server, smollm2):
    def options(**o) -> bytes:  # JSON by hand: Python's json writes big ints exactly
        return json.dumps({**_generate(smollm2), "options": {**ONE_TOKEN, **o}}).encode()

    for key, value in (("num_ctx", 10 ** 9), ("top_k", 10 ** 30), ("seed", 10 ** 30),
                       ("seed", 1 << 32), ("seed", -2)):
        r = httpx.post(server.url + "/api/generate", content=options(**{key: value}))
        assert r.status_code == 400 and key in r.json()["error"], (key, value, r.text)
    bad_float = _generate(smollm2) | {"options": {"repeat_penalty": "INF"}}
    r = httpx.post(server.url + "/api/generate",
                   content=json.dumps(bad_float).replace('"INF"', "Infinity"))
    assert r.status_code == 400 and "repeat_penalty" in r.json()["error"], r.text
    for seed in (-1, (1 << 32) - 1):  # Ollama's "random", and llama.cpp's largest
        r = httpx.post(server.url + "/api/generate", content=options(seed=seed), timeout=60)
        assert r.status_code == 200, (seed, r.text)
    r = httpx.post(server.url + "/v1/completions", json={
        "model": str(smollm2), "prompt": "a", "max_tokens": 1, "seed": 10 ** 30})
    assert r.status_code == 400 and r.json()["error"]["param"] == "seed"


def test_a_context_that_does_not_fit_is_a_clear_error(server, smollm2, r1_standin, tmp_path,
                                                     monkeypatch):
    profile = tmp_path / "small.toml"
    profile.write_text('ram = "2G"\ncores = 2\n')
    monkeypatch.setenv("R1LOCAL_PROFILE", str(profile))
    r = httpx.post(server.url + "/api/generate", timeout=60, json={
        **_generate(smollm2), "options": {**ONE_TOKEN, "num_ctx": 1 << 20}})
    assert r.status_code == 400 and "smaller num_ctx" in r.json()["error"], r.text
    profile.write_text('ram = "128M"\ncores = 2\n')  # nothing fits: the machine, not the request
    r = httpx.post(server.url + "/v1/completions", timeout=60, json={
        "model": str(r1_standin), "prompt": "a", "max_tokens": 1})
    assert r.status_code == 507 and r.json()["error"]["code"] == "insufficient_memory", r.text


def test_names_no_file_system_takes_are_4xx_and_the_connection_lives(server):
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for name in ("a" * 300, "~" + "a" * 300, "/" + "b" * 300 + ".gguf",
                     "7b:" + "Q" * 400, "x" * 100000):
            r = client.post("/api/show", json={"model": name})
            assert r.status_code == 400 and "characters" in r.json()["error"], (name[:10], r.text)
            r = client.post("/v1/chat/completions", json={
                "model": name, "messages": [{"role": "user", "content": "hi"}]})
            assert r.status_code == 400 and r.json()["error"]["param"] == "model"
            assert client.get("/api/version").status_code == 200
        for name in ("~no-such-user-here/x.gguf", "nul\x00name", "../../etc/passwd"):
            r = client.post("/api/show", json={"model": name})
            assert 400 <= r.status_code < 500, (name, r.text)
        r = client.post("/api/pull", json={"model": "p" * 300, "stream": False})
        assert r.status_code == 400, r.text


def test_an_empty_api_key_is_refused_at_start(tmp_path):
    p = _r1local("serve", "--port", "0", "--api-key", "", home=str(tmp_path))
    try:
        _, err = p.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
        pytest.fail("the server started with an empty key, that is without auth")
    assert p.returncode == 2 and err.strip().splitlines() == [
        "r1local: error: --api-key is empty (give a key, or leave the flag out to serve "
        "without one)"], err
