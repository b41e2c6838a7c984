"""The model store: manifest, safe names, find order, resolve_gguf, and the list / show /
rm / import commands through the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from r1local.catalog import load_catalog
from r1local.errors import ModelFileError, UnknownModelError, UsageError
from r1local.store import Store, StoredModel, resolve_gguf

CATALOG = load_catalog()


def fake_pull(store: Store, name: str, src: Path) -> StoredModel:
    """Put src in the store as a catalog pull would (no hub involved)."""
    tag, _, quant = name.partition(":")
    folder = store.model_dir(name)
    folder.mkdir(parents=True, exist_ok=True)
    dest = folder / f"{tag}-{quant}.gguf"
    os.link(src, dest) if not dest.exists() else None
    return store.add(StoredModel(name=name, tag=tag, quant=quant, files=(dest,), size=0,
                                 source="org/repo", revision="c" * 40, sha256=("0" * 64,),
                                 added_at=""))


@pytest.mark.parametrize("bad", ["../evil", "a/b", "..", ".hidden", "x:y", "a@b", "", "a" * 81,
                                 "a\\b", "con fig", "a..b"])
def test_unsafe_names_are_refused(tmp_path, r1_standin, bad):
    store = Store(tmp_path)
    with pytest.raises(UsageError):
        store.import_file(r1_standin, bad)
    assert not any(p.suffix == ".gguf" for p in tmp_path.rglob("*"))


def test_catalog_names_map_to_folders_inside_the_store(tmp_path):
    store = Store(tmp_path)
    assert store.model_dir("7b:Q4_K_M") == tmp_path / "7b@Q4_K_M"
    for bad in ("../x:Q4", "7b:../../etc", "7b:a/b"):
        with pytest.raises(UsageError):
            store.model_dir(bad)


def test_a_crafted_manifest_cannot_make_rm_delete_outside_the_store(tmp_path, r1_standin):
    outside = tmp_path / "precious.gguf"
    outside.write_bytes(r1_standin.read_bytes())
    root = tmp_path / "store"
    root.mkdir()
    (root / "manifest.json").write_text(json.dumps({"schema": 1, "models": {
        "evil": {"tag": None, "quant": "F16", "files": [str(outside)], "size": 1,
                 "sha256": [], "added_at": ""},
        "../../x": {"tag": None, "quant": "F16", "files": ["../precious.gguf"], "size": 1}}}))
    store = Store(root)
    store.remove("evil")
    with pytest.raises(UsageError):
        store.remove("../../x")
    assert outside.exists()


def test_manifest_round_trip_and_find_order(tmp_path, r1_standin):
    store = Store(tmp_path)
    fake_pull(store, "7b:Q8_0", r1_standin)
    fake_pull(store, "7b:Q4_K_M", r1_standin)  # the catalog's default quant for 7b
    store.import_file(r1_standin, "mine")
    assert [m.name for m in Store(tmp_path).list()] == ["7b:Q4_K_M", "7b:Q8_0", "mine"]
    assert store.find("7b", CATALOG).name == "7b:Q4_K_M"
    assert store.find("qwen-7b", CATALOG).name == "7b:Q4_K_M"  # an alias
    assert store.find("7b:q8_0", CATALOG).name == "7b:Q8_0"
    assert store.find("MINE", CATALOG).name == "mine"
    assert store.find("14b", CATALOG) is None
    # relative paths in the manifest: the store can move
    data = json.loads((tmp_path / "manifest.json").read_text())
    assert data["models"]["7b:Q8_0"]["files"] == ["7b@Q8_0/7b-Q8_0.gguf"]
    assert not list(tmp_path.glob("*.partial"))


def test_resolve_gguf_paths_store_entries_and_suggestions(tmp_path, r1_standin):
    store = Store(tmp_path / "s")
    assert resolve_gguf(str(r1_standin), CATALOG, store) == (r1_standin, None)
    with pytest.raises(UnknownModelError, match="does not exist"):
        resolve_gguf(str(tmp_path / "nope.gguf"), CATALOG, store)
    with pytest.raises(UnknownModelError, match=r"7b is not downloaded.*r1local pull 7b"):
        resolve_gguf("7b", CATALOG, store)
    with pytest.raises(UnknownModelError, match="did you mean 7b"):
        resolve_gguf("7bb", CATALOG, store)
    m = store.import_file(r1_standin, "my-model")
    path, stored = resolve_gguf("my-model", CATALOG, store)
    assert stored == m and path == m.path and path.read_bytes() == r1_standin.read_bytes()
    with pytest.raises(UnknownModelError, match="did you mean my-model"):
        resolve_gguf("my-modle", CATALOG, store)
    m.path.unlink()
    with pytest.raises(ModelFileError, match="is gone"):
        resolve_gguf("my-model", CATALOG, store)


def test_import_refuses_a_file_that_is_not_a_gguf(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + os.urandom(5000))
    with pytest.raises(ModelFileError):
        Store(tmp_path / "s").import_file(bad, "bad")
    assert Store(tmp_path / "s").list() == []


# ---- the commands ----------------------------------------------------------------------------

def r1local(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, R1LOCAL_HOME=str(tmp_path / "home"), NO_COLOR="1")
    return subprocess.run([sys.executable, "-m", "r1local", *args], env=env, text=True,
                          capture_output=True, timeout=60, stdin=subprocess.DEVNULL)


def one_error(p: subprocess.CompletedProcess) -> str:
    assert p.returncode != 0 and "Traceback" not in p.stderr, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("r1local: error:"), p.stderr
    return lines[0]


def test_import_list_show_rm_through_the_cli(tmp_path, r1_standin):
    p = r1local(tmp_path, "import", str(r1_standin), "--name", "standin")
    assert p.returncode == 0, p.stderr
    copy = tmp_path / "home" / "models" / "standin" / r1_standin.name
    assert copy.read_bytes() == r1_standin.read_bytes()
    assert r1local(tmp_path, "import", str(r1_standin), "--name", "linked", "--link").returncode == 0

    listed = json.loads(r1local(tmp_path, "list", "--json").stdout)
    assert {m["name"]: (m["quant"], m["linked"], m["size"]) for m in listed} == {
        "standin": ("F16", False, r1_standin.stat().st_size),
        "linked": ("F16", True, r1_standin.stat().st_size)}
    table = r1local(tmp_path, "list").stdout
    assert "standin" in table and str(copy) in table

    show = json.loads(r1local(tmp_path, "show", "standin", "--json").stdout)
    assert show["architecture"] == "qwen2" and show["quant"] == "F16"
    assert show["context"] == 4096 and "<｜Assistant｜>" in show["chat_template"]
    assert show["plan"]["verdict"] in ("cpu", "gpu", "partial")
    text = r1local(tmp_path, "show", "7b").stdout  # not downloaded: from the catalog
    assert "not downloaded" in text and "MIT" in text and "plan" in text

    assert "--yes" in one_error(r1local(tmp_path, "rm", "standin"))  # stdin is not a terminal
    assert r1local(tmp_path, "rm", "standin", "--yes").returncode == 0
    assert not copy.exists()
    assert r1local(tmp_path, "rm", "linked", "-y").returncode == 0
    assert r1_standin.exists()  # a linked import's file is the user's: kept
    assert json.loads(r1local(tmp_path, "list", "--json").stdout) == []


def test_cli_errors_are_one_line(tmp_path, r1_standin):
    assert "cannot be a model name" in one_error(
        r1local(tmp_path, "import", str(r1_standin), "--name", "../../etc"))
    assert "catalog name" in one_error(r1local(tmp_path, "import", str(r1_standin), "--name", "7b"))
    assert "does not exist" in one_error(
        r1local(tmp_path, "import", str(tmp_path / "none.gguf"), "--name", "x"))
    assert "not in the store" in one_error(r1local(tmp_path, "rm", "ghost", "--yes"))
    assert "did you mean 7b" in one_error(r1local(tmp_path, "show", "7bb"))
