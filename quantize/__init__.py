"""HF safetensors -> GGUF converter. A library of its own: it never imports r1local."""

__version__ = "0.1.0"
