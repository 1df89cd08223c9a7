"""Where the target and draft models come from.

- `layer_skip_draft(target, n_layers)`: self-speculative draft, the target's first `n_layers`
  decoder layers + its final norm + its lm_head (weights shared, no copy, no training). It shares
  the tokenizer by construction: the fallback when no trained draft exists.
- `tiny_llama(...)`: a randomly initialised Llama with a small vocabulary, for exactness tests and
  the loopback load test (fast; its outputs are noise, never presented as model output).
- `native_first_layers`, `native_requantized`: drafts built from the native Q4_1 target (its first
  layers; all of it requantized to fewer bits), sharing or re-packing its weights.
- `exit_adapter.ExitAdapterDraft`: the native target's first layers + a trained adapter (Kangaroo style).
- `eagle_head.EagleHeadDraft`: one trained decoder layer over the native target's last hidden state (EAGLE).
- `PromptLookupDraft` (lookup.py): n-gram copy from the context, no weights.
- `load_target` / `load_draft`: resolve a configured source to a model object.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Optional

import torch
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from components.decoding.cache import CausalLM, wrap_model
from components.decoding.config import DRAFT_SOURCES, TARGET_SOURCES
from components.decoding.eagle_head import EagleHeadDraft, load_eagle_head
from components.decoding.exit_adapter import ExitAdapterDraft, load_exit_adapter
from components.decoding.lookup import PromptLookupDraft
from components.lm import smollm2
from components.lm.model import GPT
from components.quant import load_quantized  # the quantize flow's loader
from components.quant.native import LeanLayer, LeanLlama, load_native_smollm2
from components.quant.packed_matrix import PackedMatrix


def layer_skip_draft(target, n_layers: int):
    """A LlamaForCausalLM-like draft made of the target's first `n_layers` layers (shared weights)."""
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


def gpt_as_hf(gpt):
    """The project's GPT as a transformers `GPT2LMHeadModel` with the same weights and outputs.

    The GPT is GPT-2's architecture (pre-LayerNorm blocks, learned positions, exact GELU, tied head)
    without biases, so the copy has zero biases and q/k/v fused into GPT-2's `c_attn` (a Conv1D:
    weights stored [in, out]). transformers' `generate(assistant_model=...)` needs a transformers
    model: this lets the benchmark's HF assisted-generation row use the same trained draft.
    """
    cfg = gpt.config
    config = GPT2Config(
        vocab_size=cfg.vocab_size,
        n_positions=cfg.block_size,
        n_embd=cfg.n_embd,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        activation_function="gelu",
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        layer_norm_epsilon=1e-5,
        tie_word_embeddings=cfg.tie_embeddings,
        bos_token_id=None,
        eos_token_id=None,
    )
    hf = GPT2LMHeadModel(config).to(gpt.wte.weight.dtype)  # copy at the GPT's precision, not float32's
    state = {
        "transformer.wte.weight": gpt.wte.weight,
        "transformer.wpe.weight": gpt.wpe.weight,
        "transformer.ln_f.weight": gpt.ln_f.weight,
        "lm_head.weight": gpt.lm_head.weight,
    }
    for i, block in enumerate(gpt.blocks):
        prefix, attn = f"transformer.h.{i}.", block.attn
        state[prefix + "ln_1.weight"], state[prefix + "ln_2.weight"] = block.ln_1.weight, block.ln_2.weight
        state[prefix + "attn.c_attn.weight"] = torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]).T
        state[prefix + "attn.c_proj.weight"] = attn.c_proj.weight.T
        state[prefix + "mlp.c_fc.weight"] = block.mlp.c_fc.weight.T
        state[prefix + "mlp.c_proj.weight"] = block.mlp.c_proj.weight.T
        if cfg.bias:
            for name, linear in (
                ("attn.c_proj", attn.c_proj),
                ("mlp.c_fc", block.mlp.c_fc),
                ("mlp.c_proj", block.mlp.c_proj),
            ):
                state[prefix + name + ".bias"] = linear.bias
            state[prefix + "attn.c_attn.bias"] = torch.cat([attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias])
            for name, norm in (("ln_1", block.ln_1), ("ln_2", block.ln_2)):
                state[prefix + name + ".bias"] = norm.bias
    if cfg.bias:
        state["transformer.ln_f.bias"] = gpt.ln_f.bias
    with torch.no_grad():
        for name, param in hf.named_parameters():
            param.copy_(state[name] if name in state else torch.zeros_like(param))  # absent: a bias of 0
    return hf.to(gpt.wte.weight.device).eval()


def tiny_llama(
    vocab_size: int = 64,
    hidden: int = 32,
    layers: int = 2,
    heads: int = 4,
    seed: int = 0,
    max_positions: int = 512,
    dtype: torch.dtype = torch.float64,
    kv_heads: Optional[int] = None,
    tie_embeddings: bool = False,
):
    """A random Llama small enough for thousands of decode steps per second (tests, load test)."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads or heads,  # fewer than heads: grouped-query attention, as SmolLM2
        max_position_embeddings=max_positions,
        tie_word_embeddings=tie_embeddings,
        # std 0.3 (not 0.02): peaked, input-dependent logits, so greedy argmax ties are
        # rare and a layer-skip draft agrees with the target only part of the time.
        initializer_range=0.3,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    model = LlamaForCausalLM(config)
    return model.to(dtype).eval()


def load_target(
    source: str = "smollm2_q4_native", path: Optional[str] = None, dtype: str = "float32", device: str = "cpu"
):
    """The model being served: native Q4_1 SmolLM2, its fp32 copy, a quantized folder, a saved HF folder, tiny."""
    if source == "smollm2_q4_native":
        return native_causal_lm(load_native_smollm2(path))
    if source == "smollm2":
        return smollm2.load_model(dtype=dtype, device=device)
    if source == "quantized":
        if not path:
            raise ValueError("target source 'quantized' needs a folder path (the quantize flow's output)")
        return load_quantized(path).to(device).eval()
    if source == "hf_folder":
        if not path or not Path(path).exists():
            raise FileNotFoundError(f"target source 'hf_folder' needs an existing folder, got {path!r}")
        return smollm2.load_model(dtype=dtype, device=device, folder=path)
    if source == "tiny_random":
        return tiny_llama(vocab_size=512, hidden=64, layers=4, dtype=torch.float32)
    raise ValueError(f"unknown target source {source!r}; use one of {', '.join(TARGET_SOURCES)}")


class NativeCausalLM(CausalLM):
    """A `components.quant.native.LeanLlama` as the engine's CausalLM (its cache rolls back by length)."""

    def __init__(self, lean: LeanLlama):
        self.lean, self.name = lean, lean.name
        self.vocab_size, self.max_context, self.device = lean.vocab_size, lean.max_context, lean.device

    def forward(self, ids, cache):
        return self.lean.forward(ids, cache)

    def forward_states(self, ids, cache):
        return self.lean.forward_states(ids, cache)

    def crop(self, cache, length):
        return self.lean.crop(cache, length)

    @staticmethod
    def cache_length(cache):
        return 0 if cache is None else cache.length


def native_causal_lm(model: LeanLlama) -> NativeCausalLM:
    return NativeCausalLM(model)


def native_first_layers(target: NativeCausalLM, n_layers: int) -> NativeCausalLM:
    """The native target's first `n_layers` layers + its final norm and head (shared packed weights)."""
    lean = target.lean
    total = lean.shape.layers
    if not 1 <= n_layers < total:
        raise ValueError(f"layer-skip draft needs 1 <= n_layers < {total} (the target's depth), got {n_layers}")
    shape = dataclasses.replace(lean.shape, layers=n_layers)
    draft = LeanLlama(shape, lean.layers[:n_layers], lean.final_norm, lean.head, f"{lean.name}-L{n_layers}", lean.embed)
    return NativeCausalLM(draft)


def native_requantized(target: NativeCausalLM, bits: int) -> NativeCausalLM:
    """The native target with every projection and the head requantized to `bits` (RTN, groups of 32,
    fp16 scale and minimum: bits + 1 bits/weight): the quantized target at a lower budget, as a draft."""
    lean = target.lean

    def low(matrix):
        return PackedMatrix.quantize_asymmetric(matrix.dequantize(), bits)

    layers = [
        LeanLayer(layer.attn_norm, low(layer.qkv), low(layer.o), layer.ffn_norm, low(layer.gate_up), low(layer.down))
        for layer in lean.layers
    ]
    head = low(lean.head)
    for matrix in [head] + [m for layer in layers for m in (layer.qkv, layer.o, layer.gate_up, layer.down)]:
        matrix.act_levels = 1  # a draft: int8 activations alone are enough (the verdict keeps the output exact)
    return NativeCausalLM(LeanLlama(lean.shape, layers, lean.final_norm, head, f"{lean.name}-rtn{bits}"))


def _check_trained_draft_source(source: str, whose: str, target, folder: Optional[str]) -> None:
    """A draft_train draft reads the native target's states and needs the folder the flow wrote."""
    if not isinstance(target, NativeCausalLM):
        raise ValueError(f"draft source '{source}' needs the native target (models.target=smollm2_q4_native)")
    if not folder:
        raise FileNotFoundError(f"draft source '{source}' needs the {whose} folder (draft_train's output)")


def native_exit_adapter(target: NativeCausalLM, folder: Optional[str]) -> ExitAdapterDraft:
    """The native target's first layers + the exit adapter saved in `folder` (the layers it was trained on)."""
    _check_trained_draft_source("exit_adapter", "adapter's", target, folder)
    adapter, meta = load_exit_adapter(folder)
    if adapter.hidden != target.lean.shape.hidden or int(meta["layers"]) >= target.lean.shape.layers:
        raise ValueError(
            f"exit-adapter draft: {folder} was trained for hidden size {adapter.hidden} at layer {meta['layers']}, "
            f"the target has hidden size {target.lean.shape.hidden} and {target.lean.shape.layers} layers"
        )
    return ExitAdapterDraft(target.lean, adapter, int(meta["layers"]))


def native_eagle_head(target: NativeCausalLM, folder: Optional[str]) -> EagleHeadDraft:
    """The EAGLE head saved in `folder` over the native target (its embedding, head and hidden states)."""
    _check_trained_draft_source("eagle_head", "head's", target, folder)
    head, _ = load_eagle_head(folder)
    try:
        return EagleHeadDraft(target.lean, head)
    except ValueError as err:
        raise ValueError(f"eagle-head draft: {folder}: {err}") from err


def load_draft(
    source: str, target, path: Optional[str] = None, layers: int = 4, device: str = "cpu", ngram: int = 3, bits: int = 2
):
    """The draft: prompt lookup, the target's first layers, the target requantized, the target's first layers
    + a trained exit adapter (folder `path`), a trained EAGLE head (folder `path`), a trained GPT folder,
    tiny random, or none (autoregressive)."""
    if source == "none":
        return None
    if source == "prompt_lookup":
        return PromptLookupDraft(wrap_model(target).vocab_size, ngram)
    if source == "layerskip":
        return (
            native_first_layers(target, layers)
            if isinstance(target, NativeCausalLM)
            else layer_skip_draft(target, layers)
        )
    if source == "requantized":
        if not isinstance(target, NativeCausalLM):
            raise ValueError("draft source 'requantized' needs the native target (models.target=smollm2_q4_native)")
        return native_requantized(target, bits)
    if source == "exit_adapter":
        return native_exit_adapter(target, path)
    if source == "eagle_head":
        return native_eagle_head(target, path)
    if source == "gpt_folder":
        if not path or not Path(path).exists():
            raise FileNotFoundError(f"draft source 'gpt_folder' needs the folder of a saved GPT, got {path!r}")
        return GPT.from_folder(path, device=device)
    if source == "tiny_random":
        vocab = wrap_model(target).vocab_size
        return tiny_llama(vocab_size=vocab, hidden=32, layers=1, seed=1, dtype=torch.float32)
    raise ValueError(f"unknown draft source {source!r}; use one of {', '.join(DRAFT_SOURCES)}")
