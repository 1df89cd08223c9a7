"""GCN and GraphSAGE on DGL blocks (one block per sampled layer), and the MLP baseline.

All three take `(blocks, features)` so the training loop is the same; the MLP ignores the blocks and
reads only the seed nodes' own rows (in a DGL block the destination nodes are the first rows of
the source nodes), which is exactly "the same features without the graph".
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from components.dgl_compat import import_dgl


class _BlockLayers(nn.Module):
    """One graph layer per sampled block; ReLU and dropout between layers, logits out."""

    layers: nn.ModuleList
    dropout: nn.Dropout

    def forward(self, blocks: Sequence, x: torch.Tensor) -> torch.Tensor:
        h = x
        for i, (layer, block) in enumerate(zip(self.layers, blocks)):
            h = layer(block, h)
            if i < len(self.layers) - 1:
                h = self.dropout(F.relu(h))
        return h


class GCN(_BlockLayers):
    """Kipf & Welling GCN (`GraphConv`, symmetric normalisation) over sampled blocks."""

    def __init__(self, in_feats: int, hidden: int, num_classes: int, num_layers: int = 2, dropout: float = 0.5):
        super().__init__()
        dglnn = import_dgl().nn
        dims = [in_feats] + [hidden] * (num_layers - 1) + [num_classes]
        # allow_zero_in_degree: blocks of a graph with self-loops never have zero in-degree; a user
        # graph sampled with small fanouts could, and then a node simply aggregates nothing.
        self.layers = nn.ModuleList(dglnn.GraphConv(a, b, allow_zero_in_degree=True) for a, b in zip(dims, dims[1:]))
        self.dropout = nn.Dropout(dropout)


class GraphSAGE(_BlockLayers):
    """GraphSAGE (`SAGEConv`): the node's own state concatenated with an aggregate of its neighbours'."""

    def __init__(
        self,
        in_feats: int,
        hidden: int,
        num_classes: int,
        num_layers: int = 2,
        dropout: float = 0.5,
        aggregator: str = "mean",
    ):
        super().__init__()
        dglnn = import_dgl().nn
        dims = [in_feats] + [hidden] * (num_layers - 1) + [num_classes]
        self.layers = nn.ModuleList(dglnn.SAGEConv(a, b, aggregator) for a, b in zip(dims, dims[1:]))
        self.dropout = nn.Dropout(dropout)


class FeatureMLP(nn.Module):
    """The no-graph baseline: an MLP on the seed nodes' own features."""

    def __init__(self, in_feats: int, hidden: int, num_classes: int, num_layers: int = 2, dropout: float = 0.5):
        super().__init__()
        dims = [in_feats] + [hidden] * (num_layers - 1) + [num_classes]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims, dims[1:]))
        self.dropout = nn.Dropout(dropout)

    def forward(self, blocks: Sequence, x: torch.Tensor) -> torch.Tensor:
        h = x[: blocks[-1].num_dst_nodes()]  # the seeds are the first rows of the input nodes
        for i, layer in enumerate(self.layers):
            h = layer(h)
            if i < len(self.layers) - 1:
                h = self.dropout(F.relu(h))
        return h


def build_model(
    kind: str, in_feats: int, hidden: int, num_classes: int, num_layers: int, dropout: float, aggregator: str = "mean"
) -> nn.Module:
    if kind == "gcn":
        return GCN(in_feats, hidden, num_classes, num_layers, dropout)
    if kind == "sage":
        return GraphSAGE(in_feats, hidden, num_classes, num_layers, dropout, aggregator)
    if kind == "mlp":
        return FeatureMLP(in_feats, hidden, num_classes, num_layers, dropout)
    raise ValueError(f"unknown model kind {kind!r}: expected 'gcn', 'sage' or 'mlp'")
