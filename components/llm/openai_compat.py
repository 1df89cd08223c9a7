"""The `openai` backend: any OpenAI-compatible chat endpoint (the project's `serve` flow, vLLM, Ollama,
llama.cpp server, OpenAI itself) through the `openai` package.

Base URL and key come from the arguments, else from the environment (OPENAI_BASE_URL /
OPENAI_API_KEY by default). Transient failures (connection refused, timeouts, HTTP 429 and 5xx)
are retried with exponential backoff; other errors (401, 404, 400 ...) fail at once with the
server's message. The client's own retries are off so that `retries` means exactly what it says.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterator, Sequence

import openai

from components.llm.base import LLM, Completion, LLMError, LLMTimeoutError, Messages


class OpenAICompatibleLLM(LLM):
    name = "openai"

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api_key: str | None = None,
        base_url_env: str = "OPENAI_BASE_URL",
        api_key_env: str = "OPENAI_API_KEY",
        timeout_s: float = 60.0,
        retries: int = 3,
        backoff_s: float = 0.5,
        seed: int | None = None,
        *,
        cache=None,
        max_concurrency: int | None = 4,
    ) -> None:
        super().__init__(cache=cache, max_concurrency=max_concurrency)
        self.base_url = base_url or os.environ.get(base_url_env)
        if not self.base_url:
            raise LLMError(
                f"llm=openai needs an endpoint: set llm.base_url or the {base_url_env} environment "
                "variable (e.g. http://127.0.0.1:8000/v1)"
            )
        # Local servers (serve, vLLM, llama.cpp) ignore the key; the client insists on one.
        key = api_key or os.environ.get(api_key_env) or "not-needed"
        if retries < 0 or timeout_s <= 0:
            raise ValueError(f"retries must be >= 0 and timeout_s > 0, got {retries}, {timeout_s}")
        self.model = model
        self.timeout_s, self.retries, self.backoff_s, self.seed = timeout_s, retries, backoff_s, seed
        self._client = openai.OpenAI(base_url=self.base_url, api_key=key, timeout=timeout_s, max_retries=0)
        self._openai = openai

    def cache_identity(self) -> dict:
        return {**super().cache_identity(), "base_url": self.base_url, "seed": self.seed}

    def _request(self, messages, max_tokens, temperature, stop, stream: bool):
        kwargs = dict(
            model=self.model, messages=messages, max_tokens=max_tokens, temperature=temperature, stream=stream
        )
        if stop:
            kwargs["stop"] = list(stop)[:4]  # the API takes at most 4; the base class applies the rest
        if self.seed is not None:
            kwargs["seed"] = self.seed
        if stream:
            kwargs["stream_options"] = {"include_usage": True}
        return self._with_retries(lambda: self._client.chat.completions.create(**kwargs))

    def _with_retries(self, call):
        o = self._openai
        transient = (o.APIConnectionError, o.RateLimitError, o.InternalServerError)  # APITimeoutError ⊂ connection
        for attempt in range(self.retries + 1):
            try:
                return call()
            except transient as err:
                if attempt == self.retries:
                    kind = LLMTimeoutError if isinstance(err, o.APITimeoutError) else LLMError
                    raise kind(
                        f"{self.base_url} failed after {attempt + 1} attempts "
                        f"(timeout_s={self.timeout_s}): {type(err).__name__}: {err}"
                    ) from err
                # Exponential backoff with jitter so that concurrent callers do not retry in lockstep.
                time.sleep(self.backoff_s * (2**attempt) * (0.5 + random.random()))
            except o.APIStatusError as err:
                raise LLMError(f"{self.base_url} rejected the request (HTTP {err.status_code}): {err.message}") from err

    def _chat(self, messages: Messages, max_tokens: int, temperature: float, stop: Sequence[str] | None) -> Completion:
        response = self._request(messages, max_tokens, temperature, stop, stream=False)
        if not response.choices:
            raise LLMError(f"{self.base_url} answered with no choices: {response!r:.300}")
        choice = response.choices[0]
        usage = response.usage
        return Completion(
            choice.message.content or "",
            prompt_tokens=getattr(usage, "prompt_tokens", 0) or 0,
            completion_tokens=getattr(usage, "completion_tokens", 0) or 0,
            finish_reason=choice.finish_reason or "stop",
            model=response.model or self.model,
        )

    def _stream(
        self, messages: Messages, max_tokens: int, temperature: float, stop: Sequence[str] | None, stats: Completion
    ) -> Iterator[str]:
        stream = self._request(messages, max_tokens, temperature, stop, stream=True)
        pieces = 0
        try:
            for chunk in stream:
                if chunk.usage is not None:
                    stats.prompt_tokens = chunk.usage.prompt_tokens or 0
                    stats.completion_tokens = chunk.usage.completion_tokens or 0
                if chunk.model:
                    stats.model = chunk.model
                for choice in chunk.choices or []:
                    if choice.finish_reason:
                        stats.finish_reason = choice.finish_reason
                    piece = choice.delta.content if choice.delta else None
                    if piece:
                        pieces += 1
                        if not stats.completion_tokens or chunk.usage is None:
                            stats.completion_tokens = max(stats.completion_tokens, pieces)
                        yield piece
        except self._openai.APIError as err:
            raise LLMError(f"stream from {self.base_url} broke: {type(err).__name__}: {err}") from err
        finally:
            stream.close()
