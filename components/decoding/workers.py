"""Two workers, one for the draft and one for the target, synchronised once per round.

PEARL's gain comes from running the draft and the target at the same time. On a CPU each worker is
a thread with its own torch intra-op thread budget (torch releases the GIL inside its kernels, and
`torch.set_num_threads` is per calling thread under OpenMP), so the two models share the machine's
cores instead of both grabbing all of them. `run(draft_job, target_job)` is the round's barrier:
it returns when both jobs are done. A round with only one job runs it on the calling thread, which
keeps the whole core budget (so sequential phases are not penalised).

`InlinePair` runs both jobs one after the other on the calling thread: the same algorithm and the
same outputs (the RNG streams do not depend on timing), used where speed does not matter.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Optional

import torch

from components.closeable import Closeable

Job = Optional[Callable[[], Any]]


class InlinePair(Closeable):
    parallel = False

    def run(self, draft_job: Job, target_job: Job) -> tuple[Any, Any]:
        return (draft_job() if draft_job else None), (target_job() if target_job else None)


class ThreadPair(InlinePair):
    """Draft and target each on a dedicated thread with `draft_threads` / `target_threads` torch threads."""

    parallel = True

    def __init__(self, draft_threads: int = 1, target_threads: int = 1, cuda: bool = False):
        if draft_threads < 1 or target_threads < 1:
            raise ValueError(f"thread budgets must be >= 1, got draft={draft_threads} target={target_threads}")
        self.draft_threads, self.target_threads = draft_threads, target_threads
        self._draft = ThreadPoolExecutor(1, "draft", initializer=_init_worker, initargs=(draft_threads, cuda))
        self._target = ThreadPoolExecutor(1, "target", initializer=_init_worker, initargs=(target_threads, cuda))

    def run(self, draft_job: Job, target_job: Job) -> tuple[Any, Any]:
        if draft_job is None or target_job is None:
            return super().run(draft_job, target_job)
        draft_future = self._draft.submit(draft_job)
        target_future = self._target.submit(target_job)
        # The barrier: both results (or the first error) before the round's verdict.
        return draft_future.result(), target_future.result()

    def close(self) -> None:
        self._draft.shutdown(wait=True)
        self._target.shutdown(wait=True)


def _init_worker(threads: int, cuda: bool) -> None:
    """A worker's torch thread budget and, on a GPU, its own CUDA stream (so kernels can overlap)."""
    # torch initialises a new thread's OpenMP budget lazily from the process-wide value on its first
    # parallel call, which would undo a per-thread setting made before it: trigger that first.
    torch.zeros(64).add_(1)
    torch.get_num_threads()
    torch.set_num_threads(threads)
    if cuda and torch.cuda.is_available():
        torch.cuda.set_stream(torch.cuda.Stream())  # the current stream is per thread


def split_threads(total: int, draft_share: float = 0.5, draft=None) -> tuple[int, int]:
    """Split a core budget between draft and target (each gets at least one thread); a draft whose
    `uses_cores` is False (prompt lookup) gets a thread of its own but no core: the target gets all."""
    if draft is not None and not getattr(draft, "uses_cores", True):
        return 1, max(1, total)
    total = max(2, total)
    draft = min(total - 1, max(1, round(total * draft_share)))
    return draft, total - draft
