"""Server-side model updates: FedAvg, and the staleness-weighted step of FedAsync / FedBuff / FedCompass.

A client update carries `delta = w_sent - w_local` for parameters and its local `buffers`
(BatchNorm running statistics). Parameters follow

    w <- w - sum_i alpha * s(staleness_i) * p_i * delta_i          (FedAsync, FedBuff, FedCompass)
    w <- w - sum_i (n_i / sum_j n_j) * delta_i                      (FedAvg: the sample-weighted mean)

with p_i the client's weight (1/N by default, N = number of clients, as in the reference code).
Buffers are not gradients: they are averaged plainly over the updates of this aggregation.

Staleness functions must DECREASE with staleness. The reference code (APPFL) computes the
polynomial as (u + 1) ** a with a = 0.5, which gives stale updates MORE weight; we use FedAsync's
(u + 1) ** (-a). `tests/federated/test_aggregators.py` pins this.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

Weights = dict[str, np.ndarray]
StalenessFn = Callable[[int], float]
STALENESS_FUNCTIONS = ("constant", "polynomial", "hinge")


def make_staleness_fn(kind: str = "polynomial", a: float = 0.5, b: int = 4) -> StalenessFn:
    """s(u) for staleness u >= 0: constant 1; polynomial (u+1)^-a; hinge 1 up to b, then 1/(a(u-b)+1)."""
    if kind == "constant":
        return lambda u: 1.0
    if kind == "polynomial":
        return lambda u: float((u + 1) ** (-a))
    if kind == "hinge":
        return lambda u: 1.0 if u <= b else float(1.0 / (a * (u - b) + 1.0))
    raise ValueError(f"unknown staleness function {kind!r}; choose one of {STALENESS_FUNCTIONS}")


@dataclass
class WeightedUpdate:
    """One client's update as the aggregator sees it."""

    client: int
    update: dict  # {"delta", "buffers", "num_examples", ...} from `task.local_train`
    staleness: int


def _average_buffers(weights: Weights, updates: Sequence[WeightedUpdate]) -> None:
    names = set().union(*(u.update.get("buffers", {}).keys() for u in updates)) if updates else set()
    for name in names:
        values = [
            np.asarray(u.update["buffers"][name], dtype=np.float64)
            for u in updates
            if name in u.update.get("buffers", {})
        ]
        weights[name] = np.mean(values, axis=0).astype(weights[name].dtype)


class StalenessWeightedAggregator:
    """w <- w - sum_i alpha * s(staleness_i) * p_i * delta_i; buffers averaged plainly.

    FedAsync applies it to one update at a time, FedBuff to a buffer of K, FedCompass to a group
    plus the general buffer: the step is the same, the scheduler decides what goes in.
    """

    def __init__(self, client_weights: Sequence[float], alpha: float = 0.9, staleness_fn: StalenessFn | None = None):
        self.client_weights = np.asarray(client_weights, dtype=np.float64)
        self.alpha = alpha
        self.staleness_fn = staleness_fn or make_staleness_fn("polynomial")

    def coefficient(self, item: WeightedUpdate) -> float:
        return self.alpha * self.staleness_fn(item.staleness) * float(self.client_weights[item.client])

    def aggregate(self, weights: Weights, updates: Sequence[WeightedUpdate]) -> Weights:
        new = {k: v.copy() for k, v in weights.items()}
        for item in updates:
            c = self.coefficient(item)
            for name, delta in item.update["delta"].items():
                new[name] = (new[name] - c * np.asarray(delta)).astype(weights[name].dtype)
        _average_buffers(new, updates)
        return new


class FedAsyncAggregator(StalenessWeightedAggregator):
    """FedAsync (Xie et al. 2019): one update at a time, mixing alpha * s(staleness)."""


class FedBuffAggregator(StalenessWeightedAggregator):
    """FedBuff (Nguyen et al. 2022): the buffered updates in one staleness-weighted step."""


class FedCompassAggregator(StalenessWeightedAggregator):
    """FedCompass: a group's buffer plus the general buffer (late arrivals) in one step."""


class FedAvgAggregator:
    """FedAvg: the sample-weighted mean of the local models (server learning rate 1)."""

    def aggregate(self, weights: Weights, updates: Sequence[WeightedUpdate]) -> Weights:
        new = {k: v.copy() for k, v in weights.items()}
        total = float(sum(u.update["num_examples"] for u in updates))
        for item in updates:
            share = item.update["num_examples"] / total
            for name, delta in item.update["delta"].items():
                new[name] = (new[name] - share * np.asarray(delta)).astype(weights[name].dtype)
        _average_buffers(new, updates)
        return new


def client_weights(num_examples: Sequence[int], kind: str = "equal") -> np.ndarray:
    """p_i: 1/N for every client ("equal", the paper's default) or proportional to sample counts."""
    n = np.asarray(num_examples, dtype=np.float64)
    if kind == "equal":
        return np.full(len(n), 1.0 / len(n))
    if kind == "samples":
        return n / n.sum()
    raise ValueError(f"unknown client weighting {kind!r}; choose equal or samples")
