"""Small graphs shared by the graph tests (generated once per session under a temp folder)."""

from __future__ import annotations

import pytest

from components.graph.data import load_graph_folder
from components.graph.generator import SyntheticGraphSpec, cached_graph_dir


@pytest.fixture(scope="session")
def graph_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("graphs")


@pytest.fixture(scope="session")
def small_graph(graph_cache):
    """10k nodes, 8 communities, 32-dim features: trains in seconds, MLP clearly worse than GCN."""
    spec = SyntheticGraphSpec(num_nodes=10_000, feat_dim=32, chunk_rows=4096, seed=3)
    return load_graph_folder(cached_graph_dir(spec, graph_cache))
