"""SmolLM2 decoding straight from its own GGUF blocks through the integer kernel, no fp32 copy.

`load_native_smollm2()` reads the packaged Q4_1 GGUF with the `gguf` package: the 210 projection
matrices (Q4_1, 4.5 bits/weight) go into `PackedMatrix` exactly (same codes, same fp16 d and m), the
tied embedding / LM head (Q8_0 in the file, 8.5 bits/weight) too; `head_bits=4` or `2` requantizes
the head to asymmetric groups of 32 instead (smaller, no longer the file's numbers). q and k rows
are put back in transformers' order (llama.cpp's converter permutes them for its rotary layout; a
row permutation moves whole rows of codes, nothing is requantized), so the model computes what
transformers' dequantized copy computes, up to the int8 activations.

`LeanLlama` is the forward over q|k|v (rows stacked), o, gate|up and down per layer on a
preallocated KV cache. Over packed matrices the whole forward is one compiled call
(`int_kernel.LeanPlan`: norms, products, rotary, attention and the head in one OpenMP region, the GIL
released); otherwise (the fp32 copy, `LeanLlama.from_hf`, or `fused = False`) it is torch ops (RMSNorm,
rotary, SDPA with grouped KV heads) around one product per matrix. Its interface is the
one components/decoding drives: `forward(ids [1, T], cache) -> (logits [1, T, V], cache)`,
`crop(cache, n)`, `cache_length(cache)`; a cache is a `KVCache` that rolls back by length.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from components.quant import int_kernel
from components.quant.packed_matrix import PackedMatrix


class DenseMatrix:
    """A float32 weight with PackedMatrix's interface (the fp32 reference path)."""

    def __init__(self, weight: torch.Tensor):
        self.weight = weight.detach().float().contiguous()
        self.out_features, self.in_features = self.weight.shape

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        return self.weight[ids]

    def dequantize(self) -> torch.Tensor:
        return self.weight

    def nbytes(self) -> int:
        return self.weight.numel() * 4


@dataclass
class LlamaShape:
    """A Llama's sizes, read from the model's own metadata (GGUF fields or the transformers config)."""

    layers: int
    hidden: int
    intermediate: int  # the MLP's width
    heads: int
    kv_heads: int  # fewer than heads: grouped-query attention
    head_dim: int
    vocab: int
    rope_theta: float
    eps: float  # RMSNorm's epsilon
    max_positions: int


@dataclass
class LeanLayer:
    attn_norm: torch.Tensor
    qkv: object  # q | k | v rows: PackedMatrix or DenseMatrix
    o: object
    ffn_norm: torch.Tensor
    gate_up: object  # gate | up rows
    down: object


class KVCache:
    """Keys and values of every layer [layers, kv_heads, capacity, head_dim]; `length` positions are valid."""

    def __init__(self, shape: LlamaShape, capacity: int = 256):
        self.shape = shape
        self.length = 0
        self.k = torch.zeros(shape.layers, shape.kv_heads, capacity, shape.head_dim)
        self.v = torch.zeros_like(self.k)

    def reserve(self, total: int) -> None:
        cap = self.k.shape[2]
        if total <= cap:
            return
        new = max(total, 2 * cap)
        grow = (0, 0, 0, new - cap)
        self.k = F.pad(self.k, grow)
        self.v = F.pad(self.v, grow)


class LeanLlama:
    """A Llama decoder (SmolLM2's architecture) over matrices with `.matmul`; see the module doc.

    Built with `head=None` (and its `embed` given) it is an early exit: `forward` returns the residual
    stream after its layers [1, T, hidden], before any final norm (what an exit adapter reads).
    """

    def __init__(
        self, shape: LlamaShape, layers: list[LeanLayer], final_norm: torch.Tensor, head, name: str, embed=None
    ):
        self.shape, self.layers, self.final_norm, self.head, self.name = shape, layers, final_norm, head, name
        self.embed = embed if embed is not None else head  # tied by default (SmolLM2)
        if self.embed is None:
            raise ValueError(f"{name}: a LeanLlama without a head needs its embedding (embed=...)")
        self.vocab_size = shape.vocab
        self.max_context = shape.max_positions
        self.device = torch.device("cpu")
        self.cos, self.sin = rope_tables(shape)
        self.fused = True  # False: the torch path even where the compiled forward could run (comparisons)
        self._plan = None  # the compiled forward, built on first use (see `_compiled_plan`)
        self._split = None  # forward_states' two parts (the layers without the head; the head alone), on first use

    # --- construction ------------------------------------------------------------------------------
    @classmethod
    def from_hf(cls, model, name: str = "fp32") -> LeanLlama:
        """The fp32 copy (a transformers LlamaForCausalLM) on the same forward, dense matrices."""
        cfg = model.config
        shape = LlamaShape(
            cfg.num_hidden_layers,
            cfg.hidden_size,
            cfg.intermediate_size,
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.hidden_size // cfg.num_attention_heads,
            cfg.vocab_size,
            float(_rope_theta(cfg)),
            float(cfg.rms_norm_eps),
            int(cfg.max_position_embeddings),
        )
        layers = []
        for block in model.model.layers:
            a, m = block.self_attn, block.mlp
            layers.append(
                LeanLayer(
                    block.input_layernorm.weight.detach().float(),
                    DenseMatrix(torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight])),
                    DenseMatrix(a.o_proj.weight),
                    block.post_attention_layernorm.weight.detach().float(),
                    DenseMatrix(torch.cat([m.gate_proj.weight, m.up_proj.weight])),
                    DenseMatrix(m.down_proj.weight),
                )
            )
        head = DenseMatrix(model.lm_head.weight)
        tied = model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
        return cls(
            shape,
            layers,
            model.model.norm.weight.detach().float(),
            head,
            name,
            None if tied else DenseMatrix(model.model.embed_tokens.weight),
        )

    def new_cache(self) -> KVCache:
        return KVCache(self.shape)

    def weight_bytes(self) -> int:
        """Bytes of weights one decode step reads: every matrix once (the embedding row is negligible)."""
        total = self.head.nbytes() if self.head is not None else 0
        for layer in self.layers:
            total += sum(m.nbytes() for m in (layer.qkv, layer.o, layer.gate_up, layer.down))
        return total

    # --- the decoding interface --------------------------------------------------------------------
    @torch.no_grad()
    def forward(self, ids: torch.Tensor, cache: KVCache | None = None) -> tuple[torch.Tensor, KVCache]:
        """Logits [1, T, V] of `ids` [1, T] (or [T]) after the cached positions; the cache is extended in place.
        Without a head: the residual stream after the last layer [1, T, hidden] instead."""
        ids = ids.reshape(-1)
        cache = cache if cache is not None else self.new_cache()
        sh = self.shape
        T, pos = ids.numel(), cache.length
        if pos + T > sh.max_positions:
            raise ValueError(f"{self.name}: {pos + T} positions exceed the context of {sh.max_positions}")
        cache.reserve(pos + T)
        x = self.embed.rows(ids).float()
        plan = self._compiled_plan()
        if plan is not None:
            logits = plan.forward(x.contiguous(), pos, cache.k, cache.v)
            cache.length = pos + T
            return logits.unsqueeze(0), cache
        kernels = int_kernel.load() if T == 1 else None
        if kernels is not None:  # one position: attention in one compiled call per layer
            return self._step(x, cache, pos, kernels.attend_one)
        cos, sin = self.cos[pos : pos + T], self.sin[pos : pos + T]
        for li, layer in enumerate(self.layers):
            x = decoder_layer(x, layer, cache.k[li], cache.v[li], pos, cos, sin, sh)
        cache.length = pos + T
        return self._read_out(x).unsqueeze(0), cache

    @torch.no_grad()
    def forward_states(
        self, ids: torch.Tensor, cache: KVCache | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, KVCache]:
        """`forward`'s logits [1, T, V] and the states its head reads [T, hidden] (the last layer's residual
        stream after the final norm: what an EAGLE-style draft extends). The logits are `forward`'s own
        numbers: compiled, the layers run as one call without the head, then the head as a plan of no
        layers (the same norm and product code, on the same residual stream); on the torch path, the same
        layers and `_read_out`."""
        if self.head is None:
            raise ValueError(f"{self.name}: forward_states needs a model with a head")
        if self._split is None:
            shape = dataclasses.replace(self.shape, layers=0)
            trunk = LeanLlama(self.shape, self.layers, self.final_norm, None, f"{self.name}-trunk", self.embed)
            trunk.fused = self.fused
            self._split = (trunk, LeanLlama(shape, [], self.final_norm, self.head, f"{self.name}-head", self.embed))
        trunk, head_only = self._split
        x, cache = trunk.forward(ids, cache)
        x = x[0]
        plan = head_only._compiled_plan() if self._compiled_plan() is not None else None
        if plan is not None:
            empty = torch.zeros(0, self.shape.kv_heads, x.shape[0], self.shape.head_dim)
            logits = plan.forward(x.contiguous(), 0, empty, empty)
        else:
            logits = self._read_out(x)
        states = F.rms_norm(x, (self.shape.hidden,), self.final_norm.float(), self.shape.eps)
        return logits.unsqueeze(0), states, cache

    __call__ = forward

    def _compiled_plan(self):
        """The whole forward as one compiled call (`int_kernel.LeanPlan`) when every matrix is a
        PackedMatrix and the kernel builds here; None otherwise (the torch path below runs instead).
        Built on the first forward: the matrices and their `act_levels` are read then."""
        if not self.fused or self._plan is False:
            return None
        if self._plan is None:
            self._plan = _build_plan(self) or False
        return self._plan or None

    def _step(self, x: torch.Tensor, cache: KVCache, pos: int, attend) -> tuple[torch.Tensor, KVCache]:
        """One position (T = 1): the same computation as `forward`, attention in one compiled call per layer."""
        sh = self.shape
        cos, sin = self.cos[pos], self.sin[pos]
        eps, inter = sh.eps, sh.intermediate
        for li, layer in enumerate(self.layers):
            qkv = layer.qkv.matmul(F.rms_norm(x, (sh.hidden,), layer.attn_norm, eps))
            x = x + layer.o.matmul(attend(qkv, cos, sin, cache.k[li], cache.v[li], pos, sh.heads, sh.kv_heads))
            gu = layer.gate_up.matmul(F.rms_norm(x, (sh.hidden,), layer.ffn_norm, eps))
            x = x + layer.down.matmul(F.silu(gu[:, :inter]) * gu[:, inter:])
        cache.length = pos + 1
        return self._read_out(x).unsqueeze(0), cache

    def _read_out(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the residual stream x [T, hidden]; x itself for a model without a head."""
        if self.head is None:
            return x
        return self.head.matmul(F.rms_norm(x, (self.shape.hidden,), self.final_norm, self.shape.eps))

    def crop(self, cache: KVCache | None, length: int) -> KVCache | None:
        if cache is not None and length < cache.length:
            cache.length = max(0, length)
        return cache

    @staticmethod
    def cache_length(cache: KVCache | None) -> int:
        return 0 if cache is None else cache.length

    @torch.no_grad()
    def greedy(self, prompt: list[int], new_tokens: int) -> list[int]:
        """Greedy continuation of `prompt` (token ids): the `new_tokens` ids it generates."""
        logits, cache = self.forward(torch.tensor(prompt))
        out = []
        for _ in range(new_tokens):
            nxt = int(logits[0, -1].argmax())
            out.append(nxt)
            logits, cache = self.forward(torch.tensor([nxt]), cache)
        return out


def _build_plan(model: LeanLlama):
    """`int_kernel`'s LeanPlan over the model's matrices and norms, or None where it cannot run."""
    matrices = [m for layer in model.layers for m in (layer.qkv, layer.o, layer.gate_up, layer.down)]
    matrices += [model.head] if model.head is not None else []  # no head: the plan returns the residual stream
    module = int_kernel.load()
    if module is None or not all(isinstance(m, PackedMatrix) for m in matrices):
        return None
    sh = model.shape
    plan = module.LeanPlan(
        int_kernel.best_path(),
        sh.layers,
        sh.hidden,
        sh.intermediate,
        sh.heads,
        sh.kv_heads,
        sh.head_dim,
        sh.vocab,
        sh.eps,
        model.cos,
        model.sin,
    )
    for m in matrices:
        plan.add_matrix(*m.kernel_arguments())
    for layer in model.layers:
        plan.add_norm(layer.attn_norm.float().contiguous())
        plan.add_norm(layer.ffn_norm.float().contiguous())
    if model.head is not None:
        plan.add_norm(model.final_norm.float().contiguous())
    return plan


def rope_tables(shape: LlamaShape) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary cos and sin [max_positions, head_dim] of a Llama of this shape (transformers' layout)."""
    half = shape.head_dim // 2
    inv_freq = 1.0 / (shape.rope_theta ** (torch.arange(0, half, dtype=torch.float32) * 2 / shape.head_dim))
    angles = torch.outer(torch.arange(shape.max_positions, dtype=torch.float32), inv_freq)
    angles = torch.cat([angles, angles], -1)
    return angles.cos(), angles.sin()


def decoder_layer(
    x: torch.Tensor,
    layer: LeanLayer,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    pos: int,
    cos: torch.Tensor,
    sin: torch.Tensor,
    sh: LlamaShape,
) -> torch.Tensor:
    """One Llama decoder layer (torch ops around one product per matrix) over x [T, hidden] at positions
    pos..pos+T-1; its keys and values go into k_cache / v_cache [kv_heads, capacity, head_dim] there.
    `cos`/`sin`: the rotary rows of those positions. Differentiable when the matrices' products are
    (an EAGLE head trains its layer through it)."""
    T = x.shape[0]
    nq, nkv, hd = sh.heads * sh.head_dim, sh.kv_heads * sh.head_dim, sh.head_dim
    mask = None
    if T > 1:  # query i sees every cached position and the block's positions up to its own
        mask = torch.arange(pos + T)[None, :] <= (pos + torch.arange(T))[:, None]
    h = _rms_norm(x, layer.attn_norm, sh.eps)
    qkv = layer.qkv.matmul(h)
    q = qkv[:, :nq].reshape(T, sh.heads, hd).transpose(0, 1)
    k = qkv[:, nq : nq + nkv].reshape(T, sh.kv_heads, hd).transpose(0, 1)
    v = qkv[:, nq + nkv :].reshape(T, sh.kv_heads, hd).transpose(0, 1)
    q = q * cos + _rotate_half(q) * sin
    k = k * cos + _rotate_half(k) * sin
    k_cache[:, pos : pos + T] = k
    v_cache[:, pos : pos + T] = v
    keys, values = k_cache[:, : pos + T], v_cache[:, : pos + T]
    attn = F.scaled_dot_product_attention(
        q.unsqueeze(0), keys.unsqueeze(0), values.unsqueeze(0), attn_mask=mask, enable_gqa=True
    )
    x = x + layer.o.matmul(attn[0].transpose(0, 1).reshape(T, nq))
    h = _rms_norm(x, layer.ffn_norm, sh.eps)
    gu = layer.gate_up.matmul(h)
    return x + layer.down.matmul(F.silu(gu[:, : sh.intermediate]) * gu[:, sh.intermediate :])


def _rope_theta(cfg) -> float:
    params = getattr(cfg, "rope_parameters", None) or {}
    return params.get("rope_theta", getattr(cfg, "rope_theta", 10000.0))


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), -1)


# --- the GGUF file -------------------------------------------------------------------------------


def unpermute_rows(n_rows: int, n_head: int) -> torch.Tensor:
    """Row order that undoes llama.cpp's rotary permutation of q/k: hf_rows = gguf_rows[order]."""
    idx = torch.arange(n_rows)
    return idx.reshape(n_head, n_rows // n_head // 2, 2).transpose(1, 2).reshape(n_rows)


def _field(reader, key: str):
    field = reader.fields[key]
    return field.parts[field.data[0]][0]


def _blocks(tensor, rows: torch.Tensor | None = None) -> tuple[np.ndarray, str, int, int]:
    """(raw block bytes [out, bytes per row], type, out, in) of a GGUF matrix, rows reordered if asked."""
    in_f, out_f = (int(v) for v in tensor.shape)
    kind = tensor.tensor_type.name
    if kind not in ("Q4_1", "Q8_0"):
        raise ValueError(f"GGUF tensor {tensor.name}: type {kind} is not Q4_1 or Q8_0")
    data = np.asarray(tensor.data).reshape(out_f, -1)
    return (data[rows.numpy()] if rows is not None else data), kind, out_f, in_f


def _matrix(*parts: tuple[np.ndarray, str, int, int]) -> PackedMatrix:
    """One PackedMatrix of the rows of several GGUF matrices of one type (whole rows of blocks move)."""
    kinds = {p[1] for p in parts}
    if len(kinds) != 1 or len({p[3] for p in parts}) != 1:
        raise ValueError(f"cannot stack GGUF matrices of types {sorted(kinds)} / inputs {[p[3] for p in parts]}")
    data = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
    out_f, in_f = sum(p[2] for p in parts), parts[0][3]
    if parts[0][1] == "Q4_1":
        return PackedMatrix.from_gguf_q4_1(data, out_f, in_f)
    return PackedMatrix.from_gguf_q8_0(data, out_f, in_f)


def load_native_smollm2(path: str | None = None, head_bits: int | None = None, act_levels: int = 2) -> LeanLlama:
    """SmolLM2-135M from its GGUF (the packaged file by default) as a `LeanLlama` over `PackedMatrix`es.

    head_bits: None keeps the file's Q8_0 embedding / LM head; 4 or 2 requantize it (asymmetric groups of 32).
    act_levels: 2 (default) feeds the kernel int8 activations plus their int8 residual; 1: int8 only
    (faster, but SmolLM2's greedy choice then flips on ~7% of positions, see docs/flows/quantize.md).
    """
    import gguf  # noqa: PLC0415  (reason: optional heavy dependency, only to read a GGUF)

    if path is None:
        from components.lm import smollm2  # noqa: PLC0415  (reason: start-up cost: transformers)

        path = str(smollm2.gguf_path())
    if head_bits not in (None, 2, 4, 8):
        raise ValueError(f"head_bits must be None (the file's Q8_0), 2, 4 or 8, got {head_bits!r}")
    reader = gguf.GGUFReader(path)
    tensors = {t.name: t for t in reader.tensors}
    arch = str(bytes(reader.fields["general.architecture"].parts[-1]), "utf-8")
    if arch != "llama":
        raise ValueError(f"{path}: architecture {arch!r}, expected llama")
    n_layers = int(_field(reader, "llama.block_count"))
    heads, kv_heads = (
        int(_field(reader, "llama.attention.head_count")),
        int(_field(reader, "llama.attention.head_count_kv")),
    )
    hidden = int(_field(reader, "llama.embedding_length"))
    shape = LlamaShape(
        n_layers,
        hidden,
        int(_field(reader, "llama.feed_forward_length")),
        heads,
        kv_heads,
        hidden // heads,
        int(tensors["token_embd.weight"].shape[1]),
        float(_field(reader, "llama.rope.freq_base")),
        float(_field(reader, "llama.attention.layer_norm_rms_epsilon")),
        int(_field(reader, "llama.context_length")),
    )

    def norm(name: str) -> torch.Tensor:
        return torch.from_numpy(np.array(tensors[name].data, dtype=np.float32)).reshape(-1)

    layers = []
    for i in range(n_layers):
        p = f"blk.{i}."
        q = _blocks(tensors[p + "attn_q.weight"], unpermute_rows(hidden, heads))
        k = _blocks(tensors[p + "attn_k.weight"], unpermute_rows(kv_heads * shape.head_dim, kv_heads))
        layers.append(
            LeanLayer(
                norm(p + "attn_norm.weight"),
                _matrix(q, k, _blocks(tensors[p + "attn_v.weight"])),
                _matrix(_blocks(tensors[p + "attn_output.weight"])),
                norm(p + "ffn_norm.weight"),
                _matrix(_blocks(tensors[p + "ffn_gate.weight"]), _blocks(tensors[p + "ffn_up.weight"])),
                _matrix(_blocks(tensors[p + "ffn_down.weight"])),
            )
        )
    head = _matrix(_blocks(tensors["token_embd.weight"]))
    if head_bits is not None and head_bits != 8:
        head = PackedMatrix.quantize_asymmetric(head.dequantize(), head_bits)
    for matrix in [head] + [m for layer in layers for m in (layer.qkv, layer.o, layer.gate_up, layer.down)]:
        matrix.act_levels = act_levels
    name = "smollm2-q4_1" + ("" if head_bits is None else f"-head{head_bits}")
    return LeanLlama(shape, layers, norm("output_norm.weight"), head, name)
