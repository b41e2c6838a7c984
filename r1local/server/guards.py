"""What a request must pass before any route sees it: the Host it names, the API key, its
Content-Type and its size.

Pure ASGI middlewares (not BaseHTTPMiddleware), so streaming responses pass through
untouched. Each refusal is one JSON error in the shape of the API the path belongs to.

Why these rules: with no API key, any web page the user opens could otherwise drive the
API. A page on another site can reach 127.0.0.1 in two ways without CORS letting it:
DNS rebinding (its own name, re-pointed at 127.0.0.1: the Host header still carries that
name) and "simple" cross-site POSTs (text/plain, form or multipart bodies need no
preflight). Every official client (ollama-python, ollama-js, Ollama's Go CLI, openai)
sends `application/json`; `curl -d`, as Ollama's docs use it, sends
`application/x-www-form-urlencoded`, and raw-bytes clients send no Content-Type at all.
Browsers mark every cross-site POST with `Origin` (and `Sec-Fetch-*`), headers a page
cannot remove, so those two are accepted only from requests without such marks.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
from typing import Any, Callable, Iterable

from r1local.server.errors import ApiError, body_for

# the body types a browser may POST cross-site without a preflight, less text/plain
# and multipart, which no client of these APIs sends
_CURL_FORM = "application/x-www-form-urlencoded"
_BROWSER_MARKS = (b"origin", b"sec-fetch-site", b"sec-fetch-mode")
_LOOPBACK_NAMES = ("localhost",)


async def send_error(scope: dict, send: Any, err: ApiError,
                     headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    """Answer with ``err`` before the app runs."""
    body = json.dumps(body_for(scope.get("path", ""), err), separators=(",", ":")).encode()
    await send({"type": "http.response.start", "status": err.status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()), *headers]})
    await send({"type": "http.response.body", "body": body})


def _headers(scope: dict) -> dict[bytes, bytes]:
    return dict(scope.get("headers") or [])


class ApiKeyMiddleware:
    """Every request must carry `Authorization: Bearer <key>` (401 otherwise).

    CORS sits outside it: browsers send preflight OPTIONS without credentials.
    """

    def __init__(self, app: Any, key: str,
                 public: "Callable[[dict], bool] | None" = None) -> None:
        self.app = app
        self.expected = f"Bearer {key}".encode()
        self.public = public  # scope -> True for what needs no key (the web page's files)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or (self.public is not None and self.public(scope)):
            return await self.app(scope, receive, send)
        given = _headers(scope).get(b"authorization", b"")
        if hmac.compare_digest(given, self.expected):
            return await self.app(scope, receive, send)
        err = ApiError(401, "missing or wrong API key: send `Authorization: Bearer <key>`",
                       code="invalid_api_key")
        await send_error(scope, send, err, [(b"www-authenticate", b"Bearer")])


def host_name(header: str) -> str:
    """The name in a Host header, lower case, without its port: "[::1]:80" -> "[::1]"."""
    h = header.strip().lower()
    if h.startswith("["):
        end = h.find("]")
        return h[:end + 1] if end > 0 else h
    return h.rsplit(":", 1)[0] if h.count(":") == 1 else h


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name.strip("[]"))
        return True
    except ValueError:
        return False


class HostGuard:
    """Refuse (403) a Host header that names neither this machine's loopback names, an IP
    address, the --host the server is bound to, nor an --allow-host name.

    IP literals pass: a rebinding attack needs a name the attacker controls, and a page
    whose URL is an IP is cross-origin here, so the other rules (and CORS) apply to it.
    """

    def __init__(self, app: Any, bound: str, allowed: Iterable[str] = ()) -> None:
        self.app = app
        names = {host_name(a).rstrip(".") for a in (bound, *allowed) if a}
        self.any = "*" in names
        self.names = names | set(_LOOPBACK_NAMES)

    def allows(self, name: str) -> bool:
        name = name.rstrip(".")
        return self.any or not name or name in self.names or _is_ip(name)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        raw = _headers(scope).get(b"host", b"").decode("latin-1")
        name = host_name(raw)
        if self.allows(name):
            return await self.app(scope, receive, send)
        shown = "".join(c for c in name[:80] if c.isprintable())
        err = ApiError(403, f"requests for host '{shown}' are refused: a web page may be "
                       "reaching this server by DNS rebinding; if you reach it by that name, "
                       f"start it with `r1local serve --allow-host {shown}`",
                       code="host_not_allowed")
        await send_error(scope, send, err)


class BodyTooLarge(ApiError):
    def __init__(self, limit: int) -> None:
        from r1local.units import fmt_bytes

        super().__init__(413, f"the request body is larger than {fmt_bytes(limit)} "
                         "(`r1local serve --max-body` sets the limit)", code="request_too_large")


def content_type_problem(headers: dict[bytes, bytes]) -> str | None:
    """Why a POST body's Content-Type is refused (None: accepted); see the module doc."""
    raw = headers.get(b"content-type", b"").decode("latin-1")
    media = raw.split(";", 1)[0].strip().lower()
    if media == "application/json" or media.endswith("+json"):
        return None
    from_browser = any(mark in headers for mark in _BROWSER_MARKS)
    if media in ("", _CURL_FORM) and not from_browser:
        return None
    got = f"'{media[:60]}'" if media else "none"
    return f"send the body as JSON with `Content-Type: application/json` (got {got})"


class BodyGuard:
    """POST bodies: JSON only (415), and at most ``limit`` bytes (413), counted as they
    arrive, so a chunked body is cut off too, not buffered whole first."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST":
            return await self.app(scope, receive, send)
        headers = _headers(scope)
        problem = content_type_problem(headers)
        if problem:
            return await send_error(scope, send, ApiError(415, problem,
                                                          code="unsupported_media_type"))
        try:
            declared = int(headers.get(b"content-length", b"0"))
        except ValueError:
            declared = 0  # the HTTP parser has refused a malformed length already
        if declared > self.limit:
            return await send_error(scope, send, BodyTooLarge(self.limit))
        seen = 0

        async def counted() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise BodyTooLarge(self.limit)  # the route's error handler answers 413
            return message

        await self.app(scope, counted, send)
