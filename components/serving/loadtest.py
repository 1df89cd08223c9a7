"""A loopback load test: N concurrent requests through the official async `openai` client."""
from __future__ import annotations

import asyncio
import statistics
import time
from typing import Optional


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


async def _load(base_url: str, model: str, requests: int, max_tokens: int, api_key: str, chat: bool) -> dict:
    import httpx
    from openai import AsyncOpenAI

    limits = httpx.Limits(max_connections=requests, max_keepalive_connections=requests)
    async with httpx.AsyncClient(limits=limits, timeout=600) as http:
        client = AsyncOpenAI(base_url=base_url, api_key=api_key, max_retries=0, http_client=http)
        latencies: list[float] = []
        errors: list[str] = []
        tokens = 0

        async def one(i: int) -> None:
            nonlocal tokens
            start = time.perf_counter()
            try:
                if chat:
                    r = await client.chat.completions.create(
                        model=model, messages=[{"role": "user", "content": f"request {i}: say hi"}],
                        max_tokens=max_tokens, temperature=0)
                else:
                    r = await client.completions.create(model=model, prompt=f"def f{i}(x):", max_tokens=max_tokens,
                                                        temperature=0)
                tokens += r.usage.completion_tokens
                latencies.append(time.perf_counter() - start)
            except Exception as exc:  # counted, never raised: the test asserts there are none
                errors.append(f"{type(exc).__name__}: {exc}")

        start = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(requests)))
        wall = time.perf_counter() - start
    return {"requests": requests, "errors": len(errors), "error_samples": errors[:5], "wall_s": wall,
            "p50_s": percentile(latencies, 50), "p99_s": percentile(latencies, 99),
            "mean_s": statistics.fmean(latencies) if latencies else float("nan"),
            "requests_per_s": requests / wall if wall else 0.0, "completion_tokens": tokens}


def run_load(base_url: str, model: str, requests: int = 200, max_tokens: int = 8, api_key: Optional[str] = None,
             chat: bool = False) -> dict:
    """Fire `requests` requests at once; return error count and latency percentiles (seconds)."""
    return asyncio.run(_load(base_url, model, requests, max_tokens, api_key or "none", chat))
