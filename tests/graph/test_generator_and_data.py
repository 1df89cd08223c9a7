"""The synthetic graph generator and the user-graph loader."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from components.dgl_compat import import_dgl
from components.graph.data import GraphInputError, load_graph_folder, load_user_graph
from components.graph.generator import SyntheticGraphSpec, cached_graph_dir, generate_graph
from components.graph.training import PeakMemoryMonitor


def test_generated_graph_has_communities_power_law_degrees_and_homophily(small_graph):
    g = small_graph
    assert g.num_nodes == 10_000 and g.feat_dim == 32 and g.num_classes == 8
    deg = g.graph.in_degrees().float()
    assert deg.max() > 10 * deg.median()  # hubs: a heavy tail, not a regular graph
    src, dst = g.graph.edges(order="srcdst")
    not_loop = src != dst
    homophily = (g.labels[src[not_loop]] == g.labels[dst[not_loop]]).float().mean()
    assert 0.7 < homophily < 0.95
    counts = torch.bincount(g.labels, minlength=8)
    assert counts.min() > 0.7 * counts.float().mean()  # balanced communities
    # Features carry the community: class means differ far more than noise over many rows.
    means = torch.stack([g.features[g.labels == c].mean(0) for c in range(8)])
    assert torch.cdist(means, means).fill_diagonal_(float("inf")).min() > 0.5
    # Splits are disjoint and cover the requested fractions.
    split = torch.cat([g.train_idx, g.val_idx, g.test_idx])
    assert split.unique().numel() == split.numel() == 10_000


def test_feature_table_is_memory_mapped(small_graph):
    assert isinstance(np.load(small_graph.source + "/features.npy", mmap_mode="r"), np.memmap)
    storage_ptr = small_graph.features.untyped_storage().data_ptr()
    assert small_graph.graph.ndata["feat"].untyped_storage().data_ptr() == storage_ptr  # no copy in DGL


def test_generation_is_seeded_and_cached(tmp_path):
    spec = SyntheticGraphSpec(num_nodes=2000, feat_dim=8, chunk_rows=512, seed=7)
    a = generate_graph(spec, tmp_path / "a")
    b = generate_graph(spec, tmp_path / "b")
    for name in ("features.npy", "labels.npy", "src.npy", "dst.npy", "train_idx.npy"):
        assert np.array_equal(np.load(a / name), np.load(b / name)), name
    other = generate_graph(SyntheticGraphSpec(num_nodes=2000, feat_dim=8, chunk_rows=512, seed=8), tmp_path / "c")
    assert not np.array_equal(np.load(a / "features.npy"), np.load(other / "features.npy"))
    folder = cached_graph_dir(spec, tmp_path / "cache")
    stamp = (folder / "meta.json").stat().st_mtime_ns
    assert cached_graph_dir(spec, tmp_path / "cache") == folder
    assert (folder / "meta.json").stat().st_mtime_ns == stamp  # reused, not regenerated


def test_large_table_is_generated_in_chunks_not_in_ram(tmp_path):
    spec = SyntheticGraphSpec(num_nodes=150_000, feat_dim=256, avg_degree=4, chunk_rows=8192)  # 154 MB table
    with PeakMemoryMonitor(interval=0.002) as memory:
        folder = generate_graph(spec, tmp_path / "big")
    assert (folder / "features.npy").stat().st_size >= spec.feature_bytes
    assert memory.peak_anon_growth_mb * 2**20 < 0.5 * spec.feature_bytes


def test_bad_spec_is_rejected_with_the_field_named():
    with pytest.raises(ValueError, match="homophily"):
        SyntheticGraphSpec(homophily=1.5).validate()
    with pytest.raises(ValueError, match="degree_exponent"):
        SyntheticGraphSpec(degree_exponent=1.5).validate()


def _write_user_folder(folder, n=30, edges_text="0,1\n1,2\n2,3\n# a comment\n3,0\n"):
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "features.npy", np.random.default_rng(0).standard_normal((n, 5)).astype(np.float32))
    np.save(folder / "labels.npy", np.arange(n) % 3)
    (folder / "edges.csv").write_text(edges_text)
    return folder


def test_user_graph_folder_loads_with_symmetric_edges_and_self_loops(tmp_path):
    g = load_user_graph(_write_user_folder(tmp_path / "user"))
    assert g.num_nodes == 30 and g.feat_dim == 5 and g.num_classes == 3
    assert g.graph.has_edges_between(1, 0) and g.graph.has_edges_between(0, 1)  # made symmetric
    assert bool(g.graph.has_edges_between(torch.arange(30), torch.arange(30)).all())  # self-loops
    assert g.train_idx.numel() + g.val_idx.numel() + g.test_idx.numel() == 30


def test_user_graph_errors_name_the_file_and_problem(tmp_path):
    with pytest.raises(GraphInputError, match=r"edge endpoints must be node ids in \[0, 30\)"):
        load_user_graph(_write_user_folder(tmp_path / "bad_ids", edges_text="0,1\n1,99\n"))
    with pytest.raises(GraphInputError, match="not two integer columns"):
        load_user_graph(_write_user_folder(tmp_path / "bad_text", edges_text="0,a\n"))
    missing = _write_user_folder(tmp_path / "missing")
    (missing / "labels.npy").unlink()
    with pytest.raises(GraphInputError, match="missing labels.npy"):
        load_user_graph(missing)
    with pytest.raises(GraphInputError, match="does not exist"):
        load_user_graph(tmp_path / "nowhere")
    bin_file = tmp_path / "junk.bin"
    bin_file.write_bytes(b"not a graph")
    with pytest.raises(GraphInputError, match="not a DGL binary"):
        load_user_graph(bin_file)


def test_dgl_binary_roundtrip_keeps_features_labels_and_masks(tmp_path):
    dgl = import_dgl()
    g = dgl.graph((torch.tensor([0, 1, 2]), torch.tensor([1, 2, 3])), num_nodes=6)
    g.ndata["feat"] = torch.randn(6, 4)
    g.ndata["label"] = torch.tensor([0, 1, 0, 1, 0, 1])
    g.ndata["train_mask"] = torch.tensor([1, 1, 1, 0, 0, 0], dtype=torch.bool)
    dgl.save_graphs(str(tmp_path / "g.bin"), [g])
    loaded = load_user_graph(tmp_path / "g.bin")
    assert torch.equal(loaded.features, g.ndata["feat"])
    assert torch.equal(loaded.train_idx, torch.tensor([0, 1, 2]))
    assert loaded.num_classes == 2


def test_generated_folder_without_meta_is_refused(tmp_path, small_graph):
    with pytest.raises(GraphInputError, match="no meta.json"):
        load_graph_folder(tmp_path)
    assert json.loads((__import__("pathlib").Path(small_graph.source) / "meta.json").read_text())["num_nodes"] == 10_000
