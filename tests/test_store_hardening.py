"""The store against damage and hostile input, through `r1local list / show / rm` and the
Store API: a damaged manifest, a full disk, traversal names and names over 255 characters."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from r1local.catalog import load_catalog
from r1local.errors import UnknownModelError, UsageError
from r1local.store import Store, resolve_gguf
from test_store import fake_pull, one_error, r1local

CATALOG = load_catalog()
LONG = "a" * 300


def store_of(tmp_path: Path) -> Store:
    """The store `r1local(tmp_path, ...)` uses."""
    return Store(tmp_path / "home" / "models")


@pytest.fixture
def filled(tmp_path, r1_standin) -> Store:
    """A store with a catalog pull (7b:Q4_K_M) and an import (mine), both the R1 stand-in."""
    store = store_of(tmp_path)
    fake_pull(store, "7b:Q4_K_M", r1_standin)
    store.import_file(r1_standin, "mine")
    return store


def listed(tmp_path: Path) -> tuple[dict, list[str]]:
    """`r1local list --json` -> ({name: entry}, the lines it wrote on stderr)."""
    p = r1local(tmp_path, "list", "--json")
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    return {m["name"]: m for m in json.loads(p.stdout)}, p.stderr.splitlines()


def error_after_warnings(p: subprocess.CompletedProcess) -> str:
    """A command that fails with one error line, after the store's warnings (if any)."""
    assert p.returncode != 0 and "Traceback" not in p.stderr, p.stderr
    lines = p.stderr.strip().splitlines()
    assert all(line.startswith("r1local: warning:") for line in lines[:-1]), p.stderr
    assert lines[-1].startswith("r1local: error:"), p.stderr
    return lines[-1]


def shows(tmp_path: Path, name: str) -> dict:
    p = r1local(tmp_path, "show", name, "--json")
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    return json.loads(p.stdout)


# ---- a damaged manifest ---------------------------------------------------------------------

@pytest.mark.parametrize("damage", [b"\xff\xfe{\"schema\": 1, \x80", b"{not json at all",
                                    b'{"schema": 1, "models": [1, 2]}', b"[]", b""],
                         ids=["not-utf8", "not-json", "models-a-list", "not-an-object", "empty"])
def test_an_unreadable_manifest_is_kept_aside_and_rebuilt_from_the_folders(tmp_path, filled,
                                                                           r1_standin, damage):
    filled.manifest_path.write_bytes(damage)
    models, err = listed(tmp_path)
    assert len(err) == 1 and "manifest.json.bad" in err[0] and "rebuilt" in err[0], err
    assert (filled.root / "manifest.json.bad").read_bytes() == damage  # kept, not deleted
    size = r1_standin.stat().st_size
    assert {n: (m["tag"], m["quant"], m["size"], m["origin"], m["present"])
            for n, m in models.items()} == {
        "7b:Q4_K_M": ("7b", "Q4_K_M", size, "pull", True),
        "mine": (None, "F16", size, "import", True)}
    # the sha256 is unknown until a pull checks the file again (see test_pull.py)
    assert models["7b:Q4_K_M"]["sha256"] == []
    assert shows(tmp_path, "mine")["architecture"] == "qwen2"
    assert shows(tmp_path, "7b")["quant"] == "Q4_K_M"
    again, err = listed(tmp_path)  # the rebuilt manifest is a good one: nothing more to say
    assert again == models and err == []


def test_damaged_entries_are_skipped_with_one_warning_naming_them(tmp_path, filled):
    data = json.loads(filled.manifest_path.read_text())
    data["models"].update({
        "broken": 5,
        "typed": {"tag": None, "quant": "F16", "files": "typed/x.gguf", "size": "big"},
        "nul": {"tag": None, "quant": 7, "files": ["nul/a\u0000b.gguf"], "size": 1},
        "deep": {"tag": None, "quant": "F16", "files": ["x" * 5000 + ".gguf"], "size": 1}})
    filled.manifest_path.write_text(json.dumps(data))
    models, err = listed(tmp_path)
    # a path too long for any file system is well-formed: listed, as missing
    assert sorted(models) == ["7b:Q4_K_M", "deep", "mine"] and not models["deep"]["present"]
    assert len(err) == 1 and err[0].startswith("r1local: warning:"), err
    for name in ("'broken'", "'typed'", "'nul'"):
        assert name in err[0]
    assert shows(tmp_path, "mine")["architecture"] == "qwen2"
    assert "unknown model 'broken'" in error_after_warnings(r1local(tmp_path, "show", "broken"))
    assert "is gone" in error_after_warnings(r1local(tmp_path, "show", "deep"))
    table = r1local(tmp_path, "list")
    assert table.returncode == 0 and "mine" in table.stdout, table.stderr
    assert [m.name for m in store_of(tmp_path).list()] == sorted(models)

    # rm drops a damaged entry (and its folder), and nothing else
    (filled.root / "typed").mkdir()
    (filled.root / "typed" / "x.gguf").write_bytes(b"GGUF")
    p = r1local(tmp_path, "rm", "typed", "--yes")
    assert p.returncode == 0, p.stderr
    assert "typed" not in json.loads(filled.manifest_path.read_text())["models"]
    assert not (filled.root / "typed").exists()
    assert sorted(listed(tmp_path)[0]) == ["7b:Q4_K_M", "deep", "mine"]


def test_a_directory_in_place_of_the_manifest_is_one_line_with_the_fix(tmp_path, filled):
    filled.manifest_path.unlink()
    filled.manifest_path.mkdir()
    for args in (("list",), ("list", "--json"), ("show", "mine"), ("rm", "mine", "--yes")):
        line = one_error(r1local(tmp_path, *args))
        assert "is a directory" in line and "move it" in line, line
    assert (filled.root / "mine").is_dir()  # rm touched nothing
    filled.manifest_path.rename(filled.root / "manifest.json.dir")  # what the error says to do
    models, err = listed(tmp_path)
    assert sorted(models) == ["7b:Q4_K_M", "mine"]
    assert len(err) == 1 and "was missing: rebuilt it" in err[0], err


# ---- a stored file that is not the one registered ----------------------------------------------

def test_a_file_longer_than_its_manifest_says_is_damaged_for_list_and_show(tmp_path, filled):
    stored = filled.get("7b:Q4_K_M").path
    data = stored.read_bytes()
    stored.unlink()  # fake_pull hard-links the shared fixture: damage a copy of our own
    stored.write_bytes(data + b"\0" * 4096)  # what two pulls writing one partial used to leave
    models, err = listed(tmp_path)
    assert models["7b:Q4_K_M"]["damaged"] and models["mine"]["damaged"] is None, err
    table = r1local(tmp_path, "list").stdout
    assert "damaged" in table and "r1local pull 7b:Q4_K_M" in table
    line = one_error(r1local(tmp_path, "show", "7b:Q4_K_M"))
    assert "damaged" in line and "bytes" in line and "r1local pull 7b:Q4_K_M" in line
    assert shows(tmp_path, "mine")["architecture"] == "qwen2"


# ---- rm on a full disk ------------------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    """A 16 MiB tmpfs (needs root); skipped where it cannot be mounted."""
    where = tmp_path / "disk"
    where.mkdir()
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(where)],
                       capture_output=True, text=True)
    if p.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill ({p.stderr.strip() or p.returncode})")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(where: Path) -> None:
    """Take every free byte of the file system at ``where``."""
    with open(where / f"filler-{uuid.uuid4().hex}", "wb", buffering=0) as f:
        block = b"\0" * (64 << 10)
        while True:
            try:
                f.write(block)
            except OSError:
                block = block[: len(block) // 2]
                if not block:
                    return


def rm_on(where: Path, tmp_path: Path, name: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, R1LOCAL_HOME=str(tmp_path / "home"),
               R1LOCAL_MODELS=str(where / "models"), NO_COLOR="1")
    return subprocess.run([sys.executable, "-m", "r1local", "rm", name, "--yes"], env=env,
                          text=True, capture_output=True, timeout=60, stdin=subprocess.DEVNULL)


def test_rm_frees_space_on_a_full_disk(tmp_path, small_disk, r1_standin):
    store = Store(small_disk / "models")
    store.import_file(r1_standin, "big")  # 10 MiB of the 16
    store.import_file(r1_standin, "kept", link=True)  # the user's file: nothing to free
    fill(small_disk)

    # the files go first, so the manifest has room to be rewritten
    p = rm_on(small_disk, tmp_path, "big")
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    assert not (store.root / "big").exists()
    assert sorted(json.loads(store.manifest_path.read_text())["models"]) == ["kept"]
    assert not list(store.root.glob("*.partial"))

    # nothing to free: the manifest cannot be rewritten, said in one line, nothing half-written
    fill(small_disk)
    before = store.manifest_path.read_bytes()
    line = one_error(rm_on(small_disk, tmp_path, "kept"))
    assert "disk is full" in line and "r1local rm kept" in line, line
    assert store.manifest_path.read_bytes() == before
    assert not list(store.root.glob("*.partial")) and r1_standin.exists()


# ---- names that are not names --------------------------------------------------------------

@pytest.mark.parametrize("bad", ["../x", "a/b", "..", "../../etc/passwd", "x\\y"])
def test_rm_of_a_traversal_name_is_refused_before_anything_changes(tmp_path, filled, bad):
    data = json.loads(filled.manifest_path.read_text())
    data["models"][bad] = {"tag": None, "quant": "F16", "files": ["mine/" + Path(
        filled.get("mine").path).name], "size": 1}
    filled.manifest_path.write_text(json.dumps(data))
    before = filled.manifest_path.read_bytes()
    assert "cannot be a model name" in one_error(r1local(tmp_path, "rm", bad, "--yes"))
    with pytest.raises(UsageError):
        filled.remove(bad)
    assert filled.manifest_path.read_bytes() == before
    assert filled.get("mine").present


def test_names_over_255_characters_are_one_line_errors(tmp_path, filled):
    for args in (("show", LONG), ("rm", LONG, "--yes"), ("show", "7b:" + LONG),
                 ("rm", "7b:" + LONG, "--yes"), ("show", f"/tmp/{LONG}.gguf"),
                 ("show", LONG + ".gguf")):
        one_error(r1local(tmp_path, *args))
    assert filled.get(LONG) is None and filled.find(LONG, CATALOG) is None
    assert filled.find("7b:" + LONG, CATALOG) is None
    with pytest.raises(UsageError):
        filled.model_dir("7b:" + LONG)
    with pytest.raises(UsageError):
        filled.remove(LONG)
    for ref in (LONG, "7b:" + LONG, f"/tmp/{LONG}.gguf"):
        with pytest.raises(UnknownModelError):
            resolve_gguf(ref, CATALOG, filled)
    assert sorted(filled.names()) == ["7b:Q4_K_M", "mine"]
