"""What the graph-learning pieces take, each default written once with its meaning.

The gcn_train flow's config is built from these: `GraphSource` (a user graph, or the synthetic graph
`SyntheticGraphSpec` describes), the loader and model choices (`_target_`: the class it builds) and
`TrainingSettings` (the minibatch loop). Loader and model options left at None are not passed, so
the class's own default applies and an option the chosen class does not take is named when it is set.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Optional

from components.checks import ConfigError, at_least, positive
from components.graph.generator import SyntheticGraphSpec


@dataclass
class GraphSource(SyntheticGraphSpec):
    """The graph: a user graph at `path`, or the seeded synthetic graph the other fields describe."""

    path: Optional[str] = None  # folder (edges + features.npy + labels.npy) or a DGL .bin; None: synthetic
    seed: Optional[int] = None  # synthetic graph's seed; None: the run's seed

    def __post_init__(self) -> None:
        if self.path is None:  # a synthetic graph: the generator's own checks, before anything is generated
            try:
                self.validate()
            except ValueError as err:
                raise ConfigError("graph", "synthetic", str(err)) from err

    def synthetic_spec(self, run_seed: int) -> SyntheticGraphSpec:
        """The generator's spec of this graph (its content key does not depend on `path`)."""
        values = {f.name: getattr(self, f.name) for f in fields(SyntheticGraphSpec)}
        values["seed"] = run_seed if self.seed is None else self.seed
        return SyntheticGraphSpec(**values)


@dataclass
class LoaderConfig:
    """conf/loader/{zero_copy,staged,dgl}.yaml: the feature loader class and the options it takes."""

    _target_: str = "components.graph.loaders.ZeroCopyFeatureLoader"  # the loader class
    align_rows: Optional[bool] = None  # zero_copy: 128-byte aligned rows in the batch buffers (None: aligned)
    prefetch: Optional[bool] = None  # zero_copy: a worker gathers batch i+1 while batch i trains (None: on)
    worker_threads: Optional[int] = None  # zero_copy: torch threads of the prefetch gather (None: torch's)
    num_workers: Optional[int] = None  # dgl: sampling worker processes (None: 0, in the training process)

    @property
    def name(self) -> str:
        """The loader class's short name, for plot titles."""
        return self._target_.rsplit(".", 1)[-1]


@dataclass
class GnnModelConfig:
    """conf/gnn_model/{gcn,sage}.yaml: the model class; the layer count is len(fanouts)."""

    _target_: str = "components.graph.models.GCN"  # the model class
    hidden: int = 64  # enough for 8 communities; small keeps CPU compute per step short
    dropout: float = 0.5  # Kipf & Welling's value
    aggregator: Optional[str] = None  # sage: mean | pool | lstm | gcn (None: mean)


@dataclass
class TrainingSettings:
    """The minibatch loop: sampling, batch sizes, optimiser, epochs."""

    fanouts: list[int] = field(default_factory=lambda: [10, 10])  # GraphSAGE paper's 2-hop sampling, smaller
    batch_size: int = 512  # seed nodes per step
    eval_batch_size: int = 2048  # evaluation only reads, so larger batches are fine
    epochs: int = 5  # the synthetic graph converges in ~3 epochs
    lr: float = 0.005  # Adam; 0.01 oscillates with batch 512
    weight_decay: float = 5e-4  # Kipf & Welling's L2
    max_batches_per_epoch: Optional[int] = None  # cap for huge training sets; None: every seed node
    sampling_threads: int = 1  # DGL OpenMP threads for sampling; 1 makes batches reproducible
    progress: bool = True  # tqdm bar per epoch

    def __post_init__(self) -> None:
        if not self.fanouts or any(f < 1 and f != -1 for f in self.fanouts):
            raise ConfigError("fanouts", self.fanouts, "must list one fan-out per layer, each >= 1 (or -1: all)")
        for key in ("batch_size", "eval_batch_size", "epochs", "sampling_threads"):
            at_least(key, getattr(self, key), 1)
        positive("lr", self.lr)
        at_least("weight_decay", self.weight_decay, 0)
        if self.max_batches_per_epoch is not None:
            at_least("max_batches_per_epoch", self.max_batches_per_epoch, 1)
