"""Where the target and draft models come from.

- `layer_skip_draft(target, n_layers)`: self-speculative draft, the target's first `n_layers`
  decoder layers + its final norm + its lm_head (weights shared, no copy, no training). It shares
  the tokenizer by construction: the fallback when no trained draft exists.
- `tiny_llama(...)`: a randomly initialised Llama with a small vocabulary, for exactness tests and
  the loopback load test (fast; its outputs are noise, never presented as model output).
- `load_target` / `load_draft`: resolve a configured source to a model object.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch


def layer_skip_draft(target, n_layers: int):
    """A LlamaForCausalLM-like draft made of the target's first `n_layers` layers (shared weights)."""
    import copy

    from transformers import AutoModelForCausalLM

    total = target.config.num_hidden_layers
    if not 1 <= n_layers < total:
        raise ValueError(f"layer-skip draft needs 1 <= n_layers < {total} (the target's depth), got {n_layers}")
    config = copy.deepcopy(target.config)
    config.num_hidden_layers = n_layers
    if getattr(config, "layer_types", None):
        config.layer_types = list(config.layer_types)[:n_layers]
    with torch.device("meta"):  # no throw-away random weights: every module is replaced by the target's
        draft = AutoModelForCausalLM.from_config(config)
    draft.model.embed_tokens = target.model.embed_tokens
    draft.model.layers = torch.nn.ModuleList(list(target.model.layers[:n_layers]))
    draft.model.norm = target.model.norm
    draft.model.rotary_emb = target.model.rotary_emb
    draft.lm_head = target.lm_head
    return draft.eval()


def tiny_llama(vocab_size: int = 64, hidden: int = 32, layers: int = 2, heads: int = 4, seed: int = 0,
               max_positions: int = 512, dtype: torch.dtype = torch.float64):
    """A random Llama small enough for thousands of decode steps per second (tests, load test)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                         max_position_embeddings=max_positions, tie_word_embeddings=False,
                         # std 0.3 (not 0.02): peaked, input-dependent logits, so greedy argmax ties are
                         # rare and a layer-skip draft agrees with the target only part of the time.
                         initializer_range=0.3, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model = LlamaForCausalLM(config)
    return model.to(dtype).eval()


def load_target(source: str = "smollm2", path: Optional[str] = None, dtype: str = "float32", device: str = "cpu"):
    """The model being served: SmolLM2-135M-Instruct, a quantized folder, or a saved HF folder."""
    if source == "smollm2":
        from components.lm.smollm2 import load_model

        return load_model(dtype=dtype, device=device)
    if source == "quantized":
        if not path:
            raise ValueError("target source 'quantized' needs a folder path (the quantize flow's output)")
        from components.quant import load_quantized  # the quantize flow's loader

        return load_quantized(path).to(device).eval()
    if source == "hf_folder":
        from components.lm.smollm2 import load_model

        if not path or not Path(path).exists():
            raise FileNotFoundError(f"target source 'hf_folder' needs an existing folder, got {path!r}")
        return load_model(dtype=dtype, device=device, folder=path)
    if source == "tiny_random":
        return tiny_llama(vocab_size=512, hidden=64, layers=4, dtype=torch.float32)
    raise ValueError(f"unknown target source {source!r}; use smollm2, quantized, hf_folder or tiny_random")


def load_draft(source: str, target, path: Optional[str] = None, layers: int = 4, device: str = "cpu"):
    """The draft: a trained GPT folder, the target's first layers, or none (autoregressive)."""
    if source == "none":
        return None
    if source == "layerskip":
        return layer_skip_draft(target, layers)
    if source == "gpt_folder":
        from components.lm.model import GPT

        if not path or not Path(path).exists():
            raise FileNotFoundError(f"draft source 'gpt_folder' needs the folder of a saved GPT, got {path!r}")
        return GPT.from_folder(path, device=device)
    if source == "tiny_random":
        return tiny_llama(vocab_size=target.config.vocab_size, hidden=32, layers=1, seed=1, dtype=torch.float32)
    raise ValueError(f"unknown draft source {source!r}; use layerskip, gpt_folder, tiny_random or none")
