"""gcn_train: GCN / GraphSAGE with neighbour sampling and a zero-copy feature loader (PyTorch-Direct)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from components.checks import ConfigError, at_least, positive
from components.graph.generator import SyntheticGraphSpec
from mlsys.flow import FlowConfig, system_flow
from mlsys.tracking import Tracker


@dataclass
class GraphSourceConfig:
    """The graph: a user graph at `path`, or a seeded synthetic one (the rest of the fields)."""

    path: Optional[str] = None  # folder (edges + features.npy + labels.npy) or DGL .bin; None: synthetic
    num_nodes: int = 50_000  # small enough for a CPU epoch in seconds; the benchmark uses 2.2M
    num_classes: int = 8  # communities = classes
    feat_dim: int = 64  # row width; 4 * feat_dim bytes per row
    avg_degree: float = 10.0  # mean undirected degree, typical of citation graphs
    degree_exponent: float = 2.5  # power-law degree propensities: a few hubs, many leaves
    homophily: float = 0.8  # fraction of edges inside a community: what makes the graph informative
    class_separation: float = 1.0  # community centroids 1 noise-std apart: own features are weak evidence
    train_fraction: float = 0.6  # of all nodes (large graphs: a small fraction keeps epochs short)
    val_fraction: float = 0.2
    test_fraction: float = 0.2
    chunk_rows: int = 131_072  # generation chunk: the feature table is never held in RAM at once

    def __post_init__(self) -> None:
        if self.path is None:  # a synthetic graph: the generator's own checks, before anything is generated
            spec = SyntheticGraphSpec(**{k: v for k, v in vars(self).items() if k != "path"})
            try:
                spec.validate()
            except ValueError as err:
                raise ConfigError("graph", "synthetic", str(err)) from err


@dataclass
class LoaderConfig:
    """conf/loader/{zero_copy,staged,dgl}.yaml; options a loader does not take stay null."""

    _target_: str = "components.graph.loaders.ZeroCopyFeatureLoader"
    align_rows: Optional[bool] = True  # zero_copy: 128-byte aligned rows in the batch buffers
    prefetch: Optional[bool] = True  # zero_copy: a worker gathers batch i+1 while batch i trains
    worker_threads: Optional[int] = None  # zero_copy: torch threads of the prefetch gather (None: torch's)
    num_workers: Optional[int] = None  # dgl: sampling worker processes (0: in the training process)


@dataclass
class GnnModelConfig:
    """conf/gnn_model/{gcn,sage}.yaml; the layer count is len(fanouts)."""

    _target_: str = "components.graph.models.GCN"
    hidden: int = 64  # enough for 8 communities; small keeps CPU compute per step short
    dropout: float = 0.5  # Kipf & Welling's value
    aggregator: Optional[str] = None  # sage: mean | pool | lstm | gcn


@dataclass
class GcnTrainConfig(FlowConfig):
    graph: GraphSourceConfig = field(default_factory=GraphSourceConfig)
    loader: LoaderConfig = field(default_factory=LoaderConfig)
    gnn_model: GnnModelConfig = field(default_factory=GnnModelConfig)
    fanouts: list[int] = field(default_factory=lambda: [10, 10])  # GraphSAGE paper's 2-hop sampling, smaller
    batch_size: int = 512  # seed nodes per step
    eval_batch_size: int = 2048  # evaluation only reads, so larger batches are fine
    epochs: int = 5  # the synthetic graph converges in ~3 epochs
    lr: float = 0.005  # Adam; 0.01 oscillates with batch 512
    weight_decay: float = 5e-4  # Kipf & Welling's L2
    max_batches_per_epoch: Optional[int] = None  # cap for huge training sets; None: every seed node
    sampling_threads: int = 1  # DGL OpenMP threads for sampling; 1 makes batches reproducible
    mlp_baseline: bool = True  # also train an MLP on the same features: shows what the graph adds
    progress: bool = True  # tqdm bar per epoch

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.fanouts or any(f < 1 and f != -1 for f in self.fanouts):
            raise ConfigError("fanouts", self.fanouts, "must list one fan-out per layer, each >= 1 (or -1: all)")
        for key in ("batch_size", "eval_batch_size", "epochs", "sampling_threads"):
            at_least(key, getattr(self, key), 1)
        positive("lr", self.lr)
        at_least("weight_decay", self.weight_decay, 0)
        if self.max_batches_per_epoch is not None:
            at_least("max_batches_per_epoch", self.max_batches_per_epoch, 1)


def training_device(cfg: GcnTrainConfig) -> str:
    """cfg.device, except that DGL blocks can only live on a GPU with a CUDA build of DGL.

    The PyPI DGL is CPU-only, so `auto` means CPU unless DGL can use the GPU; an explicit `cuda`
    without it is refused (the GPU gather comparison is benchmarks/gcn_loader_cuda.py).
    """
    device = cfg.torch_device()
    if device.startswith("cuda"):
        from components.dgl_compat import dgl_supports_cuda

        if not dgl_supports_cuda():
            if cfg.device == "auto":
                return "cpu"
            raise ValueError(
                f"device={cfg.device!r} needs a CUDA build of DGL (the installed DGL is CPU-only); "
                "use device=cpu, or benchmarks/gcn_loader_cuda.py for the GPU gather comparison"
            )
    return device


def _build(cfg: GcnTrainConfig, data, kind_cfg, seeds, batch_size, shuffle, max_batches=None):
    from tasks.gcn_train import make_loader

    return make_loader(
        kind_cfg,
        data,
        seeds,
        cfg.fanouts,
        batch_size,
        seed=cfg.seed,
        device=training_device(cfg),
        shuffle=shuffle,
        max_batches=max_batches,
        sampling_threads=cfg.sampling_threads,
    )


def _train(cfg: GcnTrainConfig, tracker: Tracker, data, model, label: str, prefix: str):
    import torch

    from tasks.gcn_train import evaluate_model, train_one_epoch

    model = model.to(training_device(cfg))
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    train_loader = _build(cfg, data, cfg.loader, data.train_idx, cfg.batch_size, True, cfg.max_batches_per_epoch)
    val_loader = _build(cfg, data, cfg.loader, data.val_idx, cfg.eval_batch_size, False)
    history, val_accuracy = [], []
    try:
        for epoch in range(cfg.epochs):
            stats = train_one_epoch(model, optimizer, train_loader, epoch, label, cfg.progress)
            val_accuracy.append(evaluate_model(model, val_loader))
            history.append(stats)
            tracker.log_metrics(
                {f"{prefix}{k}": v for k, v in stats.metrics().items() if k != "epoch"}
                | {f"{prefix}val_accuracy": val_accuracy[-1]},
                step=epoch,
            )
        test_loader = _build(cfg, data, cfg.loader, data.test_idx, cfg.eval_batch_size, False)
        test_accuracy = evaluate_model(model, test_loader)
        test_loader.close()
    finally:
        train_loader.close()
        val_loader.close()
    return history, val_accuracy, test_accuracy


@system_flow(
    name="gcn_train",
    config=GcnTrainConfig,
    summary_metric="test_accuracy",
    order=40,
)
def gcn_train(cfg: GcnTrainConfig, tracker: Tracker) -> dict[str, float]:
    """GCN/GraphSAGE with neighbour sampling; loader=zero_copy gathers features into aligned, reused batches."""
    import torch

    from components.graph.models import FeatureMLP
    from tasks.gcn_train import build_component, log_training_plots, prepare_graph, summarise

    if len(cfg.fanouts) < 1:
        raise ValueError("fanouts must name at least one layer, e.g. fanouts=[10,10]")
    torch.manual_seed(cfg.seed)
    data = prepare_graph(cfg.graph, cfg.seed, cfg.work_path("gcn_train", "graphs"))
    tracker.log_dict(data.describe(), "graph.json")
    tracker.log_metrics({f"graph.{k}": v for k, v in data.describe().items() if isinstance(v, (int, float))})

    model = build_component(
        cfg.gnn_model, "gnn_model", in_feats=data.feat_dim, num_classes=data.num_classes, num_layers=len(cfg.fanouts)
    )
    history, val_accuracy, test_accuracy = _train(cfg, tracker, data, model, "gnn", "")
    log_training_plots(tracker, history, val_accuracy, cfg.loader._target_.rsplit(".", 1)[-1])
    summary = summarise(history) | {"test_accuracy": test_accuracy, "final_val_accuracy": val_accuracy[-1]}

    if cfg.mlp_baseline:
        torch.manual_seed(cfg.seed)
        mlp = FeatureMLP(data.feat_dim, cfg.gnn_model.hidden, data.num_classes, len(cfg.fanouts), cfg.gnn_model.dropout)
        _, _, mlp_accuracy = _train(cfg, tracker, data, mlp, "mlp", "mlp.")
        summary["mlp_test_accuracy"] = mlp_accuracy
        summary["accuracy_gain_over_mlp"] = test_accuracy - mlp_accuracy
    return summary
