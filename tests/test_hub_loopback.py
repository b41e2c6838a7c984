"""The loopback hub itself: the HTTP details the pull tests rely on."""

from __future__ import annotations

import hashlib

import httpx


def test_resolve_redirect_headers_and_ranges(loopback_hub):
    data = bytes(range(256)) * 40
    loopback_hub.add_file("org/repo", "m.gguf", data)
    loopback_hub.add_file("org/repo", "config.json", b"{}")
    with httpx.Client(base_url=loopback_hub.url) as c:
        head = c.head("/org/repo/resolve/main/m.gguf")
        assert head.status_code == 302
        sha = hashlib.sha256(data).hexdigest()
        assert head.headers["x-linked-etag"] == f'"{sha}"'
        assert head.headers["x-linked-size"] == str(len(data))
        assert head.headers["x-repo-commit"] == loopback_hub.commit
        cdn = head.headers["location"]
        assert c.get(cdn).content == data
        part = c.get(cdn, headers={"Range": "bytes=1000-"})
        assert part.status_code == 206 and part.content == data[1000:]
        assert part.headers["content-range"] == f"bytes 1000-{len(data) - 1}/{len(data)}"
        assert c.get(cdn, headers={"Range": "bytes=-10"}).content == data[-10:]
        assert c.get(cdn, headers={"Range": f"bytes={len(data)}-"}).status_code == 416
        small = c.get("/org/repo/resolve/main/config.json")
        assert small.status_code == 200 and small.content == b"{}"
        assert small.headers["etag"] == '"%s"' % hashlib.sha1(b"blob 2\0{}").hexdigest()
        assert c.head("/org/repo/resolve/main/nope.gguf").headers["x-error-code"] == "EntryNotFound"
        assert c.head("/org/none/resolve/main/m.gguf").status_code == 401
        assert c.head("/org/repo/resolve/v9/m.gguf").headers["x-error-code"] == "RevisionNotFound"
        info = c.get("/api/models/org/repo").json()
        assert {s["rfilename"] for s in info["siblings"]} == {"m.gguf", "config.json"}
        loopback_hub.gated.add("org/repo")
        assert c.head("/org/repo/resolve/main/m.gguf").headers["x-error-code"] == "GatedRepo"
        auth = {"Authorization": f"Bearer {loopback_hub.token}"}
        assert c.head("/org/repo/resolve/main/m.gguf", headers=auth).status_code == 302
    ranged = [r for r in loopback_hub.requests("GET") if r.range]
    assert [(r.range_start, r.sent) for r in ranged][:1] == [(1000, len(data) - 1000)]


def test_corrupt_flips_one_byte_in_transit(loopback_hub):
    data = b"\0" * 5000
    loopback_hub.add_file("org/repo", "m.gguf", data)
    loopback_hub.corrupt.add("org/repo/m.gguf")
    with httpx.Client(base_url=loopback_hub.url, follow_redirects=True) as c:
        got = c.get("/org/repo/resolve/main/m.gguf").content
    assert len(got) == len(data) and sum(a != b for a, b in zip(got, data)) == 1
