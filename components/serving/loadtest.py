"""A loopback load test: N concurrent requests through the official async `openai` client, and
(`run_hostile_load`) the same beside malformed, abandoned and slow clients."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from typing import Optional
from urllib.parse import urlsplit

import httpx
from openai import AsyncOpenAI


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


async def _load(base_url: str, model: str, requests: int, max_tokens: int, api_key: str, chat: bool) -> dict:
    limits = httpx.Limits(max_connections=requests, max_keepalive_connections=requests)
    async with httpx.AsyncClient(limits=limits, timeout=600) as http:
        client = AsyncOpenAI(base_url=base_url, api_key=api_key, max_retries=0, http_client=http)
        latencies: list[float] = []
        errors: list[str] = []
        tokens = 0

        statuses: list[int] = []

        async def one(i: int) -> None:
            nonlocal tokens
            start = time.perf_counter()
            try:
                if chat:
                    r = await client.chat.completions.create(
                        model=model,
                        messages=[{"role": "user", "content": f"request {i}: say hi"}],
                        max_tokens=max_tokens,
                        temperature=0,
                    )
                else:
                    r = await client.completions.create(
                        model=model, prompt=f"def f{i}(x):", max_tokens=max_tokens, temperature=0
                    )
                tokens += r.usage.completion_tokens
                latencies.append(time.perf_counter() - start)
            except Exception as exc:  # counted, never raised: the test asserts there are none
                errors.append(f"{type(exc).__name__}: {exc}")
                if getattr(exc, "status_code", None) is not None:
                    statuses.append(exc.status_code)

        start = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(requests)))
        wall = time.perf_counter() - start
    return {
        "requests": requests,
        "errors": len(errors),
        "error_samples": errors[:5],
        "wall_s": wall,
        "p50_s": percentile(latencies, 50),
        "p99_s": percentile(latencies, 99),
        "mean_s": statistics.fmean(latencies) if latencies else float("nan"),
        "requests_per_s": requests / wall if wall else 0.0,
        "completion_tokens": tokens,
        "error_statuses": sorted(statuses),
    }


def run_load(
    base_url: str,
    model: str,
    requests: int = 200,
    max_tokens: int = 8,
    api_key: Optional[str] = None,
    chat: bool = False,
) -> dict:
    """Fire `requests` requests at once; return error count and latency percentiles (seconds)."""
    return asyncio.run(_load(base_url, model, requests, max_tokens, api_key or "none", chat))


# Requests no valid client sends; each must get a 4xx in OpenAI's error shape, never a 5xx.
def malformed_bodies(model: str, max_body_bytes: int) -> list[tuple[str, bytes]]:
    def body(**fields) -> bytes:
        return json.dumps({"model": model, **fields}).encode()

    return [
        ("invalid_json", b"{not json"),
        ("seed_2_70", body(prompt="hi", seed=2**70)),
        ("lone_surrogate", b'{"model": %s, "prompt": "\\ud800"}' % json.dumps(model).encode()),
        (
            "json_depth",
            b'{"model": %s, "prompt": "hi", "user": %s}' % (json.dumps(model).encode(), b"[" * 20_000 + b"]" * 20_000),
        ),
        ("nan_temperature", b'{"model": %s, "prompt": "hi", "temperature": NaN}' % json.dumps(model).encode()),
        ("body_too_large", body(prompt="a" * (max_body_bytes + 1))),
        ("prompt_too_long", body(prompt="a" * (max_body_bytes // 2))),
        ("unknown_model", json.dumps({"model": "no-such-model", "prompt": "hi"}).encode()),
        ("bad_role", body(messages=[{"role": "wizard", "content": "x"}])),
        ("empty_prompt", body(prompt="")),
        ("huge_max_tokens", body(prompt="hi", max_tokens=2**62)),
        ("not_utf8", b'{"model": "\xff\xfe"}'),
    ]


def _http_request(host: str, path: str, body: bytes) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    ).encode() + body


def _status(reply: bytes) -> Optional[int]:
    parts = reply.split(b" ", 2)
    return int(parts[1]) if len(parts) > 1 and reply.startswith(b"HTTP/") and parts[1].isdigit() else None


async def _exchange(host: str, port: int, data: bytes, timeout: float) -> Optional[int]:
    """One raw request; the status line's code (None: the server closed without answering)."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    try:
        writer.write(data)
        await writer.drain()
        return _status(await asyncio.wait_for(reader.read(), timeout))
    finally:
        writer.close()


async def _hostile(
    base_url: str,
    model: str,
    requests: int,
    max_tokens: int,
    api_key: str,
    malformed: int,
    abandoned: int,
    slow: int,
    max_body_bytes: int,
    client_timeout_s: float,
) -> dict:
    url = urlsplit(base_url)
    host, port, prefix = url.hostname, url.port, url.path.rstrip("/")
    bodies = malformed_bodies(model, max_body_bytes)
    statuses: dict[str, dict[str, int]] = {"malformed": {}, "slow": {}}
    failures: list[str] = []

    def count(kind: str, status: Optional[int]) -> None:
        key = str(status) if status is not None else "closed"
        statuses[kind][key] = statuses[kind].get(key, 0) + 1

    async def bad(i: int) -> None:
        name, body = bodies[i % len(bodies)]
        request = _http_request(host, f"{prefix}/completions", body)
        if len(body) > max_body_bytes:
            # Only the headers: the answer must come from the declared length alone. (Sending the body too
            # would race the server's early 413 and close against the kernel's reset of unread data.)
            request = request[: len(request) - len(body)]
        try:
            count("malformed", await _exchange(host, port, request, client_timeout_s))
        except (TimeoutError, OSError) as exc:
            failures.append(f"malformed {name}: {type(exc).__name__}: {exc}")

    async def abandon(i: int) -> None:
        body = json.dumps({"model": model, "prompt": f"abandoned {i}", "max_tokens": 64, "stream": i % 2 == 0}).encode()
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), client_timeout_s)
            writer.write(_http_request(host, f"{prefix}/completions", body))
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.close()  # gone before the answer
        except (TimeoutError, OSError) as exc:
            failures.append(f"abandoned {i}: {type(exc).__name__}: {exc}")

    async def slowly(i: int) -> None:
        """Headers one byte at a time (slowloris), or a body that stops halfway: the server cuts it off."""
        head = f"POST {prefix}/completions HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n"
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), client_timeout_s)
            try:
                if i % 2 == 0:

                    async def trickle() -> None:
                        for byte in head.encode():
                            writer.write(bytes([byte]))
                            await writer.drain()
                            await asyncio.sleep(0.25)

                    trickler = asyncio.ensure_future(trickle())
                else:
                    writer.write((head + "content-length: 1000\r\n\r\n").encode() + b'{"model": ')
                    await writer.drain()
                    trickler = None
                reply = await asyncio.wait_for(reader.read(), client_timeout_s)
                if trickler is not None:
                    trickler.cancel()
                count("slow", _status(reply))
            finally:
                writer.close()
        except (TimeoutError, OSError) as exc:  # not cut off within client_timeout_s: a failure
            failures.append(f"slow {i}: {type(exc).__name__}: {exc}")

    hostile = [
        *(bad(i) for i in range(malformed)),
        *(abandon(i) for i in range(abandoned)),
        *(slowly(i) for i in range(slow)),
    ]
    valid, *_ = await asyncio.gather(_load(base_url, model, requests, max_tokens, api_key, chat=False), *hostile)
    answered = [(s, n) for kind in statuses.values() for s, n in kind.items()]
    answered += [(str(s), 1) for s in valid["error_statuses"]]
    return {
        **valid,
        "malformed": malformed,
        "abandoned": abandoned,
        "slow": slow,
        "statuses": statuses,
        "hostile_failures": len(failures),
        "hostile_failure_samples": failures[:5],
        "status_5xx": sum(n for s, n in answered if s.isdigit() and int(s) >= 500),
        "malformed_not_4xx": sum(
            n for s, n in statuses["malformed"].items() if not (s.isdigit() and 400 <= int(s) < 500)
        ),
    }


def run_hostile_load(
    base_url: str,
    model: str,
    requests: int = 200,
    max_tokens: int = 8,
    api_key: Optional[str] = None,
    malformed: int = 60,
    abandoned: int = 60,
    slow: int = 20,
    max_body_bytes: int = 1 << 20,
    client_timeout_s: float = 60.0,
    overall_timeout_s: float = 600.0,
) -> dict:
    """`requests` valid requests at once, beside malformed, abandoned and slow clients (loopback only).

    Every client gives up after `client_timeout_s` and the whole run after `overall_timeout_s`, so it
    stops by itself. `status_5xx` counts 5xx answers to anyone; `malformed_not_4xx` malformed requests
    that got anything but a 4xx; `hostile_failures` hostile clients the server neither answered nor cut off.
    """
    host = urlsplit(base_url).hostname
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise ValueError(f"the hostile load test targets loopback only, not {host}")
    return asyncio.run(
        asyncio.wait_for(
            _hostile(
                base_url,
                model,
                requests,
                max_tokens,
                api_key or "none",
                malformed,
                abandoned,
                slow,
                max_body_bytes,
                client_timeout_s,
            ),
            overall_timeout_s,
        )
    )
