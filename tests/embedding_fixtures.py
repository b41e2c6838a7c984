"""A tiny BERT embedding model for the embedding tests, built once and cached.

``bert_checkpoint()`` is a random transformers BertModel (seeded, layer norms randomised so a
wrong tensor mapping shows) with a small WordPiece vocabulary laid out like the real
bert-base-uncased one ([PAD] 0, [UNK] 100, [CLS] 101, [SEP] 102, [MASK] 103), saved with
its tokenizer. ``bert_gguf()`` writes the same weights as a llama.cpp BERT GGUF with
gguf-py, the vocabulary in llama.cpp's "phantom space" form (a word-initial piece gets a
leading U+2581, a ``##`` continuation loses its ``##``), mean pooling declared in the
header as embedding models declare theirs.

Both land under model_fixtures.cache_dir(), keyed by BERT_VERSION.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import model_fixtures

BERT_VERSION = 1
SPECIALS = {0: "[PAD]", 100: "[UNK]", 101: "[CLS]", 102: "[SEP]", 103: "[MASK]"}
WORDS = ("the sky is blue because of light scatter rain sun cat dog sat on mat hello world "
         "why what how a an and to in it this that embed vector text search query document "
         "red green day night sea water air fast slow big small one two three").split()
SUFFIXES = ("ing", "ed", "s", "er", "ly", "ding", "tion")
CHARS = "abcdefghijklmnopqrstuvwxyz0123456789"
PUNCT = ".,!?'-:;()\""
# small, but the sizes llama.cpp's BERT graph and its context padding need
HIDDEN, LAYERS, HEADS, FFN, POSITIONS = 64, 2, 4, 128, 512
EPS = 1e-12


def vocab() -> list[str]:
    """The WordPiece vocabulary as transformers writes it (vocab.txt order)."""
    out = [SPECIALS.get(i, f"[unused{i}]") for i in range(104)]
    out += list(CHARS) + list(PUNCT) + ["##" + c for c in CHARS]
    out += WORDS + ["##" + s for s in SUFFIXES]
    seen: set[str] = set()
    return [t for t in out if not (t in seen or seen.add(t))]


def _phantom(token: str) -> str:
    if token.startswith("[") and token.endswith("]"):
        return token
    return token[2:] if token.startswith("##") else "\u2581" + token


def bert_checkpoint() -> Path:
    """A folder transformers loads with BertModel / BertTokenizerFast."""
    done = model_fixtures.cache_dir() / f"bert-tiny-{BERT_VERSION}"
    if done.is_dir():
        return done
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    tmp = done.with_name(done.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    words = vocab()
    tok = BertTokenizerFast(vocab={t: i for i, t in enumerate(words)}, do_lower_case=True)
    tok.save_pretrained(tmp)
    torch.manual_seed(0)
    # gelu_pytorch_tanh: the GELU llama.cpp's BERT graph computes
    config = BertConfig(vocab_size=len(words), hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                        num_attention_heads=HEADS, intermediate_size=FFN,
                        max_position_embeddings=POSITIONS, type_vocab_size=2,
                        layer_norm_eps=EPS, hidden_act="gelu_pytorch_tanh",
                        pad_token_id=0)
    model = BertModel(config, add_pooling_layer=False).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.1 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.05 * torch.randn_like(p))
    model.save_pretrained(tmp)
    os.replace(tmp, done)
    return done


# transformers BertModel tensor -> llama.cpp BERT tensor ({i}: the layer)
_TENSORS = {
    "embeddings.word_embeddings.weight": "token_embd.weight",
    "embeddings.position_embeddings.weight": "position_embd.weight",
    "embeddings.token_type_embeddings.weight": "token_types.weight",
    "embeddings.LayerNorm.weight": "token_embd_norm.weight",
    "embeddings.LayerNorm.bias": "token_embd_norm.bias",
}
_LAYER = {
    "attention.self.query": "attn_q", "attention.self.key": "attn_k",
    "attention.self.value": "attn_v", "attention.output.dense": "attn_output",
    "attention.output.LayerNorm": "attn_output_norm", "intermediate.dense": "ffn_up",
    "output.dense": "ffn_down", "output.LayerNorm": "layer_output_norm",
}


def _gguf_name(hf: str) -> str | None:
    if hf in _TENSORS:
        return _TENSORS[hf]
    if not hf.startswith("encoder.layer."):
        return None
    rest = hf[len("encoder.layer."):]
    i, _, rest = rest.partition(".")
    part, _, kind = rest.rpartition(".")
    return f"blk.{i}.{_LAYER[part]}.{kind}" if part in _LAYER else None


def bert_gguf() -> Path:
    """The checkpoint as an F32 llama.cpp BERT GGUF with mean pooling."""
    out = model_fixtures.cache_dir() / f"bert-tiny-{BERT_VERSION}.gguf"
    if out.exists():
        return out
    import gguf
    import numpy as np
    from safetensors.numpy import load_file

    ckpt = bert_checkpoint()
    tensors = load_file(str(ckpt / "model.safetensors"))
    words = vocab()
    tmp = out.with_name(out.name + ".partial")
    w = gguf.GGUFWriter(tmp, "bert")
    w.add_name("tiny random BERT")
    w.add_context_length(POSITIONS)
    w.add_embedding_length(HIDDEN)
    w.add_block_count(LAYERS)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_layer_norm_eps(EPS)
    w.add_causal_attention(False)
    w.add_pooling_type(gguf.PoolingType.MEAN)
    w.add_file_type(0)  # all F32
    w.add_tokenizer_model("bert")
    w.add_tokenizer_pre("default")
    w.add_token_list([_phantom(t) for t in words])
    w.add_token_types([gguf.TokenType.CONTROL if t.startswith("[") and t.endswith("]")
                       else gguf.TokenType.NORMAL for t in words])
    w.add_token_type_count(2)
    w.add_unk_token_id(100)
    w.add_bos_token_id(101)  # [CLS] opens every input
    w.add_sep_token_id(102)
    w.add_pad_token_id(0)
    w.add_mask_token_id(103)
    w.add_add_bos_token(True)
    w.add_add_sep_token(True)
    for hf, value in tensors.items():
        name = _gguf_name(hf)
        if name is not None:
            w.add_tensor(name, np.ascontiguousarray(value, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    os.replace(tmp, out)
    return out
