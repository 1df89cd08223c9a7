"""Model, data, local training and evaluation in plain PyTorch (Flower's `task.py`: no framework import).

Weights travel as `dict[name, numpy array]` (a model's state dict): small, picklable to Dask workers
and convertible to a Flower `ArrayRecord`. Parameters (trained by SGD, aggregated as deltas) are told
apart from buffers (BatchNorm running statistics, averaged plainly) by `parameter_names`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from torch import nn

Weights = dict[str, np.ndarray]


@dataclass(frozen=True)
class Dataset:
    x_train: np.ndarray  # float32, shaped (n, *input_shape)
    y_train: np.ndarray  # int64 class ids
    x_test: np.ndarray
    y_test: np.ndarray
    n_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild the same architecture anywhere (a Dask worker, a ClientApp)."""

    kind: str  # "cnn" (2-D for images, 1-D for signals) or "mlp"
    input_shape: tuple[int, ...]
    n_classes: int
    width: int = 16  # channels of the first conv layer; the second has twice as many


def load_digits(seed: int = 0, test_fraction: float = 0.2) -> Dataset:
    """scikit-learn's 8x8 handwritten digits (1797 images, shipped with the package), a seeded test split."""
    from sklearn.datasets import load_digits as sklearn_digits  # noqa: PLC0415  (start-up cost: scikit-learn)

    digits = sklearn_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None, :, :]  # (n, 1, 8, 8) in [0, 1]
    y = digits.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(y))
    n_test = int(round(test_fraction * len(y)))
    test, train = order[:n_test], order[n_test:]
    return Dataset(x[train], y[train], x[test], y[test], n_classes=10)


def load_mnist1d(seed: int = 0, test_fraction: float = 0.2) -> Dataset:
    """MNIST-1D (Greydanus 2020): digit templates as 1-D signals with random shifts, scaling, shear,
    correlated noise. Generated procedurally (no download); much harder than digits for small models, so
    non-IID effects and staleness show. It has its own test split (`test_fraction` is not used)."""
    from mnist1d.data import get_dataset_args, make_dataset  # noqa: PLC0415  (optional dependency)

    args = get_dataset_args()
    args.seed = 42 + seed
    data = make_dataset(args)
    mean, std = data["x"].mean(), data["x"].std()
    norm = lambda a: ((a - mean) / std).astype(np.float32)[:, None, :]  # noqa: E731
    return Dataset(
        norm(data["x"]),
        data["y"].astype(np.int64),
        norm(data["x_test"]),
        data["y_test"].astype(np.int64),
        n_classes=10,
    )


DATASETS = {"digits": load_digits, "mnist1d": load_mnist1d}  # conf/fed_data/*.yaml names the loader itself


def load_dataset(name: str, seed: int = 0, test_fraction: float = 0.2) -> Dataset:
    """A dataset available offline, by its short name (digits | mnist1d)."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {tuple(DATASETS)}")
    return DATASETS[name](seed=seed, test_fraction=test_fraction)


def build_model(spec: ModelSpec) -> nn.Module:
    """A small CNN with BatchNorm (so buffer averaging is exercised), or an MLP."""
    if spec.kind == "mlp":
        n_in = int(np.prod(spec.input_shape))
        return nn.Sequential(
            nn.Flatten(), nn.Linear(n_in, 4 * spec.width), nn.ReLU(), nn.Linear(4 * spec.width, spec.n_classes)
        )
    if spec.kind != "cnn":
        raise ValueError(f"unknown model kind {spec.kind!r}; choose cnn or mlp")
    w = spec.width
    if len(spec.input_shape) == 3:  # (channels, height, width) images
        conv, norm, pool = nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d
        spatial = (spec.input_shape[1] // 2) * (spec.input_shape[2] // 2)
    elif len(spec.input_shape) == 2:  # (channels, length) signals
        conv, norm, pool = nn.Conv1d, nn.BatchNorm1d, nn.MaxPool1d
        spatial = spec.input_shape[1] // 2
    else:
        raise ValueError(f"cnn needs (C, H, W) or (C, L) inputs, got {spec.input_shape}")
    return nn.Sequential(
        conv(spec.input_shape[0], w, 3, padding=1),
        norm(w),
        nn.ReLU(),
        conv(w, 2 * w, 3, padding=1),
        norm(2 * w),
        nn.ReLU(),
        pool(2),
        nn.Flatten(),
        nn.Linear(2 * w * spatial, spec.n_classes),
    )


def parameter_names(spec: ModelSpec) -> frozenset[str]:
    return frozenset(name for name, _ in build_model(spec).named_parameters())


def get_weights(model: nn.Module) -> Weights:
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def set_weights(model: nn.Module, weights: Weights) -> None:
    model.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in weights.items()})


def initial_weights(spec: ModelSpec, seed: int) -> Weights:
    torch.manual_seed(seed)
    return get_weights(build_model(spec))


def local_train(
    weights: Weights,
    x: np.ndarray,
    y: np.ndarray,
    steps: int,
    spec: ModelSpec,
    lr: float = 0.05,
    batch_size: int = 32,
    seed: int = 0,
    device: Optional[str] = None,
) -> dict:
    """Run `steps` SGD steps from `weights` on one client's data.

    Returns the parameter delta `weights - local` (the server subtracts a weighted sum of deltas),
    the local buffers (BatchNorm statistics, averaged plainly by the server), the sample count and
    the training loss. Deterministic for a given seed.
    """
    device = device or "cpu"
    model = build_model(spec).to(device)
    set_weights(model, weights)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    xs, ys = torch.from_numpy(x), torch.from_numpy(y)
    batch = min(batch_size, len(ys))
    losses = []
    for _ in range(steps):
        idx = torch.randint(len(ys), (batch,), generator=generator)
        xb, yb = xs[idx].to(device), ys[idx].to(device)
        if batch == 1:  # BatchNorm cannot normalise a single sample in training mode
            xb, yb = xb.repeat(2, *([1] * (xb.dim() - 1))), yb.repeat(2)
        loss = nn.functional.cross_entropy(model(xb), yb)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    local = get_weights(model)
    params = parameter_names(spec)
    return {
        "delta": {k: weights[k] - local[k] for k in local if k in params},
        "buffers": {k: local[k] for k in local if k not in params},
        "num_examples": int(len(ys)),
        "steps": int(steps),
        "train_loss": float(np.mean(losses)) if losses else float("nan"),
    }


@torch.no_grad()
def evaluate(weights: Weights, x: np.ndarray, y: np.ndarray, spec: ModelSpec) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of the model on (x, y), in eval mode (running BN statistics)."""
    model = build_model(spec)
    set_weights(model, weights)
    model.eval()
    logits = model(torch.from_numpy(x))
    labels = torch.from_numpy(y)
    loss = nn.functional.cross_entropy(logits, labels).item()
    accuracy = (logits.argmax(1) == labels).float().mean().item()
    return float(loss), float(accuracy)
