"""The generation service behind the HTTP API: one decoder, one codec, one request at a time.

Decoding holds the draft/target worker pair of its decoder, so requests are decoded one after
another on a single executor thread; the HTTP layer bounds how many may wait (its queue).
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Optional

from components.decoding.engine import Decoder, DecodeStats
from components.decoding.sampling import SamplingParams
from components.llm.base import StopFilter
from components.serving.text import IncrementalDetokenizer, TextCodec

DECODER_SEED_RANGE = 2**32


@dataclass
class GenerationRequest:
    prompt_ids: list[int]
    max_tokens: int
    params: SamplingParams
    stop: list[str] = field(default_factory=list)
    seed: Optional[int] = None


@dataclass
class ServiceCounters:
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    draft_tokens_verified: int = 0
    draft_tokens_accepted: int = 0
    target_forwards: int = 0
    decode_seconds: float = 0.0
    cancelled: int = 0  # requests whose client went away: skipped while queued, or stopped mid-decode

    def as_dict(self) -> dict:
        out = dict(self.__dict__)
        out["acceptance_rate"] = (
            self.draft_tokens_accepted / self.draft_tokens_verified if self.draft_tokens_verified else 0.0
        )
        out["mean_accepted_tokens"] = self.completion_tokens / self.target_forwards if self.target_forwards else 0.0
        return out


class GenerationService:
    def __init__(self, decoder: Decoder, codec: TextCodec, model_name: str):
        self.decoder = decoder
        self.codec = codec
        self.model_name = model_name
        self.counters = ServiceCounters()
        self._seeds = itertools.count(1)
        self._lock = threading.Lock()  # one decode at a time: the decoder's workers are shared

    @property
    def max_context(self) -> int:
        return self.decoder.max_context

    def stream(
        self, request: GenerationRequest, stats: DecodeStats, cancelled: Callable[[], bool] = lambda: False
    ) -> Iterator[str]:
        """Text deltas of the completion (stop strings applied); `stats` is filled as it runs.

        `cancelled()` is checked before decoding starts and after every round: a request whose
        client has gone stops there (finish_reason 'cancelled')."""
        if cancelled():
            stats.finish_reason = "cancelled"
            self.counters.cancelled += 1
            return
        # The API's seed is any int64; the decoders derive per-round seeds from it, so fold it into 32 bits.
        seed = request.seed % DECODER_SEED_RANGE if request.seed is not None else next(self._seeds)
        detok = IncrementalDetokenizer(self.codec)
        stop_filter = StopFilter(request.stop)
        with self._lock:
            tokens = self.decoder.stream(
                request.prompt_ids, request.max_tokens, request.params, seed, self.codec.eos_ids, stats
            )
            gone = False
            try:
                for chunk in tokens:
                    text = stop_filter.feed(detok.push([t for t in chunk if t not in self.codec.eos_ids]))
                    if text:
                        yield text
                    gone = cancelled()
                    if stop_filter.stopped or gone:
                        break
            finally:
                tokens.close()  # the decoder's own bookkeeping (finish_reason, timings) runs here
            if gone and not stop_filter.stopped:
                stats.finish_reason = "cancelled"
                self.counters.cancelled += 1
                self._account(stats)
                return
            if stop_filter.stopped:
                stats.finish_reason = "stop"
            if not stop_filter.stopped:
                rest = stop_filter.feed(detok.flush()) + stop_filter.flush()
                if rest:
                    yield rest
            self._account(stats)

    def complete(
        self, request: GenerationRequest, cancelled: Callable[[], bool] = lambda: False
    ) -> tuple[str, DecodeStats]:
        stats = DecodeStats(method=self.decoder.method)
        return "".join(self.stream(request, stats, cancelled)), stats

    def _account(self, stats: DecodeStats) -> None:
        c = self.counters
        c.requests += 1
        c.prompt_tokens += stats.prompt_tokens
        c.completion_tokens += stats.new_tokens
        c.draft_tokens_verified += stats.draft_tokens_verified
        c.draft_tokens_accepted += stats.draft_tokens_accepted
        c.target_forwards += stats.target_forwards
        c.decode_seconds += stats.seconds
