"""Hostile clients against the loopback server: every invalid request a 4xx in OpenAI's error shape,
nothing slow on the event loop, abandoned requests cancelled, slow and idle sockets cut off,
a connection cap, a drain on stop, and a port that cannot be bound says why."""

from __future__ import annotations

import json
import socket
import threading
import time

import httpx
import pytest

from components.serving.app import RequestLimits, create_app
from components.serving.server import (
    BackgroundServer,
    ConnectionLimits,
    ServerStartError,
)
from components.serving.text import ByteCodec
from tests.serving.conftest import MODEL, tiny_service

LIMITS = RequestLimits(max_body_bytes=64 * 1024, body_timeout_s=1.0)
CONNECTIONS = ConnectionLimits(header_timeout_s=1.0, keep_alive_s=1.0, drain_s=5.0)


class RecordingCodec(ByteCodec):
    """The byte codec, recording which thread encodes and decodes (and how often)."""

    def __init__(self):
        super().__init__(260)
        self.encode_threads: list[str] = []
        self.decode_threads: set[str] = set()

    def encode(self, text):
        self.encode_threads.append(threading.current_thread().name)
        return super().encode(text)

    def decode(self, ids):
        self.decode_threads.add(threading.current_thread().name)
        return super().decode(ids)


@pytest.fixture(scope="module")
def hostile():
    service = tiny_service("ar")
    service.codec = RecordingCodec()
    with BackgroundServer(create_app(service, max_queue=64, limits=LIMITS), limits=CONNECTIONS) as srv:
        srv.service = service
        yield srv
    service.decoder.close()


def post(server, path: str, body, **kwargs) -> httpx.Response:
    url = server.base_url + path
    if isinstance(body, (bytes, str)):
        return httpx.post(url, content=body, headers={"content-type": "application/json"}, timeout=30, **kwargs)
    return httpx.post(url, json=body, timeout=30, **kwargs)


def assert_openai_error(response: httpx.Response, status: int, fragment: str) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert fragment in error["message"], error
    return error


def still_serves(server) -> None:
    response = post(server, "/completions", {"model": MODEL, "prompt": "ok", "max_tokens": 2})
    assert response.status_code == 200 and response.json()["usage"]["completion_tokens"] >= 1


def raw_exchange(port: int, data: bytes, wait_s: float = 15.0) -> bytes:
    """Send `data` on a fresh connection and read until the server closes it (or `wait_s` passes)."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait_s) as sock:
        if data:
            sock.sendall(data)
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except TimeoutError:
            received += b"<still open>"
        return received


@pytest.mark.parametrize("seed", [2**70, -(2**70), 2**63])
def test_seed_outside_int64_is_a_400_not_a_500(hostile, seed):
    error = assert_openai_error(
        post(hostile, "/completions", {"model": MODEL, "prompt": "hi", "seed": seed}), 400, "seed"
    )
    assert error["param"] == "seed"
    still_serves(hostile)


@pytest.mark.parametrize("seed", [2**63 - 1, -(2**63), 2**32 + 5])
def test_seed_at_the_int64_edges_decodes(hostile, seed):
    body = {"model": MODEL, "prompt": "hi", "seed": seed, "temperature": 0.9, "max_tokens": 4}
    first, again = post(hostile, "/completions", body), post(hostile, "/completions", body)
    assert first.status_code == 200, first.text
    assert first.json()["choices"][0]["text"] == again.json()["choices"][0]["text"]


@pytest.mark.parametrize(
    "path, body",
    [
        (
            "/chat/completions",
            b'{"model": "%s", "messages": [{"role": "user", "content": "a\\ud800b"}]}' % MODEL.encode(),
        ),
        ("/completions", b'{"model": "%s", "prompt": "\\udfff"}' % MODEL.encode()),
        ("/completions", b'{"model": "%s", "prompt": "hi", "stop": ["\\ud83d"]}' % MODEL.encode()),
    ],
)
def test_lone_surrogate_is_a_400_invalid_unicode(hostile, path, body):
    error = assert_openai_error(post(hostile, path, body), 400, "lone surrogate")
    assert error["code"] == "invalid_unicode"
    still_serves(hostile)


def test_a_surrogate_pair_is_valid_unicode(hostile):
    body = b'{"model": "%s", "prompt": "\\ud83d\\ude00", "max_tokens": 2}' % MODEL.encode()
    assert post(hostile, "/completions", body).status_code == 200


def test_json_nested_30000_deep_is_a_400(hostile):
    deep = b'{"model": "%s", "prompt": "hi", "user": ' % MODEL.encode() + b"[" * 30_000 + b"]" * 30_000 + b"}"
    assert_openai_error(post(hostile, "/completions", deep), 400, "nests deeper")
    still_serves(hostile)


def test_json_nested_past_the_depth_limit_but_under_the_recursion_limit_is_a_400(hostile):
    nested: object = "x"
    for _ in range(LIMITS.max_json_depth + 5):
        nested = {"k": nested}
    assert_openai_error(
        post(hostile, "/completions", {"model": MODEL, "prompt": "hi", "metadata": nested}), 400, "nests deeper"
    )


@pytest.mark.parametrize("constant", [b"NaN", b"Infinity", b"-Infinity"])
def test_nan_and_infinity_are_a_400(hostile, constant):
    body = b'{"model": "%s", "prompt": "hi", "temperature": %s}' % (MODEL.encode(), constant)
    assert_openai_error(post(hostile, "/completions", body), 400, "not a valid JSON number")


def test_an_integer_past_pythons_digit_limit_is_a_400(hostile):
    body = b'{"model": "%s", "prompt": "hi", "max_tokens": %s}' % (MODEL.encode(), b"9" * 5000)
    assert_openai_error(post(hostile, "/completions", body), 400, "malformed JSON")


def test_body_not_utf8_is_a_400(hostile):
    assert_openai_error(post(hostile, "/completions", b'{"prompt": "\xff\xfe"}'), 400, "")


def test_body_over_the_limit_is_refused_from_its_declared_length_before_reading(hostile):
    head = (
        f"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        f"content-length: {10 * 1024 * 1024}\r\n\r\n"
    ).encode()
    reply = raw_exchange(hostile.port, head)  # no body at all: the answer comes from the header alone
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert b"body_too_large" in reply


def test_chunked_body_over_the_limit_is_a_413(hostile):
    def chunks():
        for _ in range(200):
            yield b"x" * 4096

    response = httpx.post(hostile.base_url + "/completions", content=chunks(), timeout=30)
    assert_openai_error(response, 413, "bytes")


def test_ten_megabyte_prompt_is_a_413_not_tokenized(hostile):
    before = len(hostile.service.codec.encode_threads)
    response = post(hostile, "/completions", {"model": MODEL, "prompt": "a" * 10_000_000})
    assert_openai_error(response, 413, "at most")
    assert len(hostile.service.codec.encode_threads) == before


def test_prompt_longer_than_the_context_can_hold_is_refused_before_tokenizing(hostile):
    codec = hostile.service.codec
    before = len(codec.encode_threads)
    limit = hostile.service.max_context * LIMITS.max_chars_per_token
    response = post(hostile, "/completions", {"model": MODEL, "prompt": "a" * (limit + 1)})
    error = assert_openai_error(response, 400, "characters")
    assert error["code"] == "context_length_exceeded"
    chat = post(
        hostile,
        "/chat/completions",
        {
            "model": MODEL,
            "messages": [
                {"role": "user", "content": "b" * (limit // 2 + 1)},
                {"role": "user", "content": "c" * (limit // 2 + 1)},
            ],
        },
    )
    assert_openai_error(chat, 400, "characters")
    assert len(codec.encode_threads) == before  # neither prompt reached the tokenizer


def test_tokenizing_and_detokenizing_run_off_the_event_loop(hostile):
    codec = hostile.service.codec
    post(hostile, "/completions", {"model": MODEL, "prompt": "where am I tokenized?", "max_tokens": 3})
    assert codec.encode_threads and all(name.startswith("tokenize") for name in codec.encode_threads)
    assert codec.decode_threads and all(name.startswith("decode") for name in codec.decode_threads)


def test_a_slow_tokenizer_does_not_stall_other_requests():
    """While one prompt is being tokenized, /health still answers (tokenizing on the loop would block it)."""
    started, health_answered = threading.Event(), threading.Event()
    seen = {}

    class SlowCodec(ByteCodec):
        def encode(self, text):
            started.set()
            seen["health_answered_meanwhile"] = health_answered.wait(20)
            return super().encode(text)

    service = tiny_service("ar")
    service.codec = SlowCodec(260)
    try:
        with BackgroundServer(create_app(service)) as srv:
            result = {}
            worker = threading.Thread(
                target=lambda: result.update(
                    r=post(srv, "/completions", {"model": MODEL, "prompt": "slow", "max_tokens": 2})
                )
            )
            worker.start()
            assert started.wait(20)
            assert httpx.get(f"http://127.0.0.1:{srv.port}/health", timeout=30).status_code == 200
            health_answered.set()
            worker.join(30)
            assert result["r"].status_code == 200
            assert seen["health_answered_meanwhile"]
    finally:
        service.decoder.close()


def _abandon(port: int, body: dict) -> None:
    """Send a whole request and hang up without reading the answer."""
    data = json.dumps(body).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n" % len(data) + data
        )
        time.sleep(0.05)  # let the server read it before the close


@pytest.mark.parametrize("stream", [False, True])
def test_abandoned_requests_are_cancelled_not_decoded_to_completion(stream):
    service = tiny_service("ar")
    max_tokens = 200
    try:
        with BackgroundServer(create_app(service, max_queue=64)) as srv:
            abandoned = 12
            for i in range(abandoned):
                _abandon(
                    srv.port,
                    {
                        "model": MODEL,
                        "prompt": f"abandoned {i}",
                        "max_tokens": max_tokens,
                        "stream": stream,
                        "temperature": 0.9,
                    },
                )
            # queued behind the abandoned ones: answered once they are skipped or stopped
            still_serves(srv)
            counters = service.counters
            assert counters.cancelled >= abandoned - 1, counters
            assert counters.completion_tokens < (abandoned - 1) * max_tokens  # they were not decoded to the end
            assert srv.server.config.app.state.queue_state["admitted"] == 0  # every admission given back
    finally:
        service.decoder.close()


def test_slow_headers_are_cut_off_with_a_408(hostile):
    reply = raw_exchange(hostile.port, b"POST /v1/completions HTTP/1.1\r\nhost: x\r\n")  # and never the rest
    assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
    assert b"request_timeout" in reply


def test_a_connection_that_never_sends_is_closed(hostile):
    reply = raw_exchange(hostile.port, b"")
    assert reply.startswith(b"HTTP/1.1 408"), reply[:200]


def test_an_idle_keep_alive_connection_is_closed(hostile):
    body = json.dumps({"model": MODEL, "prompt": "ok", "max_tokens": 1}).encode()
    request = (
        b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n" % len(body) + body
    )
    reply = raw_exchange(hostile.port, request)  # one answer, then the idle connection is closed
    assert reply.startswith(b"HTTP/1.1 200") and not reply.endswith(b"<still open>")


def test_a_body_that_never_arrives_is_a_408(hostile):
    head = b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n"
    reply = raw_exchange(hostile.port, head + b'{"model": ')
    assert b" 408 " in reply.split(b"\r\n", 1)[0], reply[:200]
    assert b"did not arrive" in reply


def test_connections_past_the_cap_get_a_503_and_are_closed():
    service = tiny_service("ar")
    try:
        limits = ConnectionLimits(max_connections=4, header_timeout_s=30)
        with BackgroundServer(create_app(service), limits=limits) as srv:
            held = [socket.create_connection(("127.0.0.1", srv.port), timeout=10) for _ in range(4)]
            try:
                time.sleep(0.2)  # the server has accepted them
                reply = raw_exchange(srv.port, b"")
                assert reply.startswith(b"HTTP/1.1 503"), reply[:200]
                assert json.loads(reply.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "too_many_connections"
            finally:
                for sock in held:
                    sock.close()
            time.sleep(0.2)
            still_serves(srv)
    finally:
        service.decoder.close()


def test_stop_drains_an_in_flight_stream_to_its_end():
    service = tiny_service("ar")
    try:
        srv = BackgroundServer(create_app(service), limits=ConnectionLimits(drain_s=60)).start()
        events = []
        with httpx.stream(
            "POST",
            srv.base_url + "/completions",
            timeout=60,
            json={"model": MODEL, "prompt": "drain", "max_tokens": 120, "stream": True, "temperature": 0.9},
        ) as response:
            lines = response.iter_lines()
            events.append(next(lines))
            stopper = threading.Thread(target=srv.stop)
            stopper.start()  # SIGTERM's path: stop accepting, let this stream finish
            events.extend(lines)
        stopper.join(60)
        assert not stopper.is_alive() and not srv.thread.is_alive()
        assert "data: [DONE]" in events
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{srv.port}/health", timeout=5)
    finally:
        service.decoder.close()


def test_port_in_use_says_it_is_in_use():
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        with pytest.raises(ServerStartError, match="already in use"):
            BackgroundServer(object(), "127.0.0.1", port)


@pytest.mark.parametrize(
    "host, port, fragment",
    [
        ("127.0.0.1", -5, "1-65535"),
        ("127.0.0.1", 70000, "1-65535"),
        ("203.0.113.7", 0, "not an address of this machine"),
    ],
)
def test_a_port_that_cannot_be_bound_says_why(host, port, fragment):
    with pytest.raises(ServerStartError, match=fragment):
        BackgroundServer(object(), host, port)
