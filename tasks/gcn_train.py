"""Prefect tasks of the gcn_train flow: the graph, a model trained and evaluated, the training plots.

Tasks take live objects (graph, model) and run in the flow's process; NO_CACHE keeps Prefect from
hashing multi-GB tensors for cache keys. Loader and model choices are `_target_` configs, built with
`hydra.utils.instantiate` here (components import no orchestrator).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from prefect import task
from prefect.cache_policies import NO_CACHE

from components.graph.config import GnnModelConfig, GraphSource, LoaderConfig, TrainingSettings
from components.graph.data import GraphData, load_or_generate
from components.graph.loaders import FeatureLoader
from components.graph.models import FeatureMLP
from components.graph.plots import training_figure
from components.graph.training import EpochStats, FitResult, fit
from mlsys.tracking import Tracker


def build_component(cfg: LoaderConfig | GnnModelConfig, group: str, **runtime: Any) -> Any:
    """Instantiate a `_target_` config without its unset (None) options; an option the class does not
    take is named with the group."""
    options = {k: v for k, v in asdict(cfg).items() if v is not None}
    try:
        return instantiate(options, **runtime)
    except InstantiationException as exc:
        if "unexpected keyword argument" in str(exc):
            given = sorted(k for k in options if not k.startswith("_"))
            raise ValueError(f"{group} {options['_target_']} rejects one of its options {given}: {exc}") from exc
        raise


def make_loader(
    loader_cfg: LoaderConfig,
    data: GraphData,
    seeds: torch.Tensor,
    fanouts: Sequence[int],
    batch_size: int,
    *,
    seed: int,
    device: str,
    shuffle: bool,
    max_batches: Optional[int],
    sampling_threads: int,
) -> FeatureLoader:
    """The configured loader over `seeds` (conf/loader/*.yaml)."""
    return build_component(
        loader_cfg,
        "loader",
        data=data,
        seeds=seeds,
        fanouts=list(fanouts),
        batch_size=batch_size,
        shuffle=shuffle,
        seed=seed,
        device=device,
        max_batches=max_batches,
        sampling_threads=sampling_threads,
    )


@task(name="gcn-prepare-graph", cache_policy=NO_CACHE)
def prepare_graph(graph: GraphSource, seed: int, cache_dir: Path, tracker: Tracker) -> GraphData:
    """The user's graph (graph.path) or the cached synthetic graph (generated in chunks if missing); its
    description goes to MLflow."""
    if graph.path:
        data = load_or_generate(path=graph.path, seed=seed)
    else:
        data = load_or_generate(spec=graph.synthetic_spec(seed), cache_root=cache_dir)
    tracker.log_dict(data.describe(), "graph.json")
    tracker.log_metrics({f"graph.{k}": v for k, v in data.describe().items() if isinstance(v, (int, float))})
    return data


@task(name="gcn-train-and-evaluate", cache_policy=NO_CACHE)
def train_and_evaluate(
    data: GraphData,
    model_cfg: GnnModelConfig,
    loader_cfg: LoaderConfig,
    settings: TrainingSettings,
    seed: int,
    device: str,
    tracker: Tracker,
    baseline: bool = False,
) -> FitResult:
    """Train the configured GNN (or, `baseline=True`, the MLP on the same features: what the graph adds)
    from the run's seed, logging each epoch's metrics (the baseline's under `mlp.`), then test it."""
    torch.manual_seed(seed)
    num_layers = len(settings.fanouts)
    if baseline:
        model = FeatureMLP(data.feat_dim, model_cfg.hidden, data.num_classes, num_layers, model_cfg.dropout)
    else:
        model = build_component(
            model_cfg, "gnn_model", in_feats=data.feat_dim, num_classes=data.num_classes, num_layers=num_layers
        )
    prefix = "mlp." if baseline else ""

    def loader(seeds: torch.Tensor, batch_size: int, shuffle: bool, max_batches: Optional[int]) -> FeatureLoader:
        return make_loader(
            loader_cfg,
            data,
            seeds,
            settings.fanouts,
            batch_size,
            seed=seed,
            device=device,
            shuffle=shuffle,
            max_batches=max_batches,
            sampling_threads=settings.sampling_threads,
        )

    def log_epoch(stats: EpochStats, val_accuracy: float) -> None:
        metrics = {f"{prefix}{k}": v for k, v in stats.metrics().items() if k != "epoch"}
        tracker.log_metrics(metrics | {f"{prefix}val_accuracy": val_accuracy}, step=stats.epoch)

    return fit(model.to(device), data, loader, settings, "mlp" if baseline else "gnn", log_epoch)


@task(name="gcn-log-plots", cache_policy=NO_CACHE)
def log_training_plots(tracker: Tracker, result: FitResult, loader_name: str) -> None:
    """Loss/accuracy per epoch, where each epoch's time went, the per-batch data-prep latency; the epochs' table."""
    tracker.log_figure(training_figure(result, loader_name), "plots/training.png")
    tracker.log_dict([asdict(s) for s in result.history], "tables/epochs.json")
