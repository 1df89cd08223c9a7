"""Registered models as MLflow pyfunc models: a causal LM's saved folder behind `predict(prompts)`.

Every model a flow registers goes through `Tracker.log_model_dir`. When the folder is a causal LM
the project saves (a GPT folder, a quantized folder, a SmolLM2 fine-tune or a transformers folder),
it is logged as an MLflow model of the `python_function` flavor whose `predict` takes a list of
prompts and returns their greedy continuations, with a signature and an input example, so

    mlflow.pyfunc.load_model("models:/lm-draft@serving").predict(["def add(a, b):"])

works on any of them. The folder itself is the model's one artifact, logged once (no second copy
of the weights is written to disk first); `mlsys.tracking.load_registered_model_dir` returns it,
so the project's own loaders read the same files as before. The model loads in the project's
environment (its code is imported, not packaged), and its requirements are pinned to the installed
versions instead of being inferred, which would swap the CPU torch build for a CUDA one.
"""

from __future__ import annotations

import json
import os
import tempfile
from importlib.metadata import version
from pathlib import Path
from typing import Optional

import pandas as pd
import torch
from mlflow.models import Model
from mlflow.models.signature import ModelSignature
from mlflow.pyfunc import PythonModel, save_model
from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

from components.lm.model import CONFIG_FILE, GPT
from components.lm.smollm2 import TUNED_WEIGHTS, load_model, load_tokenizer
from components.quant.model import META_FILE, load_quantized, logits_of
from components.serving.text import ByteCodec, HFTextCodec, TextCodec

ARTIFACT = "model"  # the name of the saved folder among the pyfunc model's artifacts
SMOLLM2_VOCAB = 49152  # models with this vocabulary read SmolLM2's tokenizer
MAX_NEW_TOKENS = 32  # predict's default continuation length (a `max_new_tokens` param changes it)
INPUT_EXAMPLE = ["def add(a, b):"]
PYFUNC_CODE = Path(__file__).with_name("pyfunc_code.py")


def causal_lm_kind(folder: str | Path) -> Optional[str]:
    """What the saved folder holds, from its files: gpt, quantized, transformers; None: not a causal LM."""
    folder = Path(folder)
    if (folder / META_FILE).exists():
        return "quantized"
    if (folder / TUNED_WEIGHTS).exists():
        return "transformers"
    config = folder / CONFIG_FILE
    if not config.exists():
        return None
    try:
        data = json.loads(config.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    if data.get("model_type") == "gpt":
        return "gpt"
    return "transformers" if data.get("architectures") or data.get("model_type") else None


def load_causal_lm(folder: str | Path) -> torch.nn.Module:
    """The model a saved folder holds, on CPU in eval mode."""
    kind = causal_lm_kind(folder)
    if kind == "quantized":
        return load_quantized(folder, mode="naive").eval()
    if kind == "gpt":
        return GPT.from_folder(folder)
    if kind == "transformers":
        return load_model(folder=folder)
    raise ValueError(f"{folder}: not a causal LM folder (no {CONFIG_FILE}, {META_FILE} or {TUNED_WEIGHTS})")


def codec_for(model: torch.nn.Module, folder: str | Path) -> TextCodec:
    """SmolLM2's tokenizer (or the folder's own) for its vocabulary, UTF-8 bytes for the tiny models."""
    vocab = int(model.config.vocab_size)
    if vocab == SMOLLM2_VOCAB or (Path(folder) / "tokenizer.json").exists():
        return HFTextCodec(load_tokenizer(folder))
    if vocab >= 259:
        return ByteCodec(vocab)
    raise ValueError(f"{folder}: a vocabulary of {vocab} ids is neither SmolLM2's nor wide enough for bytes")


@torch.no_grad()
def greedy_continuation(model: torch.nn.Module, codec: TextCodec, prompt: str, max_new_tokens: int) -> str:
    """The prompt's greedy continuation (no KV cache: a registry check, not the server's decoder)."""
    ids = torch.tensor([codec.encode(prompt) or [0]], dtype=torch.long)
    limit = getattr(model.config, "block_size", None) or getattr(model.config, "max_position_embeddings", None)
    new: list[int] = []
    for _ in range(max_new_tokens):
        window = ids if limit is None else ids[:, -int(limit) :]
        next_id = int(logits_of(model, window)[0, -1].argmax())
        if next_id in codec.eos_ids:
            break
        new.append(next_id)
        ids = torch.cat([ids, torch.tensor([[next_id]])], dim=1)
    return codec.decode(new)


class CausalLMText(PythonModel):
    """pyfunc text generation over a saved causal-LM folder: prompts in, greedy continuations out."""

    def load_context(self, context) -> None:
        folder = context.artifacts[ARTIFACT]
        self.model = load_causal_lm(folder)
        self.codec = codec_for(self.model, folder)

    def predict(self, context, model_input: pd.DataFrame, params: Optional[dict] = None) -> list[str]:
        """Greedy continuations of the prompts, which MLflow hands in as a one-column DataFrame (the
        signature's). A DataFrame hint is one MLflow infers no schema from: a `list[str]` hint would
        replace the signature below by one without `max_new_tokens` and make registration load the
        weights to run the input example."""
        if isinstance(model_input, pd.DataFrame):
            model_input = model_input.iloc[:, 0].tolist()
        prompts = [model_input] if isinstance(model_input, str) else list(model_input)
        steps = int((params or {}).get("max_new_tokens", MAX_NEW_TOKENS))
        return [greedy_continuation(self.model, self.codec, str(p), steps) for p in prompts]


SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("string")]),
    outputs=Schema([ColSpec("string")]),
    params=ParamSchema([ParamSpec("max_new_tokens", "long", MAX_NEW_TOKENS)]),
)


def _requirements() -> list[str]:
    """The installed versions of what loading the folder needs (never inferred: see the module doc)."""
    return [f"{name}=={version(name)}" for name in ("mlflow", "torch", "safetensors", "transformers")]


def stage_pyfunc(folder: str | Path, staging: str | Path, description: str) -> Path:
    """Write the pyfunc model for `folder` into `staging` with the weights linked, not copied.

    `save_model` copies its artifacts; it is given an empty stand-in, which is then replaced by a
    tree of symlinks to the folder's files. Logging the staged model copies each file once, into
    the artifact store (both the local and the HTTP artifact stores read a symlinked file's bytes).
    """
    staging = Path(staging)
    with tempfile.TemporaryDirectory(prefix="pyfunc-stand-in-") as stand_in:
        save_model(
            path=str(staging),
            python_model=str(PYFUNC_CODE),  # models-from-code: MLflow imports it, nothing is unpickled
            artifacts={ARTIFACT: stand_in},
            signature=SIGNATURE,
            input_example=INPUT_EXAMPLE,  # checked against the signature only (the weights are not loaded)
            pip_requirements=_requirements(),
            metadata={"description": description, "causal_lm_kind": causal_lm_kind(folder)},
        )
    flavor = Model.load(str(staging)).flavors["python_function"]
    linked = staging / flavor["artifacts"][ARTIFACT]["path"]
    os.rmdir(linked)
    for source in Path(folder).rglob("*"):
        target = linked / source.relative_to(folder)
        if source.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(source.resolve())
    return linked
