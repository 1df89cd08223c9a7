"""gcn_train end to end through Hydra -> Prefect -> MLflow on a tiny graph, and every config option."""

from __future__ import annotations

import pytest
import torch
from mlflow.tracking import MlflowClient

from components.graph.training import training_device
from mlsys.flow import compose, run
from tasks.gcn_train import build_component, make_loader

TINY = [
    "graph.num_nodes=3000",
    "graph.feat_dim=16",
    "epochs=2",
    "batch_size=512",
    "eval_batch_size=2048",
    "fanouts=[5,5]",
    "progress=false",
]


def _one_batch_loader(cfg, graph):
    return make_loader(
        cfg.loader,
        graph,
        graph.val_idx,
        cfg.fanouts,
        256,
        seed=0,
        device="cpu",
        shuffle=False,
        max_batches=1,
        sampling_threads=1,
    )


@pytest.mark.parametrize("loader", ["zero_copy", "staged", "dgl"])
@pytest.mark.parametrize("model", ["gcn", "sage"])
def test_every_loader_and_model_option_instantiates(loader, model, small_graph):
    cfg = compose("gcn_train", [f"loader={loader}", f"gnn_model={model}"])
    built = _one_batch_loader(cfg, small_graph)
    assert built.name == loader
    net = build_component(
        cfg.gnn_model,
        "gnn_model",
        in_feats=small_graph.feat_dim,
        num_classes=small_graph.num_classes,
        num_layers=len(cfg.fanouts),
    )
    assert type(net).__name__ == {"gcn": "GCN", "sage": "GraphSAGE"}[model]


def test_option_of_another_loader_is_rejected_by_name(small_graph):
    cfg = compose("gcn_train", ["loader=staged", "loader.prefetch=true"])
    with pytest.raises(ValueError, match="prefetch"):
        _one_batch_loader(cfg, small_graph)


def test_flow_end_to_end_logs_metrics_params_and_plots(prefect_harness, flow_overrides, mlflow_uri):
    result = run(compose("gcn_train", flow_overrides + TINY))
    metrics = result["metrics"]
    assert metrics["test_accuracy"] > metrics["mlp_test_accuracy"]
    for key in ("epoch_seconds", "stall_fraction", "gather_gbps", "feed_gbps", "peak_rss_mb", "prep_ms_median"):
        assert metrics[key] > 0 or key == "stall_fraction", key
    client = MlflowClient(tracking_uri=mlflow_uri)
    logged = client.get_run(result["run_id"])
    assert logged.info.status == "FINISHED"
    assert logged.data.params["loader._target_"].endswith("ZeroCopyFeatureLoader")
    assert logged.data.params["graph.num_nodes"] == "3000"
    assert len(client.get_metric_history(result["run_id"], "val_accuracy")) == 2  # one per epoch
    assert "mlp.val_accuracy" in logged.data.metrics
    artifacts = {a.path for a in client.list_artifacts(result["run_id"])}
    assert {"graph.json", "plots", "tables"} <= artifacts
    assert [a.path for a in client.list_artifacts(result["run_id"], "plots")] == ["plots/training.png"]


def test_cuda_without_a_cuda_dgl_is_refused_and_auto_means_cpu():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU; the refusal is for CPU-only DGL installs")
    assert training_device(compose("gcn_train", ["device=auto"]).device) == "cpu"
    with pytest.raises(ValueError, match="CUDA build of DGL"):
        training_device(compose("gcn_train", ["device=cuda"]).device)
