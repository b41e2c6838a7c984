"""models.toml: the shipped catalog loads, tags resolve, and schema errors are clear."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from r1local.catalog import load_catalog, parse_catalog
from r1local.errors import CatalogError, UnknownModelError

GOOD = '''
schema_version = 1
[variant."7b"]
name = "DeepSeek-R1-Distill-Qwen-7B"
aliases = ["qwen-7b"]
params_b = 7.6
license = "MIT"
source_repo = "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B"
gguf_repo = "someone/DeepSeek-R1-Distill-Qwen-7B-GGUF"
default_quant = "Q4_K_M"
[variant."7b".arch]
type = "qwen2"
n_layers = 28
hidden_size = 3584
n_heads = 28
n_kv_heads = 4
head_dim = 128
ffn_size = 18944
vocab_size = 152064
context_length = 131072
rope_theta = 10000
[variant."7b".quant.Q4_K_M]
files = ["a.gguf"]
sizes = [100]
[variant."7b".quant.Q8_0]
files = ["b-00001-of-00002.gguf", "b-00002-of-00002.gguf"]
sizes = [100, 50]
'''


def parse(text: str):
    return parse_catalog(text, Path("models.toml"))


def test_shipped_catalog_loads():
    cat = load_catalog()
    assert cat.variants, "models.toml lists no variant"
    for v in cat:
        assert v.default_quant in v.quants
        assert v.arch.n_layers > 0 and v.arch.hidden_size > 0


def test_resolution_by_tag_alias_and_quant():
    cat = parse(GOOD)
    assert str(cat.resolve("7b")) == "7b"
    assert str(cat.resolve("QWEN-7B:q8_0")) == "7b:Q8_0"
    assert str(cat.resolve("deepseek-r1:7b")) == "7b"  # Ollama's spelling
    split = cat.resolve("7b:Q8_0")
    q = split.variant.quant(split.quant)
    assert q.is_split and q.total_size == 150


def test_unknown_tag_suggests_close_ones():
    with pytest.raises(UnknownModelError, match=r"did you mean 7b"):
        parse(GOOD).resolve("7bb")


def test_unknown_quant_lists_available():
    with pytest.raises(UnknownModelError, match=r"available: Q4_K_M, Q8_0"):
        parse(GOOD).resolve("7b:Q5_K_M")


@pytest.mark.parametrize("mutate, message", [
    (lambda t: t.replace("n_layers = 28", 'n_layers = "28"'), r"arch\.n_layers must be an integer"),
    (lambda t: t.replace("n_layers = 28\n", ""), r"arch is missing 'n_layers'"),
    (lambda t: t.replace("n_heads = 28", "n_heads = 28\nn_hedas = 2"), r"unknown key 'n_hedas'"),
    (lambda t: t.replace('default_quant = "Q4_K_M"', 'default_quant = "Q3_K_S"'), r"not one of its quants"),
    (lambda t: t.replace("sizes = [100, 50]", "sizes = [100]"), r"one positive byte count per file"),
    (lambda t: t.replace("schema_version = 1", "schema_version = 9"), r"schema_version must be 1"),
    (lambda t: t.replace('aliases = ["qwen-7b"]', 'aliases = ["7b"]').replace(
        'name = "DeepSeek-R1-Distill-Qwen-7B"', 'name = "x"'), None),
    (lambda t: t + "\n[[[broken", r"not valid TOML"),
    (lambda t: "schema_version = 1\n", r"defines no"),
])
def test_schema_errors_are_clear(mutate, message):
    text = mutate(GOOD)
    if message is None:  # an alias equal to its own tag is harmless
        parse(text)
        return
    with pytest.raises(CatalogError, match=message) as err:
        parse(text)
    assert "\n" not in str(err.value), "errors must fit on one line"


def test_duplicate_names_across_variants_are_refused():
    second = GOOD.split("[variant.")[0] + "".join(
        "[variant." + part for part in GOOD.split("[variant.")[1:]
    ).replace('"7b"', '"7b-copy"').replace('name = "DeepSeek-R1-Distill-Qwen-7B"', 'name = "copy"')
    text = GOOD + second.split("schema_version = 1", 1)[1]
    with pytest.raises(CatalogError, match=r"'qwen-7b' is used by both"):
        parse(text)


def test_missing_catalog_file_names_the_fix(tmp_path, monkeypatch):
    with pytest.raises(CatalogError, match=r"R1LOCAL_CATALOG"):
        load_catalog(tmp_path / "nope.toml")


def test_shipped_split_parts_are_numbered_and_exact_sizes_are_not_rounded():
    for v in load_catalog():
        for name, q in v.quants.items():
            where = f"{v.tag}:{name}"
            n = len(q.files)
            for i, f in enumerate(q.files, 1):
                marked = re.search(r"-(\d{5})-of-(\d{5})\.gguf$", f)
                if n == 1:
                    assert marked is None, f"{where}: one file named as a part: {f}"
                else:
                    assert marked and marked.groups() == (f"{i:05d}", f"{n:05d}"), \
                        f"{where}: part {i} of {n} is named {f}"
            assert all(re.fullmatch(r"[0-9a-f]{64}", h) for h in q.sha256), where
            if q.verified:  # exact byte counts: a round million means a listing figure
                assert all(s % 1_000_000 for s in q.sizes), f"{where}: sizes look rounded"
