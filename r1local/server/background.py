"""Run the server in a background thread of this process (tests, notebooks, embedding).

    with BackgroundServer(ServerConfig(port=0)) as srv:
        httpx.get(srv.url + "/api/version")

Binds 127.0.0.1 unless told otherwise, and stops (unloading every model) on exit.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from r1local.server.config import ServerConfig


class BackgroundServer:
    def __init__(self, config: ServerConfig | None = None, *, start_timeout: float = 60.0) -> None:
        self.config = config or ServerConfig(port=0)
        self.start_timeout = start_timeout
        self.app: Any = None
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._sock: Any = None
        self.url = ""

    def start(self) -> "BackgroundServer":
        import uvicorn

        from r1local.server.app import create_app
        from r1local.server.listening import listen

        self._sock = listen(self.config.host, self.config.port)
        host, port = self._sock.getsockname()[:2]
        self.port = port
        self.url = f"http://{host}:{port}"
        self.app = create_app(self.config)
        self._server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning",
                                                     access_log=False,
                                                     timeout_graceful_shutdown=5))
        self._thread = threading.Thread(target=self._server.run,
                                        kwargs={"sockets": [self._sock]}, daemon=True,
                                        name="r1local-server")
        self._thread.start()
        deadline = time.monotonic() + self.start_timeout
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError("the server thread exited during start-up")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError("the server did not start in time")
            time.sleep(0.02)
        return self

    @property
    def manager(self) -> Any:
        return self.app.state.manager

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> "BackgroundServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
