"""DataStates-LLM lazy asynchronous multi-level checkpointing (Maurya et al., HPDC 2024).

Parameters and optimizer state do not change during the forward and backward passes; only the
optimizer step mutates them. So a checkpoint requested at an iteration boundary is *not* copied
there: `save()` only lays the tensors out in a pre-allocated host buffer and hands them to a copy
thread, which copies them while the next forward/backward runs. A pre-step hook on the optimizer
(`attach`) blocks the next update until the copy is complete, so no tensor is mutated before it is
captured. As each piece lands in host memory, flush threads stream it to its offset in the shard
file (header of dtype/shape/offset first). When every piece is written the shard is fsynced, the
rank votes, and rank 0 commits (COMMIT marker, fsync, atomic rename) once all ranks voted; then the
oldest checkpoints beyond `keep_last` are removed.

Levels: device -> host buffer (pinned on CUDA; a dedicated copy stream waits on an event recorded
on the compute stream, so the copy reads finished values) -> file. Where the reference code leaves
gaps (no fsync, no stream/event ordering) this one closes them.
"""
from __future__ import annotations

import json
import os
import queue
import shutil
import threading
import time
import uuid
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from components.checkpoint import layout
from components.checkpoint.host_pool import HostBufferPool, Region
from components.checkpoint.layout import CheckpointError

_STOP = object()


@dataclass
class _Piece:
    src: torch.Tensor  # flat view of (part of) a live tensor
    dst: torch.Tensor  # the matching bytes of the host buffer, viewed with the tensor's dtype
    file_offset: int
    nbytes: int
    event: Any = None  # CUDA: recorded on the copy stream after this piece's copy


@dataclass
class CheckpointRecord:
    """What one checkpoint cost; the paper's metrics are computed from these."""

    step: int
    nbytes: int
    requested_at: float
    request_blocked_s: float = 0.0  # inside save(): layout + waiting for buffer space
    wait_blocked_s: float = 0.0  # inside the pre-step hook: waiting for the copy to finish
    snapshot_s: float = float("nan")  # request -> all bytes in host memory
    durable_s: float = float("nan")  # request -> committed (fsynced, renamed)
    path: Optional[str] = None

    @property
    def blocked_s(self) -> float:
        return self.request_blocked_s + self.wait_blocked_s


@dataclass
class _Job:
    step: int
    record: CheckpointRecord
    region: Region
    pieces: list[_Piece]
    header: bytes
    skeleton: bytes
    tmp_dir: Path
    final_dir: Path
    file_size: int
    compute_event: Any = None
    snapshot_done: threading.Event = field(default_factory=threading.Event)
    written: threading.Event = field(default_factory=threading.Event)
    remaining: int = 0  # pieces not yet through the flush stage
    queued: int = 0  # pieces handed to the flush stage by the copy stage
    lock: threading.Lock = field(default_factory=threading.Lock)
    fd: Optional[int] = None
    error: Optional[BaseException] = None
    crc: dict = field(default_factory=dict)


class LazyAsyncCheckpointer:
    """Checkpoint a nested state (model/optimizer state_dicts, RNG, data position) lazily.

    Usage at each iteration boundary (after `optimizer.step()`):
        ckpt = LazyAsyncCheckpointer(folder, keep_last=2); ckpt.attach(optimizer)
        ckpt.save(step, {"model": model.state_dict(), "optimizer": optimizer.state_dict(), ...})
        ... next forward/backward overlap the copy; optimizer.step() first waits for it ...
        ckpt.wait()  # at the end: drain to storage (the final drain)
    """

    def __init__(self, directory: str | Path, *, keep_last: int = 2, host_buffer_bytes: Optional[int] = None,
                 buffer_slots: int = 2, flush_threads: int = 2, chunk_bytes: int = 64 << 20,
                 fsync: bool = True, checksum: bool = False, rank: Optional[int] = None,
                 world_size: Optional[int] = None, commit_timeout_s: float = 600.0,
                 device: Optional[str] = None, session: Optional[str] = None):
        if keep_last < 1:
            raise ValueError(f"keep_last must be >= 1, got {keep_last}")
        if buffer_slots < 1 or flush_threads < 1 or chunk_bytes < layout.ALIGN:
            raise ValueError("buffer_slots and flush_threads must be >= 1, chunk_bytes >= 64")
        self.directory = Path(directory)
        self.keep_last = keep_last
        self.host_buffer_bytes = host_buffer_bytes
        self.buffer_slots = buffer_slots
        self.chunk_bytes = chunk_bytes
        self.fsync = fsync
        self.checksum = checksum
        self.commit_timeout_s = commit_timeout_s
        self.rank, self.world_size = _rank_and_world(rank, world_size)
        self.use_cuda = (device or "").startswith("cuda") and torch.cuda.is_available()
        self.session = session or _agree_on_session(self.world_size)
        self.records: list[CheckpointRecord] = []
        self.pool: Optional[HostBufferPool] = None
        self._error: Optional[BaseException] = None
        self._pending: Optional[_Job] = None
        self._last_step: Optional[int] = None
        self._hook_handles: list = []
        self._copy_q: queue.Queue = queue.Queue()
        self._flush_q: queue.Queue = queue.Queue()
        self._commit_q: queue.Queue = queue.Queue()
        self._inflight = 0
        self._inflight_cond = threading.Condition()
        self._copy_stream = torch.cuda.Stream() if self.use_cuda else None
        self._prepare_directory()
        self._threads = [threading.Thread(target=self._copy_loop, name="ckpt-copy", daemon=True),
                         threading.Thread(target=self._commit_loop, name="ckpt-commit", daemon=True)]
        self._threads += [threading.Thread(target=self._flush_loop, name=f"ckpt-flush{i}", daemon=True)
                          for i in range(flush_threads)]
        for thread in self._threads:
            thread.start()
        self._closed = False

    # ---------------------------------------------------------------- public API
    def attach(self, optimizer: torch.optim.Optimizer) -> None:
        """Block every optimizer step until the pending snapshot has been copied."""
        self._hook_handles.append(optimizer.register_step_pre_hook(lambda *_: self.wait_for_snapshot()))

    def save(self, step: int, state: dict) -> CheckpointRecord:
        """Request a checkpoint of `state` (tensors are captured lazily, before the next update)."""
        self._raise_pending_error()
        start = time.perf_counter()
        if self._pending is not None:  # two saves with no optimizer step between them
            self.wait_for_snapshot()
        if self._last_step is not None and step <= self._last_step:
            raise ValueError(f"checkpoint steps must increase: {step} after {self._last_step}")
        skeleton, tensors = layout.split_state(state)
        entries, pieces_spec, offset = [], [], 0
        for key, tensor in tensors:
            nbytes = tensor.numel() * tensor.element_size()
            entries.append({"key": key, "dtype": layout.dtype_name(tensor.dtype), "shape": list(tensor.shape),
                            "offset": offset, "nbytes": nbytes})
            pieces_spec.append((tensor, offset, nbytes))
            offset = layout.align(offset + nbytes)
        data_bytes = offset
        header, data_start = _header_with_absolute_offsets(entries)
        if self.pool is None:  # sized from the first checkpoint, then reused for the whole run
            capacity = self.host_buffer_bytes or max(data_bytes, 1) * self.buffer_slots
            self.pool = HostBufferPool(capacity, pin_memory=self.use_cuda)
        region = self.pool.allocate(max(data_bytes, 1))
        host = self.pool.view(region)
        pieces = []
        for tensor, rel, nbytes in pieces_spec:
            src = tensor.reshape(-1) if tensor.is_contiguous() else tensor
            dst = host[rel:rel + nbytes].view(tensor.dtype)
            dst = dst if src.dim() == 1 else dst.view(tensor.shape)
            step_elems = max(1, self.chunk_bytes // max(1, tensor.element_size())) if src.dim() == 1 else src.numel()
            for a in range(0, max(1, src.numel()), step_elems):
                b = min(src.numel(), a + step_elems)
                s, d = (src[a:b], dst[a:b]) if src.dim() == 1 else (src, dst)
                pieces.append(_Piece(s, d, data_start + rel + a * tensor.element_size(),
                                     (b - a) * tensor.element_size()))
        name = layout.step_dirname(step)
        record = CheckpointRecord(step, data_start + data_bytes, requested_at=start)
        job = _Job(step, record, region, pieces, header, layout.dumps_skeleton(skeleton),
                   tmp_dir=self.directory / f"{name}.tmp-{self.session}", final_dir=self.directory / name,
                   file_size=data_start + data_bytes, remaining=len(pieces))
        if self.use_cuda:  # the copy stream must read values the compute stream has finished
            job.compute_event = torch.cuda.Event()
            job.compute_event.record(torch.cuda.current_stream())
        with self._inflight_cond:
            self._inflight += 1
        self._pending = job
        self._last_step = step
        self.records.append(record)
        self._copy_q.put(job)
        record.request_blocked_s = time.perf_counter() - start
        return record

    def wait_for_snapshot(self) -> None:
        """Block until the pending checkpoint is fully in host memory (the pre-update hook)."""
        job = self._pending
        if job is None:
            return
        start = time.perf_counter()
        job.snapshot_done.wait()
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
            for handle in self._hook_handles:
                handle.remove()
            self._copy_q.put(_STOP)
            self._commit_q.put(_STOP)
            for _ in self._threads[2:]:
                self._flush_q.put(_STOP)
            # Join the stages: a daemon thread still inside a torch op when the interpreter exits
            # aborts the process ("terminate called without an active exception").
            for thread in self._threads:
                if thread is not threading.current_thread():
                    thread.join(timeout=60)

    def __enter__(self) -> "LazyAsyncCheckpointer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def host_memory_bytes(self) -> int:
        return 0 if self.pool is None else self.pool.capacity

    # ---------------------------------------------------------------- background stages
    def _copy_loop(self) -> None:
        while (job := self._copy_q.get()) is not _STOP:
            try:
                job.tmp_dir.mkdir(parents=True, exist_ok=True)
                job.fd = os.open(job.tmp_dir / layout.shard_name(self.rank), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.pwrite(job.fd, job.header, 0)
                if self.use_cuda:
                    self._copy_pieces_cuda(job)
                else:
                    for piece in job.pieces:  # memcpy releases the GIL: overlaps forward/backward
                        piece.dst.copy_(piece.src)
                        self._flush_q.put((job, piece))
                        job.queued += 1
            except BaseException as exc:  # noqa: BLE001 - reported to the training thread
                self._fail(job, exc)
                for piece in job.pieces[job.queued:]:
                    self._flush_q.put((job, piece))  # the flush stage counts them off, writing nothing
            job.record.snapshot_s = time.perf_counter() - job.record.requested_at
            job.snapshot_done.set()

    def _copy_pieces_cuda(self, job: _Job) -> None:
        stream = self._copy_stream
        stream.wait_event(job.compute_event)
        with torch.cuda.stream(stream):
            for piece in job.pieces:
                piece.dst.copy_(piece.src, non_blocking=True)
                piece.src.record_stream(stream)  # keep the allocator from reusing it mid-copy
                piece.event = torch.cuda.Event()
                piece.event.record(stream)
                self._flush_q.put((job, piece))
                job.queued += 1
        for piece in job.pieces:  # the snapshot is done when the last copy is
            piece.event.synchronize()

    def _flush_loop(self) -> None:
        while (item := self._flush_q.get()) is not _STOP:
            job, piece = item
            try:
                if job.error is None:
                    if piece.event is not None:
                        piece.event.synchronize()
                    data = piece.dst.reshape(-1).view(torch.uint8).numpy()
                    written = os.pwrite(job.fd, memoryview(data), piece.file_offset)
                    if written != piece.nbytes:
                        raise OSError(f"short write: {written} of {piece.nbytes} bytes")
                    if self.checksum:
                        with job.lock:
                            job.crc[piece.file_offset] = (piece.nbytes, zlib.crc32(data))
            except BaseException as exc:  # noqa: BLE001
                self._fail(job, exc)
            with job.lock:
                job.remaining -= 1
                last = job.remaining == 0
            if last:
                # Every byte is in the file (page cache): the host region is free for the next
                # checkpoint now, while this one is fsynced and committed.
                self.pool.release(job.region)
                self._commit_q.put(job)

    def _commit_loop(self) -> None:
        while (job := self._commit_q.get()) is not _STOP:
            try:
                job.snapshot_done.wait()
                if job.error is None:
                    self._persist_and_vote(job)
                    if self.rank == 0:
                        self._commit(job)
                        self._apply_retention()
                    job.record.durable_s = time.perf_counter() - job.record.requested_at
                    job.record.path = str(job.final_dir)
            except BaseException as exc:  # noqa: BLE001
                self._fail(job, exc)
            finally:
                if job.fd is not None:
                    os.close(job.fd)
                if job.error is not None and self.rank == 0:
                    shutil.rmtree(job.tmp_dir, ignore_errors=True)  # never leave a torn folder behind
                with self._inflight_cond:
                    self._inflight -= 1
                    self._inflight_cond.notify_all()

    def _persist_and_vote(self, job: _Job) -> None:
        if self.fsync:
            os.fsync(job.fd)
        state_path = job.tmp_dir / layout.state_name(self.rank)
        layout.write_durable(state_path, job.skeleton)
        vote = {"rank": self.rank, "step": job.step, "session": self.session,
                "shard_bytes": job.file_size, "state_bytes": len(job.skeleton)}
        if self.checksum:
            vote["shard_crc"] = {str(k): v for k, v in sorted(job.crc.items())}
            vote["state_crc"] = zlib.crc32(job.skeleton)
        if self.fsync:  # shard and state entries are durable before this rank votes
            layout.fsync_dir(job.tmp_dir)
        # The vote goes last. Rank 0 may rename the folder as soon as it sees the vote, so the
        # directory entry of the vote is made durable by rank 0's fsync of the folder (_commit).
        layout.write_durable(job.tmp_dir / layout.vote_name(self.rank), json.dumps(vote).encode())

    def _commit(self, job: _Job) -> None:
        """Rank 0: wait for every rank's vote, then COMMIT and rename atomically (two-phase)."""
        deadline = time.monotonic() + self.commit_timeout_s
        votes = [job.tmp_dir / layout.vote_name(r) for r in range(self.world_size)]
        while not all(v.exists() for v in votes):
            if time.monotonic() > deadline:
                missing = [v.name for v in votes if not v.exists()]
                raise CheckpointError(f"step {job.step}: ranks did not commit within {self.commit_timeout_s} s "
                                      f"(missing {missing})")
            time.sleep(0.01)
        commit = {"step": job.step, "world_size": self.world_size, "session": self.session,
                  "votes": [json.loads(v.read_text()) for v in votes], "committed_at": time.time()}
        layout.write_durable(job.tmp_dir / layout.COMMIT_FILE, json.dumps(commit).encode())
        if self.fsync:  # every vote and the COMMIT marker are durable before the rename publishes them
            layout.fsync_dir(job.tmp_dir)
        if job.final_dir.exists():  # a checkpoint of this step from an earlier run: replace it
            stale = job.final_dir.with_name(job.final_dir.name + f".old-{self.session}")
            job.final_dir.rename(stale)
            shutil.rmtree(stale, ignore_errors=True)
        os.rename(job.tmp_dir, job.final_dir)
        if self.fsync:
            layout.fsync_dir(self.directory)

    def _apply_retention(self) -> None:
        committed = list_checkpoints(self.directory)
        for path in committed[:-self.keep_last]:
            doomed = path.with_name(path.name + f".del-{self.session}")
            path.rename(doomed)  # renamed first: a crash mid-delete never leaves a half "step_" folder
            shutil.rmtree(doomed, ignore_errors=True)

    # ---------------------------------------------------------------- helpers
    def _prepare_directory(self) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            probe = self.directory / f".probe-{self.session}-{self.rank}"
            layout.write_durable(probe, b"ok")
            probe.unlink()
        except OSError as exc:
            raise CheckpointError(f"checkpoint directory {self.directory} is not writable: {exc}") from exc
        if self.rank == 0:  # leftovers of crashed runs: torn (uncommitted) or half-deleted folders
            for path in self.directory.glob(f"{layout.STEP_PREFIX}*.*-*"):
                if self.session not in path.name:
                    shutil.rmtree(path, ignore_errors=True)

    def _fail(self, job: _Job, exc: BaseException) -> None:
        if job.error is None:
            job.error = exc
        if self._error is None:
            self._error = CheckpointError(f"checkpoint of step {job.step} to {self.directory} failed: "
                                          f"{type(exc).__name__}: {exc}; earlier checkpoints are intact")
            self._error.__cause__ = exc

    def _raise_pending_error(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error


def _header_with_absolute_offsets(entries: list[dict]) -> tuple[bytes, int]:
    """The header stores absolute file offsets, which depend on the header's own length."""
    data_start = 0
    while True:
        absolute = [{**e, "offset": data_start + e["offset"]} for e in entries]
        header, needed = layout.encode_header(absolute)
        if needed <= data_start:
            return header, data_start
        data_start = needed + 4096  # slack so that a longer offset text cannot overflow again


def _rank_and_world(rank: Optional[int], world_size: Optional[int]) -> tuple[int, int]:
    import torch.distributed as dist

    if rank is None or world_size is None:
        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return rank or 0, world_size or 1
    return rank, world_size


def _agree_on_session(world_size: int) -> str:
    """One id per run, the same on every rank: names this run's temporary folders."""
    import torch.distributed as dist

    session = uuid.uuid4().hex[:12]
    if world_size > 1:
        if not (dist.is_available() and dist.is_initialized()):
            raise ValueError("world_size > 1 needs torch.distributed initialised, or an explicit session id "
                             "shared by all ranks")
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
        if not name.startswith(layout.STEP_PREFIX) or not name[len(layout.STEP_PREFIX):].isdigit():
            continue
        if _valid_commit(path) is not None:
            found.append((int(name[len(layout.STEP_PREFIX):]), path))
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

