"""The embedded backend: SmolLM2-135M-Instruct run in-process with transformers, fully offline.

The weights load once per process (shared by every EmbeddedLLM, guarded by a lock) and decoding is
a manual KV-cached loop, so streaming is real (one piece per token), stop sequences end generation
early (the model does not waste time past a stop), and a deadline can be checked between tokens.
Greedy by default; `temperature > 0` samples with a seeded generator.
"""
from __future__ import annotations

import threading
import time
from typing import Iterator, Sequence

from components.llm.base import LLM, Completion, LLMTimeoutError, Messages, cut_at_stop

_MODELS: dict[tuple[str, str], tuple[object, object]] = {}
_load_lock = threading.Lock()


def load_smollm2(dtype: str = "float32", device: str = "cpu"):
    """(model, tokenizer), loaded at most once per process for each (dtype, device)."""
    key = (dtype, device)
    with _load_lock:
        if key not in _MODELS:
            from components.lm.smollm2 import load_model, load_tokenizer

            _MODELS[key] = (load_model(dtype=dtype, device=device), load_tokenizer())
        return _MODELS[key]


class EmbeddedLLM(LLM):
    name = "embedded"

    def __init__(self, model: str = "SmolLM2-135M-Instruct", dtype: str = "float32", device: str = "cpu",
                 timeout_s: float | None = None, seed: int = 0, *, cache=None,
                 max_concurrency: int | None = 1) -> None:
        super().__init__(cache=cache, max_concurrency=max_concurrency)
        if model != "SmolLM2-135M-Instruct":
            raise ValueError(f"the embedded backend ships only SmolLM2-135M-Instruct, not {model!r}; "
                             "use llm=openai to reach another model")
        self.model = model
        self.dtype, self.device = dtype, _resolve_device(device)
        self.timeout_s = timeout_s  # wall-clock budget of one request; None: unbounded
        self.seed = seed
        self._model, self._tokenizer = load_smollm2(self.dtype, self.device)

    def cache_identity(self) -> dict:
        return {**super().cache_identity(), "dtype": self.dtype, "seed": self.seed}

    def _chat(self, messages: Messages, max_tokens: int, temperature: float, stop: Sequence[str] | None) -> Completion:
        stats = Completion("", model=self.model)
        text = "".join(self._stream(messages, max_tokens, temperature, stop, stats))
        stats.text = text
        return stats

    def _stream(self, messages: Messages, max_tokens: int, temperature: float, stop: Sequence[str] | None,
                stats: Completion) -> Iterator[str]:
        import torch

        tok = self._tokenizer
        prompt_ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                             return_dict=True)["input_ids"]
        stats.prompt_tokens = len(prompt_ids)
        stats.model = self.model
        stats.finish_reason = "length"
        generator = torch.Generator().manual_seed(self.seed) if temperature > 0 else None
        deadline = time.monotonic() + self.timeout_s if self.timeout_s else None
        generated: list[int] = []
        shown = ""  # text already yielded (decoded from all generated ids: multi-byte tokens stay whole)
        input_ids = torch.tensor([prompt_ids], device=self.device)
        past = None
        with torch.inference_mode():
            for _ in range(max_tokens):
                if deadline is not None and time.monotonic() > deadline:
                    raise LLMTimeoutError(f"embedded generation exceeded timeout_s={self.timeout_s} "
                                          f"after {len(generated)} tokens")
                # `cache=` is transformers 5's name for the KV cache (was past_key_values).
                out = self._model(input_ids=input_ids, cache=past, use_cache=True, logits_to_keep=1)
                past = out.cache
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
                piece, shown = text[len(shown):], text
                if piece:
                    yield piece
                if stop and cut_at_stop(text, stop)[1]:
                    stats.finish_reason = "stop"
                    break


def _resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
