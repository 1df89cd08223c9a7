"""The LLM interface every agent component talks to, and the scripted backend used by tests.

Backends (embedded SmolLM2, any OpenAI-compatible endpoint, scripted) implement `_chat`; the base
class applies stop sequences and keeps token accounting, so every backend behaves the same.
Messages are OpenAI-style dicts: {"role": "system"|"user"|"assistant", "content": str}.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

Messages = list[dict[str, str]]


@dataclass
class Completion:
    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "stop"  # "stop" | "length"
    model: str = ""


@dataclass
class Usage:
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def as_dict(self) -> dict[str, int]:
        return {"calls": self.calls, "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens, "total_tokens": self.total_tokens}


def cut_at_stop(text: str, stop: Sequence[str] | None) -> tuple[str, bool]:
    """Truncate at the earliest stop sequence; report whether one was found."""
    if not stop:
        return text, False
    cuts = [i for i in (text.find(s) for s in stop if s) if i >= 0]
    return (text[: min(cuts)], True) if cuts else (text, False)


class LLM:
    """Chat/completion with stop sequences and token usage; subclasses implement `_chat`."""

    name = "llm"

    def __init__(self) -> None:
        self.usage = Usage()
        self._usage_lock = threading.Lock()

    def _chat(self, messages: Messages, max_tokens: int, temperature: float, stop: Sequence[str] | None) -> Completion:
        raise NotImplementedError

    def chat(self, messages: Messages, *, max_tokens: int = 256, temperature: float = 0.0,
             stop: Sequence[str] | None = None) -> Completion:
        result = self._chat(messages, max_tokens, temperature, stop)
        text, stopped = cut_at_stop(result.text, stop)
        if stopped:
            result = Completion(text, result.prompt_tokens, result.completion_tokens, "stop", result.model)
        with self._usage_lock:
            self.usage.calls += 1
            self.usage.prompt_tokens += result.prompt_tokens
            self.usage.completion_tokens += result.completion_tokens
        return result

    def complete(self, prompt: str, **kwargs) -> Completion:
        return self.chat([{"role": "user", "content": prompt}], **kwargs)

    def stream_chat(self, messages: Messages, **kwargs) -> Iterator[str]:
        """Yield text pieces; backends that stream natively override this."""
        yield self.chat(messages, **kwargs).text


Script = Sequence[str] | Callable[[Messages], str]


class ScriptedLLM(LLM):
    """Replays given responses (a list, in order, or a function of the messages). For tests only:
    its output is never presented as model output."""

    name = "scripted"

    def __init__(self, responses: Script) -> None:
        super().__init__()
        self._responses = responses
        self._index = 0
        self._lock = threading.Lock()
        self.requests: list[Messages] = []

    def _chat(self, messages: Messages, max_tokens: int, temperature: float, stop: Sequence[str] | None) -> Completion:
        with self._lock:
            self.requests.append(list(messages))
            if callable(self._responses):
                text = self._responses(messages)
            else:
                if self._index >= len(self._responses):
                    raise RuntimeError(f"ScriptedLLM ran out of responses after {self._index} calls")
                text = self._responses[self._index]
                self._index += 1
        prompt_words = sum(len(m["content"].split()) for m in messages)
        return Completion(text, prompt_tokens=prompt_words, completion_tokens=len(text.split()), model="scripted")
