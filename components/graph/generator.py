"""A seeded generator of learnable graphs whose feature table lives in a memory-mapped file.

The graphs are made so that the graph matters for the task: nodes belong to communities (the
labels), edges fall mostly inside a community (homophily), degrees follow a power law (a few hubs,
many leaves, as in citation or social graphs), and each node's features are its community's
centroid plus strong noise. A node's own features therefore classify it only weakly; averaging over
its neighbours (what a GCN does) removes much of the noise. An MLP on the same features is the
baseline a GNN must beat.

Everything is generated in chunks of rows with a per-chunk random stream (`seed`, purpose, chunk
number), so a multi-GB feature table is never held in RAM; the same spec (chunk size included)
always gives the same arrays.
The output folder holds plain arrays (nanoGPT style: write once, memory-map to train):

    features.npy  float32 [num_nodes, feat_dim]  (the big one; opened with mmap)
    labels.npy    int64   [num_nodes]
    src.npy, dst.npy  int64 [num_edges]   directed generated edges (made symmetric on load)
    train_idx.npy, val_idx.npy, test_idx.npy
    meta.json     the spec it was made from; written last, so a folder without it is incomplete
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np

FORMAT_VERSION = 1  # bump when the generated content for a given spec changes


@dataclass
class SyntheticGraphSpec:
    """A synthetic graph: its size, community structure and splits (the flow's `graph.*`)."""

    num_nodes: int = 50_000  # a CPU epoch in seconds; >= 2.1M with feat_dim 256 gives a >= 2 GB table
    num_classes: int = 8  # one community per class
    feat_dim: int = 64  # row width; row bytes = 4 * feat_dim
    avg_degree: float = 10.0  # mean undirected degree before self-loops, typical of citation graphs
    degree_exponent: float = 2.5  # power-law exponent of the degree propensities (2 < a < 3 as in real graphs)
    homophily: float = 0.8  # fraction of edges inside a community: neighbours mostly share the label
    class_separation: float = 1.0  # centroid distance in noise-std units: own features are weakly informative
    train_fraction: float = 0.6  # of all nodes; large graphs use a small fraction to keep epochs short
    val_fraction: float = 0.2  # of all nodes
    test_fraction: float = 0.2  # of all nodes
    seed: int = 0  # the generator's random streams
    chunk_rows: int = 131_072  # rows generated at once (32 MB at feat_dim 64): the table is never in RAM at once

    def validate(self) -> None:
        problems = []
        if self.num_nodes < 2 * self.num_classes:
            problems.append(f"num_nodes={self.num_nodes} must be at least 2 * num_classes")
        if self.num_classes < 2:
            problems.append(f"num_classes={self.num_classes} must be >= 2")
        if self.feat_dim < 1:
            problems.append(f"feat_dim={self.feat_dim} must be >= 1")
        if self.avg_degree <= 0:
            problems.append(f"avg_degree={self.avg_degree} must be > 0")
        if not 2.0 < self.degree_exponent <= 10.0:
            problems.append(f"degree_exponent={self.degree_exponent} must be in (2, 10] (finite mean)")
        if not 0.0 <= self.homophily <= 1.0:
            problems.append(f"homophily={self.homophily} must be in [0, 1]")
        fractions = (self.train_fraction, self.val_fraction, self.test_fraction)
        if any(f < 0 for f in fractions) or sum(fractions) > 1.0 + 1e-9 or self.train_fraction <= 0:
            problems.append(f"train/val/test fractions {fractions} must be >= 0, train > 0, sum <= 1")
        if self.chunk_rows < 1:
            problems.append(f"chunk_rows={self.chunk_rows} must be >= 1")
        if problems:
            raise ValueError("invalid synthetic graph spec: " + "; ".join(problems))

    def content_key(self) -> str:
        """A hash of everything that changes the generated arrays (chunk_rows does: one stream per chunk)."""
        fields = dict(asdict(self), format_version=FORMAT_VERSION)
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]

    @property
    def feature_bytes(self) -> int:
        return self.num_nodes * self.feat_dim * 4


def _rng(seed: int, stream: str, chunk: int = 0) -> np.random.Generator:
    """An independent random stream per (seed, purpose, chunk)."""
    return np.random.default_rng([seed, int(hashlib.md5(stream.encode()).hexdigest()[:8], 16), chunk])


def _chunks(n: int, size: int):
    for start in range(0, n, size):
        yield start // size, start, min(n, start + size)


def _communities_and_propensities(spec: SyntheticGraphSpec) -> tuple[np.ndarray, np.ndarray]:
    rng = _rng(spec.seed, "communities")
    community = rng.integers(0, spec.num_classes, spec.num_nodes, dtype=np.int64)
    # Pareto propensities (Chung-Lu style): expected degree is proportional to them, so degrees are
    # power-law distributed. Capped so one hub cannot swallow a large share of all edges.
    u = rng.random(spec.num_nodes)
    weight = (1.0 - u) ** (-1.0 / (spec.degree_exponent - 1.0))
    weight = np.minimum(weight, 1000.0 * weight.mean())
    return community, (weight / weight.mean()).astype(np.float64)


def _edges_for_chunk(spec, chunk, start, stop, community, weight, members, cum_weight):
    rng = _rng(spec.seed, "edges", chunk)
    # Each generated edge is later made undirected, so half the mean degree is generated per node.
    out_degree = rng.poisson(0.5 * spec.avg_degree * weight[start:stop])
    out_degree = np.maximum(out_degree, 1)  # no isolated nodes
    src = np.repeat(np.arange(start, stop, dtype=np.int64), out_degree)
    inside = rng.random(src.size) < spec.homophily
    target_comm = np.where(inside, community[src], rng.integers(0, spec.num_classes, src.size))
    dst = np.empty_like(src)
    for c in range(spec.num_classes):
        pick = np.flatnonzero(target_comm == c)
        if pick.size == 0:
            continue
        # Destinations within the community are drawn proportionally to their propensity.
        draws = rng.random(pick.size) * cum_weight[c][-1]
        pos = np.minimum(np.searchsorted(cum_weight[c], draws, side="right"), members[c].size - 1)
        dst[pick] = members[c][pos]
    keep = src != dst  # self-loops are added uniformly on load
    return src[keep], dst[keep]


def generate_graph(
    spec: SyntheticGraphSpec, out_dir: str | Path, progress: Optional[Callable[[str, float], None]] = None
) -> Path:
    """Write the graph for `spec` into `out_dir` (atomically) and return the folder."""
    spec.validate()
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + f".tmp{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    report = progress or (lambda stage, frac: None)
    n, d = spec.num_nodes, spec.feat_dim

    community, weight = _communities_and_propensities(spec)
    np.save(tmp / "labels.npy", community)

    # Features: centroid of the node's community + unit Gaussian noise, chunk by chunk into the memmap.
    centroid_scale = spec.class_separation / np.sqrt(2.0)  # pairwise centroid distance ~ class_separation
    # Random directions (nearly orthogonal in high dimension) of norm separation/sqrt(2).
    centroids = _rng(spec.seed, "centroids").standard_normal((spec.num_classes, d))
    centroids = (centroids / np.linalg.norm(centroids, axis=1, keepdims=True) * centroid_scale).astype(np.float32)
    table = np.lib.format.open_memmap(tmp / "features.npy", mode="w+", dtype=np.float32, shape=(n, d))
    chunks = list(_chunks(n, spec.chunk_rows))
    for chunk, start, stop in chunks:
        rng = _rng(spec.seed, "features", chunk)
        block = rng.standard_normal((stop - start, d), dtype=np.float32)
        block += centroids[community[start:stop]]
        table[start:stop] = block
        report("features", stop / n)
    table.flush()
    del table

    members = [np.flatnonzero(community == c) for c in range(spec.num_classes)]
    cum_weight = [np.cumsum(weight[m]) for m in members]
    src_parts, dst_parts = [], []
    for chunk, start, stop in chunks:
        s, t = _edges_for_chunk(spec, chunk, start, stop, community, weight, members, cum_weight)
        src_parts.append(s)
        dst_parts.append(t)
        report("edges", stop / n)
    np.save(tmp / "src.npy", np.concatenate(src_parts))
    np.save(tmp / "dst.npy", np.concatenate(dst_parts))
    del src_parts, dst_parts

    order = _rng(spec.seed, "splits").permutation(n)
    n_train = max(1, int(round(spec.train_fraction * n)))
    n_val = int(round(spec.val_fraction * n))
    n_test = int(round(spec.test_fraction * n))
    np.save(tmp / "train_idx.npy", np.sort(order[:n_train]))
    np.save(tmp / "val_idx.npy", np.sort(order[n_train : n_train + n_val]))
    np.save(tmp / "test_idx.npy", np.sort(order[n_train + n_val : n_train + n_val + n_test]))

    meta = {
        "kind": "synthetic",
        "spec": asdict(spec),
        "content_key": spec.content_key(),
        "format_version": FORMAT_VERSION,
        "num_nodes": n,
        "num_classes": spec.num_classes,
        "feat_dim": d,
        "num_generated_edges": int(np.load(tmp / "src.npy", mmap_mode="r").shape[0]),
    }
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    return out_dir


def cached_graph_dir(
    spec: SyntheticGraphSpec, cache_root: str | Path, progress: Optional[Callable[[str, float], None]] = None
) -> Path:
    """The folder of `spec`'s graph under `cache_root`, generating it only if it is missing."""
    folder = Path(cache_root) / f"synthetic-n{spec.num_nodes}-d{spec.feat_dim}-{spec.content_key()}"
    meta = folder / "meta.json"
    if meta.exists():
        try:
            if json.loads(meta.read_text()).get("content_key") == spec.content_key():
                return folder
        except (OSError, json.JSONDecodeError):
            pass  # a damaged cache entry is regenerated
    return generate_graph(spec, folder, progress)
