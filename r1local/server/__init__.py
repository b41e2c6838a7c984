"""`r1local serve`: Ollama- and OpenAI-compatible HTTP APIs over the same engine.

The only place that imports the web framework (FastAPI / Starlette / uvicorn), with
r1local/web (the browser chat's routes, which create_app installs).

- config.py     ServerConfig, keep-alive durations, loopback check
- schemas.py    request bodies (pydantic) and the option-name tables
- errors.py     API errors and how each API family renders them
- guards.py     ASGI middlewares: Host allow-list, API key, JSON-only bodies, body size
- names.py      which model names a request may use (no paths outside --allow-paths)
- limits.py     settings ranges, and a prompt too long for the context refused untokenized
- models.py     ModelManager: name -> engine, load on first use, per-model FIFO queue, keep-alive
- streaming.py  one engine call in a worker thread, delivered to the event loop; cancel on disconnect
- ollama_api.py /api/* routes
- openai_api.py /v1/* routes
- app.py        create_app: routes, guards, CORS, error handlers, the keep-alive sweeper
"""

from __future__ import annotations
