"""The LLM interface every agent component talks to, and the scripted backend used by tests.

Backends (embedded SmolLM2, any OpenAI-compatible endpoint, scripted) implement `_chat` (and,
when they can stream natively, `_stream`); the base class applies stop sequences, the concurrency
limit and the on-disk response cache, and keeps token accounting, so every backend behaves the same.
Messages are OpenAI-style dicts: {"role": "system"|"user"|"assistant", "content": str}.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

Messages = list[dict[str, str]]


class LLMError(RuntimeError):
    """A request to a language model failed (bad request, unreachable endpoint, ...)."""


class LLMTimeoutError(LLMError, TimeoutError):
    """A request took longer than the backend's timeout (after its retries)."""


@dataclass
class Completion:
    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "stop"  # "stop" | "length"
    model: str = ""
    cached: bool = False  # served from the on-disk response cache


@dataclass
class Usage:
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_calls: int = 0  # of `calls`, how many the response cache answered
    seconds: float = 0.0  # wall time spent inside the backend (cache hits cost ~0)

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def as_dict(self) -> dict[str, float]:
        return {
            "calls": self.calls,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "cached_calls": self.cached_calls,
            "seconds": round(self.seconds, 4),
        }


def log_llm_usage(
    tracker, llm: LLM, prefix: str = "llm", step: int | None = None, since: dict[str, float] | None = None
) -> dict[str, float]:
    """Log the LLM's calls and token counts to a run (`tracker.log_metrics`: `<prefix>.calls`, ...);
    `since`: an earlier `usage.as_dict()`, to log only what was spent after it (an LLM shared by runs)."""
    before = since or {}
    metrics = {f"{prefix}.{key}": value - before.get(key, 0) for key, value in llm.usage.as_dict().items()}
    tracker.log_metrics(metrics, step=step)
    return metrics


def cut_at_stop(text: str, stop: Sequence[str] | None) -> tuple[str, bool]:
    """Truncate at the earliest stop sequence; report whether one was found."""
    if not stop:
        return text, False
    cuts = [i for i in (text.find(s) for s in stop if s) if i >= 0]
    return (text[: min(cuts)], True) if cuts else (text, False)


class StopFilter:
    """Applies stop sequences to streamed text: never yields a stop sequence nor anything after it,
    and holds back a tail that could still grow into one (pieces may split a stop sequence)."""

    def __init__(self, stop: Sequence[str] | None) -> None:
        self.stop = [s for s in (stop or []) if s]
        self.pending = ""
        self.stopped = False

    def feed(self, piece: str) -> str:
        """Return the text that is safe to emit now."""
        if self.stopped:
            return ""
        self.pending += piece
        text, found = cut_at_stop(self.pending, self.stop)
        if found:
            self.stopped = True
            self.pending = ""
            return text
        hold = 0
        for s in self.stop:  # longest suffix of pending that is a proper prefix of a stop sequence
            for k in range(min(len(s) - 1, len(self.pending)), 0, -1):
                if self.pending.endswith(s[:k]):
                    hold = max(hold, k)
                    break
        emit = self.pending[: len(self.pending) - hold]
        self.pending = self.pending[len(emit) :]
        return emit

    def flush(self) -> str:
        rest, self.pending = ("" if self.stopped else self.pending), ""
        return rest


class LLM:
    """Chat/completion with stop sequences and token usage; subclasses implement `_chat`.

    Optional, for every backend: `cache` (a ResponseCache: identical requests replay the stored
    answer, so reruns are reproducible) and `max_concurrency` (at most that many requests inside
    the backend at once; the rest wait).
    """

    name = "llm"
    model = ""

    def __init__(self, *, cache=None, max_concurrency: int | None = None) -> None:
        self.usage = Usage()
        self._usage_lock = threading.Lock()
        self.cache = cache
        if max_concurrency is not None and max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1 or None, got {max_concurrency}")
        self._slots = threading.BoundedSemaphore(max_concurrency) if max_concurrency else None

    # --- what backends implement -------------------------------------------------------------
    def _chat(self, messages: Messages, max_tokens: int, temperature: float, stop: Sequence[str] | None) -> Completion:
        raise NotImplementedError

    def _stream(
        self, messages: Messages, max_tokens: int, temperature: float, stop: Sequence[str] | None, stats: Completion
    ) -> Iterator[str]:
        """Yield raw text pieces and fill `stats` (tokens, finish_reason); default: one piece."""
        result = self._chat(messages, max_tokens, temperature, stop)
        stats.prompt_tokens, stats.completion_tokens = result.prompt_tokens, result.completion_tokens
        stats.finish_reason, stats.model = result.finish_reason, result.model
        yield result.text

    def cache_identity(self) -> dict:
        """What, besides the request, decides the answer (backend, model, seed): part of the cache key."""
        return {"backend": self.name, "model": self.model}

    # --- the interface -----------------------------------------------------------------------
    def chat(
        self, messages: Messages, *, max_tokens: int = 256, temperature: float = 0.0, stop: Sequence[str] | None = None
    ) -> Completion:
        _check_messages(messages)
        key = self._cache_key(messages, max_tokens, temperature, stop)
        hit = self.cache.get(key) if key else None
        if hit is not None:
            self._account(hit, 0.0)
            return hit
        start = time.perf_counter()
        with self._slot():
            result = self._chat(messages, max_tokens, temperature, stop)
        elapsed = time.perf_counter() - start
        text, stopped = cut_at_stop(result.text, stop)
        if stopped:
            result = Completion(text, result.prompt_tokens, result.completion_tokens, "stop", result.model)
        if key:
            self.cache.put(key, result)
        self._account(result, elapsed)
        return result

    def complete(self, prompt: str, **kwargs) -> Completion:
        return self.chat([{"role": "user", "content": prompt}], **kwargs)

    def stream_chat(
        self, messages: Messages, *, max_tokens: int = 256, temperature: float = 0.0, stop: Sequence[str] | None = None
    ) -> Iterator[str]:
        """Yield text pieces as the backend produces them (stop sequences already applied).

        Usage is accounted when the stream ends or is closed early; a finished stream is cached.
        """
        _check_messages(messages)
        key = self._cache_key(messages, max_tokens, temperature, stop)
        hit = self.cache.get(key) if key else None
        if hit is not None:
            self._account(hit, 0.0)
            yield hit.text
            return
        stats = Completion("", model=self.model)
        stop_filter = StopFilter(stop)
        emitted: list[str] = []
        start = time.perf_counter()
        finished = False
        try:
            with self._slot():
                pieces = self._stream(messages, max_tokens, temperature, stop, stats)
                try:
                    for piece in pieces:
                        out = stop_filter.feed(piece)
                        if out:
                            emitted.append(out)
                            yield out
                        if stop_filter.stopped:
                            break
                finally:
                    pieces.close()  # a native stream stops generating here
            rest = stop_filter.flush()
            if rest:
                emitted.append(rest)
                yield rest
            finished = True
        finally:
            result = Completion(
                "".join(emitted),
                stats.prompt_tokens,
                stats.completion_tokens,
                "stop" if stop_filter.stopped else stats.finish_reason,
                stats.model or self.model,
            )
            self._account(result, time.perf_counter() - start)
            if finished and key:
                self.cache.put(key, result)

    # --- helpers -----------------------------------------------------------------------------
    def _cache_key(self, messages, max_tokens, temperature, stop) -> str | None:
        if self.cache is None:
            return None
        return self.cache.key(
            {
                **self.cache_identity(),
                "messages": messages,
                "max_tokens": max_tokens,
                "temperature": temperature,
                "stop": list(stop or []),
            }
        )

    def _slot(self):
        return self._slots if self._slots is not None else contextlib.nullcontext()

    def _account(self, result: Completion, seconds: float) -> None:
        with self._usage_lock:
            self.usage.calls += 1
            self.usage.prompt_tokens += result.prompt_tokens
            self.usage.completion_tokens += result.completion_tokens
            self.usage.cached_calls += int(result.cached)
            self.usage.seconds += seconds


def _check_messages(messages: Messages) -> None:
    if not isinstance(messages, (list, tuple)) or not messages:
        raise LLMError(f"messages must be a non-empty list of {{'role', 'content'}} dicts, got {messages!r:.200}")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str) or not isinstance(m.get("role"), str):
            raise LLMError(f"messages[{i}] must be {{'role': str, 'content': str}}, got {m!r:.200}")


Script = Sequence[str] | Callable[[Messages], str]


class ScriptedLLM(LLM):
    """Replays given responses (a list, in order, or a function of the messages). For tests only:
    its output is never presented as model output."""

    name = "scripted"
    model = "scripted"

    def __init__(
        self,
        responses: Script,
        *,
        cache=None,
        max_concurrency: int | None = None,
        delay_s: float = 0.0,
        token_delay_s: float = 0.0,
    ) -> None:
        super().__init__(cache=cache, max_concurrency=max_concurrency)
        self._responses = responses
        self._index = 0
        self._lock = threading.Lock()
        # Simulated model speed for benchmarks of plumbing: `delay_s` per response (time to first
        # token) plus `token_delay_s` per word of the response (decoding).
        self.delay_s = delay_s
        self.token_delay_s = token_delay_s
        self.requests: list[Messages] = []

    def _next_text(self, messages: Messages) -> str:
        with self._lock:
            self.requests.append(list(messages))
            if callable(self._responses):
                return self._responses(messages)
            if self._index >= len(self._responses):
                raise RuntimeError(f"ScriptedLLM ran out of responses after {self._index} calls")
            text = self._responses[self._index]
            self._index += 1
            return text

    def _chat(self, messages: Messages, max_tokens: int, temperature: float, stop: Sequence[str] | None) -> Completion:
        text = self._next_text(messages)
        delay = self.delay_s + self.token_delay_s * len(cut_at_stop(text, stop)[0].split())
        if delay:
            time.sleep(delay)
        prompt_words = sum(len(m["content"].split()) for m in messages)
        return Completion(text, prompt_tokens=prompt_words, completion_tokens=len(text.split()), model="scripted")

    def _stream(self, messages, max_tokens, temperature, stop, stats) -> Iterator[str]:
        """Line by line: `delay_s` before the first line, `token_delay_s` per word of each line, so
        a consumer sees lines arrive as a decoding model would send them."""
        text = self._next_text(messages)
        stats.prompt_tokens = sum(len(m["content"].split()) for m in messages)
        stats.model = "scripted"
        if self.delay_s:
            time.sleep(self.delay_s)
        for line in text.splitlines(keepends=True) or [""]:
            if self.token_delay_s:
                time.sleep(self.token_delay_s * len(line.split()))
            stats.completion_tokens += len(line.split())
            yield line
