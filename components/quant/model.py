"""Whole-model quantization: calibration, swapping nn.Linear for QuantLinear, save and load.

A saved quantized model is a folder:
  model.safetensors   every tensor of the model, with the packed buffers of each QuantLinear
  quant_meta.json     format version, the QuantSpec, each quantized layer's LayerLayout, bit counts,
                      tied weights, and how to rebuild the architecture (`base`)
  config.json         the architecture's own config (transformers' or the project's GPT)
  tokenizer.json ...  the tokenizer, so the folder alone is enough to serve
`load_quantized(folder)` rebuilds the architecture, swaps in empty QuantLinears of the recorded
layouts and loads the tensors: it runs forward like the original module.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from components.lm import smollm2
from components.lm.model import GPT, GPTConfig
from components.quant.allocation import allocate_high_groups, fisher_gains
from components.quant.linear import QuantLinear
from components.quant.quantizer import LayerLayout, layout_for, quantize_weight
from components.quant.spec import QuantSpec

FORMAT = "mixed-2-4-packed/v1"
META_FILE = "quant_meta.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "generation_config.json",
)


# --- base models ---------------------------------------------------------------------------------


def load_base_model(source: str) -> tuple[nn.Module, dict]:
    """('smollm2' | a folder of the project's GPT | a transformers folder) -> (model, base info)."""
    if source == "smollm2":
        model = smollm2.load_model()
        return model, {"kind": "hf", "source": "smollm2", "tokenizer_dir": str(smollm2.cache_dir())}
    folder = Path(source)
    config_file = folder / "config.json"
    if not config_file.exists():
        raise FileNotFoundError(f"model source {source!r} is neither 'smollm2' nor a folder with config.json")
    config = json.loads(config_file.read_text())
    if config.get("model_type") == "gpt":
        return GPT.from_folder(folder), {"kind": "gpt", "source": str(folder), "tokenizer_dir": _tokenizer_dir(folder)}
    from transformers import AutoModelForCausalLM  # noqa: PLC0415  (start-up cost: ~5 s, only when a transformers model loads)

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    return model, {"kind": "hf", "source": str(folder), "tokenizer_dir": _tokenizer_dir(folder)}


def _tokenizer_dir(folder: Path) -> str | None:
    if (folder / "tokenizer.json").exists():
        return str(folder)

    return str(smollm2.cache_dir()) if (smollm2.cache_dir() / "tokenizer.json").exists() else None


def logits_of(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Logits [B, T, V] from either a transformers causal LM or the project's GPT."""
    out = model(ids, use_cache=False)
    if isinstance(out, tuple):
        return out[0]
    return out.logits


# --- which layers, and calibration ---------------------------------------------------------------


def target_linears(model: nn.Module, include_lm_head: bool = False) -> dict[str, nn.Linear]:
    """Every nn.Linear of the model (the transformer's projections); lm_head only on request."""
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and (include_lm_head or not name.endswith("lm_head"))
    }


def calibrate(
    model: nn.Module, batches: Iterable[torch.Tensor], names: Iterable[str], hessian: bool, fisher: bool = False
) -> dict:
    """Per layer: mean x**2 per input channel, optionally H = mean x x^T and the loss's Fisher diagonal.

    One pass over the batches: with `fisher`, the activation hooks ride on the gradient pass's forward.
    """
    batches, names = list(batches), list(names)
    modules = dict(model.named_modules())
    sums: dict[str, dict] = {}

    @torch.no_grad()
    def accumulate(name: str, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1, x.shape[-1]).float()
        s = sums.setdefault(
            name,
            {"sq": torch.zeros(x.shape[1]), "n": 0, "xx": torch.zeros(x.shape[1], x.shape[1]) if hessian else None},
        )
        s["sq"] += (x * x).sum(0)
        s["n"] += x.shape[0]
        if hessian:
            s["xx"] += x.t() @ x

    hooks = [
        modules[name].register_forward_hook(lambda _m, inputs, _o, name=name: accumulate(name, inputs[0]))
        for name in names
    ]
    try:
        if fisher:
            grads = fisher_diagonal(model, batches, names)
        else:
            with torch.no_grad():
                for ids in batches:
                    logits_of(model, ids)
    finally:
        for h in hooks:
            h.remove()
    return {
        name: {
            "act_sq": s["sq"] / max(1, s["n"]),
            "hessian": (s["xx"] / max(1, s["n"])) if hessian else None,
            **({"fisher": grads[name]} if fisher else {}),
        }
        for name, s in sums.items()
    }


def fisher_diagonal(model: nn.Module, batches: Iterable[torch.Tensor], names: Iterable[str]) -> dict[str, torch.Tensor]:
    """Per layer: the empirical Fisher diagonal E[(dL/dW)**2] of the next-token loss, one gradient per window.

    Only the named weights take gradients (the rest of the model is frozen for the pass and restored).
    """
    modules = dict(model.named_modules())
    names = list(names)
    flags = {id(p): p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    weights = {name: modules[name].weight for name in names}
    fisher = {name: torch.zeros_like(w, dtype=torch.float32) for name, w in weights.items()}
    count = 0
    try:
        for w in weights.values():
            w.requires_grad_(True)
        with torch.enable_grad():
            for ids in batches:
                logits = logits_of(model, ids).float()
                loss = torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:])
                grads = torch.autograd.grad(loss, list(weights.values()))
                for name, grad in zip(weights, grads):
                    fisher[name] += grad.float() ** 2
                count += 1
    finally:
        for p in model.parameters():
            p.requires_grad_(flags[id(p)])
    return {name: f / max(1, count) for name, f in fisher.items()}


# --- quantize / swap -----------------------------------------------------------------------------


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def quantizable_linears(
    model: nn.Module, spec: QuantSpec, include_lm_head: bool = False, layer_filter: Callable[[str], bool] | None = None
) -> dict[str, nn.Linear]:
    """The target layers `quantize_model` will replace: filtered, in_features a multiple of the group, untied."""
    tied = _tied_param_ids(model)
    return {
        name: linear
        for name, linear in target_linears(model, include_lm_head).items()
        if (layer_filter is None or layer_filter(name))
        and not linear.in_features % spec.group_size
        and id(linear.weight) not in tied
    }  # a weight tied to an embedding stays dense for the embedding's sake


@torch.no_grad()
def quantize_model(
    model: nn.Module,
    spec: QuantSpec,
    calibration: dict | None = None,
    mode: str = "auto",
    include_lm_head: bool = False,
    layer_filter: Callable[[str], bool] | None = None,
    on_layer: Callable[[str, QuantLinear], None] | None = None,
) -> dict[str, LayerLayout]:
    """Replace target nn.Linear layers by QuantLinear in place; returns the layouts by layer name.

    Layers whose in_features is not a multiple of the group size stay fp32 (reported by the caller
    through `model_bits`). `layer_filter` restricts the layers (tiny demos). With spec.bit_budget the
    4-bit groups per tile of every layer come from one model-wide allocation (`allocation.py`).
    """
    if not spec.quantizes:
        return {}
    linears = quantizable_linears(model, spec, include_lm_head, layer_filter)
    stats = {name: (calibration or {}).get(name, {}) for name in linears}
    high_per_tile = _allocate(linears, stats, spec) if spec.bit_budget else {}
    layouts: dict[str, LayerLayout] = {}
    for name, linear in linears.items():
        packed = quantize_weight(
            linear.weight,
            spec,
            act_sq=stats[name].get("act_sq"),
            hessian=stats[name].get("hessian"),
            bias=linear.bias,
            fisher=stats[name].get("fisher"),
            high_per_tile=high_per_tile.get(name),
        )
        qlinear = QuantLinear.from_packed(packed, mode=mode)
        _set_module(model, name, qlinear)
        layouts[name] = packed.layout
        if on_layer is not None:
            on_layer(name, qlinear)
    return layouts


def _allocate(linears: dict[str, nn.Linear], stats: dict[str, dict], spec: QuantSpec) -> dict[str, int]:
    missing = [name for name in linears if stats[name].get("fisher") is None]
    if missing:
        raise ValueError(
            f"bit_budget allocation needs the Fisher diagonal of every layer (calibrate(..., fisher=True)); "
            f"missing for {missing[:3]}"
        )
    return allocate_high_groups(
        {
            name: (
                layout_for(tuple(linear.weight.shape), spec, linear.bias is not None),
                fisher_gains(linear.weight, stats[name]["fisher"], spec),
            )
            for name, linear in linears.items()
        },
        spec.bit_budget,
    )


def _tied_param_ids(model: nn.Module) -> set[int]:
    seen: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        seen[id(p)] = seen.get(id(p), 0) + 1
    return {pid for pid, count in seen.items() if count > 1}


@contextmanager
def dequantized_once(model: nn.Module):
    """Naive mode with each QuantLinear's weight dequantized once for the whole block, not per forward.

    For evaluating many windows: the same numbers as `naive` (the same dequantized matrix, the same
    matmul), without repeating the unpacking per window. The dense copies are dropped on exit.
    """
    layers = [m for m in model.modules() if isinstance(m, QuantLinear)]
    modes = [m.mode for m in layers]
    try:
        for m in layers:
            m.mode, m.dense_cache = "naive", m.dequantize()
        yield model
    finally:
        for m, mode in zip(layers, modes):
            m.mode, m.dense_cache = mode, None


def set_mode(model: nn.Module, mode: str) -> None:
    for module in model.modules():
        if isinstance(module, QuantLinear):
            module.mode = mode


def model_bits(model: nn.Module) -> dict[str, float]:
    """Exact bit accounting: over the quantized layers (bits/weight) and over the whole model."""
    q_weights = q_bits = dense_params = 0
    parts = {"codes": 0, "scales": 0, "zeros": 0, "map": 0, "outliers": 0, "bias": 0}
    quantized = {id(m) for m in model.modules() if isinstance(m, QuantLinear)}
    for module in model.modules():
        if isinstance(module, QuantLinear):
            q_weights += module.in_features * module.out_features
            for k, v in module.bits().items():
                parts[k] += v
    q_bits = sum(parts.values())
    seen = set()
    for module in model.modules():
        if id(module) in quantized:
            continue
        for p in list(module.parameters(recurse=False)):
            if id(p) not in seen:
                seen.add(id(p))
                dense_params += p.numel()
    out = {
        "quantized_weights": q_weights,
        "quantized_bits": q_bits,
        "bits_per_weight": q_bits / q_weights if q_weights else 32.0,
        "dense_params": dense_params,
        "model_bytes": (q_bits + 32 * dense_params) / 8,
    }
    out.update({f"bits_{k}": v for k, v in parts.items()})
    return out


# --- save / load ---------------------------------------------------------------------------------


def save_quantized(
    model: nn.Module, folder: str | Path, spec: QuantSpec, base: dict, extra: dict | None = None
) -> Path:
    """Write the folder described in the module docstring (atomically: a temp folder, then rename)."""

    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    state, tied = {}, {}
    by_ptr: dict[tuple, str] = {}
    for name, tensor in model.state_dict().items():
        key = (tensor.data_ptr(), tuple(tensor.shape), tensor.dtype)
        if tensor.numel() and key in by_ptr:
            tied[name] = by_ptr[key]
            continue
        by_ptr[key] = name
        state[name] = tensor.detach().contiguous().cpu()
    save_file(state, str(tmp / WEIGHTS_FILE))
    layers = {name: m.layout.to_dict() for name, m in model.named_modules() if isinstance(m, QuantLinear)}
    kind = base["kind"]
    if kind == "hf":
        model.config.save_pretrained(tmp)
    else:
        (tmp / "config.json").write_text(json.dumps({"model_type": "gpt", **asdict(model.config)}, indent=2))
    if base.get("tokenizer_dir"):
        for fname in TOKENIZER_FILES:
            src = Path(base["tokenizer_dir"]) / fname
            if src.exists():
                shutil.copy2(src, tmp / fname)
    meta = {
        "format": FORMAT,
        "base": {k: v for k, v in base.items() if k != "tokenizer_dir"},
        "spec": spec.to_dict(),
        "layers": layers,
        "tied": tied,
        "bits": model_bits(model),
        **(extra or {}),
    }
    (tmp / META_FILE).write_text(json.dumps(meta, indent=2))
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)
    return folder


def read_meta(folder: str | Path) -> dict:
    path = Path(folder) / META_FILE
    if not path.exists():
        raise FileNotFoundError(f"{folder} is not a quantized model folder: {META_FILE} is missing")
    meta = json.loads(path.read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: format {meta.get('format')!r} is not {FORMAT!r}")
    return meta


def _skeleton(folder: Path, base: dict) -> nn.Module:
    if base["kind"] == "gpt":
        data = json.loads((folder / "config.json").read_text())
        data.pop("model_type", None)
        return GPT(GPTConfig.from_dict(data))
    from transformers import AutoConfig, AutoModelForCausalLM  # noqa: PLC0415  (start-up cost: ~5 s, only when a transformers model loads)

    return AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder), dtype=torch.float32)


@torch.no_grad()
def load_quantized(folder: str | Path, mode: str = "auto") -> nn.Module:
    """The saved quantized model, in eval mode, with QuantLinear layers in `mode` (auto: fused for decode)."""

    folder = Path(folder)
    meta = read_meta(folder)
    model = _skeleton(folder, meta["base"])
    for name, layout in meta["layers"].items():
        _set_module(model, name, QuantLinear(LayerLayout(**layout), mode=mode))
    state = load_file(str(folder / WEIGHTS_FILE))
    for name, source in meta["tied"].items():
        state[name] = state[source]
    model.load_state_dict(state, strict=True)
    return model.eval()
