"""Fixtures shared by every test: real small models, found or built once per machine."""

from __future__ import annotations

from pathlib import Path

import pytest

import model_fixtures


@pytest.fixture(scope="session")
def smollm2() -> Path:
    """SmolLM2-135M-Instruct Q4_1: a real Llama-architecture chat model."""
    return model_fixtures.smollm2_path()


@pytest.fixture(scope="session")
def r1_header():
    """The parsed header of the real DeepSeek-R1-Distill-Qwen-7B GGUF."""
    return model_fixtures.r1_header()


@pytest.fixture(scope="session")
def r1_standin() -> Path:
    """A tiny (~11 MB) R1 stand-in: real R1 tokenizer and template, random Qwen2 weights."""
    return model_fixtures.build_r1_standin()


@pytest.fixture(scope="session")
def r1_standin_factory():
    """Build stand-ins of other shapes: ``r1_standin_factory(StandinShape(...))``."""
    return model_fixtures.build_r1_standin


@pytest.fixture(scope="session")
def micro_reasoner() -> Path:
    """A 2-layer Qwen2 with the real R1 tokenizer, trained to answer in the R1 format."""
    import micro_reasoner as mr

    return mr.micro_reasoner_gguf()


@pytest.fixture
def loopback_hub(tmp_path):
    """A Hugging Face hub on 127.0.0.1 (tests/loopback_hub.py) serving tmp_path/hub as
    ORG/REPO/FILE; point HF_ENDPOINT at ``hub.url``. Stopped when the test ends."""
    from loopback_hub import LoopbackHub

    hub = LoopbackHub(tmp_path / "hub").start()
    yield hub
    hub.stop()


@pytest.fixture(scope="session")
def bert_embedder() -> Path:
    """A tiny random BERT embedding GGUF (mean pooling declared), from a transformers
    BertModel (tests/embedding_fixtures.py)."""
    import embedding_fixtures

    return embedding_fixtures.bert_gguf()
