"""GGUF header reading and validation on real files, and on broken copies of them."""

from __future__ import annotations

import struct

import pytest

from r1local.errors import ModelFileError
from r1local.ggufinfo import ArraySummary, read_header


def test_reads_smollm2(smollm2):
    h = read_header(smollm2, check_architecture=True)
    assert h.architecture == "llama"
    assert h.arch_value("block_count") == 30
    assert h.expected_size == smollm2.stat().st_size
    assert h.tensor("token_embd.weight") is not None


def test_reads_real_r1_header(r1_header):
    assert r1_header.architecture == "qwen2"
    assert r1_header.get("tokenizer.ggml.pre") == "deepseek-r1-qwen"
    assert len(r1_header.get("tokenizer.ggml.tokens")) == 152064
    assert r1_header.arch_value("block_count") == 28
    # the real 7B Q4_K_M file is 4,683,073,248 bytes: the header must say so
    assert r1_header.expected_size == 4_683_073_248


def test_truncated_real_file_is_refused(r1_header):
    with pytest.raises(ModelFileError, match=r"truncated.*4,683,073,248"):
        read_header(r1_header.path)


def test_long_arrays_can_be_skipped(r1_standin):
    h = read_header(r1_standin, max_array=1000)
    assert h.get("tokenizer.ggml.tokens") == ArraySummary(8, 152064)


@pytest.mark.parametrize("cut", [3, 10, 30, 5000, -1000])
def test_truncated_copies_give_clear_errors(smollm2, tmp_path, cut):
    data = smollm2.read_bytes()
    bad = tmp_path / "cut.gguf"
    bad.write_bytes(data[:cut])
    with pytest.raises(ModelFileError) as err:
        read_header(bad)
    assert "\n" not in str(err.value)


def test_not_a_gguf(tmp_path):
    p = tmp_path / "x.gguf"
    p.write_bytes(b"PK\x03\x04" + b"\0" * 100)
    with pytest.raises(ModelFileError, match="not a GGUF file"):
        read_header(p)


def test_unsupported_version(smollm2, tmp_path):
    data = bytearray(smollm2.read_bytes()[:1 << 20])
    data[4:8] = struct.pack("<I", 99)
    p = tmp_path / "v.gguf"
    p.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="version 99"):
        read_header(p)


def test_absurd_counts_are_refused(smollm2, tmp_path):
    data = bytearray(smollm2.read_bytes()[:1 << 20])
    data[8:16] = struct.pack("<Q", 1 << 60)
    p = tmp_path / "n.gguf"
    p.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="more than the file can hold"):
        read_header(p)
