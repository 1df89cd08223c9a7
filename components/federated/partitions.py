"""Non-IID splits of a labelled training set over clients (each returns one index array per client).

- `class_partition`: each client holds only a few classes (the paper's "class partition").
- `dirichlet_partition`: each class is spread over clients with proportions ~ Dir(alpha).
- `dual_dirichlet_partition`: client sizes ~ Dir(alpha_clients), and each client's class mix
  ~ Dir(alpha_classes * global prior) (the paper's "dual Dirichlet"): unequal sizes AND skewed labels.
"""

from __future__ import annotations

import inspect

import numpy as np

PARTITIONS = ("iid", "class", "dirichlet", "dual_dirichlet")


def iid_partition(labels: np.ndarray, n_clients: int, seed: int = 0) -> list[np.ndarray]:
    order = np.random.default_rng(seed).permutation(len(labels))
    return [np.sort(part) for part in np.array_split(order, n_clients)]


def class_partition(labels: np.ndarray, n_clients: int, classes_per_client: int = 3, seed: int = 0) -> list[np.ndarray]:
    """Client i holds classes i, i+1, ... (mod C); each class's samples are split evenly among its holders."""
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    if not 1 <= classes_per_client <= len(classes):
        raise ValueError(f"classes_per_client must be in [1, {len(classes)}], got {classes_per_client}")
    offset = rng.integers(len(classes))
    holders: dict[int, list[int]] = {int(c): [] for c in classes}
    for client in range(n_clients):
        for j in range(classes_per_client):
            holders[int(classes[(offset + client * classes_per_client + j) % len(classes)])].append(client)
    parts: list[list[np.ndarray]] = [[] for _ in range(n_clients)]
    for cls, owners in holders.items():
        idx = rng.permutation(np.flatnonzero(labels == cls))
        if not owners:  # fewer clients than needed to cover every class: give it to the smallest
            owners = [int(np.argmin([sum(len(a) for a in p) for p in parts]))]
        for owner, chunk in zip(owners, np.array_split(idx, len(owners))):
            parts[owner].append(chunk)
    return [np.sort(np.concatenate(p)) for p in parts]


def dirichlet_partition(
    labels: np.ndarray, n_clients: int, alpha: float = 0.5, seed: int = 0, min_size: int = 8
) -> list[np.ndarray]:
    """Per class, proportions over clients ~ Dir(alpha); resampled until each client has `min_size`."""
    rng = np.random.default_rng(seed)
    for _ in range(100):
        parts: list[list[int]] = [[] for _ in range(n_clients)]
        for cls in np.unique(labels):
            idx = rng.permutation(np.flatnonzero(labels == cls))
            cuts = (np.cumsum(rng.dirichlet(alpha * np.ones(n_clients))) * len(idx)).astype(int)[:-1]
            for client, chunk in enumerate(np.split(idx, cuts)):
                parts[client].extend(chunk.tolist())
        if min(len(p) for p in parts) >= min_size:
            return [np.sort(np.array(p, dtype=np.int64)) for p in parts]
    raise ValueError(f"could not give every one of {n_clients} clients {min_size} samples with alpha={alpha}")


def dual_dirichlet_partition(
    labels: np.ndarray,
    n_clients: int,
    alpha_clients: float = 2.0,
    alpha_classes: float = 2.0,
    seed: int = 0,
    min_size: int = 8,
) -> list[np.ndarray]:
    """Client sizes ~ Dir(alpha_clients); client class mix ~ Dir(alpha_classes * class prior)."""
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    prior = counts / counts.sum()
    pools = {int(c): list(rng.permutation(np.flatnonzero(labels == c))) for c in classes}
    sizes = rng.dirichlet(alpha_clients * np.ones(n_clients)) * (len(labels) - min_size * n_clients)
    sizes = np.floor(sizes).astype(int) + min_size
    parts: list[list[int]] = [[] for _ in range(n_clients)]
    for client in rng.permutation(n_clients):
        mix = rng.dirichlet(alpha_classes * prior)
        for _ in range(sizes[client]):
            available = np.array([len(pools[int(c)]) > 0 for c in classes])
            if not available.any():
                break
            p = np.where(available, mix, 0.0)
            p = p / p.sum() if p.sum() > 0 else available / available.sum()
            cls = int(classes[rng.choice(len(classes), p=p)])
            parts[client].append(pools[cls].pop())
    return [np.sort(np.array(p, dtype=np.int64)) for p in parts]


def make_partition(name: str, labels: np.ndarray, n_clients: int, seed: int = 0, **options: float) -> list[np.ndarray]:
    """Split `labels`' indices over `n_clients` with the partition `name`; `options` are the partitions'
    parameters (classes_per_client, alpha, alpha_clients, alpha_classes), each passed to the one that takes it."""
    if n_clients < 1:
        raise ValueError(f"need at least one client, got {n_clients}")
    if name not in _BY_NAME:
        raise ValueError(f"unknown partition {name!r}; choose one of {PARTITIONS}")
    unknown = set(options) - _OPTIONS
    if unknown:
        raise TypeError(f"make_partition got unknown options {sorted(unknown)}; known: {sorted(_OPTIONS)}")
    partition = _BY_NAME[name]
    taken = inspect.signature(partition).parameters
    return partition(labels, n_clients, seed=seed, **{k: v for k, v in options.items() if k in taken})


_BY_NAME = {
    "iid": iid_partition,
    "class": class_partition,
    "dirichlet": dirichlet_partition,
    "dual_dirichlet": dual_dirichlet_partition,
}
_OPTIONS = {"classes_per_client", "alpha", "alpha_clients", "alpha_classes"}
