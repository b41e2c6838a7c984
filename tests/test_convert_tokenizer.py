"""Tokenizer fidelity: the real R1 tokenizer survives conversion, and llama.cpp then tokenizes
like Hugging Face tokenizers; the pre-tokenizer name is detected from behaviour."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import hf_checkpoints as hfc
import model_fixtures

TEXTS = [
    "Hello world! I've been told it's there; we'll see, won't we?",
    "我想在苹果公司工作。今天天气很好，我们去公园散步吧！",
    "日本語のテキスト、カタカナとひらがな。한국어 문장입니다.",
    "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
    "for (int i = 0; i < 10; ++i) { printf(\"%d\\n\", i); }  // C",
    "3 33 333 3333 33333 1234567890 3.14159 2025-01-20 0x7FFF 1e-9",
    "🚀 (normal) 😶\u200d🌫️ ✅ 🦙🦙 👍🏽 emoji run 🎉🎉🎉",
    "  leading spaces\t\ttabs\n\n\nnewlines    trailing   \n \n\n   ",
    "<think>\nreasoning\n</think>\n\nanswer<｜end▁of▁sentence｜>",
    "Ünïcödé naïve café résumé — “quotes” ‘single’ … ＡＢＣ",
]


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> tuple[Path, Path]:
    from quantize import convert

    src = hfc.r1_tokenizer_checkpoint()
    out = tmp_path_factory.mktemp("r1tok") / "r1tok-F16.gguf"
    return src, convert(src, out, "F16", progress=False)


def _metadata(path: Path):
    from r1local.ggufinfo import parse_header

    with open(path, "rb") as f:
        return parse_header(f.read(32 << 20), path=str(path))


def test_gguf_carries_the_real_r1_tokenizer(converted, r1_header):
    _, gguf = converted
    ours = _metadata(gguf)
    for key in ("tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens",
                "tokenizer.ggml.token_type", "tokenizer.ggml.merges", "tokenizer.ggml.bos_token_id",
                "tokenizer.ggml.eos_token_id", "tokenizer.ggml.padding_token_id",
                "tokenizer.ggml.add_bos_token", "tokenizer.ggml.add_eos_token", "tokenizer.chat_template"):
        assert key in ours.metadata, key
        assert ours.metadata[key] == r1_header.metadata[key], key
        assert ours.value_types[key] == r1_header.value_types[key], key
    assert ours.metadata["tokenizer.ggml.pre"] == "deepseek-r1-qwen"


def _tokenizes_like_hf(src: Path, gguf: Path, *, bos: bool) -> None:
    """llama.cpp on ``gguf`` tokenizes TEXTS as HF tokenizers does on ``src``'s
    tokenizer.json (a BOS first or not, as ``bos`` says), and detokenizes back to them."""
    import llama_cpp
    from tokenizers import Tokenizer

    hf = Tokenizer.from_file(str(src / "tokenizer.json"))
    llm = llama_cpp.Llama(str(gguf), vocab_only=True, verbose=False)
    try:
        for text in TEXTS:
            want = hf.encode(text, add_special_tokens=True).ids
            got = llm.tokenize(text.encode(), add_bos=True, special=True)
            assert got == want, text
            assert (got[0] == llm.token_bos()) == bos, text
            # and back: llama.cpp detokenizes to the original bytes
            assert llm.detokenize(got[1:] if bos else got, special=True).decode() == text
    finally:
        llm.close()


def test_llama_cpp_tokenizes_like_hf_tokenizers(converted):
    _tokenizes_like_hf(*converted, bos=True)


@pytest.mark.parametrize("family,expected", [("llama", "llama-bpe"), ("qwen", "qwen2")])
def test_pre_tokenizer_is_detected_from_behaviour(tmp_path, family, expected):
    from quantize.vocab import read_vocab

    hfc.write_small_tokenizer(tmp_path, family)
    assert read_vocab(tmp_path, None).pre == expected


def test_same_regex_with_bos_is_r1_and_without_is_qwen2(tmp_path):
    """R1-Distill-Qwen splits exactly like Qwen2; what tells llama.cpp's names apart is BOS."""
    from quantize.vocab import read_vocab

    hfc.write_r1_tokenizer(tmp_path)
    assert read_vocab(tmp_path, None).pre == "deepseek-r1-qwen"
    data = json.loads((tmp_path / "tokenizer.json").read_text(encoding="utf-8"))
    data["post_processor"] = None
    (tmp_path / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    assert read_vocab(tmp_path, None).pre == "qwen2"


def test_a_changed_split_rule_is_caught(tmp_path):
    """Name-based detection would call this 'qwen2'; it splits digits in threes, like Llama 3."""
    from quantize.vocab import read_vocab

    hfc.write_small_tokenizer(tmp_path, "qwen")
    data = json.loads((tmp_path / "tokenizer.json").read_text(encoding="utf-8"))
    data["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = hfc.LLAMA3_REGEX
    (tmp_path / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    assert read_vocab(tmp_path, None).pre == "llama-bpe"


def test_unknown_pre_tokenizer_is_an_error(tmp_path):
    from quantize.errors import ConvertError
    from quantize.vocab import read_vocab

    hfc.write_small_tokenizer(tmp_path, "qwen")
    data = json.loads((tmp_path / "tokenizer.json").read_text(encoding="utf-8"))
    data["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "WhitespaceSplit"}, {"type": "ByteLevel", "add_prefix_space": False,
                                      "trim_offsets": False, "use_regex": False}]}
    (tmp_path / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ConvertError, match="splits text like none"):
        read_vocab(tmp_path, None)


def test_token_types_of_the_small_tokenizer(tmp_path):
    from quantize.vocab import CONTROL, NORMAL, UNUSED, USER_DEFINED, read_vocab

    info = hfc.write_small_tokenizer(tmp_path, "llama")
    v = read_vocab(tmp_path, 512)
    assert len(v.tokens) == 512
    assert v.types[info["bos_id"]] == CONTROL and v.tokens[info["bos_id"]] == "<|begin_of_text|>"
    assert v.types[v.tokens.index("<think>")] == USER_DEFINED
    assert v.types[511] == UNUSED and v.tokens[511] == "[PAD511]"
    assert v.types[0] == NORMAL
    assert v.special_ids == {"bos_token_id": info["bos_id"], "eos_token_id": info["eos_id"]}
    assert v.add_bos and not v.add_eos
    shutil.rmtree(tmp_path)


# ---- the 671B R1's own tokenizer (DeepSeek-V3's) ---------------------------------------------

@pytest.fixture(scope="module")
def converted_v3(tmp_path_factory) -> tuple[Path, Path]:
    from quantize import convert

    src = hfc.v3_tokenizer_checkpoint()
    out = tmp_path_factory.mktemp("v3tok") / "v3tok-F16.gguf"
    return src, convert(src, out, "F16", progress=False)


def test_a_deepseek_v3_checkpoint_carries_the_real_v3_tokenizer(converted_v3):
    """DeepSeek-V3's vocabulary, merges, special tokens and chat template, padded to the
    model's 129280 rows, with llama.cpp's deepseek-v3 pre-tokenizer found from behaviour."""
    src, gguf = converted_v3
    md = _metadata(gguf).metadata
    tok = json.loads((src / "tokenizer.json").read_text("utf-8"))
    config = json.loads((src / "tokenizer_config.json").read_text("utf-8"))
    assert md["general.architecture"] == "deepseek2"
    assert md["tokenizer.ggml.model"] == "gpt2" and md["tokenizer.ggml.pre"] == "deepseek-v3"
    tokens = md["tokenizer.ggml.tokens"]
    assert len(tokens) == model_fixtures.V3_VOCAB_SIZE
    every = {**tok["model"]["vocab"], **{t["content"]: t["id"] for t in tok["added_tokens"]}}
    assert len(every) == 128815
    assert all(tokens[i] == t for t, i in every.items())
    assert [" ".join(m) if isinstance(m, list) else m for m in tok["model"]["merges"]] == \
        list(md["tokenizer.ggml.merges"])
    types = md["tokenizer.ggml.token_type"]
    assert types[every["<think>"]] in (3, 4) and types[every["<｜User｜>"]] in (3, 4)
    # the rows past the tokenizer's: llama.cpp's padding, unused
    assert tokens[128815:] == [f"[PAD{i}]" for i in range(128815, len(tokens))]
    assert set(types[128815:]) == {5}
    assert md["tokenizer.ggml.bos_token_id"] == every["<｜begin▁of▁sentence｜>"]
    assert md["tokenizer.ggml.eos_token_id"] == every["<｜end▁of▁sentence｜>"]
    assert md["tokenizer.chat_template"] == config["chat_template"]


def test_llama_cpp_tokenizes_v3_text_like_hf_tokenizers(converted_v3):
    # no BOS from either: V3's chat template writes it
    _tokenizes_like_hf(*converted_v3, bos=False)
