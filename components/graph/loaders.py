"""Feature loaders for sampled minibatches: `staged`, `zero_copy` (PyTorch-Direct) and DGL's standard path.

All three sample with DGL's `NeighborSampler` on the CPU and differ in how the sampled rows of the
feature table reach the batch:

- `StagedFeatureLoader` - the conventional path the paper starts from: the CPU gathers the rows into
  a freshly allocated temporary (`x[idx]`), then copies that into the batch / device tensor
  (`.to(device)`: a second copy on the CPU, the host-to-device copy on CUDA). Synchronous: the
  training step waits for sampling and both copies.
- `ZeroCopyFeatureLoader` - the paper's direct path: rows are gathered once, straight into a
  pre-allocated, reused, row-aligned batch buffer (`torch.index_select(x, 0, idx, out=buf)`; on
  CUDA the GPU reads them from pinned host memory, see `components.graph.uva`), and a background
  worker double-buffers, so batch i+1 is sampled and gathered while batch i trains.
- `DglStandardLoader` - `dgl.dataloading.DataLoader` with feature prefetch (`prefetch_node_feats`),
  as DGL's examples train: the baseline of the benchmark.

A batch's `features` is a view of a reused buffer for `zero_copy`: it is valid until the next
batch is requested (clone it to keep it), as with any double-buffered loader.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Optional

import torch

from components.closeable import Closeable
from components.dgl_compat import import_dgl
from components.graph.data import GraphData
from components.graph.sampling import NeighborBatches, SampledBatch
from components.graph.uva import UvaFeatureTable

ALIGNMENT_BYTES = 128  # PCIe read packets / GPU memory transactions are 128 B; two CPU cache lines


@dataclass
class Batch:
    index: int
    input_nodes: torch.Tensor
    output_nodes: torch.Tensor
    blocks: list
    features: torch.Tensor  # [len(input_nodes), D] on the training device
    labels: torch.Tensor  # [len(output_nodes)] on the training device
    sample_seconds: float = 0.0  # DGL neighbour sampling
    gather_seconds: Optional[float] = None  # feature rows -> batch (None where not separable: DGL path)
    prep_seconds: float = 0.0  # everything it took to make this batch (sampling + gather + copies)
    gathered_bytes: int = 0
    ready_event: Optional[object] = field(default=None, repr=False)  # CUDA event the consumer waits on


class AlignedRowBuffer:
    """A reusable [rows, dim] buffer whose base address and row stride are multiples of 128 bytes.

    With `align_rows=False` it is a plain contiguous tensor. The padding columns are never part of
    the returned view, so alignment changes where rows start in memory, never their values.
    """

    def __init__(
        self,
        dim: int,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
        align_rows: bool = True,
        capacity_rows: int = 0,
        alignment_bytes: int = ALIGNMENT_BYTES,
    ):
        self.dim, self.dtype, self.device = int(dim), dtype, torch.device(device)
        self.align_rows = align_rows
        elem = torch.empty((), dtype=dtype).element_size()
        if alignment_bytes % elem:
            raise ValueError(f"alignment {alignment_bytes} B is not a multiple of the {elem} B element size")
        self.alignment_elems = alignment_bytes // elem
        self.row_stride = (-(-self.dim // self.alignment_elems) * self.alignment_elems) if align_rows else self.dim
        self.capacity = 0
        self._flat: Optional[torch.Tensor] = None
        self._offset = 0
        if capacity_rows:
            self._allocate(capacity_rows)

    def _allocate(self, rows: int) -> None:
        extra = self.alignment_elems if self.align_rows else 0
        self._flat = torch.zeros(rows * self.row_stride + extra, dtype=self.dtype, device=self.device)
        elem = self._flat.element_size()
        self._offset = ((-self._flat.data_ptr()) % (self.alignment_elems * elem)) // elem if self.align_rows else 0
        self.capacity = rows

    def rows(self, n: int) -> torch.Tensor:
        """A [n, dim] view (row stride `row_stride`), growing the buffer by 25% steps when needed."""
        if n > self.capacity:
            self._allocate(max(n, int(self.capacity * 1.25)))
        block = self._flat[self._offset : self._offset + n * self.row_stride].view(n, self.row_stride)
        return block[:, : self.dim]

    @property
    def nbytes(self) -> int:
        return 0 if self._flat is None else self._flat.numel() * self._flat.element_size()


class FeatureLoader:
    """Common setup: the graph's tensors, the seeded batches, the device. Subclasses make batches."""

    name = "base"

    def __init__(
        self,
        data: GraphData,
        seeds: torch.Tensor,
        fanouts: Sequence[int],
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        device: str = "cpu",
        max_batches: Optional[int] = None,
        sampling_threads: int = 1,
    ):
        self.data = data
        self.features = data.features
        self.labels = data.labels
        self.device = torch.device(device)
        self.batches = NeighborBatches(
            data.graph,
            seeds,
            fanouts,
            batch_size,
            shuffle=shuffle,
            seed=seed,
            max_batches=max_batches,
            sampling_threads=sampling_threads,
        )

    def __len__(self) -> int:
        return len(self.batches)

    @property
    def row_bytes(self) -> int:
        return self.features.shape[1] * self.features.element_size()

    def epoch(self, epoch: int) -> BatchIterator:
        raise NotImplementedError

    def close(self) -> None:
        """Release buffers / workers; loaders are reusable across epochs until closed."""


class BatchIterator(Closeable):
    """Iterator over one epoch's batches; a context manager so its worker (if any) always stops."""

    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        raise NotImplementedError


class _SyncIterator(BatchIterator):
    def __init__(self, make_batch, seed_batches: list[torch.Tensor]):
        self._make_batch = make_batch
        self._seed_batches = seed_batches
        self._next_index = 0

    def __next__(self) -> Batch:
        if self._next_index >= len(self._seed_batches):
            raise StopIteration
        i = self._next_index
        self._next_index += 1
        return self._make_batch(i, self._seed_batches[i])


class StagedFeatureLoader(FeatureLoader):
    """Conventional path: gather into a temporary, then copy into the batch / device; synchronous."""

    name = "staged"

    def epoch(self, epoch: int) -> BatchIterator:
        return _SyncIterator(lambda i, seeds: self._make_batch(epoch, i, seeds), self.batches.seed_batches(epoch))

    def _make_batch(self, epoch: int, index: int, seeds: torch.Tensor) -> Batch:
        start = time.perf_counter()
        sb = self.batches.sample(epoch, index, seeds)
        gather_start = time.perf_counter()
        staging = self.features[sb.input_nodes]  # copy 1: sparse rows -> dense temporary
        features = staging.to(self.device, copy=True)  # copy 2: temporary -> batch (H2D on CUDA)
        labels = self.labels[sb.output_nodes].to(self.device)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        done = time.perf_counter()
        blocks = sb.blocks if self.device.type == "cpu" else [b.to(self.device) for b in sb.blocks]
        return Batch(
            index,
            sb.input_nodes,
            sb.output_nodes,
            blocks,
            features,
            labels,
            sb.sample_seconds,
            done - gather_start,
            done - start,
            sb.input_nodes.numel() * self.row_bytes,
        )


class ZeroCopyFeatureLoader(FeatureLoader):
    """PyTorch-Direct on this machine: one direct gather into reused aligned buffers, double-buffered.

    `prefetch=True`: a worker thread samples and gathers batch i+1 while batch i trains (two
    buffers); `prefetch=False`: the same direct gather, inline, into one buffer (isolates the
    copy elimination from the overlap). `align_rows`: 128-byte-aligned buffer rows (see
    `AlignedRowBuffer`). On CUDA, rows are read by the GPU from the pinned host table.
    """

    name = "zero_copy"

    def __init__(
        self,
        *args,  # data, seeds, fanouts, batch_size (see FeatureLoader)
        align_rows: bool = True,
        prefetch: bool = True,
        worker_threads: Optional[int] = None,
        **common,
    ):
        super().__init__(*args, **common)
        self.align_rows = align_rows
        self.prefetch = prefetch
        # torch intra-op threads of the prefetch worker's gather; None keeps torch's setting. On a
        # small CPU, 1 leaves the other cores to the training step instead of oversubscribing them.
        self.worker_threads = worker_threads
        n_buffers = 2 if prefetch else 1
        capacity = self.max_input_rows()
        self._buffers = [
            AlignedRowBuffer(
                self.features.shape[1], self.features.dtype, self.device, align_rows, capacity_rows=capacity
            )
            for _ in range(n_buffers)
        ]
        self._gather = self._cpu_gather
        self._stream = None
        if self.device.type == "cuda":
            self._uva = UvaFeatureTable(self.features, self.device)  # pins + maps the host table once
            self._stream = torch.cuda.Stream(self.device)
            self._gather = self._uva_gather

    def max_input_rows(self) -> int:
        """Rows a batch can need at most: seeds x prod(1 + fanout), capped by the node count.

        Buffers are allocated once at this size, so no batch ever reallocates them; with a full
        neighbourhood (-1) in the fanouts there is no useful bound and buffers grow on demand.
        """
        if any(f < 0 for f in self.batches.fanouts):
            return 0
        rows = self.batches.batch_size
        for f in self.batches.fanouts:
            rows *= 1 + f
        return min(rows, self.features.shape[0])

    def _cpu_gather(self, input_nodes: torch.Tensor, out: torch.Tensor) -> None:
        torch.index_select(self.features, 0, input_nodes, out=out)

    def _uva_gather(self, input_nodes: torch.Tensor, out: torch.Tensor) -> None:
        with torch.cuda.stream(self._stream):
            idx = input_nodes.to(self.device, non_blocking=False)
            self._uva.gather(idx, out=out, aligned=self.align_rows)

    def make_batch(self, epoch: int, sb: SampledBatch, buffer: AlignedRowBuffer, started: float) -> Batch:
        gather_start = time.perf_counter()
        out = buffer.rows(sb.input_nodes.numel())
        self._gather(sb.input_nodes, out)
        labels = self.labels[sb.output_nodes].to(self.device)
        blocks, event = sb.blocks, None
        if self.device.type == "cuda":
            with torch.cuda.stream(self._stream):
                blocks = [b.to(self.device) for b in sb.blocks]
                event = torch.cuda.Event()
                event.record(self._stream)
            event.synchronize()  # gather time is measured to completion; the train stream never waits long
        done = time.perf_counter()
        return Batch(
            sb.index,
            sb.input_nodes,
            sb.output_nodes,
            blocks,
            out,
            labels,
            sb.sample_seconds,
            done - gather_start,
            done - started,
            sb.input_nodes.numel() * self.row_bytes,
            event,
        )

    def epoch(self, epoch: int) -> BatchIterator:
        seed_batches = self.batches.seed_batches(epoch)
        if not self.prefetch:

            def inline(i: int, seeds: torch.Tensor) -> Batch:
                start = time.perf_counter()
                return self.make_batch(epoch, self.batches.sample(epoch, i, seeds), self._buffers[0], start)

            return _SyncIterator(inline, seed_batches)
        return PrefetchIterator(self, epoch, seed_batches, self._buffers)

    @property
    def buffer_bytes(self) -> int:
        return sum(b.nbytes for b in self._buffers)


class _Failure:
    def __init__(self, exc: BaseException):
        self.exc = exc


_END = object()


class PrefetchIterator(BatchIterator):
    """Double buffering: a worker thread fills one buffer while the consumer trains on the other.

    The worker samples batch i+1 at once, then waits for a free buffer before gathering into it. A
    buffer returns to the free pool when the consumer asks for the next batch. A worker error is
    re-raised in the consumer at its next `next()`; `close()` (also on any consumer error, via the
    context manager) stops and joins the worker, so no thread outlives the epoch.
    """

    _POLL_SECONDS = 0.05

    def __init__(
        self,
        loader: ZeroCopyFeatureLoader,
        epoch: int,
        seed_batches: list[torch.Tensor],
        buffers: list[AlignedRowBuffer],
    ):
        self._loader = loader
        self._epoch = epoch
        self._seed_batches = seed_batches
        self._free: queue.Queue[AlignedRowBuffer] = queue.Queue()
        for buf in buffers:
            self._free.put(buf)
        self._ready: queue.Queue[object] = queue.Queue(maxsize=len(buffers))
        self._held: Optional[AlignedRowBuffer] = None
        self._stop = threading.Event()
        self._finished = False
        self._worker = threading.Thread(target=self._run, name=f"zero-copy-prefetch-e{epoch}", daemon=True)
        self._worker.start()

    @property
    def worker_alive(self) -> bool:
        return self._worker.is_alive()

    def _put(self, q: queue.Queue, item) -> bool:
        while not self._stop.is_set():
            try:
                q.put(item, timeout=self._POLL_SECONDS)
                return True
            except queue.Full:
                continue
        return False

    def _take_free_buffer(self) -> Optional[AlignedRowBuffer]:
        while not self._stop.is_set():
            try:
                return self._free.get(timeout=self._POLL_SECONDS)
            except queue.Empty:
                continue
        return None

    def _run(self) -> None:
        threads = self._loader.worker_threads
        previous = torch.get_num_threads()
        try:
            if threads:
                # Sets this thread's OpenMP team size; torch also records it for threads created
                # meanwhile, hence the restore below.
                torch.set_num_threads(threads)
            for i, seeds in enumerate(self._seed_batches):
                if self._stop.is_set():
                    return
                start = time.perf_counter()
                sampled = self._loader.batches.sample(self._epoch, i, seeds)
                buffer = self._take_free_buffer()
                if buffer is None:
                    return
                batch = self._loader.make_batch(self._epoch, sampled, buffer, start)
                batch._buffer = buffer  # returned to the pool when the consumer moves on
                if not self._put(self._ready, batch):
                    return
            self._put(self._ready, _END)
        except BaseException as exc:  # handed to the consumer, never lost in the thread
            self._put(self._ready, _Failure(exc))
        finally:
            if threads:
                torch.set_num_threads(previous)

    def __next__(self) -> Batch:
        if self._finished:
            raise StopIteration
        if self._held is not None:
            self._free.put(self._held)
            self._held = None
        while True:
            try:
                item = self._ready.get(timeout=self._POLL_SECONDS)
                break
            except queue.Empty:
                if not self._worker.is_alive() and self._ready.empty():
                    self.close()
                    raise RuntimeError("zero-copy prefetch worker stopped without a result") from None
        if item is _END:
            self.close()
            raise StopIteration
        if isinstance(item, _Failure):
            self.close()
            raise RuntimeError(f"zero-copy prefetch worker failed: {item.exc!r}") from item.exc
        self._held = item._buffer
        return item

    def close(self) -> None:
        if self._finished:
            return
        self._finished = True
        self._stop.set()
        self._worker.join(timeout=60)
        if self._worker.is_alive():
            raise RuntimeError("zero-copy prefetch worker did not stop within 60 s")
        while True:  # drop undelivered batches so their buffers are not referenced
            try:
                self._ready.get_nowait()
            except queue.Empty:
                break


class DglStandardLoader(FeatureLoader):
    """DGL's own path: `dgl.dataloading.DataLoader` + NeighborSampler with feature/label prefetch."""

    name = "dgl"

    def __init__(self, *args, num_workers: int = 0, **common):  # args: data, seeds, fanouts, batch_size
        super().__init__(*args, **common)
        dgl = import_dgl()
        data = self.data
        if "feat" not in data.graph.ndata or "label" not in data.graph.ndata:
            raise ValueError("the DGL loader needs graph.ndata['feat'] and ['label'] (GraphData sets them)")
        self.num_workers = int(num_workers)
        self._shuffle = self.batches.shuffle
        self._seed = self.batches.seed
        sampler = dgl.dataloading.NeighborSampler(
            self.batches.fanouts, prefetch_node_feats=["feat"], prefetch_labels=["label"]
        )
        self.loader = dgl.dataloading.DataLoader(
            data.graph,
            self.batches.seeds,
            sampler,
            batch_size=self.batches.batch_size,
            shuffle=self._shuffle,
            drop_last=False,
            num_workers=self.num_workers,
            device=self.device,
            persistent_workers=self.num_workers > 0,
        )

    def epoch(self, epoch: int) -> BatchIterator:
        torch.manual_seed(self._seed * 1_000_003 + epoch)  # DGL shuffles with torch's global RNG
        return _DglIterator(self, iter(self.loader), len(self))


class _DglIterator(BatchIterator):
    def __init__(self, loader: DglStandardLoader, inner, limit: int):
        self._loader, self._inner, self._limit, self._i = loader, inner, limit, 0

    def __next__(self) -> Batch:
        if self._i >= self._limit:
            raise StopIteration
        start = time.perf_counter()
        input_nodes, output_nodes, blocks = next(self._inner)
        features = blocks[0].srcdata["feat"]
        labels = blocks[-1].dstdata["label"]
        prep = time.perf_counter() - start
        batch = Batch(
            self._i,
            input_nodes,
            output_nodes,
            blocks,
            features,
            labels,
            0.0,
            None,
            prep,
            input_nodes.numel() * self._loader.row_bytes,
        )
        self._i += 1
        return batch

    def close(self) -> None:
        self._inner = None


LOADERS = {cls.name: cls for cls in (StagedFeatureLoader, ZeroCopyFeatureLoader, DglStandardLoader)}
