"""Run the app with uvicorn: in the foreground (the `serve` flow) or on a background thread that a
test or benchmark starts and stops itself (`BackgroundServer`)."""
from __future__ import annotations

import socket
import threading
import time
from typing import Optional


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class BackgroundServer:
    """uvicorn on a daemon thread; `with BackgroundServer(app) as srv: srv.base_url`."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning",
                 backlog: int = 2048):
        import uvicorn

        self.host = host
        self.port = port or free_port(host)
        config = uvicorn.Config(app, host=self.host, port=self.port, log_level=log_level, backlog=backlog,
                                lifespan="on", timeout_keep_alive=30)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="uvicorn", daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def start(self, timeout: float = 30.0) -> "BackgroundServer":
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server on {self.host}:{self.port} did not start")
            time.sleep(0.02)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)

    def __enter__(self) -> "BackgroundServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def serve_forever(app, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info",
                  duration_s: Optional[float] = None) -> None:
    """Serve until SIGINT/SIGTERM (or for `duration_s` seconds when given)."""
    server = BackgroundServer(app, host, port, log_level).start()
    try:
        deadline = None if duration_s is None else time.monotonic() + duration_s
        while server.thread.is_alive() and (deadline is None or time.monotonic() < deadline):
            time.sleep(0.2)
    finally:
        server.stop()
