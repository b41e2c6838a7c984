"""The hardware probe on this machine, sizes, hypothetical machines and profiles."""

from __future__ import annotations

import os
import time

import pytest

from r1local.errors import UsageError
from r1local.hardware import hypothetical, load_profile, metal_working_set, probe
from r1local.units import parse_size

G = 1 << 30


def test_probe_sees_this_machine(tmp_path):
    t0 = time.perf_counter()
    m = probe(tmp_path / "not-yet-created" / "models")
    assert time.perf_counter() - t0 < 0.5 * 4  # < 0.5 s; slack for a loaded 2-core box
    assert 1 <= m.physical_cores <= m.logical_cores <= (os.cpu_count() or 1)
    with open("/proc/meminfo") as f:
        mem_total = int(f.readline().split()[1]) * 1024
    assert 0 < m.ram_available <= m.ram_total <= mem_total
    assert m.disk_free > 0  # measured on the nearest existing parent
    assert not m.hypothetical
    # this machine: no GPU and a CPU-only llama.cpp build
    import llama_cpp

    assert m.gpu_offload == (bool(llama_cpp.llama_supports_gpu_offload()) and bool(m.gpus))
    if not m.gpus:
        assert "CPU only" in m.offload_note
    assert m.ram_bandwidth[0] > 0


def test_probe_reads_cpu_flags():
    m = probe()
    with open("/proc/cpuinfo") as f:
        flags = next((line for line in f if line.startswith("flags")), "").split()
    if "avx2" in flags:
        assert "avx2" in m.simd
    assert m.cpu_name


@pytest.mark.parametrize("text, value", [
    ("16G", 16 * G), ("512M", 512 << 20), ("1.5T", int(1.5 * (1 << 40))), ("8GiB", 8 * G),
    ("24gb", 24 * G), ("1048576", 1 << 20), (" 2 g ", 2 * G),
])
def test_parse_size(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "G", "16X", "-4G", "0", "lots"])
def test_parse_size_refuses_nonsense(text):
    with pytest.raises(UsageError) as err:
        parse_size(text)
    assert "\n" not in str(err.value)


def test_hypothetical_machines():
    m = hypothetical(16 * G, [8 * G, 4 * G], cores=6)
    assert m.hypothetical and m.gpu_offload
    assert [g.total_bytes for g in m.gpus] == [8 * G, 4 * G]
    assert m.vram_total == 12 * G and m.physical_cores == 6
    cpu = hypothetical(8 * G)
    assert not cpu.gpus and not cpu.gpu_offload
    mac = hypothetical(64 * G, unified=True)
    assert mac.unified and mac.gpus[0].total_bytes == metal_working_set(64 * G) == 48 * G
    assert metal_working_set(16 * G) < 16 * G * 0.7
    with pytest.raises(UsageError):
        hypothetical(16 * G, 32 * G, unified=True)
    with pytest.raises(UsageError):
        hypothetical(0)


def test_profiles_toml_and_json(tmp_path):
    toml = tmp_path / "box.toml"
    toml.write_text('ram = "128G"\nvram = ["24G", "24G"]\ncores = 16\nname = "workstation"\n')
    m = load_profile(toml)
    assert m.ram_total == 128 * G and len(m.gpus) == 2 and m.cpu_name == "workstation"
    js = tmp_path / "mac.json"
    js.write_text('{"ram": "64G", "unified": true}')
    assert load_profile(js).unified


@pytest.mark.parametrize("text, message", [
    ('ram = "16G"\nvrma = "8G"\n', "unknown key"),
    ('vram = "8G"\n', "must give 'ram'"),
    ('ram = "16Q"\n', "cannot read size"),
    ('ram = "16G"\ncores = "many"\n', "cores"),
    ("ram = [[[\n", "not valid TOML"),
])
def test_bad_profiles_say_what_is_wrong(tmp_path, text, message):
    p = tmp_path / "p.toml"
    p.write_text(text)
    with pytest.raises(UsageError, match=message) as err:
        load_profile(p)
    assert "\n" not in str(err.value)
    with pytest.raises(UsageError, match="does not exist"):
        load_profile(tmp_path / "missing.toml")
