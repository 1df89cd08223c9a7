"""The MLflow helper: flattening, secrets kept out of params, registered models found by name."""

from dataclasses import dataclass, field

from mlflow.tracking import MlflowClient

from mlsys.tracking import close_run, flatten, load_registered_model_dir, open_run


@dataclass
class _Inner:
    api_key: str = "sk-do-not-log"
    api_key_env: str = "OPENAI_API_KEY"
    max_tokens: int = 64


@dataclass
class _Outer:
    llm: _Inner = field(default_factory=_Inner)
    sizes: list = field(default_factory=lambda: [1, 2])


def test_flatten_nests_with_dots():
    assert flatten(_Outer()) == {
        "llm.api_key": "sk-do-not-log",
        "llm.api_key_env": "OPENAI_API_KEY",
        "llm.max_tokens": 64,
        "sizes": [1, 2],
    }


def test_secrets_are_masked_and_models_registered(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = open_run(uri, "tracking-test")
    tracker.log_params({"cfg": _Outer()})
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text('{"n": 1}')
    assert tracker.log_model_dir(model_dir, "model", registered_name="tiny-model") == "1"
    close_run(tracker)
    params = MlflowClient(tracking_uri=uri).get_run(tracker.run_id).data.params
    assert params["cfg.llm.api_key"] == "***"
    assert params["cfg.llm.api_key_env"] == "OPENAI_API_KEY" and params["cfg.llm.max_tokens"] == "64"
    fetched = load_registered_model_dir("tiny-model@candidate", tracking_uri=uri)  # a new version is a candidate
    assert (fetched / "config.json").read_text() == '{"n": 1}'
    assert str(tmp_path / "artifacts") in MlflowClient(tracking_uri=uri).get_run(tracker.run_id).info.artifact_uri
