"""SmolLM2-135M-Instruct's tokenizer (49152 tokens), loaded offline from the cached conversion.

Models trained here use it so the draft shares the target's vocabulary. Only the fast `tokenizers`
library is needed once the cache exists (no transformers import, ~0.1 s).
"""

from __future__ import annotations

import functools

from tokenizers import Tokenizer

from components.lm import smollm2

END_OF_TEXT = "<|endoftext|>"  # separates documents in the corpus


@functools.lru_cache(maxsize=1)
def load_tokenizer():
    """A `tokenizers.Tokenizer` for SmolLM2 (converts the packaged GGUF once if the cache is missing)."""

    folder = smollm2.cache_dir()
    if not (folder / "tokenizer.json").exists():
        folder = smollm2.ensure_safetensors_cache()
    return Tokenizer.from_file(str(folder / "tokenizer.json"))


def end_of_text_id(tokenizer) -> int:
    token_id = tokenizer.token_to_id(END_OF_TEXT)
    if token_id is None:
        raise ValueError(f"tokenizer has no {END_OF_TEXT!r} token")
    return token_id


def tokenizer_name() -> str:
    return "smollm2-135m-instruct"
