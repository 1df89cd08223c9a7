"""The coscientist flow end to end through Hydra + Prefect + MLflow, with the scripted backend
playing the synthetic task (components/coscientist/synthetic.py): plumbing, not model output."""

import json

import pytest
from mlflow.tracking import MlflowClient

from components.coscientist.agents import AgentSpec, agent_suite
from components.coscientist.proximity import Proximity
from components.coscientist.state import TournamentState, set_aside
from components.coscientist.supervisor import Supervisor
from mlsys.flow import compose, get_spec, run

SCRIPTED = [
    "llm=scripted",
    "llm.script=components.coscientist.synthetic.script",
    "proximity.backend=tfidf",
    "supervisor.initial_hypotheses=4",
    "supervisor.max_parallel=3",
    "runner.max_workers=3",
]


def _artifacts(client, run_id, path=""):
    out = []
    for item in client.list_artifacts(run_id, path):
        out += _artifacts(client, run_id, item.path) if item.is_dir else [item.path]
    return out


def test_flow_runs_logs_report_and_resumes(prefect_harness, flow_overrides, mlflow_uri):
    first = run(compose("coscientist", flow_overrides + SCRIPTED + ["budget.calls=24"]))
    client = MlflowClient(mlflow_uri)
    mlrun = client.get_run(first["run_id"])
    assert mlrun.info.status == "FINISHED"
    assert mlrun.data.params["budget.calls"] == "24" and mlrun.data.params["elo.initial"] == "1200.0"
    metrics = mlrun.data.metrics
    assert 21 <= metrics["llm_calls"] <= 24 and metrics["llm.calls"] == metrics["llm_calls"]
    assert metrics["hypotheses"] >= 4 and metrics["matches"] >= 1 and metrics["top_elo"] > 1200
    assert metrics["elo_spread"] > 0  # ratings moved apart: matches were decided
    assert len(client.get_metric_history(first["run_id"], "spent_calls")) > 5  # progress per finished task
    files = _artifacts(client, first["run_id"])
    assert {"report/report.md", "report/report.html", "report/elo_history.png", "report/ranking.json"} <= set(files)
    ranking = json.loads(open(client.download_artifacts(first["run_id"], "report/ranking.json")).read())
    assert ranking["ranking"][0]["elo"] == pytest.approx(metrics["top_elo"], abs=0.1)
    assert ranking["ranking"][0]["review"] is not None
    report = open(client.download_artifacts(first["run_id"], "report/report.md")).read()
    assert "## Top hypotheses" in report and "## Proximity clusters" in report

    # The same goal and work_dir resume the saved state: a larger budget continues, nothing restarts.
    second = run(compose("coscientist", flow_overrides + SCRIPTED + ["budget.calls=34"]))
    m2 = client.get_run(second["run_id"]).data
    assert int(m2.tags["coscientist.resumed_tasks"]) >= 10  # tasks finished by the first run
    assert m2.metrics["hypotheses"] >= metrics["hypotheses"]
    assert 31 <= m2.metrics["llm_calls"] <= 34 and m2.metrics["llm.calls"] <= 34 - 21  # only the new calls


def test_wrong_config_keys_and_values_fail_at_composition():
    with pytest.raises(Exception, match="budget.callz"):
        compose("coscientist", ["budget.callz=3"])
    with pytest.raises(ValueError, match="both are null"):
        compose("coscientist", ["budget.calls=null"])


def test_resume_false_sets_the_old_state_aside_instead_of_deleting_it(tmp_path):
    state = tmp_path / "s.sqlite"
    state.write_text("saved")
    (tmp_path / "s.sqlite-wal").write_text("wal")
    moved = set_aside(state)
    assert not state.exists() and moved.read_text() == "saved"
    assert (tmp_path / f"{moved.name}-wal").read_text() == "wal"
    assert set_aside(state) is None  # nothing to set aside


def test_demo_settings_leave_budget_for_a_tournament(tmp_path):
    """The suite's demo (conf/experiment/demo/coscientist.yaml) with distinct hypotheses (the synthetic
    task): its budget seeds the pool and still plays several matches, so Elo moves off 1200."""
    demo = get_spec("coscientist").demo_overrides
    cfg = compose("coscientist", demo + SCRIPTED[:3] + [f"work_dir={tmp_path}"])
    assert cfg.budget.calls <= 16  # still a demo: seconds per call with the embedded model
    state = TournamentState(tmp_path / "demo.sqlite", cfg.goal, cfg.elo)
    spec = AgentSpec(cfg.goal, agents=cfg.agents, llm=cfg.llm)
    supervisor = Supervisor(
        state, agent_suite(spec), Proximity(cfg.proximity), cfg.budget, cfg.supervisor, cfg.elo, seed=cfg.seed
    )
    summary = supervisor.run()
    assert summary["matches"] >= 3 and summary["spent"]["calls"] <= cfg.budget.calls
    elos = [h["elo"] for h in supervisor.ranking()]
    assert max(elos) > cfg.elo.initial > min(elos)
    state.close()
