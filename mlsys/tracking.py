"""The one small helper through which flows and tasks talk to MLflow.

A `Tracker` is bound to one MLflow run by id, not to MLflow's thread-local "active run", so tasks
running on worker threads (or unpickled on Dask workers) log to the right run. The tracking URI
comes from config (`tracking.uri`); the default is a SQLite store under the project's `mlflow/`.
"""

from __future__ import annotations

import json
import math
import operator
import re
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import mlflow.artifacts
from matplotlib.figure import Figure
from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException
from mlflow.models import Model
from mlflow.tracking import MlflowClient

from mlsys.environment import PROJECT_ROOT
from mlsys.models import ARTIFACT, causal_lm_kind, stage_pyfunc

DEFAULT_STORE_DIR = PROJECT_ROOT / "mlflow"
_MAX_PARAM_CHARS = 6000  # MLflow's limit on a param value
# The classic training view (runs, charts, models) rather than MLflow 3's GenAI traces page.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
MLMODEL_FILE = "MLmodel"  # marks an MLflow model folder
CANDIDATE, SERVING = "candidate", "serving"  # registry aliases: newest registration / promoted for use


def default_tracking_uri() -> str:
    DEFAULT_STORE_DIR.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{DEFAULT_STORE_DIR / 'mlflow.db'}"


def _artifact_root_for(sqlite_uri: str) -> str:
    """Artifacts of a SQLite store live beside its database file (MLflow would use the cwd)."""
    return (Path(sqlite_uri[len("sqlite:///") :]).parent / "artifacts").as_uri()


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


def is_secret_key(key: str) -> bool:
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
            self._client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
        return self._client

    @property
    def artifact_uri(self) -> str:
        return self.client.get_run(self.run_id).info.artifact_uri

    def ui_link(self, ui_base: str = "http://127.0.0.1:5000") -> str:
        return f"{ui_base}/#/experiments/{self.experiment_id}/runs/{self.run_id}"

    def log_params(self, params: Mapping[str, Any]) -> None:
        flat = flatten(dict(params))
        batch = [Param(k, "***" if is_secret_key(k) and v else str(v)[:_MAX_PARAM_CHARS]) for k, v in flat.items()]
        for start in range(0, len(batch), 100):  # MLflow accepts at most 100 params per batch
            self.client.log_batch(self.run_id, params=batch[start : start + 100])

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
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

    def log_model_dir(
        self,
        local_dir: str | Path,
        artifact_path: str,
        registered_name: str | None = None,
        description: str | None = None,
        tags: Mapping[str, Any] | None = None,
    ) -> str | None:
        """Log a saved model folder and optionally register it by name; returns the registered version.

        A causal LM's folder is logged as an MLflow pyfunc model (`mlsys.models`: `predict(prompts)`
        with a signature and an input example; its weights copied once, into the store); any other
        folder as plain files. The new version gets the `@candidate` alias, a description and tags
        (the flow, the run, the format); the `@serving` alias, which loaders resolve, moves only on
        promotion (`promote`), so a small run never changes what other flows load.
        """
        run = self.client.get_run(self.run_id)
        flow = run.data.tags.get("flow", "")
        description = description or f"{artifact_path} of run {run.info.run_name or self.run_id} ({flow or 'flow'})"
        kind = causal_lm_kind(local_dir)
        if kind is None:
            self.log_artifact(local_dir, artifact_path)
        else:
            with tempfile.TemporaryDirectory(prefix="pyfunc-") as staging:
                stage_pyfunc(local_dir, Path(staging) / "model", description)
                self.client.log_artifacts(self.run_id, str(Path(staging) / "model"), artifact_path)
        if registered_name is None:
            return None
        try:
            self.client.create_registered_model(
                registered_name, description="Registered by the project's flows; load `@serving` (see mlsys promote)."
            )
        except MlflowException:
            pass  # already registered: add a version
        version_tags = {
            "flow": flow,
            "run_name": run.info.run_name or "",
            "format": f"mlflow pyfunc ({kind})" if kind else "files",
            **{k: str(v) for k, v in (tags or {}).items()},
        }
        version = self.client.create_model_version(
            registered_name,
            source=f"{run.info.artifact_uri}/{artifact_path}",
            run_id=self.run_id,
            tags=version_tags,
            description=description,
        )
        self.client.set_registered_model_alias(registered_name, CANDIDATE, version.version)
        self.registered.append((registered_name, str(version.version)))
        return str(version.version)

    @property
    def registered(self) -> list[tuple[str, str]]:
        """(name, version) of every model this Tracker registered: the platform's promotion step reads it."""
        if "_registered" not in self.__dict__:
            self._registered: list[tuple[str, str]] = []
        return self._registered

    def log_summary(self, metrics: Mapping[str, Any], claim: str | None = None) -> None:
        """The flow's summary values: logged as metrics and shown as a table in the run's description,
        apart from the per-step curves."""
        self.log_metrics(metrics)
        rows = [(k, v) for k, v in flatten(dict(metrics)).items() if isinstance(v, (int, float, str))]
        if not rows:
            return
        table = "| summary | value |\n|---|---|\n" + "\n".join(
            f"| {k} | {v:.6g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in rows
        )
        note = (f"**Paper's claim:** {claim}\n\n" if claim else "") + table
        self.client.set_tag(self.run_id, "mlflow.note.content", note)

    def log_comparison(self, rows: list[dict], summary_metric: str | None, swept: Sequence[str]) -> None:
        """A sweep parent's view of its members: a table (JSON + markdown), each metric stepped by
        member (so the parent's charts compare them), the swept values as params, a plot."""
        self.log_dict(rows, "sweep/comparison.json")
        columns = list(dict.fromkeys(k for r in rows for k in r))
        self.log_text(
            "| "
            + " | ".join(columns)
            + " |\n|"
            + "---|" * len(columns)
            + "\n"
            + "\n".join("| " + " | ".join(_format_cell(r.get(c, "")) for c in columns) + " |" for r in rows),
            "sweep/comparison.md",
        )
        for row in rows:
            numbers = {k: v for k, v in row.items() if k != "member" and k not in swept and isinstance(v, (int, float))}
            self.log_metrics(numbers, step=int(row["member"]))
        self.log_params({f"sweep.{key}": ",".join(str(r.get(key, "")) for r in rows) for key in swept})
        self.log_params({"sweep.members": len(rows)})
        metric = summary_metric if any(summary_metric in r for r in rows) else None
        if metric is None:
            return
        labels = [" ".join(f"{k}={r.get(k)}" for k in swept) or str(r["member"]) for r in rows]
        values = [float(r.get(metric, float("nan"))) for r in rows]
        figure = Figure(figsize=(max(4.0, 1.2 * len(rows)), 3.2))  # no pyplot: no GUI backend, no global state
        axis = figure.subplots()
        axis.bar(range(len(rows)), values, color="#4a7ab5")
        axis.set_xticks(range(len(rows)), labels, rotation=20, ha="right", fontsize=8)
        axis.set_ylabel(metric)
        axis.set_title(f"sweep: {metric} per member")
        figure.tight_layout()
        self.log_figure(figure, "sweep/comparison.png")

    def iter_metric_history(self, key: str) -> Iterator[tuple[int, float]]:
        for m in self.client.get_metric_history(self.run_id, key):
            yield m.step, m.value


def resolve_model_version(name: str, tracking_uri: str | None = None, version: str | None = None, alias: str = SERVING):
    """The registered version a loader should use: `version` if given, else the one holding `alias`.

    `name` may carry the choice itself, as in MLflow's URIs: `lm-draft@candidate`, `lm-draft/3`.
    There is no "newest version" fallback: a small run registers a `@candidate`, and only a
    promotion (`promote`, `mlsys promote`) changes what `@serving` loaders get.
    """
    if "@" in name:
        name, alias = name.split("@", 1)
    elif "/" in name and version is None:
        name, version = name.rsplit("/", 1)
    uri = tracking_uri or default_tracking_uri()
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)  # never a registry set globally elsewhere
    versions = client.search_model_versions(f"name='{name}'")
    if not versions:
        raise LookupError(f"no registered model named {name!r} in the MLflow store at {uri}")
    if version is not None:
        chosen = next((v for v in versions if str(v.version) == str(version)), None)
        if chosen is None:
            have = sorted(int(v.version) for v in versions)
            raise LookupError(f"model {name!r} has no version {version}; have {have}")
        return chosen
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        holders = {a: v.version for v in versions for a in (v.aliases or [])}
        raise LookupError(
            f"model {name!r} has no version with alias @{alias} (aliases: {holders or 'none'}); promote one with "
            f"`mlsys promote {name} <version>` or load {name}@candidate / {name}/<version> explicitly"
        ) from None


def load_registered_model_dir(
    name: str, tracking_uri: str | None = None, version: str | None = None, alias: str = SERVING
) -> Path:
    """Download a registered model version (`@serving` by default) and return the saved folder: the
    files as the flow saved them (inside a pyfunc model, its `model` artifact)."""
    uri = tracking_uri or default_tracking_uri()
    chosen = resolve_model_version(name, uri, version, alias)
    dest = tempfile.mkdtemp(prefix=f"model-{chosen.name}-")
    folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=chosen.source, dst_path=dest, tracking_uri=uri))
    if (folder / MLMODEL_FILE).exists():
        flavor = Model.load(str(folder)).flavors.get("python_function", {})
        saved = flavor.get("artifacts", {}).get(ARTIFACT)
        if saved:
            return folder / saved["path"]
    return folder


def evaluate_quality(check: str, metrics: Mapping[str, Any]) -> tuple[bool, str]:
    """`val_perplexity<=500` against a run's metrics -> (passed, what was compared)."""
    match = re.fullmatch(r"\s*([\w.\-/]+)\s*(<=|>=|<|>|==)\s*([-+0-9.eE]+)\s*", check or "")
    if not match:
        raise ValueError(f"quality check {check!r}: expected <metric><op><number>, e.g. val_perplexity<=500")
    key, op, goal = match.group(1), match.group(2), float(match.group(3))
    if key not in metrics:
        return False, f"{key} not measured (have {', '.join(sorted(metrics)) or 'none'})"
    value = float(metrics[key])
    ops = {"<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt, "==": operator.eq}
    passed = ops[op](value, goal) and math.isfinite(value)
    return passed, f"{key}={value:.6g} {op} {goal:g}: {'passed' if passed else 'failed'}"


def promote(
    name: str,
    version: str | None = None,
    check: str | None = None,
    tracking_uri: str | None = None,
    force: bool = False,
) -> tuple[str, str]:
    """Move `@serving` to `version` (default: the `@candidate`) if it passes its quality check.

    The check is `check` or the one recorded on the version at registration (tag `quality.check`),
    evaluated on the metrics of the run that logged it. Without any check only `force` promotes.
    Returns (version, reason); raises ValueError (nothing changed) when the check fails.
    """
    uri = tracking_uri or default_tracking_uri()
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)  # never a registry set globally elsewhere
    chosen = resolve_model_version(name, uri, version, CANDIDATE)
    check = check or (chosen.tags or {}).get("quality.check")
    if check:
        metrics = client.get_run(chosen.run_id).data.metrics if chosen.run_id else {}
        passed, reason = evaluate_quality(check, metrics)
    else:
        passed, reason = False, "no quality check recorded for this version"
    if not passed and not force:
        raise ValueError(f"{chosen.name} v{chosen.version} not promoted to @{SERVING}: {reason}")
    client.set_registered_model_alias(chosen.name, SERVING, chosen.version)
    client.set_model_version_tag(chosen.name, chosen.version, "promoted", reason if passed else f"forced ({reason})")
    return str(chosen.version), reason


def open_run(
    tracking_uri: str | None,
    experiment: str,
    run_name: str | None = None,
    parent_run_id: str | None = None,
    tags: Mapping[str, Any] | None = None,
) -> Tracker:
    uri = tracking_uri or default_tracking_uri()
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)  # never a registry set globally elsewhere
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        artifact_location = _artifact_root_for(uri) + f"/{experiment}" if uri.startswith("sqlite:///") else None
        try:
            experiment_id = client.create_experiment(
                experiment, artifact_location=artifact_location, tags=EXPERIMENT_KIND
            )
        except Exception:  # created concurrently by another process
            experiment_id = client.get_experiment_by_name(experiment).experiment_id
    else:
        experiment_id = exp.experiment_id
        if "mlflow.experimentKind" not in exp.tags:  # made before this tag existed: the classic view too
            for key, value in EXPERIMENT_KIND.items():
                client.set_experiment_tag(experiment_id, key, value)
    all_tags = {k: str(v) for k, v in (tags or {}).items()}
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    run = client.create_run(experiment_id, run_name=run_name, tags=all_tags)
    tracker = Tracker(uri, run.info.run_id, experiment_id)
    tracker._client = client
    return tracker


def _format_cell(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value).replace("|", "/")


def close_run(tracker: Tracker, failed: bool = False) -> None:
    tracker.client.set_terminated(tracker.run_id, status="FAILED" if failed else "FINISHED")
