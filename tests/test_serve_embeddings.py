"""`r1local serve` embeddings: /api/embed, /api/embeddings and /v1/embeddings through the
official `ollama` and `openai` clients on a live server, checked against llama-cpp-python's
own `Llama(embedding=True).embed()` for the same model and pooling (and the BERT fixture
against transformers itself)."""

from __future__ import annotations

import httpx
import llama_cpp
import numpy as np
import ollama
import openai
import pytest

from r1local.server.background import BackgroundServer
from r1local.server.config import ServerConfig
from test_serve_ollama import FIXTURE_DIRS

TEXTS = ["Why is the sky blue? Because of light scattering.", "hello world",
         "the cats sat on the mat", "rain and sun in the day"]
LONG = "the sky is blue because of light " * 120  # ~840 BERT tokens: past its 512
TOL = 1e-5  # batched vs one by one vs the reference: float32 sums in another order


@pytest.fixture(scope="module")
def server():
    with BackgroundServer(ServerConfig(port=0, allow_paths=FIXTURE_DIRS)) as srv:
        yield srv


@pytest.fixture(scope="module")
def ollama_client(server):
    return ollama.Client(host=server.url)


@pytest.fixture(scope="module")
def openai_client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


_REFERENCES: dict = {}


def reference(path, *, chat_model: bool) -> llama_cpp.Llama:
    """llama-cpp-python's own embedding model: a BERT pools as its header says, a chat
    model by the mean (as the server pools models that declare nothing)."""
    key = str(path)
    if key not in _REFERENCES:
        pooling = {"pooling_type": llama_cpp.LLAMA_POOLING_TYPE_MEAN} if chat_model else {}
        _REFERENCES[key] = llama_cpp.Llama(str(path), embedding=True, n_ctx=512, n_threads=2,
                                           verbose=False, **pooling)
    return _REFERENCES[key]


def unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


def close(a, b, tol: float = TOL) -> bool:
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) < tol


@pytest.fixture(params=["bert", "smollm2", "micro_reasoner"])
def model(request):
    """Each kind of model the server embeds with: (path, is it a chat model)."""
    name = "bert_embedder" if request.param == "bert" else request.param
    return request.getfixturevalue(name), request.param != "bert"


def test_embed_equals_the_reference_batched_and_one_by_one(ollama_client, model):
    path, chat = model
    ref = reference(path, chat_model=chat)
    r = ollama_client.embed(model=str(path), input=TEXTS)
    assert len(r.embeddings) == len(TEXTS)
    expected = [ref.embed(t, normalize=True) for t in TEXTS]
    for got, want in zip(r.embeddings, expected):
        assert len(got) == ref.n_embd()
        assert abs(np.linalg.norm(got) - 1.0) < 1e-6  # unit vectors, as Ollama returns
        assert close(got, want)
    assert r.prompt_eval_count == sum(len(ref.tokenize(t.encode())) for t in TEXTS)
    assert r.total_duration > 0 and r.load_duration >= 0
    one_by_one = [ollama_client.embed(model=str(path), input=t).embeddings[0] for t in TEXTS]
    assert all(close(a, b) for a, b in zip(r.embeddings, one_by_one))
    # the same request twice: the same numbers exactly; one text twice in a batch: to
    # float tolerance (its rows sit elsewhere in the batch)
    assert ollama_client.embed(model=str(path), input=TEXTS).embeddings == r.embeddings
    twice = ollama_client.embed(model=str(path), input=[TEXTS[0], TEXTS[0]]).embeddings
    assert close(twice[0], twice[1]) and close(twice[0], r.embeddings[0])
    # different texts give different vectors (the check above would pass on a constant)
    assert not close(r.embeddings[0], r.embeddings[1], 1e-2)


def test_bert_fixture_is_what_transformers_computes(ollama_client, bert_embedder):
    import torch
    from transformers import BertModel, BertTokenizerFast

    import embedding_fixtures

    folder = embedding_fixtures.bert_checkpoint()
    tok = BertTokenizerFast.from_pretrained(folder)
    hf = BertModel.from_pretrained(folder).eval()
    got = ollama_client.embed(model=str(bert_embedder), input=TEXTS).embeddings
    for text, vector in zip(TEXTS, got):
        with torch.no_grad():
            hidden = hf(**tok(text, return_tensors="pt")).last_hidden_state[0]
        assert close(vector, unit(hidden.mean(0).numpy()), 1e-4)


def test_legacy_embeddings_give_the_raw_vector(ollama_client, bert_embedder):
    ref = reference(bert_embedder, chat_model=False)
    r = ollama_client.embeddings(model=str(bert_embedder), prompt=TEXTS[0])
    raw = ref.embed(TEXTS[0], normalize=False)
    assert close(r.embedding, raw, 1e-4)
    assert abs(np.linalg.norm(r.embedding) - 1.0) > 0.1  # not normalized, as Ollama's own
    new = ollama_client.embed(model=str(bert_embedder), input=TEXTS[0]).embeddings[0]
    assert close(unit(r.embedding), new)


def test_openai_float_base64_and_token_ids(openai_client, model):
    path, chat = model
    ref = reference(path, chat_model=chat)
    expected = [ref.embed(t, normalize=True) for t in TEXTS]
    as_float = openai_client.embeddings.create(model=str(path), input=TEXTS,
                                               encoding_format="float")
    assert [d.index for d in as_float.data] == list(range(len(TEXTS)))
    assert all(close(d.embedding, e) for d, e in zip(as_float.data, expected))
    n_tokens = sum(len(ref.tokenize(t.encode())) for t in TEXTS)
    assert as_float.usage.prompt_tokens == as_float.usage.total_tokens == n_tokens
    # the client asks for base64 by default and decodes it: float32 of the same vectors
    as_b64 = openai_client.embeddings.create(model=str(path), input=TEXTS)
    assert all(close(a.embedding, b.embedding, 1e-6) for a, b in zip(as_b64.data, as_float.data))
    ids = [ref.tokenize(t.encode()) for t in TEXTS[:2]]
    one = openai_client.embeddings.create(model=str(path), input=ids[0], encoding_format="float")
    two = openai_client.embeddings.create(model=str(path), input=ids, encoding_format="float")
    assert close(one.data[0].embedding, expected[0]) and len(two.data) == 2
    assert close(two.data[1].embedding, expected[1])


def test_dimensions_shorten_and_renormalise(ollama_client, openai_client, bert_embedder):
    ref = reference(bert_embedder, chat_model=False)
    want = unit(ref.embed(TEXTS[0], normalize=False)[:16])
    r = ollama_client.embed(model=str(bert_embedder), input=TEXTS[0], dimensions=16)
    assert len(r.embeddings[0]) == 16 and close(r.embeddings[0], want)
    o = openai_client.embeddings.create(model=str(bert_embedder), input=TEXTS[0], dimensions=16,
                                        encoding_format="float")
    assert close(o.data[0].embedding, want)
    with pytest.raises(ollama.ResponseError) as err:
        ollama_client.embed(model=str(bert_embedder), input=TEXTS[0], dimensions=65)
    assert err.value.status_code == 400 and "64" in err.value.error
    with pytest.raises(openai.BadRequestError) as oerr:
        openai_client.embeddings.create(model=str(bert_embedder), input="hi", dimensions=65)
    assert oerr.value.body["param"] == "dimensions"


def test_truncate_cuts_to_the_context_or_refuses(ollama_client, openai_client, bert_embedder):
    ref = reference(bert_embedder, chat_model=False)
    ids = ref.tokenize(LONG.encode())
    assert len(ids) > 512
    r = ollama_client.embed(model=str(bert_embedder), input=LONG)  # truncate: true by default
    assert r.prompt_eval_count == 512
    assert close(r.embeddings[0], ref.embed(LONG, normalize=True, truncate=True))
    cut = openai_client.embeddings.create(model=str(bert_embedder), input=ids[:512],
                                          encoding_format="float")
    assert close(cut.data[0].embedding, r.embeddings[0])
    with pytest.raises(ollama.ResponseError) as err:
        ollama_client.embed(model=str(bert_embedder), input=["hi", LONG], truncate=False)
    assert err.value.status_code == 400
    assert f"input[1] is {len(ids)} tokens" in err.value.error and "truncate" in err.value.error
    with pytest.raises(openai.BadRequestError) as oerr:  # OpenAI refuses a too-long input
        openai_client.embeddings.create(model=str(bert_embedder), input=LONG)
    assert oerr.value.body["code"] == "context_length_exceeded"
    ok = openai_client.embeddings.create(model=str(bert_embedder), input=LONG,
                                         encoding_format="float", extra_body={"truncate": True})
    assert ok.usage.prompt_tokens == 512
    # num_ctx asks for a smaller context: inputs are cut to it
    small = ollama_client.embed(model=str(bert_embedder), input=LONG, options={"num_ctx": 256})
    assert small.prompt_eval_count == 256
    # and a request without num_ctx is back at the default, whatever was loaded before
    assert ollama_client.embed(model=str(bert_embedder), input=LONG).embeddings == r.embeddings


def test_bad_requests_are_clear(server, ollama_client, openai_client, bert_embedder, tmp_path):
    with pytest.raises(ollama.ResponseError) as err:
        ollama_client.embed(model=str(bert_embedder), input=["hello", ""])
    assert err.value.status_code == 400 and "input[1] is empty" in err.value.error
    with pytest.raises(openai.BadRequestError) as oerr:
        openai_client.embeddings.create(model=str(bert_embedder), input=[[5, 99999]])
    assert "token id 99999" in oerr.value.body["message"]
    with pytest.raises(openai.BadRequestError):
        openai_client.embeddings.create(model=str(bert_embedder), input="")
    r = httpx.post(server.url + "/api/embed", json={"model": str(bert_embedder), "input": 5})
    assert r.status_code == 400 and "input" in r.json()["error"]
    with pytest.raises(ollama.ResponseError) as err:
        ollama_client.embed(model="no-such-embedder", input="hi")
    assert err.value.status_code == 404
    import embedding_fixtures
    import model_fixtures

    name = f"bert-reranker-{embedding_fixtures.BERT_VERSION}"
    (reranker,) = model_fixtures.rewrite_gguf(bert_embedder, name,
                                              values={"bert.pooling_type": 4})
    with pytest.raises(ollama.ResponseError) as err:
        ollama_client.embed(model=str(reranker), input="hi")
    assert err.value.status_code == 400 and "reranker" in err.value.error
    outside = tmp_path / "x.gguf"
    outside.write_bytes(bert_embedder.read_bytes())
    with pytest.raises(openai.NotFoundError):  # a path outside --allow-paths, as for chat
        openai_client.embeddings.create(model=str(outside), input="hi")


def test_empty_input_loads_and_keep_alive_zero_unloads(server, ollama_client, bert_embedder):
    pool = server.app.state.embedders
    r = ollama_client.embed(model=str(bert_embedder), input=[], keep_alive=-1)
    key = str(bert_embedder.resolve())
    assert r.embeddings == [] and key in pool.loaded
    assert ollama_client.embeddings(model=str(bert_embedder), prompt="").embedding == []
    ollama_client.embed(model=str(bert_embedder), input="hi", keep_alive=0)
    assert key not in pool.loaded
    assert len(pool.loaded) <= 2  # the pool is bounded


def test_show_lists_embedding_and_chat_is_refused(ollama_client, bert_embedder, smollm2):
    caps = ollama_client.show(str(bert_embedder)).capabilities
    assert "embedding" in caps and "completion" not in caps
    assert "embedding" not in ollama_client.show(str(smollm2)).capabilities
    with pytest.raises(ollama.ResponseError) as err:
        ollama_client.chat(model=str(bert_embedder), messages=[{"role": "user", "content": "hi"}])
    assert err.value.status_code == 400 and "embedding model" in err.value.error


def test_concurrent_requests_on_two_models(server, bert_embedder, smollm2):
    """Requests at once on two models (each embedder serves one at a time): every answer
    is its own text's vector."""
    from concurrent.futures import ThreadPoolExecutor

    expected = {str(p): [reference(p, chat_model=chat).embed(t, normalize=True) for t in TEXTS]
                for p, chat in ((bert_embedder, False), (smollm2, True))}

    def one(job: tuple[str, int]) -> bool:
        path, i = job
        r = httpx.post(server.url + "/api/embed", json={"model": path, "input": TEXTS[i]},
                       timeout=60)
        return r.status_code == 200 and close(r.json()["embeddings"][0], expected[path][i])

    jobs = [(p, i) for p in expected for i in range(len(TEXTS))] * 2
    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(one, jobs))
    assert len(server.app.state.embedders.loaded) <= 2


def test_cli_run_refuses_an_embedding_model_in_one_line(bert_embedder):
    from test_run import one_line_error, r1local

    line = one_line_error(r1local("run", str(bert_embedder), "hi"))
    assert "is an embedding model (bert)" in line and "/api/embed" in line


def test_inputs_share_decodes_as_far_as_the_context_holds(server, ollama_client, bert_embedder):
    ref = reference(bert_embedder, chat_model=False)
    ollama_client.embed(model=str(bert_embedder), input="warm up")
    embedder = server.app.state.embedders.loaded[str(bert_embedder.resolve())].embedder
    before = embedder.decodes
    ollama_client.embed(model=str(bert_embedder), input=TEXTS)
    assert embedder.decodes == before + 1  # four inputs, one llama.cpp decode
    many = TEXTS * 20
    n_tokens = sum(len(ref.tokenize(t.encode())) for t in many)
    assert 512 < n_tokens <= 1024
    r = ollama_client.embed(model=str(bert_embedder), input=many)
    assert embedder.decodes == before + 3  # more tokens than the context: two decodes
    expected = [ref.embed(t, normalize=True) for t in TEXTS]
    assert all(close(v, expected[i % len(TEXTS)]) for i, v in enumerate(r.embeddings))
