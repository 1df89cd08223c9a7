"""The embedded backend: SmolLM2-135M-Instruct run in-process with transformers, fully offline.

The weights load once per process (shared by every EmbeddedLLM, guarded by a lock) and decoding is
a manual KV-cached loop, so streaming is real (one piece per token), stop sequences end generation
early (the model does not waste time past a stop), and a deadline can be checked between tokens.
Greedy by default; `temperature > 0` samples with a generator seeded by `seed` and the prompt: the
same request gives the same answer (reruns, the response cache), and two different prompts draw
independent samples (one fixed stream for every request made similar prompts answer alike: the
co-scientist's generations all restated one hypothesis).

Prompt prefixes are cached: agent prompts repeat a long system prompt and few-shot examples (and
ReAct re-sends its whole trajectory every step), and on a CPU the prefill of ~1000 prompt tokens
costs more than decoding the answer. The KV cache of recent prompts is kept (a few entries, LRU)
and a new prompt only prefills what follows its longest cached prefix.
"""

from __future__ import annotations

import copy
import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence

import torch

from components.llm.base import LLM, Completion, LLMTimeoutError, Messages, cut_at_stop
from components.lm.smollm2 import is_model_folder, load_model, load_tokenizer

_MODELS: dict[tuple[str, str, str | None], tuple[object, object]] = {}  # (dtype, device, folder)
_load_lock = threading.Lock()


def load_smollm2(dtype: str = "float32", device: str = "cpu", path: str | None = None):
    """(model, tokenizer), loaded at most once per process for each (dtype, device, path); `path`: a
    fine-tuned copy (save_pretrained's, or the `tune_agent` flow's tuned layers)."""
    key = (dtype, device, path)
    with _load_lock:
        if key not in _MODELS:
            if path is not None and not is_model_folder(path):
                raise FileNotFoundError(
                    f"llm.model_path={path!r} is not a saved model folder (no config.json or tuned.safetensors)"
                )
            _MODELS[key] = (load_model(dtype=dtype, device=device, folder=path), load_tokenizer(path))
        return _MODELS[key]


class PrefixCache:
    """KV caches of recent prompts; `lookup` returns a private copy cropped to the longest shared prefix."""

    def __init__(self, max_entries: int = 4, min_prefix: int = 16) -> None:
        self.max_entries = max_entries  # ~45 MB each for 1000 tokens of SmolLM2-135M
        self.min_prefix = min_prefix  # shorter shared prefixes are not worth a copy
        self._entries: OrderedDict[tuple, object] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.reused_tokens = 0

    def lookup(self, ids: list[int]):
        """(cache holding the first n tokens of `ids`, n), n < len(ids); (None, 0) on a miss."""
        with self._lock:
            best, best_len = None, 0
            for key in self._entries:
                n = _common_prefix(key, ids)
                if n > best_len:
                    best, best_len = key, n
            n = min(best_len, len(ids) - 1)  # the last prompt token is always fed: it yields the logits
            if best is None or n < self.min_prefix:
                return None, 0
            self._entries.move_to_end(best)
            cache = copy.deepcopy(self._entries[best])
            self.hits += 1
            self.reused_tokens += n
        extra = cache.get_seq_length() - n
        if extra > 0:
            cache.crop(-extra)  # transformers 5: a negative count removes that many trailing tokens
        return cache, n

    def store(self, ids: list[int], cache) -> None:
        snapshot = copy.deepcopy(cache)  # generation goes on mutating the live one
        key = tuple(ids)
        with self._lock:
            # An entry that is a prefix of this prompt is subsumed by it (ReAct's growing trajectory
            # stays one entry instead of evicting the few-shot prefixes of the other prompts).
            for old in [k for k in self._entries if len(k) <= len(key) and key[: len(k)] == k]:
                del self._entries[old]
            self._entries[key] = snapshot
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class EmbeddedLLM(LLM):
    name = "embedded"

    def __init__(
        self,
        model: str = "SmolLM2-135M-Instruct",
        dtype: str = "float32",
        device: str = "cpu",
        timeout_s: float | None = None,
        seed: int = 0,
        *,
        cache=None,
        max_concurrency: int | None = 1,
        prefix_cache_entries: int = 4,
        threads: int | None = None,
        model_path: str | None = None,
    ) -> None:
        super().__init__(cache=cache, max_concurrency=max_concurrency)
        if model != "SmolLM2-135M-Instruct":
            raise ValueError(
                f"the embedded backend ships only SmolLM2-135M-Instruct, not {model!r}; "
                "use llm=openai to reach another model"
            )
        self.model = model
        self.model_path = model_path  # a fine-tuned SmolLM2 folder instead of the packaged weights
        self.dtype, self.device = dtype, _resolve_device(device)
        self.timeout_s = timeout_s  # wall-clock budget of one request; None: unbounded
        self.seed = seed
        if threads:
            # Process-wide: on a busy CPU, torch's intra-op threads wait on each other at every op
            # (measured here: 1 thread was ~20x faster than 2 with the machine oversubscribed).
            torch.set_num_threads(threads)
        self._model, self._tokenizer = load_smollm2(self.dtype, self.device, model_path)
        self.prefix_cache = PrefixCache(prefix_cache_entries) if prefix_cache_entries > 0 else None

    def cache_identity(self) -> dict:
        return {**super().cache_identity(), "dtype": self.dtype, "seed": self.seed, "model_path": self.model_path}

    def _chat(self, messages: Messages, max_tokens: int, temperature: float, stop: Sequence[str] | None) -> Completion:
        stats = Completion("", model=self.model)
        text = "".join(self._stream(messages, max_tokens, temperature, stop, stats))
        stats.text = text
        return stats

    def _stream(
        self, messages: Messages, max_tokens: int, temperature: float, stop: Sequence[str] | None, stats: Completion
    ) -> Iterator[str]:
        tok = self._tokenizer
        prompt_ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)[
            "input_ids"
        ]
        stats.prompt_tokens = len(prompt_ids)
        stats.model = self.model
        stats.finish_reason = "length"
        generator = torch.Generator().manual_seed(sampling_seed(self.seed, prompt_ids)) if temperature > 0 else None
        deadline = time.monotonic() + self.timeout_s if self.timeout_s else None
        generated: list[int] = []
        shown = ""  # text already yielded (decoded from all generated ids: multi-byte tokens stay whole)
        past, reused = self.prefix_cache.lookup(prompt_ids) if self.prefix_cache else (None, 0)
        input_ids = torch.tensor([prompt_ids[reused:]], device=self.device)
        with torch.inference_mode():
            for step in range(max_tokens):
                if deadline is not None and time.monotonic() > deadline:
                    raise LLMTimeoutError(
                        f"embedded generation exceeded timeout_s={self.timeout_s} after {len(generated)} tokens"
                    )
                # `cache=` is transformers 5's name for the KV cache (was past_key_values).
                out = self._model(input_ids=input_ids, cache=past, use_cache=True, logits_to_keep=1)
                past = out.cache
                if step == 0 and self.prefix_cache is not None:
                    self.prefix_cache.store(prompt_ids, past)  # holds exactly the prompt's KV here
                logits = out.logits[0, -1].float()
                if temperature > 0:
                    probs = torch.softmax(logits / temperature, dim=-1)
                    next_id = int(torch.multinomial(probs, 1, generator=generator))
                else:
                    next_id = int(torch.argmax(logits))
                if next_id == tok.eos_token_id:
                    stats.finish_reason = "stop"
                    break
                generated.append(next_id)
                stats.completion_tokens = len(generated)
                input_ids = torch.tensor([[next_id]], device=self.device)
                text = tok.decode(generated, skip_special_tokens=True)
                if text.endswith("\ufffd"):
                    continue  # half of a multi-byte character: wait for the rest
                piece, shown = text[len(shown) :], text
                if piece:
                    yield piece
                if stop and cut_at_stop(text, stop)[1]:
                    stats.finish_reason = "stop"
                    break


def sampling_seed(seed: int, prompt_ids: Sequence[int]) -> int:
    """The sampler's seed for one request: `seed` mixed with the prompt's tokens (stable across processes)."""
    digest = hashlib.blake2b(f"{seed}:{','.join(map(str, prompt_ids))}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & (2**63 - 1)


def _resolve_device(device: str) -> str:
    if device != "auto":
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"
