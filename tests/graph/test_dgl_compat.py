"""The DGL import shim: DGL imports beside torch 2.13 and the CPU pieces the project uses work."""

from __future__ import annotations

import importlib.abc
import sys
import types

import pytest
import torch

from components import dgl_compat
from components.dgl_compat import import_dgl


def test_import_dgl_absorbs_only_the_graphbolt_library_load():
    dgl = import_dgl()
    assert dgl.__version__.startswith("2.")
    assert dgl_compat.GRAPHBOLT_LOADED in (True, False)
    if dgl_compat.GRAPHBOLT_LOADED is False:
        assert "graphbolt" in dgl_compat.GRAPHBOLT_ERROR
    assert "dgl.graphbolt" in sys.modules  # the Python module itself is imported intact
    assert hasattr(sys.modules["dgl.graphbolt"], "load_graphbolt")
    assert not any(isinstance(f, dgl_compat._GraphboltFinder) for f in sys.meta_path)  # shim removed after


def test_other_import_errors_still_propagate():
    class Failing(importlib.abc.Loader):
        def create_module(self, spec):
            return None

        def exec_module(self, module):
            raise ImportError("some unrelated module is missing")

    loader = dgl_compat._TolerantGraphboltLoader(Failing())
    with pytest.raises(ImportError, match="unrelated"):
        loader.exec_module(types.ModuleType("dgl.graphbolt"))


def test_graphconv_forward_and_backward_on_cpu():
    dgl = import_dgl()
    torch.manual_seed(0)
    g = dgl.add_self_loop(dgl.rand_graph(50, 300))
    conv = dgl.nn.GraphConv(8, 4)
    x = torch.randn(50, 8, requires_grad=True)
    out = conv(g, x)
    out.square().sum().backward()
    assert out.shape == (50, 4)
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert conv.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("num_workers", [0, 2])
def test_neighbor_sampler_dataloader_covers_every_seed(num_workers):
    dgl = import_dgl()
    g = dgl.add_self_loop(dgl.rand_graph(200, 1500))
    g.ndata["feat"] = torch.arange(200, dtype=torch.float32).unsqueeze(1)
    seeds = torch.arange(0, 200, 2)
    sampler = dgl.dataloading.NeighborSampler([4, 4], prefetch_node_feats=["feat"])
    loader = dgl.dataloading.DataLoader(g, seeds, sampler, batch_size=16, shuffle=True, num_workers=num_workers)
    seen = []
    for input_nodes, output_nodes, blocks in loader:
        assert len(blocks) == 2
        assert torch.equal(blocks[0].srcdata["feat"].squeeze(1).long(), input_nodes)  # features follow ids
        assert torch.equal(input_nodes[: output_nodes.numel()], output_nodes)  # seeds come first
        seen.append(output_nodes)
    assert torch.equal(torch.cat(seen).sort().values, seeds)
