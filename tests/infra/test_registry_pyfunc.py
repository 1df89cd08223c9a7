"""Registered causal LMs are MLflow pyfunc models: loaded by alias through mlflow.pyfunc, they
generate the same text as the saved model, and the project's loaders still get the saved folder."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow.models import Model
from mlflow.tracking import MlflowClient

from components.lm.model import GPT, GPTConfig
from components.serving.text import ByteCodec
from mlsys.models import INPUT_EXAMPLE, causal_lm_kind
from mlsys.tracking import close_run, load_registered_model_dir, open_run, promote


@pytest.fixture
def registry(tmp_path, monkeypatch):
    """A throw-away store that `models:/` URIs resolve against (through the environment, which
    monkeypatch restores; mlflow.set_*_uri would pin a global for every later test)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", uri)
    return uri


def _tiny_gpt(folder: Path, seed: int) -> GPT:
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=300, block_size=40, n_layer=1, n_head=2, n_embd=16)).eval()
    model.save(folder)
    return model


def _register(uri: str, folder: Path, name: str, perplexity: float) -> str:
    tracker = open_run(uri, "pyfunc-test", run_name=folder.name, tags={"flow": "lm_train"})
    tracker.log_metrics({"val_perplexity": perplexity})
    version = tracker.log_model_dir(folder, "model", registered_name=name, description="a tiny draft")
    close_run(tracker)
    return version


def test_a_registered_lm_loads_by_alias_through_pyfunc_and_generates_its_text(registry, tmp_path):
    model = _tiny_gpt(tmp_path / "draft", seed=3)
    good = _register(registry, tmp_path / "draft", "tiny-draft", 40.0)
    promote("tiny-draft", good, "val_perplexity<=100", registry)
    _tiny_gpt(tmp_path / "small", seed=4)
    _register(registry, tmp_path / "small", "tiny-draft", 9000.0)  # a later @candidate

    loaded = mlflow.pyfunc.load_model("models:/tiny-draft@serving")
    assert mlflow.get_registry_uri() == registry
    prompts = ["héllo | wörld", ""]  # non-ASCII bytes, and an empty prompt
    replies = loaded.predict(prompts, params={"max_new_tokens": 6})

    codec = ByteCodec(300)
    for prompt, reply in zip(prompts, replies):
        ids = torch.tensor([codec.encode(prompt) or [0]])
        expected = model.generate(ids, max_new_tokens=6, temperature=0)[0, ids.shape[1] :].tolist()
        expected = expected[: expected.index(codec.EOS)] if codec.EOS in expected else expected
        assert reply == codec.decode(expected)
    assert loaded.metadata.signature.inputs.input_types()[0].name == "string"
    assert loaded.metadata.get_params_schema().params[0].name == "max_new_tokens"


def test_registration_logs_the_weights_once_with_an_example_description_and_tags(registry, tmp_path):
    _tiny_gpt(tmp_path / "draft", seed=5)
    version = _register(registry, tmp_path / "draft", "tiny-draft-files", 40.0)
    client = MlflowClient(tracking_uri=registry)
    registered = client.get_model_version("tiny-draft-files", version)
    assert registered.description == "a tiny draft"
    assert registered.tags["format"] == "mlflow pyfunc (gpt)" and registered.tags["flow"] == "lm_train"

    folder = load_registered_model_dir("tiny-draft-files@candidate", registry)
    stored = Path(registered.source.removeprefix("file://"))
    weights = list(stored.rglob("model.safetensors"))
    assert len(weights) == 1 and not weights[0].is_symlink()  # one real copy in the store
    assert weights[0].read_bytes() == (tmp_path / "draft" / "model.safetensors").read_bytes()
    assert GPT.from_folder(folder).config.n_embd == 16  # the project's loaders read the saved folder
    model_info = Model.load(str(stored))
    example = (stored / model_info.saved_input_example_info["artifact_path"]).read_text()
    assert json.dumps(INPUT_EXAMPLE[0]) in example


def test_a_folder_that_is_no_language_model_stays_plain_files(tmp_path):
    (tmp_path / "cnn").mkdir()
    (tmp_path / "cnn" / "model.json").write_text('{"kind": "cnn"}')
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "config.json").write_text("[1, 2]")  # valid JSON, not a model config
    assert causal_lm_kind(tmp_path / "cnn") is None and causal_lm_kind(tmp_path / "odd") is None
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = open_run(uri, "pyfunc-test")
    version = tracker.log_model_dir(tmp_path / "cnn", "model", registered_name="tiny-cnn")
    assert MlflowClient(tracking_uri=uri).get_model_version("tiny-cnn", version).tags["format"] == "files"
    assert (load_registered_model_dir("tiny-cnn/1", uri) / "model.json").read_text() == '{"kind": "cnn"}'
