"""A pre-allocated, reused host buffer: a ring of byte regions with FIFO release and backpressure.

DataStates keeps one host cache for the whole run instead of allocating per checkpoint (allocating
and, on CUDA, pinning gigabytes each time is what makes naive async checkpointing slow). A piece of
a checkpoint takes one contiguous region; regions are released in the order they were taken, once
their bytes reached storage; when the ring is full, `allocate` blocks until the oldest region is
released (backpressure: training can never outrun storage by more than the buffer).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass

import torch

from components.checkpoint.layout import ALIGN, CheckpointError


@dataclass
class Region:
    offset: int
    nbytes: int
    released: bool = False


class HostBufferPool:
    def __init__(self, capacity_bytes: int, pin_memory: bool = False, alignment: int = ALIGN):
        if capacity_bytes <= 0:
            raise ValueError(f"host buffer capacity must be positive, got {capacity_bytes}")
        self.alignment = alignment
        self.capacity = (int(capacity_bytes) + alignment - 1) // alignment * alignment
        # Pinned memory lets device->host copies run asynchronously on a copy stream (CUDA only).
        # `alignment` extra bytes so that the ring can start on an `alignment` boundary (direct I/O
        # needs block-aligned buffers; the allocator only promises 64 bytes).
        raw = torch.empty(self.capacity + alignment, dtype=torch.uint8, pin_memory=pin_memory)
        skew = (-raw.data_ptr()) % alignment
        self.buffer = raw[skew : skew + self.capacity]
        # Touch every page now, so the first checkpoint does not pay the page faults.
        self.buffer.zero_()
        self.bytes = memoryview(self.buffer.numpy())  # what a write takes: slicing it costs no tensor op
        self._live: deque[Region] = deque()
        self._cond = threading.Condition()
        self.wait_s = 0.0  # total time allocate() blocked on a full ring

    def _align(self, n: int) -> int:
        return (n + self.alignment - 1) // self.alignment * self.alignment

    def _fits(self, nbytes: int) -> int | None:
        if not self._live:
            return 0
        head = self._live[-1].offset + self._live[-1].nbytes  # next free byte after the newest region
        tail = self._live[0].offset  # first byte of the oldest live region
        if head > tail:  # free: [head, capacity) and, after wrapping, [0, tail)
            if head + nbytes <= self.capacity:
                return head
            return 0 if nbytes <= tail else None
        if head < tail:  # wrapped: free only between the newest and the oldest region
            return head if head + nbytes <= tail else None
        return None  # head == tail: full

    def allocate(self, nbytes: int, timeout: float | None = None) -> Region:
        nbytes = self._align(max(nbytes, 1))  # every region starts aligned, so any dtype can view it
        if nbytes > self.capacity:
            raise CheckpointError(
                f"a checkpoint piece of {nbytes} bytes does not fit the host buffer of "
                f"{self.capacity} bytes: raise host_buffer_bytes"
            )
        start = time.perf_counter()
        with self._cond:
            while (offset := self._fits(nbytes)) is None:
                if not self._cond.wait(timeout):
                    raise CheckpointError(f"host buffer still full after {timeout} s (flush stalled?)")
            region = Region(offset, nbytes)
            self._live.append(region)
        self.wait_s += time.perf_counter() - start
        return region

    def release(self, region: Region) -> None:
        with self._cond:
            region.released = True
            while self._live and self._live[0].released:  # FIFO: reclaim from the oldest end
                self._live.popleft()
            self._cond.notify_all()

    def wait_idle(self) -> None:
        """Block until every region is released."""
        with self._cond:
            while self._live:
                self._cond.wait()

    def view(self, region: Region) -> torch.Tensor:
        return self.buffer[region.offset : region.offset + region.nbytes]

    def bytes_of(self, region: Region, start: int = 0, nbytes: int | None = None) -> memoryview:
        """`nbytes` bytes of the region from `start` (the rest of it when None), as a memoryview."""
        a = region.offset + start
        return self.bytes[a : a + (region.nbytes - start if nbytes is None else nbytes)]

    @property
    def bytes_in_use(self) -> int:
        with self._cond:
            return sum(r.nbytes for r in self._live)
