"""A micro reasoning model for the tests, trained by the fixture itself.

A 2-layer Qwen2 with the real DeepSeek-R1-Distill-Qwen tokenizer, trained with torch to
answer simple questions in the R1 format (`<think>` reasoning `</think>` then the answer),
saved as a Hugging Face checkpoint and converted to GGUF with our own `quantize` (when the
converter is not there yet, a direct GGUF writer is used instead and the file name says
so). The REPL, `run` and the reasoning splitter are then tested on its real llama.cpp output.

Training stays seconds long on 2 cores because only the ~100 token ids the data uses get
their own output rows; every other id shares one output row, trained as a single "other"
class whose logit is that row's logit plus log(number of other ids). That is the exact
full-vocabulary softmax for a model whose unused rows are all equal, so scattering the
rows into the 152064-token output layer gives a model that, on this data, has the same
loss as the one trained.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
from pathlib import Path

import model_fixtures

VERSION = 2
VOCAB = model_fixtures.R1_TOKEN_COUNT
HIDDEN, LAYERS, FFN, HEADS, KV_HEADS = 64, 2, 128, 4, 2
STEPS, LR, SEED = 400, 3e-3, 0

BOS, USER, ASSISTANT, EOS = ("<｜begin▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>",
                             "<｜end▁of▁sentence｜>")

# (question, reasoning, answer): what the model learns, word for word.
FACTS = [
    ("What color is the sky?", "The sky looks blue on a clear day.", "The sky is **blue**."),
    ("What is the capital of France?", "France is a country in Europe. Its capital is Paris.",
     "The capital of France is **Paris**."),
    ("Say hello.", "The user wants a greeting.", "Hello!"),
    ("How many legs does a cat have?", "A cat walks on four legs.", "A cat has **4** legs."),
    ("What is the opposite of hot?", "Hot and cold are opposites.", "The opposite of hot is **cold**."),
]
WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]


def examples() -> list[tuple[str, str, str]]:
    out = list(FACTS)
    for a in range(1, 6):
        for b in range(1, 6):
            out.append((f"What is {a}+{b}?",
                        f"I need to add {a} and {b}. {WORDS[a]} plus {WORDS[b]} is {WORDS[a + b]}.",
                        f"{a} + {b} = **{a + b}**."))
    return out


def conversations() -> list[tuple[str, int]]:
    """(text, index where the scored part starts): single turns, and second turns after a
    first one whose reasoning was stripped, as the R1 template and our engine do."""
    ex = examples()
    out = []
    for q, think, ans in ex:
        prompt = f"{BOS}{USER}{q}{ASSISTANT}<think>\n"
        out.append((f"{prompt}{think}\n</think>\n\n{ans}{EOS}", len(prompt)))
    for turns in (1, 3):
        for i, (q, think, ans) in enumerate(ex):
            history = "".join(f"{USER}{ex[(i * 7 + 3 + 5 * k) % len(ex)][0]}{ASSISTANT}"
                              f"{ex[(i * 7 + 3 + 5 * k) % len(ex)][2]}{EOS}" for k in range(turns))
            prompt = f"{BOS}{history}{USER}{q}{ASSISTANT}<think>\n"
            out.append((f"{prompt}{think}\n</think>\n\n{ans}{EOS}", len(prompt)))
    return out


def _tokenizer():
    """The real R1 tokenizer, through llama.cpp reading the stand-in's vocabulary."""
    import llama_cpp

    return llama_cpp.Llama(str(model_fixtures.build_r1_standin()), vocab_only=True, verbose=False)


def _encode(tok, text: str, scored_from: int) -> tuple[list[int], int]:
    prompt_ids = tok.tokenize(text[:scored_from].encode(), add_bos=False, special=True)
    ids = tok.tokenize(text.encode(), add_bos=False, special=True)
    assert ids[: len(prompt_ids)] == prompt_ids, "prompt tokenization must be a prefix"
    return ids, len(prompt_ids)


def _config_dict() -> dict:
    return {
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": VOCAB,
        "hidden_size": HIDDEN, "intermediate_size": FFN, "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS,
        "max_position_embeddings": 4096, "rope_theta": 10000.0, "rms_norm_eps": 1e-6,
        "hidden_act": "silu", "tie_word_embeddings": False, "torch_dtype": "float32",
        "bos_token_id": 151646, "eos_token_id": 151643, "use_sliding_window": False,
    }


def train_checkpoint(out: Path, texts: list[tuple[str, int]] | None = None) -> Path:
    """Train and save the HF checkpoint (config.json + model.safetensors) into ``out``.
    ``texts``: other (text, scored-from) data than conversations() (other fixtures)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(SEED)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    tok = _tokenizer()
    data = [_encode(tok, text, start) for text, start in (texts or conversations())]
    tok.close()
    used = sorted({t for ids, _ in data for t in ids})
    remap = {t: i for i, t in enumerate(used)}
    n_used = len(used)

    cfg = dict(_config_dict(), vocab_size=n_used, bos_token_id=None, eos_token_id=None)
    model = Qwen2ForCausalLM(Qwen2Config(**cfg))
    other = torch.nn.Parameter(torch.zeros(HIDDEN))  # the shared row of every unused id
    log_n_other = math.log(VOCAB - n_used)

    length = max(len(ids) for ids, _ in data)
    inputs = torch.zeros(len(data), length, dtype=torch.long)
    labels = torch.full((len(data), length), -100, dtype=torch.long)
    mask = torch.zeros(len(data), length, dtype=torch.long)
    for row, (ids, start) in enumerate(data):
        local = torch.tensor([remap[t] for t in ids])
        inputs[row, : len(ids)] = local
        mask[row, : len(ids)] = 1
        labels[row, start - 1: len(ids) - 1] = local[start:]  # predict the next token

    opt = torch.optim.AdamW(list(model.parameters()) + [other], lr=LR, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=LR, total_steps=STEPS, pct_start=0.1)
    model.train()
    for _ in range(STEPS):
        hidden = model.model(input_ids=inputs, attention_mask=mask).last_hidden_state
        logits = model.lm_head(hidden)
        other_logit = hidden @ other + log_n_other
        full = torch.cat([logits, other_logit.unsqueeze(-1)], dim=-1)
        loss = torch.nn.functional.cross_entropy(full.reshape(-1, n_used + 1), labels.reshape(-1),
                                                 ignore_index=-100)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()

    # scatter into the full vocabulary
    big = Qwen2ForCausalLM(Qwen2Config(**_config_dict()))
    state = {k: v for k, v in model.state_dict().items()
             if k not in ("model.embed_tokens.weight", "lm_head.weight")}
    idx = torch.tensor(used)
    with torch.no_grad():
        emb = torch.randn(VOCAB, HIDDEN) * 0.02
        emb[idx] = model.model.embed_tokens.weight
        head = other.detach().expand(VOCAB, HIDDEN).clone()
        head[idx] = model.lm_head.weight
    state["model.embed_tokens.weight"] = emb
    state["lm_head.weight"] = head
    big.load_state_dict(state)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    big.save_pretrained(tmp, safe_serialization=True)
    (tmp / "training.json").write_text(json.dumps({"final_loss": float(loss.detach()), "steps": STEPS,
                                                   "used_tokens": n_used}))
    _add_tokenizer(tmp)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out


def _add_tokenizer(folder: Path) -> None:
    """The real R1 tokenizer files, from the converter engineer's fixture when present."""
    try:
        from hf_checkpoints import write_r1_tokenizer
    except ImportError:
        return
    write_r1_tokenizer(folder)


def _convert(hf_dir: Path, out: Path) -> str:
    """GGUF from the checkpoint with our `quantize`; a direct writer until it exists."""
    try:
        from quantize import convert
    except ImportError:
        convert = None
    if convert is not None and (hf_dir / "tokenizer.json").exists():
        convert(hf_dir, out, "F16", progress=False)
        return "quantize"
    _write_gguf_directly(hf_dir, out)
    return "direct"


def _write_gguf_directly(hf_dir: Path, out: Path) -> None:
    import numpy as np
    from gguf import GGUFValueType, GGUFWriter
    from safetensors.numpy import load_file

    header = model_fixtures.r1_header()
    tensors = load_file(str(hf_dir / "model.safetensors"))
    tmp = out.with_name(out.name + ".partial")
    w = GGUFWriter(tmp, "qwen2")
    for key, value in header.metadata.items():
        if key == "general.architecture" or key.startswith(model_fixtures._ARCH_KEYS_DROPPED):
            continue
        vtype, etype = header.value_types[key]
        w.add_key_value(key, value, GGUFValueType(vtype),
                        sub_type=GGUFValueType(etype) if etype is not None else None)
    w.add_name("R1 micro reasoner")
    w.add_context_length(4096)
    w.add_embedding_length(HIDDEN)
    w.add_block_count(LAYERS)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_file_type(1)
    names = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
             "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
             "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
    order = [("model.embed_tokens.weight", "token_embd.weight")]
    for i in range(LAYERS):
        for hf, gg in names.items():
            for kind in ("weight", "bias"):
                key = f"model.layers.{i}.{hf}.{kind}"
                if key in tensors:
                    order.append((key, f"blk.{i}.{gg}.{kind}"))
    order += [("model.norm.weight", "output_norm.weight"), ("lm_head.weight", "output.weight")]
    for hf, gg in order:
        arr = tensors[hf].astype(np.float32)
        w.add_tensor(gg, arr.astype(np.float16) if arr.ndim == 2 else arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    os.replace(tmp, out)


def micro_reasoner_gguf() -> Path:
    """The micro reasoner GGUF, trained and converted once, then cached."""
    base = model_fixtures.cache_dir() / f"micro-reasoner-v{VERSION}"
    base.mkdir(parents=True, exist_ok=True)
    for how in ("quantize", "direct"):
        found = base / f"micro-reasoner-{how}.gguf"
        if found.exists() and (how == "quantize" or not _converter_ready(base / "hf")):
            return found
    hf = base / "hf"
    if not (hf / "model.safetensors").exists():
        train_checkpoint(hf)
    elif not (hf / "tokenizer.json").exists():
        _add_tokenizer(hf)
    tmp = base / "micro-reasoner.gguf.new"
    how = _convert(hf, tmp)
    final = base / f"micro-reasoner-{how}.gguf"
    os.replace(tmp, final)
    return final


def _converter_ready(hf: Path) -> bool:
    """True when `quantize` and the tokenizer fixture exist, so a direct-written file
    should be replaced by a converted one."""
    try:
        import hf_checkpoints  # noqa: F401
        from quantize import convert  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    print(micro_reasoner_gguf())
