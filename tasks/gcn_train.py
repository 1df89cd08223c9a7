"""Prefect tasks of the gcn_train flow: build/load the graph, one training epoch, evaluation, plots.

Tasks take live objects (graph, model, loader) and run in the flow's process; NO_CACHE keeps
Prefect from hashing multi-GB tensors for cache keys.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional

from prefect import task
from prefect.cache_policies import NO_CACHE

from components.graph.data import GraphData, load_or_generate
from components.graph.generator import SyntheticGraphSpec
from components.graph.loaders import FeatureLoader
from components.graph.training import EpochStats, evaluate, train_epoch
from mlsys.tracking import Tracker


def _options(cfg: Any) -> dict:
    """A config dataclass as kwargs, without the unset (None) options of other variants."""
    return {k: v for k, v in asdict(cfg).items() if v is not None}


def build_component(cfg: Any, group: str, **runtime):
    """`hydra.utils.instantiate` a group config; an option the target does not take is named clearly."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    options = _options(cfg)
    try:
        return instantiate(options, **runtime)
    except InstantiationException as exc:
        if "unexpected keyword argument" in str(exc):
            given = sorted(k for k in options if not k.startswith("_"))
            raise ValueError(f"{group} {options['_target_']} rejects one of its options {given}: {exc}") from exc
        raise


@task(name="gcn-prepare-graph", cache_policy=NO_CACHE)
def prepare_graph(graph_cfg: Any, seed: int, cache_dir: Path) -> GraphData:
    """The user's graph (graph.path) or the cached synthetic graph; generated in chunks if missing."""
    if graph_cfg.path:
        return load_or_generate(path=graph_cfg.path, seed=seed)
    fields = {k: v for k, v in asdict(graph_cfg).items() if k != "path"}
    spec = SyntheticGraphSpec(seed=seed, **fields)
    return load_or_generate(spec=spec, cache_root=cache_dir)


def make_loader(
    loader_cfg: Any,
    data: GraphData,
    seeds,
    fanouts: Sequence[int],
    batch_size: int,
    *,
    seed: int,
    device: str,
    shuffle: bool,
    max_batches: Optional[int],
    sampling_threads: int,
) -> FeatureLoader:
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


@task(name="gcn-train-epoch", cache_policy=NO_CACHE)
def train_one_epoch(model, optimizer, loader: FeatureLoader, epoch: int, label: str, progress: bool) -> EpochStats:
    """One epoch with a progress bar (loss in the postfix)."""
    from tqdm.auto import tqdm

    with tqdm(total=len(loader), desc=f"{label} epoch {epoch}", disable=not progress, leave=True) as bar:

        def step(_index: int, loss: float) -> None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}")

        return train_epoch(model, optimizer, loader, epoch, progress=step)


@task(name="gcn-evaluate", cache_policy=NO_CACHE)
def evaluate_model(model, loader: FeatureLoader) -> float:
    return evaluate(model, loader)


@task(name="gcn-log-plots", cache_policy=NO_CACHE)
def log_training_plots(
    tracker: Tracker, history: list[EpochStats], val_accuracy: list[float], loader_name: str
) -> None:
    """Loss/accuracy per epoch, where each epoch's time went, and the per-batch data-prep latency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [s.epoch for s in history]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    axes[0].plot(epochs, [s.loss for s in history], "o-", label="train loss")
    ax2 = axes[0].twinx()
    ax2.plot(epochs, val_accuracy, "s--", color="tab:green", label="val accuracy")
    axes[0].set(xlabel="epoch", ylabel="loss", title="training")
    ax2.set_ylabel("val accuracy")
    axes[1].bar(epochs, [s.compute_seconds for s in history], label="compute")
    axes[1].bar(
        epochs, [s.stall_seconds for s in history], bottom=[s.compute_seconds for s in history], label="stalled on data"
    )
    axes[1].set(xlabel="epoch", ylabel="seconds", title=f"epoch time ({loader_name})")
    axes[1].legend()
    prep = [p for s in history for p in s.prep_ms]
    axes[2].hist(prep, bins=30)
    axes[2].set(xlabel="ms", ylabel="batches", title="per-batch data-prep latency")
    fig.tight_layout()
    tracker.log_figure(fig, "plots/training.png")
    plt.close(fig)
    tracker.log_dict([{k: v for k, v in asdict(s).items()} for s in history], "tables/epochs.json")


def summarise(history: list[EpochStats]) -> dict[str, float]:
    """Medians over epochs after the first (which pays page-cache and allocator warm-up) when possible."""
    steady = history[1:] if len(history) > 1 else history
    out = {
        "epoch_seconds": statistics.median(s.epoch_seconds for s in steady),
        "stall_fraction": statistics.median(s.stall_fraction for s in steady),
        "prep_ms_median": statistics.median(s.prep_ms_median for s in steady),
        "feed_gbps": statistics.median(s.feed_gbps for s in steady),
        "peak_rss_mb": max(s.peak_rss_mb for s in history),
        "peak_anon_growth_mb": max(s.peak_anon_growth_mb for s in history),
    }
    gathers = [s.gather_gbps for s in steady if s.gather_gbps is not None]
    if gathers:
        out["gather_gbps"] = statistics.median(gathers)
    return out
