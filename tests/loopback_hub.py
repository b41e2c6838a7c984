"""A Hugging Face hub of our own on 127.0.0.1, for tests and for trying `r1local pull` offline.

It serves files laid out as ``ROOT/<org>/<repo>/<path>`` over the endpoints huggingface-hub
uses for a download, with real HTTP (huggingface-hub reaches it through ``HF_ENDPOINT``):

- ``HEAD|GET /<repo>/resolve/<rev>/<path>``: large files (.gguf, .safetensors: "LFS") answer
  302 to ``/cdn/...`` as the real hub does, with ``X-Linked-Etag`` = the LFS sha256,
  ``X-Linked-Size`` and ``X-Repo-Commit``; small files are served directly with their git
  blob sha1 as ETag. ``/cdn/...`` serves the bytes, honouring ``Range`` (206).
- ``GET /api/models/<repo>`` and ``.../revision/<rev>``: model info with ``siblings``.
- ``GET /api/models/<repo>/tree/<rev>[/<folder>][?recursive=true]``: the file listing
  ``snapshot_download`` asks for (files with size, blob id and LFS sha256; folders).
- A missing repo answers 401 ``RepoNotFound``, a missing file 404 ``EntryNotFound``, an
  unknown revision 404 ``RevisionNotFound``, a "gated" repo 401 ``GatedRepo`` unless the
  request carries ``Authorization: Bearer <token>``.

Test knobs: ``throttle`` (bytes/s per response), ``corrupt`` (files served with one byte
flipped, while the advertised sha256 stays right), ``fake_size`` (a size to advertise), and
``log``: every request with its Range and the body bytes actually sent (logged when the
response ends; ``sending`` counts the bytes of the bodies still going out, as they go).

Run it by hand: ``python tests/loopback_hub.py --serve-standin`` serves the R1 stand-in
under the real 7b repo and every 7b quant file name from models.toml.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

LFS_SUFFIXES = (".gguf", ".safetensors", ".bin")
COMMIT = "0123456789abcdef0123456789abcdef01234567"
CHUNK = 64 << 10


@dataclass
class Request:
    method: str
    path: str  # decoded, without the query
    range: str | None
    status: int
    sent: int = 0  # body bytes written before the response ended (or the client went away)

    @property
    def range_start(self) -> int | None:
        m = re.match(r"bytes=(\d+)-", self.range or "")
        return int(m.group(1)) if m else None


@dataclass
class LoopbackHub:
    root: Path
    gated: set[str] = field(default_factory=set)  # repo ids that need the token
    token: str = "hf_loopback_token"
    commit: str = COMMIT
    throttle: float | None = None  # bytes per second for file bodies
    corrupt: set[str] = field(default_factory=set)  # "org/repo/path" served damaged
    fake_size: dict[str, int] = field(default_factory=dict)  # "org/repo/path" -> advertised size
    host: str = "127.0.0.1"
    port: int = 0
    log: list[Request] = field(default_factory=list)
    sending: dict[str, int] = field(default_factory=dict)  # path -> bytes sent so far, live

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        self._hashes: dict[tuple[str, int, int], str] = {}
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle ----------------------------------------------------------------------
    @property
    def url(self) -> str:
        assert self._server is not None, "start() the hub first"
        return f"http://{self.host}:{self._server.server_address[1]}"

    def start(self) -> "LoopbackHub":
        hub = self

        class Handler(_Handler):
            pass

        Handler.hub = hub
        self._server = ThreadingHTTPServer((self.host, self.port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        name="loopback-hub")
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> "LoopbackHub":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- content ------------------------------------------------------------------------
    def add_file(self, repo: str, path: str, src: Path | bytes) -> Path:
        """Put a file at repo/path (a hard link to src where possible: no copy of big files)."""
        dest = self.root / repo / path
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.exists():
            dest.unlink()
        if isinstance(src, bytes):
            dest.write_bytes(src)
        else:
            try:
                dest.hardlink_to(src)
            except OSError:
                import shutil

                shutil.copyfile(src, dest)
        return dest

    def requests(self, method: str | None = None, contains: str = "") -> list[Request]:
        with self._lock:
            return [r for r in self.log if (method is None or r.method == method)
                    and contains in r.path]

    def sent_so_far(self, contains: str = "") -> int:
        """Body bytes sent so far by the responses still open whose path contains this."""
        with self._lock:
            return sum(n for path, n in self.sending.items() if contains in path)

    def body_gets(self, contains: str = "") -> list[Request]:
        """GETs that sent file bytes (the /cdn/ downloads and direct small-file GETs)."""
        return [r for r in self.requests("GET", contains)
                if "/api/" not in r.path and r.status in (200, 206)]

    def sha256(self, file: Path) -> str:
        st = file.stat()
        key = (str(file), st.st_size, st.st_mtime_ns)
        if key not in self._hashes:
            h = hashlib.sha256()
            with open(file, "rb") as f:
                while block := f.read(1 << 20):
                    h.update(block)
            self._hashes[key] = h.hexdigest()
        return self._hashes[key]

    @staticmethod
    def git_sha1(file: Path) -> str:
        data = file.read_bytes()
        return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()

    def repo_exists(self, repo: str) -> bool:
        return repo.count("/") == 1 and (self.root / repo).is_dir()

    def files(self, repo: str) -> list[str]:
        base = self.root / repo
        return sorted(p.relative_to(base).as_posix() for p in base.rglob("*") if p.is_file())


class _Handler(BaseHTTPRequestHandler):
    hub: LoopbackHub
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet: the hub keeps its own log
        pass

    # ---- plumbing -----------------------------------------------------------------------
    def _record(self, status: int, sent: int = 0) -> None:
        req = Request(self.command, unquote(urlsplit(self.path).path),
                      self.headers.get("Range"), status, sent)
        with self.hub._lock:
            self.hub.log.append(req)

    def _reply(self, status: int, headers: dict[str, str] | None = None, body: bytes = b"") -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)
        self._record(status, len(body) if self.command != "HEAD" else 0)

    def _error(self, status: int, code: str, message: str) -> None:
        self._reply(status, {"X-Error-Code": code, "X-Error-Message": message,
                             "Content-Type": "application/json"},
                    json.dumps({"error": message}).encode())

    def _authorized(self, repo: str) -> bool:
        if repo not in self.hub.gated:
            return True
        return self.headers.get("Authorization", "") == f"Bearer {self.hub.token}"

    def _check_repo(self, repo: str, rev: str) -> bool:
        if not self.hub.repo_exists(repo):
            self._error(401, "RepoNotFound", f"Repository Not Found for url: {self.path}.")
            return False
        if not self._authorized(repo):
            self._error(401, "GatedRepo", f"Access to model {repo} is restricted. You must "
                        "have access to it and be authenticated to access it. Please log in.")
            return False
        if rev not in ("main", self.hub.commit):
            self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
            return False
        return True

    def do_HEAD(self) -> None:
        self._route()

    def do_GET(self) -> None:
        self._route()

    def _route(self) -> None:
        path = unquote(urlsplit(self.path).path)
        try:
            m = re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?", path)
            if m:
                return self._model_info(m.group(1), m.group(2) or "main")
            m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)(?:/(.*))?", path)
            if m:
                query = parse_qs(urlsplit(self.path).query)
                return self._tree(m.group(1), m.group(2), (m.group(3) or "").strip("/"),
                                  query.get("recursive", ["false"])[0].lower() == "true")
            m = re.fullmatch(r"/(?:models/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
            if m:
                return self._resolve(m.group(1), m.group(2), m.group(3))
            m = re.fullmatch(r"/cdn/([^/]+/[^/]+)/(.+)", path)
            if m:
                return self._body(m.group(1), m.group(2))
            self._error(404, "NotFound", f"no route for {path}")
        except (BrokenPipeError, ConnectionResetError):
            pass

    # ---- endpoints ----------------------------------------------------------------------
    def _model_info(self, repo: str, rev: str) -> None:
        if not self._check_repo(repo, rev):
            return
        siblings = []
        for name in self.hub.files(repo):
            f = self.hub.root / repo / name
            entry: dict = {"rfilename": name, "size": f.stat().st_size}
            if name.endswith(LFS_SUFFIXES):
                entry["lfs"] = {"sha256": self.hub.sha256(f), "size": f.stat().st_size,
                                "pointerSize": 134}
            siblings.append(entry)
        info = {"_id": repo, "id": repo, "modelId": repo, "sha": self.hub.commit,
                "private": False, "gated": "auto" if repo in self.hub.gated else False,
                "disabled": False, "tags": ["gguf"], "siblings": siblings,
                "lastModified": "2025-01-20T00:00:00.000Z"}
        self._reply(200, {"Content-Type": "application/json"}, json.dumps(info).encode())

    def _tree(self, repo: str, rev: str, folder: str, recursive: bool) -> None:
        if not self._check_repo(repo, rev):
            return
        repo_root = self.hub.root / repo
        base = repo_root / folder
        if ".." in folder.split("/") or not base.is_dir():
            self._error(404, "EntryNotFound", f"{folder} does not exist on \"{rev}\"")
            return
        entries = []
        for p in sorted(base.rglob("*") if recursive else base.iterdir()):
            rel = p.relative_to(repo_root).as_posix()
            if p.is_dir():
                entries.append({"type": "directory", "oid": hashlib.sha1(rel.encode()).hexdigest(),
                                "size": 0, "path": rel})
                continue
            size = self.hub.fake_size.get(f"{repo}/{rel}", p.stat().st_size)
            entry: dict = {"type": "file", "oid": self.hub.git_sha1(p), "size": size, "path": rel}
            if rel.endswith(LFS_SUFFIXES):
                entry["lfs"] = {"oid": self.hub.sha256(p), "size": size, "pointerSize": 134}
            entries.append(entry)
        self._reply(200, {"Content-Type": "application/json"}, json.dumps(entries).encode())

    def _resolve(self, repo: str, rev: str, name: str) -> None:
        if not self._check_repo(repo, rev):
            return
        f = self.hub.root / repo / name
        if ".." in name.split("/") or not f.is_file():
            self._error(404, "EntryNotFound", f"{name} does not exist on \"{rev}\"")
            return
        key = f"{repo}/{name}"
        size = self.hub.fake_size.get(key, f.stat().st_size)
        common = {"X-Repo-Commit": self.hub.commit, "Accept-Ranges": "bytes"}
        if name.endswith(LFS_SUFFIXES):
            sha = self.hub.sha256(f)
            # another host name for the same server: huggingface-hub follows redirects on the
            # hub host itself but stops at a CDN host, as it must for the real one
            cdn = f"http://localhost:{self.server.server_address[1]}/cdn/{quote(repo)}/{quote(name)}"
            self._reply(302, {**common, "Location": cdn, "ETag": f'"{sha}"',
                              "X-Linked-Etag": f'"{sha}"', "X-Linked-Size": str(size)})
            return
        self._body(repo, name, extra={**common, "ETag": f'"{self.hub.git_sha1(f)}"'})

    def _body(self, repo: str, name: str, extra: dict[str, str] | None = None) -> None:
        f = self.hub.root / repo / name
        if ".." in name.split("/") or not f.is_file():
            self._error(404, "EntryNotFound", f"{name} not found")
            return
        size = f.stat().st_size
        start, end, status = 0, size - 1, 200
        rng = self.headers.get("Range")
        headers = {"Accept-Ranges": "bytes", "Content-Type": "application/octet-stream",
                   **(extra or {})}
        if rng:
            m = re.fullmatch(r"bytes=(\d*)-(\d*)", rng.strip())
            if not m or (not m.group(1) and not m.group(2)):
                self._reply(416, {"Content-Range": f"bytes */{size}"})
                return
            if m.group(1):
                start = int(m.group(1))
                end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
            else:  # suffix range: the last N bytes
                start, end = max(0, size - int(m.group(2))), size - 1
            if start >= size or start > end:
                self._reply(416, {"Content-Range": f"bytes */{size}"})
                return
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        length = end - start + 1
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(length))
        self.end_headers()
        if self.command == "HEAD":
            self._record(status)
            return
        damaged = f"{repo}/{name}" in self.hub.corrupt
        flip_at = size // 2
        sent = 0
        live = f"{unquote(urlsplit(self.path).path)} #{id(self)}"  # one key per response
        try:
            with open(f, "rb") as fh:
                fh.seek(start)
                t0 = time.monotonic()
                while sent < length:
                    block = bytearray(fh.read(min(CHUNK, length - sent)))
                    if not block:
                        break
                    pos = start + sent
                    if damaged and pos <= flip_at < pos + len(block):
                        block[flip_at - pos] ^= 0xFF
                    self.wfile.write(block)
                    sent += len(block)
                    with self.hub._lock:
                        self.hub.sending[live] = sent
                    if self.hub.throttle:
                        ahead = sent / self.hub.throttle - (time.monotonic() - t0)
                        if ahead > 0:
                            time.sleep(ahead)
        finally:
            with self.hub._lock:
                self.hub.sending.pop(live, None)
            self._record(status, sent)


# ---- the stand-in hub for contributors ---------------------------------------------------

def layout_variant(hub: LoopbackHub, variant, gguf: Path, quants: list[str] | None = None) -> None:
    """Serve ``gguf`` under the variant's GGUF repo and each quant's file name(s); a split
    quant gets the file as its first part only (use a real split for split tests)."""
    for q in quants or list(variant.quants):
        qf = variant.quants[q]
        if not qf.is_split:
            hub.add_file(variant.gguf_repo, qf.files[0], gguf)


def unpinned_catalog(dest: Path) -> Path:
    """A copy of models.toml at ``dest`` without its sha256 pins (point R1LOCAL_CATALOG at
    it): the stand-in served under catalog file names is not the file a pin names, and a
    pull refuses a pinned file whose hash differs unless told --trust-hub, which `run`'s own
    pull of the recommended model has no way to say."""
    import re

    from r1local.catalog import catalog_path

    text = re.sub(r"(?m)^sha256 = \[.*\]\n", "", catalog_path().read_text())
    dest.write_text(text)
    return dest


def main(argv: list[str] | None = None) -> int:
    import argparse
    import sys
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve-standin", action="store_true",
                        help="serve the R1 stand-in under the real 7b repo and file names")
    parser.add_argument("--root", type=Path, help="serve this folder (ROOT/org/repo/file)")
    parser.add_argument("--port", type=int, default=0, help="default: any free port")
    parser.add_argument("--tag", default="7b", help="catalog tag to impersonate (default 7b)")
    parser.add_argument("--throttle", type=float, help="bytes per second")
    args = parser.parse_args(argv)
    if not args.serve_standin and not args.root:
        parser.error("give --serve-standin or --root DIR")

    root = args.root or Path(tempfile.mkdtemp(prefix="r1local-hub-"))
    hub = LoopbackHub(root, port=args.port, throttle=args.throttle)
    if args.serve_standin:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import model_fixtures

        from r1local.catalog import load_catalog

        variant = load_catalog().resolve(args.tag).variant
        standin = model_fixtures.build_r1_standin()
        layout_variant(hub, variant, standin)
        print(f"serving the R1 stand-in ({standin.stat().st_size:,} bytes) as "
              f"{variant.gguf_repo} ({', '.join(q for q in variant.quants)})", file=sys.stderr)
    hub.start()
    print(f"export HF_ENDPOINT={hub.url}", flush=True)
    print("Ctrl-C stops it", file=sys.stderr)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        hub.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
