"""The flows are the deployments: typed parameter form, one flow run per run, clean config failures,
sweeps as nested flow runs; Hydra help/completion; registry aliases; Dask workers on the run's API."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from dataclasses import asdict, fields, is_dataclass
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mlflow.tracking import MlflowClient
from prefect import flow, get_client, task
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId
from prefect.context import FlowRunContext
from prefect.server.api.server import SubprocessASGIServer
from prefect.settings import PREFECT_API_URL
from prefect.utilities.callables import parameter_schema

from mlsys.cli import mlflow_ui_command
from mlsys.compose import InvalidConfig, compose_parameters, sweep_members
from mlsys.config import FlowConfig, RunnerConfig, TrackingConfig
from mlsys.flow import compose, discover_flows, get_spec
from mlsys.runners import dask_runner
from mlsys.schema import changed, field_docs
from mlsys.tracking import (
    evaluate_quality,
    load_registered_model_dir,
    open_run,
    promote,
    resolve_model_version,
)
from tasks.serve import _resolve_draft_source
from tests.infra.flow_under_test import FAST_OVERRIDES, FLOW, METRIC

FLOWS = sorted(discover_flows())


def _form_schema(name: str) -> tuple[dict, dict]:
    """(the `config` parameter's schema, its definitions) as Prefect sends them to the UI."""
    schema = parameter_schema(get_spec(name).flow.fn).model_dump()
    definitions = schema["definitions"]
    ref = schema["properties"]["config"]
    ref = ref.get("$ref") or ref["allOf"][0]["$ref"]
    return definitions[ref.rsplit("/", 1)[1]], definitions


@pytest.mark.parametrize("flow", FLOWS)
def test_parameter_form_has_every_config_field_with_yaml_defaults(flow):
    form, _ = _form_schema(flow)
    spec = get_spec(flow)
    assert {f.name for f in fields(spec.config_cls)} == set(form["properties"])
    for key, value in spec.defaults.items():
        prop = form["properties"][key]
        if not isinstance(value, dict):
            assert prop.get("default") == value, (flow, key)
    schema = get_spec(flow).flow.parameters.model_dump()
    assert set(schema["properties"]) == {"config", "overrides", "multirun"}


def test_form_descriptions_come_from_field_comments():
    form, definitions = _form_schema(FLOW)
    docs = field_docs(get_spec(FLOW).config_cls)
    assert docs["rounds"] and form["properties"]["rounds"]["description"] == docs["rounds"]
    runner = definitions[form["properties"]["runner"]["$ref"].rsplit("/", 1)[1]]
    assert runner["properties"]["_target_"]["default"] == "mlsys.runners.thread_runner"
    assert "threads for runner=local" in runner["properties"]["max_workers"]["description"]


@pytest.mark.parametrize("flow", FLOWS)
def test_form_round_trips_the_composed_demo_config(flow):
    spec = get_spec(flow)
    cfg = compose(flow, spec.demo_overrides)
    form = spec.parameters.model_validate(asdict(cfg))  # the form accepts every value the yaml produces
    again = compose_parameters(spec, form.model_dump(by_alias=True, mode="json"), [])
    assert asdict(again) == asdict(cfg)


def test_form_values_and_override_strings_give_the_same_config():
    spec = get_spec(FLOW)
    form = {"rounds": 4, "fed_strategy": {"alpha": 0.25}}
    by_form = compose_parameters(spec, form, ["clients=3", "fed_speed=normal"])
    by_strings = compose(FLOW, ["rounds=4", "fed_strategy.alpha=0.25", "clients=3", "fed_speed=normal"])
    assert asdict(by_form) == asdict(by_strings)


@pytest.mark.parametrize(
    "form,overrides,named",
    [
        ({}, ["rounds=many"], "rounds"),
        ({}, ["no_such_key_xyz=1"], "no_such_key_xyz"),
        ({}, ["+brand_new_key=1"], "brand_new_key"),
        ({"rounds": "many"}, [], "rounds"),
        ({"not_a_field": 1}, [], "not_a_field"),
        ({"fed_strategy": {"alphaa": 1}}, [], "alphaa"),
        ({}, ["fed_strategy=no_such_strategy"], "no_such_strategy"),
    ],
)
def test_bad_config_is_named_before_anything_runs(form, overrides, named):
    with pytest.raises(InvalidConfig) as err:
        compose_parameters(get_spec(FLOW), form, overrides)
    assert named in str(err.value) and str(err.value).startswith(f"{FLOW}: bad config")


def test_a_dataclass_check_failure_is_a_named_config_error():
    with pytest.raises(InvalidConfig, match="train.iters"):
        compose_parameters(get_spec("lm_train"), {"train": {"iters": 0}}, [])


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.sampled_from(["rounds", "clients", "lr", "seed"]), st.integers(-5, 50), max_size=4))
def test_changed_keeps_exactly_the_differing_leaves(edits):
    defaults = get_spec(FLOW).defaults
    given_ = {**defaults, **edits}
    diff = changed(given_, defaults)
    assert diff == {k: v for k, v in edits.items() if defaults[k] != v}


def test_sweep_members_expand_like_hydra():
    members = sweep_members(["seed=1,2", "rounds=3", "fed_strategy=fedavg,fedcompass"])
    assert len(members) == 4
    assert all("rounds=3" in m for m in members)
    assert {tuple(sorted(m)) for m in members} == {
        tuple(sorted(["seed=" + s, "rounds=3", "fed_strategy=" + f])) for s in "12" for f in ("fedavg", "fedcompass")
    }


def test_deployment_style_run_is_one_flow_run_whose_id_is_the_mlflow_tag(prefect_harness, flow_overrides, mlflow_uri):
    spec = get_spec(FLOW)
    state = spec.flow(overrides=FAST_OVERRIDES + flow_overrides + ["seed=21"], return_state=True)
    assert state.is_completed(), state.message
    result = state.result()
    run_ = MlflowClient(tracking_uri=mlflow_uri).get_run(result["run_id"])
    flow_run_id = str(state.state_details.flow_run_id)
    assert run_.data.tags["prefect.flow_run_id"] == flow_run_id
    assert run_.info.run_name.startswith(f"{FLOW} ") and "rounds=2" in run_.info.run_name
    assert METRIC in run_.data.metrics and "| summary | value |" in run_.data.tags["mlflow.note.content"]
    with get_client(sync_client=True) as client:
        children = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[state.state_details.flow_run_id])
            )
        )
        artifacts = client.read_artifacts()
    assert children == [], "a wrapper subflow ran"
    assert any(a.flow_run_id == state.state_details.flow_run_id and a.type == "table" for a in artifacts)
    experiment = MlflowClient(tracking_uri=mlflow_uri).get_experiment(run_.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"


def test_bad_override_fails_the_flow_run_with_the_key_in_its_message(prefect_harness, flow_overrides):
    state = get_spec(FLOW).flow(overrides=flow_overrides + ["rounds=many"], return_state=True)
    assert state.is_failed()
    assert "rounds" in state.message and "many" in state.message


def test_multirun_parameter_runs_members_as_nested_flow_runs(prefect_harness, flow_overrides, mlflow_uri):
    state = get_spec(FLOW).flow(
        overrides=FAST_OVERRIDES + flow_overrides + ["seed=31,32"], multirun=True, return_state=True
    )
    assert state.is_completed(), state.message
    result = state.result()
    with get_client(sync_client=True) as client:
        children = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[state.state_details.flow_run_id])
            )
        )
    assert sorted(c.name for c in children) == [f"{FLOW} [1/2] seed=31", f"{FLOW} [2/2] seed=32"]
    client = MlflowClient(tracking_uri=mlflow_uri)
    parent = client.get_run(result["run_id"])
    members = [
        r
        for r in client.search_runs([parent.info.experiment_id])
        if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id
    ]
    assert sorted(r.data.params["seed"] for r in members) == ["31", "32"]
    assert parent.data.params["sweep.seed"] == "31,32"
    history = client.get_metric_history(parent.info.run_id, METRIC)
    assert sorted(m.step for m in history) == [1, 2]
    logged = {a.path for a in client.list_artifacts(parent.info.run_id, "sweep")}
    assert {"sweep/comparison.json", "sweep/comparison.md", "sweep/comparison.png"} <= logged


def test_dask_workers_use_the_flow_runs_prefect_api(prefect_harness):
    """With no PREFECT_API_URL in the environment, a LocalCluster worker would start its own server."""

    @task
    def where() -> dict:
        return {
            "pid": os.getpid(),
            "api": os.environ.get("PREFECT_API_URL"),
            "own_servers": [s.port for s in SubprocessASGIServer._instances.values() if s.running],
        }

    @flow
    def probe() -> list:
        with dask_runner(n_workers=1, dashboard=False) as runner:
            with FlowRunContext.get().model_copy(update={"task_runner": runner}):
                return [future.result() for future in [where.submit(), where.submit()]]

    assert "PREFECT_API_URL" not in os.environ  # the harness sets it for this process only
    seen = probe()
    assert all(s["pid"] != os.getpid() for s in seen), "tasks did not run in a worker process"
    assert {s["api"] for s in seen} == {str(PREFECT_API_URL.value())}
    assert all(s["own_servers"] == [] for s in seen)


def _linger() -> int:
    """Keep the worker process from exiting for 6 s after it is told to stop (a non-daemon thread),
    longer than the 4 s a nanny waits by default before it kills the process."""
    threading.Thread(target=time.sleep, args=(6.0,), daemon=False).start()
    return os.getpid()


def test_a_dask_runs_teardown_kills_no_worker(prefect_harness, capfd, caplog):
    """The LocalCluster waits for its worker processes to exit: no "still alive ... killing" at the end."""
    linger = task(_linger)

    @flow
    def short_dask_run() -> list:
        with dask_runner(n_workers=1, dashboard=False) as runner:
            with FlowRunContext.get().model_copy(update={"task_runner": runner}):
                return [linger.submit().result()]

    with caplog.at_level(logging.INFO, logger="distributed"):
        [worker_pid] = short_dask_run()
    output = "\n".join([*capfd.readouterr(), caplog.text])
    assert worker_pid != os.getpid()
    assert "still alive" not in output and "killed by signal" not in output, output[-2000:]


# --- registry aliases ----------------------------------------------------------------------------


def _register(uri: str, name: str, payload: str, tmp_path, run_name: str) -> str:
    tracker = open_run(uri, "registry-test", run_name=run_name, tags={"flow": "lm_train"})
    folder = tmp_path / run_name
    folder.mkdir()
    (folder / "config.json").write_text(payload)
    tracker.log_metrics({"val_perplexity": float(payload)})
    return tracker.log_model_dir(folder, "model", registered_name=name, tags={"size": run_name})


def test_small_run_does_not_change_what_serve_loads(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    good = _register(uri, "lm-draft", "42.0", tmp_path, "full")
    assert promote("lm-draft", good, "val_perplexity<=100", uri) == (good, "val_perplexity=42 <= 100: passed")
    small = _register(uri, "lm-draft", "19580.0", tmp_path, "demo")
    with pytest.raises(ValueError, match="not promoted"):
        promote("lm-draft", small, "val_perplexity<=100", uri)
    models = SimpleNamespace(draft="mlflow", draft_path=None, draft_registered_name="lm-draft")
    source, folder = _resolve_draft_source(models, tmp_path / "no-local-draft", uri)
    assert source == "gpt_folder" and open(os.path.join(folder, "config.json")).read() == "42.0"
    assert str(resolve_model_version("lm-draft@candidate", uri).version) == small
    client = MlflowClient(tracking_uri=uri)
    version = client.get_model_version("lm-draft", small)
    assert version.tags["size"] == "demo" and version.description and version.tags["flow"] == "lm_train"


def test_unpromoted_model_is_not_loaded_by_default(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    _register(uri, "only-candidate", "7.0", tmp_path, "first")
    with pytest.raises(LookupError, match="@serving"):
        load_registered_model_dir("only-candidate", uri)
    assert (load_registered_model_dir("only-candidate/1", uri) / "config.json").read_text() == "7.0"


@pytest.mark.parametrize(
    "check,metrics,passed",
    [
        ("val_perplexity<=100", {"val_perplexity": 99.5}, True),
        ("val_perplexity<=100", {"val_perplexity": float("nan")}, False),
        ("accuracy>=0.9", {"accuracy": 0.5}, False),
        ("accuracy>=0.9", {}, False),
    ],
)
def test_quality_check(check, metrics, passed):
    assert evaluate_quality(check, metrics)[0] is passed


def test_quality_check_rejects_a_malformed_rule():
    with pytest.raises(ValueError, match="expected <metric><op><number>"):
        evaluate_quality("perplexity is small", {})


# --- command line --------------------------------------------------------------------------------


def _cli(*args, env=None, timeout=180):
    return subprocess.run(
        [sys.executable, "-m", "mlsys", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def test_flow_help_lists_only_its_groups_and_every_key_with_its_meaning():
    proc = _cli("run", FLOW, "--help")
    assert proc.returncode == 0, proc.stderr
    assert "fed_strategy" in proc.stdout and "fedcompass*" in proc.stdout
    assert "gnn_model" not in proc.stdout and "quant_method" not in proc.stdout  # other flows' groups
    docs = field_docs(get_spec(FLOW).config_cls)
    rounds_line = next(line for line in proc.stdout.splitlines() if line.strip().startswith("rounds "))
    assert docs["rounds"] in rounds_line


def test_shell_completion_completes_a_flows_groups():
    line = f"mlsys run {FLOW} fed_strategy="
    proc = _cli("-sc", "query=bash", env={"COMP_LINE": line, "COMP_POINT": str(len(line))})
    assert proc.returncode == 0, proc.stderr
    assert "fed_strategy=fedavg" in proc.stdout.split()
    install = _cli("-sc", "install=bash")
    assert "complete -o nospace -o default -F hydra_bash_completion mlsys" in install.stdout


def test_ui_command_runs_one_worker_without_the_job_runner():
    command, env = mlflow_ui_command([])
    assert command[command.index("--workers") + 1] == "1"
    assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false" and "127.0.0.1" in command


def test_every_config_dataclass_field_of_every_flow_is_documented_or_nested():
    """The help and the form read meanings from comments: list what lacks one (none of the platform's)."""
    for cls in (RunnerConfig, TrackingConfig, FlowConfig):
        docs = field_docs(cls)
        missing = [
            f.name
            for f in fields(cls)
            if f.name not in docs and not is_dataclass(f.type) and f.name not in {"runner", "tracking"}
        ]
        assert missing == [], (cls.__name__, missing)
