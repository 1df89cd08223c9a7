"""One training epoch / one evaluation over a loader, measuring where the time goes.

Per step, the time spent waiting in `next(loader)` is the *data stall*; the rest (forward, backward,
optimizer) is compute. Stall fraction = stall / (stall + compute) over the epoch. Per batch the
loaders also report data-prep latency (sampling + gather + copies, wherever it ran) and the bytes
gathered, from which the gathered GB/s follows. A sampling thread records the peak resident memory
(total and anonymous, i.e. excluding the page cache of the memory-mapped feature table) meanwhile.
"""

from __future__ import annotations

import resource
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Optional

import torch
from torch.nn import functional as F
from tqdm.auto import tqdm

from components.dgl_compat import dgl_supports_cuda
from components.graph.config import TrainingSettings
from components.graph.data import GraphData
from components.graph.loaders import Batch, FeatureLoader


def _status_kb(field_name: str) -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class PeakMemoryMonitor:
    """Samples VmRSS and RssAnon of this process every `interval` seconds while active."""

    def __init__(self, interval: float = 0.005):
        self.interval = interval
        self.peak_rss_kb = 0
        self.peak_anon_kb = 0
        self.start_anon_kb = 0
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def _sample(self) -> None:
        self.peak_rss_kb = max(self.peak_rss_kb, _status_kb("VmRSS"))
        self.peak_anon_kb = max(self.peak_anon_kb, _status_kb("RssAnon"))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> PeakMemoryMonitor:
        self.start_anon_kb = _status_kb("RssAnon")
        self._sample()
        self._thread = threading.Thread(target=self._run, name="peak-memory", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()

    @property
    def peak_rss_mb(self) -> float:
        return self.peak_rss_kb / 1024

    @property
    def peak_anon_growth_mb(self) -> float:
        """Anonymous memory the epoch added at its peak: buffers, temporaries, activations."""
        return max(0, self.peak_anon_kb - self.start_anon_kb) / 1024


def process_max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@dataclass
class EpochStats:
    loader: str
    epoch: int
    batches: int
    loss: float
    train_accuracy: float
    epoch_seconds: float
    stall_seconds: float
    compute_seconds: float
    stall_fraction: float
    prep_ms_median: float  # per-batch data-prep latency (sampling + gather + copies)
    prep_ms_p90: float
    sample_ms_median: float
    gather_ms_median: Optional[float]
    gathered_gb: float
    gather_gbps: Optional[float]  # bytes gathered / time in the gather itself
    feed_gbps: float  # bytes gathered / total data-prep time (comparable across all loaders)
    peak_rss_mb: float
    peak_anon_growth_mb: float
    prep_ms: list = field(default_factory=list, repr=False)

    def metrics(self) -> dict:
        return {
            k: v
            for k, v in asdict(self).items()
            if isinstance(v, (int, float)) and v is not None and not isinstance(v, bool)
        }


def _wait_ready(batch: Batch) -> None:
    if batch.ready_event is not None:  # CUDA: make the training stream wait for the gather stream
        torch.cuda.current_stream().wait_event(batch.ready_event)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _summarise(
    loader: FeatureLoader,
    epoch: int,
    batches: list[Batch],
    losses,
    correct,
    seen,
    stall,
    compute,
    wall,
    memory: PeakMemoryMonitor,
) -> EpochStats:
    prep = [b.prep_seconds for b in batches]
    gathers = [b.gather_seconds for b in batches if b.gather_seconds is not None]
    gathered = sum(b.gathered_bytes for b in batches)
    gather_total = sum(gathers) if len(gathers) == len(batches) and gathers else None
    n = max(1, len(batches))
    return EpochStats(
        loader=loader.name,
        epoch=epoch,
        batches=len(batches),
        loss=sum(losses) / n,
        train_accuracy=correct / max(1, seen),
        epoch_seconds=wall,
        stall_seconds=stall,
        compute_seconds=compute,
        stall_fraction=stall / max(1e-12, stall + compute),
        prep_ms_median=1e3 * statistics.median(prep) if prep else 0.0,
        prep_ms_p90=1e3 * sorted(prep)[int(0.9 * (len(prep) - 1))] if prep else 0.0,
        sample_ms_median=1e3 * statistics.median([b.sample_seconds for b in batches]) if batches else 0.0,
        gather_ms_median=1e3 * statistics.median(gathers) if gathers else None,
        gathered_gb=gathered / 1e9,
        gather_gbps=gathered / 1e9 / gather_total if gather_total else None,
        feed_gbps=gathered / 1e9 / max(1e-12, sum(prep)),
        peak_rss_mb=memory.peak_rss_mb,
        peak_anon_growth_mb=memory.peak_anon_growth_mb,
        prep_ms=[1e3 * p for p in prep],
    )


def train_epoch(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: FeatureLoader,
    epoch: int,
    progress: Optional[Callable[[int, float], None]] = None,
) -> EpochStats:
    """Train one epoch; `progress(batch_index, loss)` is called after each step (e.g. a tqdm bar)."""
    model.train()
    device = loader.device
    stall = compute = 0.0
    losses, kept = [], []
    correct = seen = 0
    with PeakMemoryMonitor() as memory, loader.epoch(epoch) as batches:
        wall_start = time.perf_counter()
        while True:
            t0 = time.perf_counter()
            try:
                batch = next(batches)
            except StopIteration:
                break
            _wait_ready(batch)
            t1 = time.perf_counter()
            logits = model(batch.blocks, batch.features)
            loss = F.cross_entropy(logits, batch.labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            _sync(device)
            t2 = time.perf_counter()
            stall += t1 - t0
            compute += t2 - t1
            losses.append(float(loss.detach()))
            correct += int((logits.detach().argmax(1) == batch.labels).sum())
            seen += int(batch.labels.numel())
            batch.features = batch.blocks = None  # keep the timings, not the (reused) buffers
            kept.append(batch)
            if progress is not None:
                progress(batch.index, losses[-1])
        wall = time.perf_counter() - wall_start
    return _summarise(loader, epoch, kept, losses, correct, seen, stall, compute, wall, memory)


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader: FeatureLoader, epoch: int = 0) -> float:
    """Accuracy on the loader's seed nodes (sampled neighbourhoods, as in DGL's minibatch examples)."""
    model.eval()
    correct = seen = 0
    with loader.epoch(epoch) as batches:
        for batch in batches:
            _wait_ready(batch)
            logits = model(batch.blocks, batch.features)
            correct += int((logits.argmax(1) == batch.labels).sum())
            seen += int(batch.labels.numel())
    return correct / max(1, seen)


def training_device(requested: str) -> str:
    """The device to train on for `device=requested` (auto | cpu | cuda[:i]).

    DGL blocks can only live on a GPU with a CUDA build of DGL. The PyPI DGL is CPU-only, so `auto`
    means CPU unless DGL can use the GPU; an explicit `cuda` without it is refused (the GPU gather
    comparison is benchmarks/gcn_loader_cuda.py).
    """
    device = requested if requested != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not dgl_supports_cuda():
        if requested == "auto":
            return "cpu"
        raise ValueError(
            f"device={requested!r} needs a CUDA build of DGL (the installed DGL is CPU-only); "
            "use device=cpu, or benchmarks/gcn_loader_cuda.py for the GPU gather comparison"
        )
    return device


# (seed nodes, batch size, shuffle, max batches) -> a loader over them
LoaderFactory = Callable[[torch.Tensor, int, bool, Optional[int]], FeatureLoader]


@dataclass
class FitResult:
    """A model trained for `settings.epochs` epochs: per-epoch stats, validation and test accuracy."""

    history: list[EpochStats]
    val_accuracy: list[float]
    test_accuracy: float

    def summary(self) -> dict[str, float]:
        """Medians over epochs after the first (which pays page-cache and allocator warm-up) when possible."""
        steady = self.history[1:] if len(self.history) > 1 else self.history
        out = {
            "epoch_seconds": statistics.median(s.epoch_seconds for s in steady),
            "stall_fraction": statistics.median(s.stall_fraction for s in steady),
            "prep_ms_median": statistics.median(s.prep_ms_median for s in steady),
            "feed_gbps": statistics.median(s.feed_gbps for s in steady),
            "peak_rss_mb": max(s.peak_rss_mb for s in self.history),
            "peak_anon_growth_mb": max(s.peak_anon_growth_mb for s in self.history),
        }
        gathers = [s.gather_gbps for s in steady if s.gather_gbps is not None]
        if gathers:
            out["gather_gbps"] = statistics.median(gathers)
        return out | {"test_accuracy": self.test_accuracy, "final_val_accuracy": self.val_accuracy[-1]}


def _epoch_with_bar(model, optimizer, loader: FeatureLoader, epoch: int, label: str, show: bool) -> EpochStats:
    """One epoch with a progress bar (loss in the postfix) that stays on screen."""
    with tqdm(total=len(loader), desc=f"{label} epoch {epoch}", disable=not show, leave=True) as bar:

        def step(_index: int, loss: float) -> None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}")

        return train_epoch(model, optimizer, loader, epoch, progress=step)


def fit(
    model: torch.nn.Module,
    data: GraphData,
    make_loader: LoaderFactory,
    settings: TrainingSettings,
    label: str = "gnn",
    on_epoch: Optional[Callable[[EpochStats, float], None]] = None,
) -> FitResult:
    """Adam for `settings.epochs` epochs on the training nodes, validation accuracy after each epoch
    (`on_epoch(stats, val_accuracy)`), then test accuracy; every loader is closed, whatever happens."""
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    train_loader = make_loader(data.train_idx, settings.batch_size, True, settings.max_batches_per_epoch)
    val_loader = make_loader(data.val_idx, settings.eval_batch_size, False, None)
    history: list[EpochStats] = []
    val_accuracy: list[float] = []
    try:
        for epoch in range(settings.epochs):
            history.append(_epoch_with_bar(model, optimizer, train_loader, epoch, label, settings.progress))
            val_accuracy.append(evaluate(model, val_loader))
            if on_epoch is not None:
                on_epoch(history[-1], val_accuracy[-1])
        test_loader = make_loader(data.test_idx, settings.eval_batch_size, False, None)
        try:
            test_accuracy = evaluate(model, test_loader)
        finally:
            test_loader.close()
    finally:
        train_loader.close()
        val_loader.close()
    return FitResult(history, val_accuracy, test_accuracy)
