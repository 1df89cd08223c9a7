"""The gcn_train run's figure: loss and accuracy per epoch, where each epoch's time went, data-prep latency."""

from __future__ import annotations

from matplotlib.figure import Figure

from components.graph.training import FitResult


def training_figure(result: FitResult, loader_name: str) -> Figure:
    """Three panels: train loss / val accuracy, compute vs stalled seconds per epoch, prep-latency histogram."""
    history = result.history
    epochs = [s.epoch for s in history]
    fig = Figure(figsize=(15, 4))
    axes = fig.subplots(1, 3)
    axes[0].plot(epochs, [s.loss for s in history], "o-", label="train loss")
    ax2 = axes[0].twinx()
    ax2.plot(epochs, result.val_accuracy, "s--", color="tab:green", label="val accuracy")
    axes[0].set(xlabel="epoch", ylabel="loss", title="training")
    ax2.set_ylabel("val accuracy")
    compute = [s.compute_seconds for s in history]
    axes[1].bar(epochs, compute, label="compute")
    axes[1].bar(epochs, [s.stall_seconds for s in history], bottom=compute, label="stalled on data")
    axes[1].set(xlabel="epoch", ylabel="seconds", title=f"epoch time ({loader_name})")
    axes[1].legend()
    axes[2].hist([p for s in history for p in s.prep_ms], bins=30)
    axes[2].set(xlabel="ms", ylabel="batches", title="per-batch data-prep latency")
    fig.tight_layout()
    return fig
