"""The one small helper through which flows and tasks talk to MLflow.

A `Tracker` is bound to one MLflow run by id, not to MLflow's thread-local "active run", so tasks
running on worker threads (or unpickled on Dask workers) log to the right run. The tracking URI
comes from config (`tracking.uri`); the default is a SQLite store under the project's `mlflow/`.
"""
from __future__ import annotations

import json
import math
import tempfile
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

from tasks.environment import PROJECT_ROOT

DEFAULT_STORE_DIR = PROJECT_ROOT / "mlflow"
_MAX_PARAM_CHARS = 6000  # MLflow's limit on a param value


def default_tracking_uri() -> str:
    DEFAULT_STORE_DIR.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{DEFAULT_STORE_DIR / 'mlflow.db'}"


def _artifact_root_for(sqlite_uri: str) -> str:
    """Artifacts of a SQLite store live beside its database file (MLflow would use the cwd)."""
    return (Path(sqlite_uri[len("sqlite:///"):]).parent / "artifacts").as_uri()


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dataclasses/dicts/lists -> {'a.b.c': value}; lists of scalars stay one value."""
    if is_dataclass(obj) and not isinstance(obj, type):
        obj = asdict(obj)
    if isinstance(obj, Mapping):
        out: dict[str, Any] = {}
        for key, value in obj.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    if isinstance(obj, (list, tuple)) and any(isinstance(v, (Mapping, list, tuple)) for v in obj):
        out = {}
        for i, value in enumerate(obj):
            out.update(flatten(value, f"{prefix}{i}."))
        return out
    return {prefix.rstrip("."): obj}


_SECRET_KEY_PARTS = ("api_key", "apikey", "password", "secret", "token")


def _is_secret(key: str) -> bool:
    """Params are visible to everyone with the MLflow UI: never log credentials."""
    last = key.rsplit(".", 1)[-1].lower()
    return any(part in last for part in _SECRET_KEY_PARTS) and not last.endswith(("_tokens", "_env"))


class Tracker:
    """Logs params, stepped metrics and artifacts to one MLflow run."""

    def __init__(self, tracking_uri: str, run_id: str, experiment_id: str):
        self.tracking_uri = tracking_uri
        self.run_id = run_id
        self.experiment_id = experiment_id
        self._client = None

    # The client is rebuilt lazily so a Tracker pickles cleanly to Dask workers.
    def __getstate__(self) -> dict:
        return {**self.__dict__, "_client": None}

    @property
    def client(self):
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    @property
    def artifact_uri(self) -> str:
        return self.client.get_run(self.run_id).info.artifact_uri

    def ui_link(self, ui_base: str = "http://127.0.0.1:5000") -> str:
        return f"{ui_base}/#/experiments/{self.experiment_id}/runs/{self.run_id}"

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        flat = flatten(dict(params))
        batch = [Param(k, "***" if _is_secret(k) and v else str(v)[:_MAX_PARAM_CHARS]) for k, v in flat.items()]
        for start in range(0, len(batch), 100):  # MLflow accepts at most 100 params per batch
            self.client.log_batch(self.run_id, params=batch[start : start + 100])

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [
            Metric(k, float(v), now, step or 0)
            for k, v in flatten(dict(metrics)).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))
        ]
        for start in range(0, len(batch), 1000):
            self.client.log_batch(self.run_id, metrics=batch[start : start + 1000])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, str(value))

    def log_artifact(self, local_path: str | Path, artifact_path: str | None = None) -> None:
        path = Path(local_path)
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path)
        else:
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_dict(self, obj: Any, artifact_file: str) -> None:
        self.client.log_text(self.run_id, json.dumps(obj, indent=2, default=str), artifact_file)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def log_figure(self, figure, artifact_file: str) -> None:
        self.client.log_figure(self.run_id, figure, artifact_file)

    def log_model_dir(self, local_dir: str | Path, artifact_path: str, registered_name: str | None = None) -> str | None:
        """Log a saved model folder (safetensors + config) and optionally register it by name.

        Returns the registered version, so later flows load it with `load_registered_model_dir`.
        Models are logged as plain files (not MLflow's pickled flavours): fast, and no inferred
        requirements that would swap the CPU torch build for a CUDA one.
        """
        self.log_artifact(local_dir, artifact_path)
        if registered_name is None:
            return None
        from mlflow.exceptions import MlflowException

        try:
            self.client.create_registered_model(registered_name)
        except MlflowException:
            pass  # already registered: add a version
        source = f"{self.artifact_uri}/{artifact_path}"
        version = self.client.create_model_version(registered_name, source=source, run_id=self.run_id)
        return str(version.version)

    def iter_metric_history(self, key: str) -> Iterator[tuple[int, float]]:
        for m in self.client.get_metric_history(self.run_id, key):
            yield m.step, m.value


def load_registered_model_dir(name: str, tracking_uri: str | None = None, version: str | None = None) -> Path:
    """Download the files of a registered model version (the newest by default) and return the folder."""
    import mlflow.artifacts
    from mlflow.tracking import MlflowClient

    uri = tracking_uri or default_tracking_uri()
    client = MlflowClient(tracking_uri=uri)
    versions = client.search_model_versions(f"name='{name}'")
    if not versions:
        raise LookupError(f"no registered model named {name!r} in the MLflow store at {uri}")
    chosen = max(versions, key=lambda v: int(v.version)) if version is None else next(
        (v for v in versions if str(v.version) == str(version)), None
    )
    if chosen is None:
        raise LookupError(f"model {name!r} has no version {version}; have {[v.version for v in versions]}")
    dest = tempfile.mkdtemp(prefix=f"model-{name}-")
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=chosen.source, dst_path=dest, tracking_uri=uri))


def open_run(
    tracking_uri: str | None,
    experiment: str,
    run_name: str | None = None,
    parent_run_id: str | None = None,
    tags: Mapping[str, Any] | None = None,
) -> Tracker:
    from mlflow.tracking import MlflowClient

    uri = tracking_uri or default_tracking_uri()
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        artifact_location = _artifact_root_for(uri) + f"/{experiment}" if uri.startswith("sqlite:///") else None
        try:
            experiment_id = client.create_experiment(experiment, artifact_location=artifact_location)
        except Exception:  # created concurrently by another process
            experiment_id = client.get_experiment_by_name(experiment).experiment_id
    else:
        experiment_id = exp.experiment_id
    all_tags = {k: str(v) for k, v in (tags or {}).items()}
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    run = client.create_run(experiment_id, run_name=run_name, tags=all_tags)
    tracker = Tracker(uri, run.info.run_id, experiment_id)
    tracker._client = client
    return tracker


def close_run(tracker: Tracker, failed: bool = False) -> None:
    tracker.client.set_terminated(tracker.run_id, status="FAILED" if failed else "FINISHED")
