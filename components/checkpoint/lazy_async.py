"""DataStates-LLM lazy asynchronous multi-level checkpointing (Maurya et al., HPDC 2024).

Parameters and optimizer state do not change during the forward and backward passes; only the
optimizer step mutates them. So a checkpoint requested at an iteration boundary is *not* copied
there. `save()` lays the state out (header of dtype/shape/offset, each tensor at the same offset
within a 4 KiB block in the file as in memory) and returns; flush threads then write each tensor's
whole blocks straight from its own memory with O_DIRECT while the next forward/backward runs (no
CPU copy, no page cache; buffered writes where the file system refuses O_DIRECT), consecutive
pieces of the file in one pwritev, so that a state of many small tensors costs few system calls
and little Python (which would hold the GIL the training needs). Only what the flush has not
reached when the next step is due is copied to the host buffer, by a pre-step hook on the optimizer
(`attach`), which also waits for live reads in flight; so no tensor is mutated before it is
captured. (A copier thread can instead copy ahead of the step: on a CPU that takes the training's
cores, see `copy_policy`.) Tensors that are not an attached optimizer's parameters or state
(BatchNorm statistics, which forward updates; anything when no optimizer is attached) and every
tensor's partial edge blocks are copied at save(). The layout is planned once and reused while the
state's tensors stay the same memory, as they do from one checkpoint of a training run to the next.

When every block is written the shard is fsynced, the rank votes, and rank 0 commits (COMMIT
marker, fsync, atomic rename) once all ranks voted; then the oldest checkpoints beyond `keep_last`
are removed. The host buffer is one checkpoint by default (a ring with FIFO release: a full ring is
backpressure); background threads run at a lower priority than the caller. On CUDA the tensors are
copied to the pinned host buffer on a dedicated copy stream that waits on an event recorded on the
compute stream. Where the reference code leaves gaps (no fsync, no stream/event ordering) this one
closes them.
"""

from __future__ import annotations

import bisect
import ctypes
import errno
import json
import os
import queue
import shutil
import threading
import time
import uuid
import zlib
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
import torch.distributed as dist

from components.checkpoint import layout
from components.checkpoint.host_pool import HostBufferPool, Region
from components.checkpoint.layout import CheckpointError

_STOP = object()
BLOCK = 4096  # direct I/O granularity: every write covers whole blocks at block-aligned file offsets
COPY_POLICIES = ("at_step", "just_in_time", "ahead")
NEW, LIVE, COPYING, HOST, WRITING, DONE = range(6)  # a piece's life: read live, or copied to the host buffer first
IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024  # buffers one pwritev may take
_datasync = getattr(os, "fdatasync", os.fsync)  # data and size, all a reader needs (no mtime flush)
SPARE_PREFIX = ".spare-"  # + session: retired shards kept to be overwritten (see _keep_spare_shards)
EDGES, LAZY, EAGER = range(3)  # planned pieces: edge runs and eager pieces are staged at save(), lazy ones read later


def _up(n: int, to: int = BLOCK) -> int:
    return (n + to - 1) // to * to


def _down(n: int, to: int = BLOCK) -> int:
    return n // to * to


@dataclass(eq=False)
class _Piece:
    """Whole blocks [file_offset, file_offset + nbytes) of the shard, written by one pwrite."""

    file_offset: int
    nbytes: int
    src: torch.Tensor | None = None  # uint8 view of the live tensor bytes these blocks hold
    state: int = NEW
    lazy: bool = False  # may be read from the live tensor (optimizer-owned, whole blocks)
    region: Region | None = None  # host-buffer region (edges, eager and copied pieces)
    host: torch.Tensor | None = None  # uint8 view of that region
    host_bytes: memoryview | None = None  # the same bytes, as the write takes them
    live_bytes: memoryview | None = None  # src's bytes (CPU tensors), from the plan
    edges: list = field(default_factory=list)  # edge runs: (offset in the run, source address or tensor, bytes)
    shared: _Shared | None = None  # a region staged together with other pieces


@dataclass(eq=False)
class _Plan:
    """Where a state's tensors go in the shard and the pieces that write them (see _layout_plan).
    It holds views of the tensors, so the memory its addresses point to stays valid."""

    signature: list
    header: bytes
    data_start: int
    file_size: int
    pieces: list = field(default_factory=list)  # (kind, file offset, nbytes, edges or source, its bytes)
    largest: int = 0  # the largest host-buffer allocation a checkpoint with this plan makes
    sources: list = field(default_factory=list)  # each tensor's bytes: edges hold their addresses


@dataclass(eq=False)
class _Shared:
    region: Region
    pieces_left: int


@dataclass
class CheckpointRecord:
    """What one checkpoint cost; the paper's metrics are computed from these."""

    step: int
    nbytes: int
    requested_at: float
    request_blocked_s: float = 0.0  # inside save(): layout, edge blocks, waiting for buffer space
    wait_blocked_s: float = 0.0  # inside the pre-step hook: copying what is not written yet
    snapshot_s: float = float("nan")  # request -> every byte on storage or in host memory
    durable_s: float = float("nan")  # request -> committed (fsynced, renamed)
    path: str | None = None
    live_bytes: int = 0  # written straight from the tensors' own memory
    copied_bytes: int = 0  # copied to the host buffer first (edges, mutable tensors, what the step would change)
    direct_io: bool = False  # the shard was written with O_DIRECT
    recycled: bool = False  # written over a retired checkpoint's shard (no new file, see _keep_spare_shards)

    @property
    def blocked_s(self) -> float:
        return self.request_blocked_s + self.wait_blocked_s


@dataclass(eq=False)
class _Job:
    step: int
    record: CheckpointRecord
    skeleton: bytes
    tmp_dir: Path
    final_dir: Path
    file_size: int
    pieces: list[_Piece] = field(default_factory=list)  # every write, file order
    lazy: list[_Piece] = field(default_factory=list)  # read from live tensors (NEW at save), file order
    cursor: int = 0  # pieces[:cursor] are written: the flush looks from here
    front: int = 0  # lazy[front:back + 1] may still be NEW: flush takes the front, the copier the back
    back: int = -1
    new_bytes: int = 0
    busy: int = 0  # lazy pieces being read live or copied
    done: int = 0
    frozen: bool = False  # the step is due: nothing more is read live
    on_cpu: bool = True  # the lazily read tensors are in host memory (else: copied to the host buffer)
    written_in_window: int = 0
    writing_s: float = 0.0  # wall time in that window while a write was in flight
    writes_in_flight: int = 0
    writes_since: float = 0.0  # when writes_in_flight last rose from 0
    compute_event: Any = None
    snapshot_done: threading.Event = field(default_factory=threading.Event)
    opened: threading.Lock = field(default_factory=threading.Lock)
    fd: int | None = None
    fd_direct: int | None = None
    retired_fds: list[int] = field(default_factory=list)  # direct handles given up mid-write: closed at commit
    error: BaseException | None = None
    crc: dict = field(default_factory=dict)
    pool: Any = None  # the host buffer its pieces were staged in
    plan: _Plan | None = None  # keeps the sources of its pieces alive


class LazyAsyncCheckpointer:
    """Checkpoint a nested state (model/optimizer state_dicts, RNG, data position) lazily.

    Usage at each iteration boundary (after `optimizer.step()`):
        ckpt = LazyAsyncCheckpointer(folder, keep_last=2); ckpt.attach(optimizer)
        ckpt.save(step, {"model": model.state_dict(), "optimizer": optimizer.state_dict(), ...})
        ... next forward/backward overlap the flush; optimizer.step() first waits for the capture ...
        ckpt.wait()  # at the end: drain to storage (the final drain)

    Only the parameters and state tensors of an `attach`ed optimizer are read lazily; every other
    tensor (buffers that forward updates, anything without an attached optimizer) is copied at save().
    `copy_policy`: what a background copier moves to the host buffer before the step, for tensors in
    host memory (device tensors are always copied out at once): "at_step" (nothing: the pre-step
    hook copies what the flush has not written yet), "just_in_time" (what the flush will not reach
    in time, from its measured bandwidth and the save-to-step window), "ahead" (everything, at once).
    On a CPU a background copy takes the training's cores, so "at_step" is the default.
    `direct_io`: O_DIRECT writes where the file system accepts them (buffered writes otherwise).
    `chunk_bytes`: the most one `pwritev` writes (4 MB: in `benchmarks.checkpointing`, 16 MB writes
    were slower when a checkpoint is written every iteration).
    `thread_nice`: the background threads' niceness above the caller's (they yield to compute);
    `background_cpus`: optional CPU set for them.
    `recycle_shards`: a checkpoint retired by `keep_last` gives its shard file to the next checkpoint,
    which overwrites it in place (see `_keep_spare_shards`); False: every checkpoint writes a new file.
    """

    def __init__(
        self,
        directory: str | Path,
        *,
        keep_last: int = 2,
        host_buffer_bytes: int | None = None,
        buffer_slots: int = 1,
        flush_threads: int = 2,
        chunk_bytes: int = 4 << 20,
        fsync: bool = True,
        checksum: bool = False,
        rank: int | None = None,
        world_size: int | None = None,
        commit_timeout_s: float = 600.0,
        device: str | None = None,
        session: str | None = None,
        direct_io: bool = True,
        copy_policy: str = "at_step",
        thread_nice: int = 10,
        background_cpus: set[int] | None = None,
        recycle_shards: bool = True,
    ):
        if keep_last < 1:
            raise ValueError(f"keep_last must be >= 1, got {keep_last}")
        if buffer_slots < 1 or flush_threads < 1 or chunk_bytes < layout.ALIGN:
            raise ValueError("buffer_slots and flush_threads must be >= 1, chunk_bytes >= 64")
        if copy_policy not in COPY_POLICIES:
            raise ValueError(f"copy_policy must be one of {COPY_POLICIES}, got {copy_policy!r}")
        self.directory = Path(directory)
        self.keep_last = keep_last
        self.host_buffer_bytes = host_buffer_bytes
        self.buffer_slots = buffer_slots
        self.chunk_bytes = _up(chunk_bytes)
        self.fsync = fsync
        self.checksum = checksum
        self.commit_timeout_s = commit_timeout_s
        self.direct_io = direct_io and hasattr(os, "O_DIRECT")
        self.copy_policy = copy_policy
        self.thread_nice = thread_nice
        self.background_cpus = background_cpus
        self.recycle_shards = recycle_shards
        self.rank, self.world_size = _rank_and_world(rank, world_size)
        self.use_cuda = (device or "").startswith("cuda") and torch.cuda.is_available()
        self.session = session or _agree_on_session(self.world_size)
        self.records: list[CheckpointRecord] = []
        self.pool: HostBufferPool | None = None
        self._error: BaseException | None = None  # the first failure not yet raised to the caller
        self._error_lock = threading.Lock()
        self._pending: _Job | None = None
        self._plan: _Plan | None = None  # the last layout, reused while the tensors are the same
        self._last_step: int | None = None
        self._hook_handles: list = []
        self._optimizers: list[torch.optim.Optimizer] = []
        self._jobs: deque[_Job] = deque()  # not yet fully written, oldest first
        self._cond = threading.Condition()
        self._stopping = False
        self._commit_q: queue.Queue = queue.Queue()
        self._inflight = 0
        self._inflight_cond = threading.Condition()
        self._window_s: float | None = None  # save() -> next step, measured
        self._live_bw: float | None = None  # bytes/s the flush writes while it has work, measured
        self._copy_stream = torch.cuda.Stream() if self.use_cuda else None
        self._prepare_directory()
        self._copier: threading.Thread | None = None  # started by the first checkpoint that needs it
        self._threads = [
            threading.Thread(target=self._background, args=(self._commit_loop,), name="ckpt-commit", daemon=True),
        ]
        self._threads += [
            threading.Thread(target=self._background, args=(self._flush_loop,), name=f"ckpt-flush{i}", daemon=True)
            for i in range(flush_threads)
        ]
        for thread in self._threads:
            thread.start()
        self._closed = False

    # ---------------------------------------------------------------- public API
    def attach(self, optimizer: torch.optim.Optimizer) -> None:
        """Block every optimizer step until the pending snapshot is captured; its tensors are read lazily."""
        self._hook_handles.append(optimizer.register_step_pre_hook(lambda *_: self.wait_for_snapshot()))
        self._optimizers.append(optimizer)

    def save(self, step: int, state: dict) -> CheckpointRecord:
        """Request a checkpoint of `state` (optimizer-owned tensors are captured lazily, before the next update)."""
        self._raise_pending_error()
        start = time.perf_counter()
        if self._pending is not None:  # two saves with no optimizer step between them
            self.wait_for_snapshot()
        if self._last_step is not None and step <= self._last_step:
            raise ValueError(f"checkpoint steps must increase: {step} after {self._last_step}")
        skeleton, tensors = layout.split_state(state)
        plan = self._layout_plan(tensors)
        name = layout.step_dirname(step)
        record = CheckpointRecord(step, plan.file_size, requested_at=start, direct_io=self.direct_io)
        job = _Job(
            step,
            record,
            layout.dumps_skeleton(skeleton),
            tmp_dir=self.directory / f"{name}.tmp-{self.session}",
            final_dir=self.directory / name,
            file_size=plan.file_size,
            plan=plan,
        )
        runs, eager_pieces = self._instantiate(job, plan)
        job.pool = self._host_pool(plan.file_size)
        if plan.largest > self.pool.capacity:
            raise CheckpointError(
                f"checkpoint of step {step}: a {plan.largest}-byte piece does not fit the host buffer "
                f"of {self.pool.capacity} bytes: raise host_buffer_bytes"
            )
        self._enqueue(job)
        # Edge blocks (header, tensors' partial blocks, small tensors) and tensors no optimizer
        # guards are staged now: the caller may change them as soon as save() returns.
        self._stage(job, runs, lambda run: _compose_edges(run, plan.header), zero=True)
        self._stage(job, eager_pieces, lambda piece: piece.host.copy_(piece.src))
        record.request_blocked_s = time.perf_counter() - start
        return record

    def _layout_plan(self, tensors: list) -> _Plan:
        """The shard layout of these tensors: the previous checkpoint's when they are the same memory
        with the same dtypes, shapes and owners (every checkpoint of a training run), else a new one."""
        lazy_ok = self._optimizer_owned_storages()
        signature = [
            (key, t.device, t.dtype, t.shape, t.data_ptr(), t.is_contiguous(), _storage_key(t) in lazy_ok)
            for key, t in tensors
        ]
        if self._plan is not None and self._plan.signature == signature:
            return self._plan
        specs, entries, data_bytes = _tensor_layout(tensors, [lazy for *_, lazy in signature])
        header, data_start = _header_with_absolute_offsets(entries)
        plan = _Plan(signature, header, data_start, data_start + data_bytes)
        self._plan_pieces(plan, specs)
        # A non-contiguous tensor was flattened into a private copy made now: never reused.
        self._plan = plan if all(contiguous for *_, contiguous, _ in signature) else None
        return plan

    def _plan_pieces(self, plan: _Plan, specs: list) -> None:
        """Split the file into pieces: edge runs staged at save() (the header, each tensor's partial
        first and last blocks, tensors smaller than their blocks), whole-block pieces read lazily or
        copied at save(). Sets `plan.pieces` (file order) and `plan.largest`."""
        data_start = plan.data_start
        plan.sources = [raw for raw, *_ in specs]  # private copies of non-contiguous tensors among them
        edges, tensor_edges, chunks = [(0, data_start)], [], []
        for raw, rel, nbytes, eager in specs:
            if not nbytes:
                continue
            f, end = data_start + rel, data_start + rel + nbytes
            lo, hi = _up(f), _down(end)
            if hi - lo < BLOCK:  # smaller than its blocks: staged whole
                edges.append((_down(f), _up(end)))
                tensor_edges.append((f, end, raw, f))
                continue
            if f % BLOCK:
                edges.append((_down(f), lo))
                tensor_edges.append((f, lo, raw, f))
            if end % BLOCK:
                edges.append((hi, _up(end)))
                tensor_edges.append((hi, end, raw, f))
            for a in range(lo, hi, self.chunk_bytes):
                b = min(hi, a + self.chunk_bytes)
                src = raw[a - f : b - f]
                # The memoryview is made once per plan: per write it would cost Python in a thread
                # that shares the GIL with the training.
                live = memoryview(src.numpy()) if src.device.type == "cpu" else None
                chunks.append((EAGER if eager else LAZY, a, b - a, src, live))
        runs: list[list] = []
        for a, b in sorted(edges):  # adjacent edge blocks are written together
            if runs and runs[-1][1] + runs[-1][2] == a:
                runs[-1][2] = b - runs[-1][1]
            else:
                runs.append([EDGES, a, b - a, [], None])
        starts = [run[1] for run in runs]
        for a, b, raw, f in tensor_edges:  # each edge: (offset in its run, source, bytes)
            run = runs[bisect.bisect_right(starts, a) - 1]
            src = raw[a - f : b - f]
            run[3].append((a - run[1], src.data_ptr() if src.device.type == "cpu" else src, b - a))
        plan.pieces = sorted([tuple(r) for r in runs] + chunks, key=lambda p: p[1])
        plan.largest = max(
            [n for kind, _, n, *_ in chunks if kind == LAZY]
            + [sum(r[2] for r in runs), sum(n for kind, _, n, *_ in chunks if kind == EAGER)]
        )

    @staticmethod
    def _instantiate(job: _Job, plan: _Plan) -> tuple[list[_Piece], list[_Piece]]:
        """This checkpoint's pieces from the plan: sets `job.pieces` and `job.lazy`; returns the
        edge runs and the eager pieces, which save() stages."""
        runs, eager = [], []
        for kind, offset, nbytes, extra, live in plan.pieces:
            if kind == EDGES:
                piece = _Piece(offset, nbytes, edges=extra)
                runs.append(piece)
            else:
                piece = _Piece(offset, nbytes, src=extra, lazy=kind == LAZY, live_bytes=live)
                (job.lazy if kind == LAZY else eager).append(piece)
            job.pieces.append(piece)
        job.back = len(job.lazy) - 1
        job.new_bytes = sum(p.nbytes for p in job.lazy)
        job.on_cpu = not job.lazy or job.lazy[0].src.device.type == "cpu"
        return runs, eager

    def _host_pool(self, file_size: int) -> HostBufferPool:
        """The host buffer, sized from the first checkpoint and reused for the whole run; a larger
        state (the optimizer's moments appear after its first step) replaces it once it is drained."""
        capacity = self.host_buffer_bytes or file_size * self.buffer_slots
        if self.pool is None or (not self.host_buffer_bytes and self.pool.capacity < capacity):
            if self.pool is not None:
                self.pool.wait_idle()
                self.pool = None
            self.pool = HostBufferPool(capacity, pin_memory=self.use_cuda, alignment=BLOCK)
        return self.pool

    def _enqueue(self, job: _Job) -> None:
        """Hand the job to the flush threads; from here they write whatever reaches the host buffer."""
        if self.use_cuda:  # the copy stream must read values the compute stream has finished
            job.compute_event = torch.cuda.Event()
            job.compute_event.record(torch.cuda.current_stream())
        if self._copier is None and job.lazy and (not job.on_cpu or self.copy_policy != "at_step"):
            # Only then is there anything to copy before the step; an idle copier would still wake
            # (and take the GIL) at every write.
            self._copier = threading.Thread(
                target=self._background, args=(self._copy_loop,), name="ckpt-copy", daemon=True
            )
            self._threads.append(self._copier)
            self._copier.start()
        with self._inflight_cond:
            self._inflight += 1
        self._pending = job
        self._last_step = job.step
        self.records.append(job.record)
        with self._cond:
            self._jobs.append(job)
            if not job.lazy:
                self._snapshot_complete(job)

    def wait_for_snapshot(self) -> None:
        """Block until the pending checkpoint is captured (the pre-update hook): what is not yet
        written is copied to the host buffer now, and live reads in flight finish."""
        job = self._pending
        if job is None:
            return
        start = time.perf_counter()
        with self._cond:
            job.frozen = True
            self._window_s = _ema(self._window_s, start - job.record.requested_at)
            # The flush's rate while it was writing, not over the whole window: a flush that finished
            # early would otherwise look slow, and the copier would copy what it did not need to.
            writing_s = job.writing_s + (start - job.writes_since if job.writes_in_flight else 0.0)
            if job.written_in_window and writing_s > 0:
                self._live_bw = _ema(self._live_bw, job.written_in_window / writing_s)
            todo = self._claim_new(job, from_back=False, count=None)
        self._copy(job, todo)
        with self._cond:
            while not job.snapshot_done.is_set():
                self._cond.wait()
        job.record.wait_blocked_s += time.perf_counter() - start
        self._pending = None
        if job.error is not None:
            self._raise_pending_error()

    def wait(self) -> None:
        """Drain: every requested checkpoint is durable (or its error is raised)."""
        self.wait_for_snapshot()
        with self._inflight_cond:
            while self._inflight:
                self._inflight_cond.wait()
        self._raise_pending_error()

    def close(self) -> None:
        if self._closed:
            return
        try:
            self.wait()
        finally:
            self._closed = True
            self._plan = None  # its views keep the last state's tensors alive
            for handle in self._hook_handles:
                handle.remove()
            with self._cond:
                self._stopping = True
                self._cond.notify_all()
            self._commit_q.put(_STOP)
            # Join the stages: a daemon thread still inside a torch op when the interpreter exits
            # aborts the process ("terminate called without an active exception").
            for thread in self._threads:
                if thread is not threading.current_thread():
                    thread.join(timeout=60)
            if self.rank == 0:  # spare shards only serve the checkpoints of this run
                shutil.rmtree(self._spare_dir, ignore_errors=True)

    def __enter__(self) -> LazyAsyncCheckpointer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def host_memory_bytes(self) -> int:
        return 0 if self.pool is None else self.pool.capacity

    # ---------------------------------------------------------------- capture
    def _stage(self, job: _Job, pieces: list[_Piece], fill, zero: bool = False) -> None:
        """Fill pieces in one shared host-buffer region and hand them to the flush threads together."""
        if not pieces:
            return
        shared = _Shared(job.pool.allocate(sum(p.nbytes for p in pieces)), len(pieces))  # may wait (backpressure)
        host, offset = job.pool.view(shared.region), 0
        if zero:  # padding between tensors is written as zeros, not stale buffer bytes
            host.zero_()
        for piece in pieces:
            piece.shared, piece.host = shared, host[offset : offset + piece.nbytes]
            piece.host_bytes = job.pool.bytes_of(shared.region, offset, piece.nbytes)
            offset += piece.nbytes
            if job.error is None:
                try:
                    fill(piece)
                except BaseException as exc:  # noqa: BLE001 - reported to the training thread
                    self._fail(job, exc)
        with self._cond:
            for piece in pieces:
                piece.state = HOST
            job.record.copied_bytes += offset
            self._cond.notify_all()

    def _claim_new(self, job: _Job, from_back: bool, count: int | None) -> list[_Piece]:
        """Under self._cond: take NEW pieces for copying (the copier from the back, the hook all)."""
        taken = []
        while job.front <= job.back and (count is None or len(taken) < count):
            index = job.back if from_back else job.front
            piece = job.lazy[index]
            if from_back:
                job.back -= 1
            else:
                job.front += 1
            if piece.state == NEW:
                piece.state = COPYING
                job.busy += 1
                job.new_bytes -= piece.nbytes
                taken.append(piece)
        return taken

    def _copy(self, job: _Job, pieces: list[_Piece]) -> None:
        """Copy lazily read pieces into the host buffer (CUDA: on the copy stream)."""
        for piece in pieces:
            piece.region = job.pool.allocate(piece.nbytes)
            piece.host = job.pool.view(piece.region)
            piece.host_bytes = job.pool.bytes_of(piece.region, 0, piece.nbytes)
            if job.error is None:
                try:
                    if piece.src.device.type == "cuda":
                        self._copy_stream.wait_event(job.compute_event)
                        with torch.cuda.stream(self._copy_stream):
                            piece.host.copy_(piece.src, non_blocking=True)
                            piece.src.record_stream(self._copy_stream)  # the allocator must not reuse it mid-copy
                        self._copy_stream.synchronize()
                    else:
                        piece.host.copy_(piece.src)  # releases the GIL
                except BaseException as exc:  # noqa: BLE001
                    self._fail(job, exc)
            with self._cond:
                piece.state = HOST
                job.busy -= 1
                job.record.copied_bytes += piece.nbytes
                self._maybe_captured(job)
                self._cond.notify_all()

    def _copy_need(self, job: _Job) -> tuple[float, float | None]:
        """Under self._cond: bytes the flush will not have written live when the step comes, and if
        none, how long until there may be some (None: until something changes)."""
        if job.frozen or not job.new_bytes:
            return 0.0, None
        if self.copy_policy == "ahead" or not job.on_cpu:  # a device tensor is always copied out
            return float(job.new_bytes), None
        if self.copy_policy == "at_step":
            return 0.0, None
        if self._window_s is None or self._live_bw is None:  # no measurement yet: copy ahead
            return float(job.new_bytes), None
        rate = 0.75 * self._live_bw  # 25% margin for the estimate
        left = self._window_s - (time.perf_counter() - job.record.requested_at)
        need = job.new_bytes - rate * max(0.0, left)
        # Without a new write, need turns positive when left < new_bytes / rate: sleep until then.
        return need, max(0.001, left - job.new_bytes / max(rate, 1.0))

    def _copy_loop(self) -> None:
        while True:
            with self._cond:
                job = next((j for j in reversed(self._jobs) if not j.frozen and j.new_bytes), None)
                if self._stopping:
                    return
                if job is None:
                    self._cond.wait()
                    continue
                need, sleep_s = self._copy_need(job)
                if need <= 0:
                    self._cond.wait(sleep_s)  # woken early by any state change (a write, the step)
                    continue
                todo = self._claim_new(job, from_back=True, count=1)
            self._copy(job, todo)

    # ---------------------------------------------------------------- flush
    def _next_batch(self) -> tuple[_Job, list[_Piece], int] | None:
        """Under self._cond: the oldest checkpoint's first run of consecutive pieces that can be
        written now (staged in the host buffer, or read live while the step is not due), up to
        chunk_bytes: one system call writes them all, so small tensors cost no Python each."""
        for job in self._jobs:
            pieces, i = job.pieces, job.cursor
            while i < len(pieces) and pieces[i].state == DONE:
                i += 1
            job.cursor = i
            batch, nbytes = [], 0
            for piece in pieces[i:]:
                ready = piece.state == HOST or (piece.state == NEW and piece.lazy and not job.frozen)
                if not ready:
                    if batch:
                        break
                    continue
                if batch and (nbytes + piece.nbytes > self.chunk_bytes or len(batch) == IOV_MAX):
                    break
                batch.append(piece)
                nbytes += piece.nbytes
            if batch:
                for piece in batch:
                    if piece.state == NEW:
                        piece.state = LIVE
                        job.busy += 1
                        job.new_bytes -= piece.nbytes
                    else:
                        piece.state = WRITING
                return job, batch, nbytes
        return None

    def _flush_loop(self) -> None:
        while True:
            with self._cond:
                while (item := self._next_batch()) is None:
                    if self._stopping:
                        return
                    self._cond.wait()
                job, batch, nbytes = item
                if not job.writes_in_flight:
                    job.writes_since = time.perf_counter()
                job.writes_in_flight += 1
            try:
                if job.error is None:
                    self._open(job)
                    self._write(job, batch, nbytes)
            except BaseException as exc:  # noqa: BLE001
                self._fail(job, exc)
            released = []
            with self._cond:
                for piece in batch:
                    if piece.state == LIVE:
                        job.busy -= 1
                        job.record.live_bytes += piece.nbytes
                    piece.state = DONE
                    piece.src = piece.live_bytes = piece.host_bytes = None  # drop the references to the memory
                    if piece.region is not None:
                        released.append(piece.region)
                    elif piece.shared is not None:
                        piece.shared.pieces_left -= 1
                        if piece.shared.pieces_left == 0:
                            released.append(piece.shared.region)
                job.writes_in_flight -= 1
                if not job.frozen:
                    job.written_in_window += nbytes
                    if not job.writes_in_flight:
                        job.writing_s += time.perf_counter() - job.writes_since
                job.done += len(batch)
                self._maybe_captured(job)
                finished = job.done == len(job.pieces)
                if finished:
                    self._jobs.remove(job)
                self._cond.notify_all()
            for region in released:  # oldest first: the ring releases in allocation order anyway
                job.pool.release(region)
            if finished:
                self._commit_q.put(job)

    def _maybe_captured(self, job: _Job) -> None:
        """Under self._cond: captured once nothing is left to read from the live tensors."""
        if not job.snapshot_done.is_set() and job.busy == 0 and job.new_bytes == 0:
            self._snapshot_complete(job)

    def _snapshot_complete(self, job: _Job) -> None:
        job.record.snapshot_s = time.perf_counter() - job.record.requested_at
        job.snapshot_done.set()
        self._cond.notify_all()

    def _open(self, job: _Job) -> None:
        """The first write of a checkpoint creates its folder and reserves the whole shard."""
        with job.opened:
            if job.fd is not None:
                return
            job.tmp_dir.mkdir(parents=True, exist_ok=True)
            path = job.tmp_dir / layout.shard_name(self.rank)
            recycled = job.record.recycled = self.recycle_shards and self._take_spare_shard(path)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | (0 if recycled else os.O_TRUNC), 0o644)
            try:
                self._reserve(fd, job)
            except BaseException:
                os.close(fd)
                raise
            if self.direct_io:
                try:
                    job.fd_direct = os.open(path, os.O_WRONLY | os.O_DIRECT)
                except OSError:  # tmpfs and some network file systems refuse O_DIRECT: buffered writes
                    self.direct_io = False
            job.record.direct_io = job.fd_direct is not None
            job.fd = fd

    def _reserve(self, fd: int, job: _Job) -> None:
        needed = job.file_size + len(job.skeleton)
        try:
            os.posix_fallocate(fd, 0, job.file_size)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise self._no_space(needed) from exc
            if exc.errno == errno.EFBIG:
                raise CheckpointError(
                    f"cannot write {needed / 1e6:.1f} MB to {self.directory}: over the file size limit ({exc.strerror})"
                ) from exc
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                raise
        os.ftruncate(fd, job.file_size)  # the vote's size, whatever the last tensor's length

    def _give_up_direct_io(self, job: _Job, fd: int) -> None:
        """Write the rest of the job (and later jobs) buffered. The direct handle is not closed here:
        another flush thread may be inside a pwritev on it, and a closed number can be reused by the
        next open, which would then receive that thread's bytes. The commit closes it."""
        with job.opened:
            if job.fd_direct == fd:
                job.fd_direct = None
                job.retired_fds.append(fd)
            self.direct_io = job.record.direct_io = False

    def _no_space(self, needed: int) -> CheckpointError:
        st = os.statvfs(self.directory)
        return CheckpointError(
            f"no space left on {self.directory}: {st.f_bavail * st.f_frsize / 1e6:.1f} MB free, "
            f"checkpoint needs {needed / 1e6:.1f} MB"
        )

    def _write(self, job: _Job, batch: list[_Piece], nbytes: int) -> None:
        """Write consecutive pieces with one pwritev (each from the host buffer or its live tensor)."""
        views = [p.host_bytes if p.host_bytes is not None else _live_bytes(p) for p in batch]
        offset, left = batch[0].file_offset, nbytes
        pending = list(views)
        while left:
            fd = job.fd_direct if job.fd_direct is not None else job.fd
            try:
                written = os.pwritev(fd, pending, offset)
            except OSError as exc:
                if exc.errno == errno.EINVAL and fd != job.fd:  # alignment the file system refuses
                    self._give_up_direct_io(job, fd)
                    continue
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise self._no_space(job.file_size + len(job.skeleton)) from exc
                raise
            if written <= 0:
                raise OSError(f"pwritev wrote {written} of {left} bytes at {offset}")
            offset, left = offset + written, left - written
            while written and left:  # drop what was written; a partly written view goes on from where it stopped
                head = pending[0]
                if written >= len(head):
                    written -= len(head)
                    pending.pop(0)
                else:
                    pending[0], written = head[written:], 0
        if self.checksum:
            crcs = {p.file_offset: (p.nbytes, zlib.crc32(v)) for p, v in zip(batch, views)}
            with self._cond:
                job.crc.update(crcs)

    # ---------------------------------------------------------------- commit
    def _commit_loop(self) -> None:
        while (job := self._commit_q.get()) is not _STOP:
            try:
                job.snapshot_done.wait()
                if job.error is None:
                    vote = self._persist_and_vote(job)
                    if self.rank == 0:
                        self._commit(job, vote)
                        self._apply_retention()
                    job.record.durable_s = time.perf_counter() - job.record.requested_at
                    job.record.path = str(job.final_dir)
            except BaseException as exc:  # noqa: BLE001
                self._fail(job, exc)
            finally:
                # Every write of the job has returned by now (it is queued for commit once all its
                # pieces are done), so no flush thread can still be using these handles.
                for fd in (job.fd, job.fd_direct, *job.retired_fds):
                    if fd is not None:
                        os.close(fd)
                if job.error is not None and self.rank == 0:
                    shutil.rmtree(job.tmp_dir, ignore_errors=True)  # never leave a torn folder behind
                with self._inflight_cond:
                    self._inflight -= 1
                    self._inflight_cond.notify_all()

    def _persist_and_vote(self, job: _Job) -> dict:
        """Make this rank's shard and state durable and vote for the checkpoint; returns the vote.
        A single rank keeps its vote in memory (it goes into COMMIT): one file and two fsyncs fewer
        per checkpoint, the commit thread's system calls being CPU time taken from the training."""
        if self.fsync:
            _datasync(job.fd)
        # The folder is not visible under its final name before the commit, so the state file is
        # written in place (no temporary name and rename): only the COMMIT decides what is read.
        _write_file(job.tmp_dir / layout.state_name(self.rank), job.skeleton, self.fsync)
        vote = {
            "rank": self.rank,
            "step": job.step,
            "session": self.session,
            "shard_bytes": job.file_size,
            "state_bytes": len(job.skeleton),
        }
        if self.checksum:
            vote["shard_crc"] = {str(k): v for k, v in sorted(job.crc.items())}
            vote["state_crc"] = zlib.crc32(job.skeleton)
        if self.world_size == 1:  # rank 0's fsync of the folder after COMMIT covers shard and state
            return vote
        if self.fsync:  # shard and state entries are durable before this rank votes
            layout.fsync_dir(job.tmp_dir)
        # The vote goes last. Rank 0 may rename the folder as soon as it sees the vote, so the
        # directory entry of the vote is made durable by rank 0's fsync of the folder (_commit).
        layout.write_durable(job.tmp_dir / layout.vote_name(self.rank), json.dumps(vote).encode())
        return vote

    def _commit(self, job: _Job, own_vote: dict) -> None:
        """Rank 0: wait for every rank's vote, then COMMIT and rename atomically (two-phase)."""
        if self.world_size == 1:
            votes = [own_vote]
        else:
            votes = self._collect_votes(job)
        commit = {
            "step": job.step,
            "world_size": self.world_size,
            "session": self.session,
            "votes": votes,
            "committed_at": time.time(),
        }
        _write_file(job.tmp_dir / layout.COMMIT_FILE, json.dumps(commit).encode(), self.fsync)
        if self.fsync:  # shards, states, votes and the COMMIT marker are durable before the rename publishes them
            layout.fsync_dir(job.tmp_dir)
        if job.final_dir.exists():  # a checkpoint of this step from an earlier run: replace it
            stale = job.final_dir.with_name(job.final_dir.name + f".old-{self.session}")
            job.final_dir.rename(stale)
            shutil.rmtree(stale, ignore_errors=True)
        os.rename(job.tmp_dir, job.final_dir)
        if self.fsync:
            layout.fsync_dir(self.directory)
        if _valid_commit(job.final_dir) is None:  # what the loader checks, checked once by the writer
            raise CheckpointError(f"{job.final_dir} was written but does not validate as a committed checkpoint")

    def _collect_votes(self, job: _Job) -> list[dict]:
        deadline = time.monotonic() + self.commit_timeout_s
        votes = [job.tmp_dir / layout.vote_name(r) for r in range(self.world_size)]
        while not all(v.exists() for v in votes):
            if time.monotonic() > deadline:
                missing = [v.name for v in votes if not v.exists()]
                raise CheckpointError(
                    f"step {job.step}: ranks did not commit within {self.commit_timeout_s} s (missing {missing})"
                )
            time.sleep(0.01)
        return [json.loads(v.read_text()) for v in votes]

    def _apply_retention(self) -> None:
        committed = list_checkpoints(self.directory)
        for path in committed[: -self.keep_last]:
            doomed = path.with_name(path.name + f".del-{self.session}")
            path.rename(doomed)  # renamed first: a crash mid-delete never leaves a half "step_" folder
            if self.recycle_shards:
                self._keep_spare_shards(doomed)
            shutil.rmtree(doomed, ignore_errors=True)

    # A retired checkpoint's shards are overwritten by the next checkpoint instead of deleted: on
    # ext4, O_DIRECT writes into blocks a file already has need no allocation, no unwritten-extent
    # conversion and no journal commit at fdatasync, and the retired file is not unlinked
    # (benchmarks.checkpointing, 88 MB at k = 1: durable 0.06 s after save() instead of 0.09 s). The spare
    # shard is out of every committed checkpoint (its folder is renamed away first), so a crash while
    # it is overwritten loses nothing; leftovers of a crashed run are removed at the next start.
    @property
    def _spare_dir(self) -> Path:
        return self.directory / f"{SPARE_PREFIX}{self.session}"

    def _keep_spare_shards(self, retired: Path) -> None:
        """Rank 0's commit thread: move a retired checkpoint's shards aside, one spare per rank."""
        try:
            self._spare_dir.mkdir(exist_ok=True)
            for shard in retired.glob(f"*{layout.SHARD_SUFFIX}"):
                spare = self._spare_dir / shard.name
                if not spare.exists():  # the only writer of spares is this thread
                    os.rename(shard, spare)
        except OSError:  # recycling is an optimisation: the retired folder is deleted either way
            pass

    def _take_spare_shard(self, path: Path) -> bool:
        """A flush thread opening a checkpoint: take this rank's spare shard as `path`, if there is one."""
        try:
            os.rename(self._spare_dir / path.name, path)
            return True
        except OSError:  # none yet (the first keep_last checkpoints), or taken: a new file
            return False

    # ---------------------------------------------------------------- helpers
    def _optimizer_owned_storages(self) -> set:
        """Storages only an attached optimizer's step mutates: safe to copy lazily before that step."""
        owned = set()
        for optimizer in self._optimizers:
            for group in optimizer.param_groups:
                owned.update(_storage_key(p) for p in group["params"])
            for st in optimizer.state.values():
                owned.update(_storage_key(v) for v in st.values() if isinstance(v, torch.Tensor))
        owned.discard(None)
        return owned

    def _prepare_directory(self) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            probe = self.directory / f".probe-{self.session}-{self.rank}"
            layout.write_durable(probe, b"ok")
            probe.unlink()
        except OSError as exc:
            raise CheckpointError(f"checkpoint directory {self.directory} is not writable: {exc}") from exc
        if self.rank == 0:  # leftovers of crashed runs: torn (uncommitted) or half-deleted folders
            for path in [*self.directory.glob(f"{layout.STEP_PREFIX}*.*-*"), *self.directory.glob(f"{SPARE_PREFIX}*")]:
                if self.session not in path.name:
                    shutil.rmtree(path, ignore_errors=True)

    def _background(self, loop) -> None:
        """Run a stage at lower priority (and on its own CPUs if asked) so it yields to compute."""
        tid = threading.get_native_id()
        try:
            if self.thread_nice:
                os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + self.thread_nice))
            if self.background_cpus:
                os.sched_setaffinity(tid, self.background_cpus)
        except (OSError, AttributeError):  # not Linux, or not allowed: run at the caller's priority
            pass
        loop()

    def _fail(self, job: _Job, exc: BaseException) -> None:
        with self._error_lock:
            if job.error is not None:  # reported once per checkpoint: its other threads then fail too
                return
            job.error = exc
            if self._error is not None:
                return
            cause = str(exc) if isinstance(exc, CheckpointError) else f"{type(exc).__name__}: {exc}"
            self._error = CheckpointError(
                f"checkpoint of step {job.step} to {self.directory} failed: {cause}; earlier checkpoints are intact"
            )
            self._error.__cause__ = exc

    def _raise_pending_error(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error


def _tensor_layout(tensors: list, lazy: list[bool]) -> tuple[list, list[dict], int]:
    """Where each tensor goes in the file: (raw bytes, offset, nbytes, copied eagerly) per tensor,
    the header entries, and the data section's size."""
    specs, entries, cursor = [], [], 0
    for (key, tensor), lazy_ok in zip(tensors, lazy):
        nbytes = tensor.numel() * tensor.element_size()
        eager = not tensor.is_contiguous() or not lazy_ok
        flat = tensor.reshape(-1)  # a private copy when not contiguous
        raw = flat.view(torch.uint8) if nbytes else flat
        # Same offset within a block in memory and in the file: the tensor's whole blocks can be
        # written by direct I/O straight from its own memory.
        phase = raw.data_ptr() % BLOCK if raw.device.type == "cpu" and nbytes else 0
        rel = cursor + phase
        entries.append(
            {
                "key": key,
                "dtype": layout.dtype_name(tensor.dtype),
                "shape": list(tensor.shape),
                "offset": rel,
                "nbytes": nbytes,
            }
        )
        specs.append((raw, rel, nbytes, eager))
        cursor = _up(rel + nbytes) if nbytes else cursor
    return specs, entries, cursor


def _compose_edges(run: _Piece, header: bytes) -> None:
    """Fill an edge run's host bytes: the header (in the first run) and each tensor's bytes that
    fall into its blocks. CPU sources are copied by address: a few hundred small copies per
    checkpoint, each far cheaper than a tensor slice and copy."""
    base = run.host.data_ptr()
    if run.file_offset == 0:
        ctypes.memmove(base, header, len(header))
    for offset, src, nbytes in run.edges:
        if isinstance(src, int):
            ctypes.memmove(base + offset, src, nbytes)
        else:  # a device tensor's bytes
            run.host[offset : offset + nbytes].copy_(src)


def _write_file(path: Path, data: bytes, durable: bool) -> None:
    """Write a small file inside a checkpoint's temporary folder, fdatasync'd when `durable`."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if durable:
            _datasync(fd)
    finally:
        os.close(fd)


def _live_bytes(piece: _Piece) -> memoryview:
    return piece.live_bytes if piece.live_bytes is not None else memoryview(piece.src.numpy())


def _ema(old: float | None, new: float, weight: float = 0.5) -> float:
    return new if old is None else weight * new + (1 - weight) * old


def _storage_key(tensor: torch.Tensor) -> Optional[tuple]:
    try:
        return tensor.device, tensor.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):  # tensor subclasses without a plain storage
        return None


def _header_with_absolute_offsets(entries: list[dict]) -> tuple[bytes, int]:
    """The header stores absolute file offsets, which depend on the header's own length."""
    data_start = 0
    while True:
        absolute = [{**e, "offset": data_start + e["offset"]} for e in entries]
        header, needed = layout.encode_header(absolute)
        if needed <= data_start:
            return header, data_start
        data_start = _up(needed + 4096)  # slack so that a longer offset text cannot overflow again


def _rank_and_world(rank: Optional[int], world_size: Optional[int]) -> tuple[int, int]:
    if rank is None or world_size is None:
        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return rank or 0, world_size or 1
    return rank, world_size


def _agree_on_session(world_size: int) -> str:
    """One id per run, the same on every rank: names this run's temporary folders."""

    session = uuid.uuid4().hex[:12]
    if world_size > 1:
        if not (dist.is_available() and dist.is_initialized()):
            raise ValueError(
                "world_size > 1 needs torch.distributed initialised, or an explicit session id shared by all ranks"
            )
        box = [session]
        dist.broadcast_object_list(box, src=0)
        session = box[0]
    return session


# -------------------------------------------------------------------- finding and loading
def _valid_commit(path: Path) -> Optional[dict]:
    try:
        commit = json.loads((path / layout.COMMIT_FILE).read_text())
        for vote in commit["votes"]:
            rank = vote["rank"]
            if (path / layout.shard_name(rank)).stat().st_size != vote["shard_bytes"]:
                return None
            if (path / layout.state_name(rank)).stat().st_size != vote["state_bytes"]:
                return None
        return commit if len(commit["votes"]) == commit["world_size"] else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def list_checkpoints(directory: str | Path) -> list[Path]:
    """Committed checkpoints, oldest first. Torn or temporary folders are never listed."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for path in directory.iterdir():
        name = path.name
        if not name.startswith(layout.STEP_PREFIX) or not name[len(layout.STEP_PREFIX) :].isdigit():
            continue
        if _valid_commit(path) is not None:
            found.append((int(name[len(layout.STEP_PREFIX) :]), path))
    return [p for _, p in sorted(found)]


def set_aside_earlier_run(directory: str | Path) -> Optional[Path]:
    """Move the committed checkpoints of an earlier run out of `directory`; return where they went.

    A fresh run must not share a folder with an earlier one: retention would delete the new,
    lower-numbered checkpoints first, and `resume=latest` after a crash would pick the earlier
    run's state. Nothing is deleted: the folder is renamed to `<name>.replaced-<UTC time>`.
    """
    directory = Path(directory)
    if not list_checkpoints(directory):
        return None
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    aside = directory.with_name(f"{directory.name}.replaced-{stamp}")
    suffix = 0
    while aside.exists():  # two fresh runs in the same second
        suffix += 1
        aside = directory.with_name(f"{directory.name}.replaced-{stamp}-{suffix}")
    directory.rename(aside)
    return aside


def latest_checkpoint(directory: str | Path) -> Optional[Path]:
    found = list_checkpoints(directory)
    return found[-1] if found else None


def load_checkpoint(path: str | Path, rank: int = 0, verify_checksum: bool = True) -> dict:
    """This rank's state from a committed checkpoint folder (tensors on CPU)."""
    path = Path(path)
    commit = _valid_commit(path)
    if commit is None:
        raise CheckpointError(f"{path} is not a committed checkpoint (no valid {layout.COMMIT_FILE})")
    if not 0 <= rank < commit["world_size"]:
        raise CheckpointError(f"{path} has {commit['world_size']} ranks; rank {rank} does not exist")
    vote = next(v for v in commit["votes"] if v["rank"] == rank)
    skeleton_bytes = (path / layout.state_name(rank)).read_bytes()
    shard_path = path / layout.shard_name(rank)
    if verify_checksum and "shard_crc" in vote:
        if zlib.crc32(skeleton_bytes) != vote["state_crc"]:
            raise CheckpointError(f"{path / layout.state_name(rank)} fails its checksum")
        with open(shard_path, "rb") as fh:
            for offset, (size, crc) in vote["shard_crc"].items():
                fh.seek(int(offset))
                if zlib.crc32(fh.read(size)) != crc:
                    raise CheckpointError(f"{shard_path} fails its checksum at offset {offset}")
    tensors = layout.read_shard(shard_path)
    return layout.join_state(layout.loads_skeleton(skeleton_bytes), tensors)
