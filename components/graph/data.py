"""A graph ready for training (`GraphData`) from a generated folder or from user files.

User graphs come in one of two forms:

- a folder with an edge list and arrays: `edges.npy` (int, shape [E, 2] or [2, E]) or `edges.csv` /
  `edges.txt` (two integer columns, `#` comments allowed), `features.npy` (float, [N, D]),
  `labels.npy` (int, [N]); optional `train_idx.npy`, `val_idx.npy`, `test_idx.npy` (else a seeded
  60/20/20 split);
- a DGL binary file (`dgl.save_graphs`, `.bin`) whose first graph has `ndata['feat']` and
  `ndata['label']` (and optionally boolean `train_mask` / `val_mask` / `test_mask`).

Edges are made symmetric and every node gets one self-loop (GCN's renormalisation trick). The
feature table is memory-mapped (copy-on-write, never written), so a table larger than RAM works.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from components.dgl_compat import import_dgl
from components.graph.generator import SyntheticGraphSpec, cached_graph_dir


@dataclass
class GraphData:
    graph: Any  # DGLGraph: symmetric, self-loops; ndata['feat'] / ['label'] reference the tensors below
    features: torch.Tensor  # float32 [N, D], memory-mapped from disk where it came from a file
    labels: torch.Tensor  # int64 [N]
    train_idx: torch.Tensor
    val_idx: torch.Tensor
    test_idx: torch.Tensor
    num_classes: int
    source: str  # where it came from, for logs
    meta: dict = field(default_factory=dict)

    @property
    def num_nodes(self) -> int:
        return int(self.features.shape[0])

    @property
    def feat_dim(self) -> int:
        return int(self.features.shape[1])

    @property
    def feature_bytes(self) -> int:
        return self.features.numel() * self.features.element_size()

    def describe(self) -> dict:
        return {
            "source": self.source,
            "num_nodes": self.num_nodes,
            "num_edges": int(self.graph.num_edges()),
            "feat_dim": self.feat_dim,
            "num_classes": self.num_classes,
            "feature_table_gb": self.feature_bytes / 1e9,
            "train_nodes": int(self.train_idx.numel()),
            "val_nodes": int(self.val_idx.numel()),
            "test_nodes": int(self.test_idx.numel()),
        }


class GraphInputError(ValueError):
    """A user graph that cannot be used, with the file and the problem named."""


def build_dgl_graph(src: torch.Tensor, dst: torch.Tensor, num_nodes: int):
    """Symmetric DGL graph with one self-loop per node; CSC built up front for in-neighbour sampling."""
    dgl = import_dgl()
    not_loop = src != dst
    src, dst = src[not_loop], dst[not_loop]
    loops = torch.arange(num_nodes, dtype=torch.int64)
    graph = dgl.graph((torch.cat([src, dst, loops]), torch.cat([dst, src, loops])), num_nodes=num_nodes)
    graph = graph.formats("csc")  # NeighborSampler samples in-edges: CSC is all it needs, half the memory
    graph.create_formats_()
    return graph


def _attach(graph, features: torch.Tensor, labels: torch.Tensor) -> None:
    # The DGL-standard loader reads these through DGL's feature prefetch; the others read the tensors.
    graph.ndata["feat"] = features
    graph.ndata["label"] = labels


def _mmap_tensor(path: Path) -> torch.Tensor:
    # Copy-on-write mapping: writable for torch (no warning), never written back to the file.
    return torch.from_numpy(np.load(path, mmap_mode="c"))


def load_graph_folder(folder: str | Path) -> GraphData:
    """Load a folder written by `components.graph.generator.generate_graph`."""
    folder = Path(folder)
    meta_path = folder / "meta.json"
    if not meta_path.exists():
        raise GraphInputError(f"{folder} has no meta.json: not a generated graph folder (or generation was cut)")
    meta = json.loads(meta_path.read_text())
    features = _mmap_tensor(folder / "features.npy")
    labels = torch.from_numpy(np.load(folder / "labels.npy"))
    src = torch.from_numpy(np.load(folder / "src.npy"))
    dst = torch.from_numpy(np.load(folder / "dst.npy"))
    graph = build_dgl_graph(src, dst, features.shape[0])
    _attach(graph, features, labels)
    splits = {name: torch.from_numpy(np.load(folder / f"{name}.npy")) for name in ("train_idx", "val_idx", "test_idx")}
    return GraphData(
        graph, features, labels, num_classes=int(meta["num_classes"]), source=str(folder), meta=meta, **splits
    )


def _seeded_split(num_nodes: int, seed: int) -> dict[str, torch.Tensor]:
    order = torch.randperm(num_nodes, generator=torch.Generator().manual_seed(seed))
    n_train, n_val = int(0.6 * num_nodes), int(0.2 * num_nodes)
    return {
        "train_idx": order[:n_train].sort().values,
        "val_idx": order[n_train : n_train + n_val].sort().values,
        "test_idx": order[n_train + n_val :].sort().values,
    }


def _read_edge_list(folder: Path) -> np.ndarray:
    if (folder / "edges.npy").exists():
        path = folder / "edges.npy"
        edges = np.load(path)
    else:
        path = next((folder / n for n in ("edges.csv", "edges.txt") if (folder / n).exists()), None)
        if path is None:
            raise GraphInputError(f"{folder}: no edges.npy, edges.csv or edges.txt")
        try:
            edges = np.loadtxt(path, delimiter="," if path.suffix == ".csv" else None, comments="#", ndmin=2)
        except ValueError as exc:
            raise GraphInputError(f"{path}: not two integer columns ({exc})") from exc
    if edges.ndim != 2 or 2 not in edges.shape:
        raise GraphInputError(f"{path}: edge array must be [E, 2] or [2, E], got shape {edges.shape}")
    if edges.shape[1] != 2:
        edges = edges.T
    if edges.size and (not np.all(np.isfinite(edges)) or np.any(edges != np.round(edges))):
        raise GraphInputError(f"{path}: edge endpoints must be integers")
    return edges.astype(np.int64)


def _check_index(name: str, idx: torch.Tensor, num_nodes: int, where: str) -> torch.Tensor:
    if idx.dtype not in (torch.int32, torch.int64) or idx.ndim != 1:
        raise GraphInputError(f"{where}: {name} must be a 1-D integer array, got {idx.dtype} {tuple(idx.shape)}")
    if idx.numel() and (idx.min() < 0 or idx.max() >= num_nodes):
        raise GraphInputError(f"{where}: {name} has node ids outside [0, {num_nodes})")
    return idx.long()


def _validated(features: torch.Tensor, labels: torch.Tensor, where: str) -> tuple[torch.Tensor, torch.Tensor, int]:
    if features.ndim != 2:
        raise GraphInputError(f"{where}: features must be [N, D], got shape {tuple(features.shape)}")
    if not features.is_floating_point():
        raise GraphInputError(f"{where}: features must be floating point, got {features.dtype}")
    if features.dtype != torch.float32:
        features = features.float()  # models run in float32; this copy is only made for other dtypes
    if labels.ndim != 1 or labels.shape[0] != features.shape[0]:
        raise GraphInputError(
            f"{where}: labels must be [N] with N={features.shape[0]} (the feature rows), "
            f"got shape {tuple(labels.shape)}"
        )
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise GraphInputError(f"{where}: labels must be integers, got {labels.dtype}")
    labels = labels.long()
    if labels.numel() and labels.min() < 0:
        raise GraphInputError(f"{where}: labels must be >= 0 (class ids)")
    num_classes = int(labels.max()) + 1 if labels.numel() else 0
    if num_classes < 2:
        raise GraphInputError(f"{where}: need at least 2 classes, found {num_classes}")
    return features, labels, num_classes


def load_user_graph(path: str | Path, seed: int = 0) -> GraphData:
    """Load a user graph: a folder (edge list + arrays) or a DGL `.bin` file (see the module doc)."""
    path = Path(path)
    if not path.exists():
        raise GraphInputError(f"graph path {path} does not exist")
    if path.is_file():
        return _load_dgl_binary(path, seed)
    if (path / "meta.json").exists() and (path / "src.npy").exists():
        return load_graph_folder(path)
    for required in ("features.npy", "labels.npy"):
        if not (path / required).exists():
            raise GraphInputError(f"{path}: missing {required}")
    features = _mmap_tensor(path / "features.npy")
    labels = torch.from_numpy(np.load(path / "labels.npy"))
    features, labels, num_classes = _validated(features, labels, str(path))
    n = features.shape[0]
    edges = _read_edge_list(path)
    if edges.size and (edges.min() < 0 or edges.max() >= n):
        raise GraphInputError(
            f"{path}: edge endpoints must be node ids in [0, {n}) (features have {n} rows), "
            f"found [{edges.min()}, {edges.max()}]"
        )
    splits = _seeded_split(n, seed)
    for name in splits:
        if (path / f"{name}.npy").exists():
            splits[name] = _check_index(name, torch.from_numpy(np.load(path / f"{name}.npy")), n, str(path))
    graph = build_dgl_graph(torch.from_numpy(edges[:, 0].copy()), torch.from_numpy(edges[:, 1].copy()), n)
    _attach(graph, features, labels)
    return GraphData(
        graph, features, labels, num_classes=num_classes, source=str(path), meta={"kind": "user-folder"}, **splits
    )


def _load_dgl_binary(path: Path, seed: int) -> GraphData:
    dgl = import_dgl()
    try:
        graphs, _ = dgl.load_graphs(str(path))
    except Exception as exc:  # DGL raises a bare DGLError for a file that is not its format
        raise GraphInputError(f"{path}: not a DGL binary graph file ({exc})") from exc
    if not graphs:
        raise GraphInputError(f"{path}: the file holds no graph")
    g = graphs[0]
    for key in ("feat", "label"):
        if key not in g.ndata:
            raise GraphInputError(f"{path}: graph has no ndata[{key!r}] (has {sorted(g.ndata.keys())})")
    features, labels, num_classes = _validated(g.ndata["feat"], g.ndata["label"], str(path))
    n = g.num_nodes()
    splits = _seeded_split(n, seed)
    for name, mask in (("train_idx", "train_mask"), ("val_idx", "val_mask"), ("test_idx", "test_mask")):
        if mask in g.ndata:
            splits[name] = torch.nonzero(g.ndata[mask].bool(), as_tuple=True)[0]
    src, dst = g.edges()
    graph = build_dgl_graph(src.long(), dst.long(), n)
    _attach(graph, features.contiguous(), labels)
    return GraphData(
        graph,
        features.contiguous(),
        labels,
        num_classes=num_classes,
        source=str(path),
        meta={"kind": "dgl-binary"},
        **splits,
    )


def load_or_generate(
    spec: Optional[SyntheticGraphSpec] = None,
    cache_root: Optional[str | Path] = None,
    path: Optional[str | Path] = None,
    seed: int = 0,
    progress=None,
) -> GraphData:
    """A user graph when `path` is given, else the cached synthetic graph for `spec`."""
    if path:
        return load_user_graph(path, seed=seed)
    return load_graph_folder(cached_graph_dir(spec, cache_root, progress))
