"""How a training run checkpoints: the settings a user chooses, and the checkpointer they open."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from components.checkpoint.lazy_async import LazyAsyncCheckpointer
from components.checks import at_least, writable_folder


@dataclass
class CheckpointSettings:
    every: int = 10  # k: every 10 steps (k=1 works too; 190 MB per step mostly costs shared disk bandwidth)
    keep_last: int = 2  # committed checkpoints kept; older ones are deleted after each commit
    buffer_slots: int = 1  # host buffer = this many checkpoints; 1 suffices: the flush reads the tensors themselves
    host_buffer_mb: Optional[int] = None  # explicit host buffer size; None: buffer_slots x checkpoint size
    flush_threads: int = 2  # threads streaming host pieces to the file (I/O, not compute)
    fsync: bool = True  # durability: fsync shard, state, vote, COMMIT and directory
    checksum: bool = False  # CRC32 of every piece, verified at load (costs CPU time in the background)
    dir: Optional[str] = None  # None: <work_dir>/lm_train/checkpoints/<run_name>

    def __post_init__(self) -> None:
        at_least("checkpoint.every", self.every, 1)
        at_least("checkpoint.keep_last", self.keep_last, 1)
        at_least("checkpoint.buffer_slots", self.buffer_slots, 1)
        at_least("checkpoint.flush_threads", self.flush_threads, 1)
        if self.host_buffer_mb is not None:
            at_least("checkpoint.host_buffer_mb", self.host_buffer_mb, 1)
        if self.dir is not None:
            writable_folder("checkpoint.dir", self.dir)

    def open(self, folder: Path, *, device: str, rank: int = 0, world_size: int = 1) -> LazyAsyncCheckpointer:
        """A lazy asynchronous checkpointer writing this rank's shard into `folder`."""
        return LazyAsyncCheckpointer(
            folder,
            keep_last=self.keep_last,
            host_buffer_bytes=self.host_buffer_mb * 2**20 if self.host_buffer_mb else None,
            buffer_slots=self.buffer_slots,
            flush_threads=self.flush_threads,
            fsync=self.fsync,
            checksum=self.checksum,
            device=device,
            rank=rank,
            world_size=world_size,
        )
