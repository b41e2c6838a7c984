"""The shared test models are real: llama.cpp loads them, and the R1 stand-in carries the
real R1 tokenizer and chat template."""

from __future__ import annotations

import jinja2
import pytest

llama_cpp = pytest.importorskip("llama_cpp")

BOS, EOS = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"
SPECIAL_IDS = {
    "<｜end▁of▁sentence｜>": 151643,
    "<｜User｜>": 151644,
    "<｜Assistant｜>": 151645,
    "<｜begin▁of▁sentence｜>": 151646,
    "<think>": 151648,
    "</think>": 151649,
}
CHAT = [
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "<think>\nAdd them.\n</think>\n\n4"},
    {"role": "user", "content": "And 3+3?"},
]


@pytest.fixture(scope="module")
def standin_llm(r1_standin):
    return llama_cpp.Llama(str(r1_standin), n_ctx=512, n_threads=2, verbose=False, seed=1)


def _render_like_transformers(template: str, messages, **kw) -> str:
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(template).render(messages=messages, bos_token=BOS, eos_token=EOS, **kw)


def test_standin_metadata_is_the_real_tokenizer(standin_llm, r1_header):
    md = standin_llm.metadata
    assert md["general.architecture"] == "qwen2"
    assert md["tokenizer.ggml.pre"] == "deepseek-r1-qwen"
    assert md["tokenizer.chat_template"] == r1_header.get("tokenizer.chat_template")
    assert standin_llm.n_vocab() == 152064


@pytest.mark.parametrize("text, ids", list(SPECIAL_IDS.items()))
def test_special_tokens_have_their_real_ids(standin_llm, text, ids):
    assert standin_llm.tokenize(text.encode(), add_bos=False, special=True) == [ids]


def test_plain_text_tokenizes_like_qwen(standin_llm):
    # Qwen2's BPE: "Hello" is 9707 and " world" is 1879
    assert standin_llm.tokenize(b"Hello world", add_bos=False) == [9707, 1879]
    assert standin_llm.token_bos() == 151646 and standin_llm.token_eos() == 151643


def test_chat_template_renders_like_the_real_model(standin_llm, r1_header):
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    template = standin_llm.metadata["tokenizer.chat_template"]
    formatter = Jinja2ChatFormatter(template, eos_token=EOS, bos_token=BOS,
                                    add_generation_prompt=True)
    rendered = formatter(messages=CHAT).prompt
    expected = (f"{BOS}<｜User｜>What is 2+2?<｜Assistant｜>\n\n4{EOS}"
                "<｜User｜>And 3+3?<｜Assistant｜>")
    assert rendered == expected
    real = _render_like_transformers(r1_header.get("tokenizer.chat_template"), CHAT,
                                     add_generation_prompt=True)
    assert rendered == real


def test_standin_generates(standin_llm):
    out = standin_llm.create_completion("Hello", max_tokens=8, temperature=0.0)
    assert out["usage"]["completion_tokens"] >= 1
    assert out["usage"]["prompt_tokens"] >= 2


def test_smollm2_chats(smollm2):
    llm = llama_cpp.Llama(str(smollm2), n_ctx=512, n_threads=2, verbose=False, seed=1)
    out = llm.create_chat_completion(
        [{"role": "user", "content": "What is the capital of France? One word."}],
        max_tokens=16, temperature=0.0)
    assert "Paris" in out["choices"][0]["message"]["content"]


@pytest.mark.parametrize("target", [128 << 20, 400 << 20, 1 << 30, 4 << 30])
def test_standin_size_is_a_parameter(target):
    from model_fixtures import shape_for_size

    shape = shape_for_size(target)
    assert abs(shape.weight_bytes() - target) / target < 0.2
    assert shape.n_embd % 256 == 0 and shape.n_ff % 256 == 0  # K-quants need 256-wide rows
    assert shape.n_head % shape.n_kv_head == 0 and shape.n_embd // shape.n_head == 128


def test_sized_standin_builds_loads_and_matches_its_estimate():
    from model_fixtures import build_r1_standin, shape_for_size
    from r1local.ggufinfo import read_header

    shape = shape_for_size(100 << 20)
    path = build_r1_standin(shape)
    header = read_header(path, check_architecture=True)
    assert header.tensor_bytes == shape.weight_bytes() + 4 * sum(
        t.n_elements for t in header.tensors if len(t.shape) == 1)
    llm = llama_cpp.Llama(str(path), n_ctx=256, n_threads=2, verbose=False)
    assert llm.n_embd() == shape.n_embd
    assert llm.create_completion("Hi", max_tokens=2)["usage"]["completion_tokens"] >= 1
