"""The browser chat that `r1local serve` shows at `/`.

- static/        the page (index.html), its own plain JS modules and CSS, and vendor/ (the
                 Markdown, sanitiser, highlighting and math libraries, with their licences:
                 static/vendor/VENDOR.md)
- routes.py      the routes: `/` (the page for browsers, "r1local is running" for other
                 clients), `/web/*` (the static files), `/web/models` (each listed model's
                 fit verdict on this machine), `/web/loading` (a model's load, as llama.cpp
                 reports its progress)

Everything the page loads ships inside the package, so it works offline.
"""

from __future__ import annotations

from pathlib import Path

STATIC_DIR = Path(__file__).parent / "static"
ASSET_PREFIX = "/web/"  # the page's files; public even with --api-key (they hold no data)
