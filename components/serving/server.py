"""Run the app with uvicorn: in the foreground (the `serve` flow) or on a background thread that a
test or benchmark starts and stops itself (`BackgroundServer`).

The connection layer is bounded (`ConnectionLimits`): a client that never finishes its request
headers is cut off after `header_timeout_s` (408), an idle keep-alive connection after
`keep_alive_s`, and past `max_connections` open connections a new one gets a 503 in OpenAI's error
shape and is closed, so slow or idle sockets cannot pile up. Stopping drains: the listener closes,
in-flight requests get up to `drain_s` to finish, then whatever is left is cancelled.
"""

from __future__ import annotations

import errno
import json
import signal
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Optional

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from components.checks import at_least


class ServerStartError(RuntimeError):
    """The server could not start; the message says why (port in use, permission, address)."""


@dataclass(frozen=True)
class ConnectionLimits:
    max_connections: int = 1024  # open sockets at once; more get a 503 and are closed
    header_timeout_s: float = 10.0  # a request's headers must be complete this long after the connection opens
    keep_alive_s: float = 5.0  # an idle keep-alive connection is closed after this
    drain_s: float = 30.0  # on stop: in-flight requests get this long to finish

    def __post_init__(self):
        at_least("max_connections", self.max_connections, 1)
        at_least("header_timeout_s", self.header_timeout_s, 0.01)
        at_least("keep_alive_s", self.keep_alive_s, 0.01)
        at_least("drain_s", self.drain_s, 0)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def bind_listener(host: str, port: int) -> socket.socket:
    """A bound TCP socket for uvicorn, or a ServerStartError that says why the port cannot be used."""
    where = f"{host}:{port}"
    if not isinstance(port, int) or not 0 <= port <= 65535:
        raise ServerStartError(f"cannot listen on {where}: a port is 1-65535 (or 0 for any free port)")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ServerStartError(f"cannot listen on {where}: the host name does not resolve ({exc})") from exc
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: restarts reuse TIME_WAIT ports
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        reasons = {
            errno.EADDRINUSE: "the port is already in use by another process (pick another port, or port=0)",
            errno.EACCES: "permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)",
            errno.EADDRNOTAVAIL: f"{host} is not an address of this machine",
        }
        raise ServerStartError(f"cannot listen on {where}: {reasons.get(exc.errno, exc.strerror or str(exc))}") from exc
    return sock


def _json_error_response(status: int, reason: str, message: str, code: str, kind: str) -> bytes:
    body = json.dumps({"error": {"message": message, "type": kind, "param": None, "code": code}}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    ).encode()
    return head + body


def guarded_protocol(limits: ConnectionLimits):
    """uvicorn's h11 protocol with a header-read timeout and a cap on open connections."""

    class GuardedH11Protocol(H11Protocol):
        _header_timer = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            if len(self.connections) > limits.max_connections:
                transport.write(
                    _json_error_response(
                        503,
                        "Service Unavailable",
                        f"server busy: {limits.max_connections} connections already open",
                        "too_many_connections",
                        "server_error",
                    )
                )
                transport.close()
                return
            self._arm_header_timer()

        def _arm_header_timer(self) -> None:
            self._disarm_header_timer()
            self._header_timer = self.loop.call_later(limits.header_timeout_s, self._header_timeout)

        def _disarm_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _header_timeout(self) -> None:
            self._header_timer = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.write(
                    _json_error_response(
                        408,
                        "Request Timeout",
                        f"the request headers did not arrive within {limits.header_timeout_s} s",
                        "request_timeout",
                        "invalid_request_error",
                    )
                )
                self.transport.close()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE:  # the headers of a request are complete
                self._disarm_header_timer()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm_header_timer()  # the next request on this connection gets the same bound

        def connection_lost(self, exc) -> None:
            self._disarm_header_timer()
            super().connection_lost(exc)

    return GuardedH11Protocol


class BackgroundServer:
    """uvicorn on a daemon thread; `with BackgroundServer(app) as srv: srv.base_url`."""

    def __init__(
        self,
        app,
        host: str = "127.0.0.1",
        port: int = 0,
        log_level: str = "warning",
        backlog: int = 2048,
        limits: Optional[ConnectionLimits] = None,
    ):
        self.limits = limits or ConnectionLimits()
        self.host = host
        self.socket = bind_listener(host, port)
        self.port = self.socket.getsockname()[1]
        config = uvicorn.Config(
            app,
            host=self.host,
            port=self.port,
            log_level=log_level,
            backlog=backlog,
            lifespan="on",
            http=guarded_protocol(self.limits),
            timeout_keep_alive=self.limits.keep_alive_s,
            timeout_graceful_shutdown=self.limits.drain_s,
        )
        self.server = uvicorn.Server(config)
        self.error: Optional[BaseException] = None
        self.thread = threading.Thread(target=self._run, name="uvicorn", daemon=True)

    def _run(self) -> None:
        try:
            self.server.run(sockets=[self.socket])
        except BaseException as exc:  # reported by start()/stop(), which run on the caller's thread
            self.error = exc

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def start(self, timeout: float = 30.0) -> BackgroundServer:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive():
                self.socket.close()
                why = f": {type(self.error).__name__}: {self.error}" if self.error else " (see the log above)"
                raise ServerStartError(f"the server on {self.host}:{self.port} stopped during start-up{why}")
            if time.monotonic() > deadline:
                self.stop()
                raise ServerStartError(f"the server on {self.host}:{self.port} did not start within {timeout} s")
            time.sleep(0.02)
        return self

    def stop(self, timeout: Optional[float] = None) -> None:
        """Stop accepting, let in-flight requests finish for up to `limits.drain_s`, then cancel them."""
        self.server.should_exit = True
        if self.thread.is_alive():
            self.thread.join(self.limits.drain_s + 10 if timeout is None else timeout)
        self.socket.close()

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


@contextmanager
def stop_on_signals(signals=(signal.SIGTERM, signal.SIGINT)) -> Iterator[threading.Event]:
    """An event set by the first SIGTERM/SIGINT (a second one gets the previous handler: a forced stop).

    Signal handlers can only be installed on the main thread; elsewhere the event is never set by
    a signal and the previous behaviour stays.
    """
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = {sig: signal.getsignal(sig) for sig in signals}

    def handler(signum, frame):
        if stop.is_set():
            old = previous[signum]
            if callable(old):
                old(signum, frame)
            elif old == signal.SIG_DFL:
                signal.signal(signum, signal.SIG_DFL)
                signal.raise_signal(signum)
            return
        stop.set()

    for sig in signals:
        signal.signal(sig, handler)
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def serve_forever(
    app,
    host: str = "127.0.0.1",
    port: int = 8000,
    log_level: str = "info",
    duration_s: Optional[float] = None,
    limits: Optional[ConnectionLimits] = None,
) -> None:
    """Serve until SIGINT/SIGTERM (or for `duration_s` seconds when given), then drain."""
    with stop_on_signals() as stop:
        server = BackgroundServer(app, host, port, log_level, limits=limits).start()
        try:
            deadline = None if duration_s is None else time.monotonic() + duration_s
            while server.thread.is_alive() and not stop.is_set() and (deadline is None or time.monotonic() < deadline):
                time.sleep(0.2)
        finally:
            server.stop()
