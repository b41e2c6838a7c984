"""r1local: run the DeepSeek-R1 family locally on llama.cpp."""

__version__ = "0.1.0"
