"""llama.cpp's BPE pre-tokenizers: the regexes each one splits text with (from llama.cpp's
llama-vocab.cpp, 0.3.36), and the probe texts used to tell them apart.

Detection runs the checkpoint's own tokenizer over the probe texts and keeps the name whose
regexes split them identically. Names that share regexes in llama.cpp are told apart by
other observable behaviour (see vocab.detect_pre_tokenizer).
"""

from __future__ import annotations

_CONTRACTIONS = "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"

# name -> regexes applied in sequence (each one splits the pieces of the previous)
PRE_TOKENIZERS: dict[str, tuple[str, ...]] = {
    "qwen2": (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
              r"|\s*[\r\n]+|\s+(?!\S)|\s+",),
    "llama-bpe": (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+",),
    "deepseek-v3": (r"\p{N}{1,3}", "[一-龥぀-ゟ゠-ヿ]+",
                    "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?"
                    "[\\p{L}\\p{M}]+| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+"),
    "qwen35": (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+",),
    "gpt-2": (r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)",),
    "smollm": (r"\p{N}", r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"),
}

# The Qwen2 vocabulary with DeepSeek's special tokens (R1-Distill-Qwen) splits like qwen2 and
# differs in adding BOS; llama.cpp names that tokenizer "deepseek-r1-qwen".
QWEN2_WITH_BOS = "deepseek-r1-qwen"

PROBE_TEXTS: tuple[str, ...] = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n",
    "Hello world! I've been 'told he's there, 'RE you sure? 'M not sure I'll make it, 'D you? We'Ve a'lL",
    "3 33 333 3333 33333 333333 3.3 3..3 3...3 1314151天 x2y 0x1F",
    "我想在apple工作1314151天～ 日本語のテキストとカタカナ 한국어 нещо на Български",
    "🚀 (normal) 😶\u200d🌫️ (emojis) ✅ 🦙🦙 ------======= ''''''```````\"\"\"\"......!!!!!!??????",
    "def f(x):\n    return x**2  # square\n\tif a<=b and c!=d: print(f'{a:>8}')\r\n",
    "ab.cd e-f g_h i/j (k) [l] {m} café naïve e\u0301 Ελληνικά",
)
