"""Minibatch seeds and DGL neighbour sampling: the step every loader shares.

Sampling stays in DGL (`NeighborSampler`) on the CPU in every loader mode. DGL's sampling RNG is
per OS thread (each thread's engine is seeded with `seed + its thread number`, numbered in order of
first use), so the same `dgl.seed` gives different samples on different threads. To make the
loaders comparable batch for batch, all sampling of `staged` and `zero_copy` runs on one long-lived
sampling thread, reseeded per batch from (seed, epoch, batch): the same seeds then give the same
blocks whichever loader asked and whether or not it prefetches.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Optional

import torch

from components.dgl_compat import import_dgl

_executor: Optional[ThreadPoolExecutor] = None
_executor_lock = threading.Lock()


def _sampling_thread() -> ThreadPoolExecutor:
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dgl-sampling")
        return _executor


@dataclass
class SampledBatch:
    index: int  # position in the epoch
    input_nodes: torch.Tensor  # rows of the feature table this batch needs (DGL: dst nodes first)
    output_nodes: torch.Tensor  # the seed nodes whose labels are predicted
    blocks: list  # DGL message-flow graphs, one per layer
    sample_seconds: float


class NeighborBatches:
    """Seeded minibatches of `seeds`, sampled with DGL's NeighborSampler on the sampling thread."""

    def __init__(
        self,
        graph,
        seeds: torch.Tensor,
        fanouts: Sequence[int],
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        max_batches: Optional[int] = None,
        sampling_threads: int = 1,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not fanouts or any(int(f) == 0 or int(f) < -1 for f in fanouts):
            raise ValueError(f"fanouts must be a non-empty list of positive ints (or -1 for all), got {list(fanouts)}")
        if seeds.numel() == 0:
            raise ValueError("no seed nodes to iterate over")
        dgl = import_dgl()
        self.graph = graph
        self.seeds = seeds.long()
        self.fanouts = [int(f) for f in fanouts]
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.max_batches = max_batches
        self.sampling_threads = int(sampling_threads)  # DGL OMP threads; 1 keeps samples reproducible
        self.sampler = dgl.dataloading.NeighborSampler(self.fanouts)

    def __len__(self) -> int:
        n = -(-self.seeds.numel() // self.batch_size)
        return min(n, self.max_batches) if self.max_batches else n

    def seed_batches(self, epoch: int) -> list[torch.Tensor]:
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            order = self.seeds[torch.randperm(self.seeds.numel(), generator=gen)]
        else:
            order = self.seeds
        return list(torch.split(order, self.batch_size))[: len(self)]

    def batch_seed(self, epoch: int, index: int) -> int:
        return (self.seed * 1_000_003 + epoch * 10_007 + index) % (2**31 - 1)

    def sample(self, epoch: int, index: int, seeds: torch.Tensor) -> SampledBatch:
        """Sample one batch on the shared sampling thread (blocks the caller until done)."""
        return _sampling_thread().submit(self._sample_here, epoch, index, seeds).result()

    def _sample_here(self, epoch: int, index: int, seeds: torch.Tensor) -> SampledBatch:
        dgl = import_dgl()
        dgl.utils.set_num_threads(self.sampling_threads)  # affects this thread's OpenMP regions only
        dgl.seed(self.batch_seed(epoch, index))
        start = time.perf_counter()
        input_nodes, output_nodes, blocks = self.sampler.sample(self.graph, seeds)
        return SampledBatch(index, input_nodes, output_nodes, blocks, time.perf_counter() - start)


def describe_blocks(blocks: Sequence[Any]) -> dict:
    return {"src_nodes": [int(b.num_src_nodes()) for b in blocks], "edges": [int(b.num_edges()) for b in blocks]}
