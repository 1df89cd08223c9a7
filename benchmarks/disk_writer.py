"""A process that only writes: the least any checkpointer must do, as a measured bound.

Started by `benchmarks.checkpointing` (method `write_only`) beside a training run that saves nothing.
It holds a checkpoint-sized buffer from the start, so per checkpoint it neither captures nor copies
nor serialises anything: it writes the buffer to one file in `chunk`-sized system calls (O_DIRECT
where the file system allows, as the lazy checkpointer does) and fsyncs, at the lazy checkpointer's
priority (nice +10). What the training loses to that is what the disk writes themselves cost this
machine (on a VM the host's emulation of the disk can take time from the guest's cores).

Protocol on stdin/stdout, one byte per command: `w` writes one checkpoint, `d` answers `ok` once
every earlier write is durable, end of input exits. Only the standard library: it starts in tens of
milliseconds.

    python -m benchmarks.disk_writer FILE BYTES [--chunk BYTES] [--nice N]
"""

from __future__ import annotations

import argparse
import mmap
import os
import sys

BLOCK = 4096  # O_DIRECT's alignment of offsets, lengths and buffers


def open_for_writing(path: str) -> tuple[int, bool]:
    """(fd, direct): O_DIRECT where the file system takes it, else buffered."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    try:
        return os.open(path, flags | os.O_DIRECT, 0o644), True
    except OSError:
        return os.open(path, flags, 0o644), False


def write_once(fd: int, buffer: memoryview, chunk: int) -> None:
    offset = 0
    while offset < len(buffer):
        offset += os.pwrite(fd, buffer[offset : offset + chunk], offset)
    os.fsync(fd)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("path")
    parser.add_argument("nbytes", type=int)
    parser.add_argument("--chunk", type=int, default=4 << 20)
    parser.add_argument("--nice", type=int, default=10)
    args = parser.parse_args(argv)
    if args.nbytes <= 0 or args.chunk <= 0 or args.chunk % BLOCK:
        parser.error(f"nbytes must be positive and chunk a positive multiple of {BLOCK}")
    os.nice(args.nice)
    size = -(-args.nbytes // BLOCK) * BLOCK
    region = mmap.mmap(-1, size)  # page-aligned, as O_DIRECT needs
    pattern = os.urandom(1 << 20)
    for offset in range(0, size, len(pattern)):  # touched now: no page faults while timed
        end = min(size, offset + len(pattern))
        region[offset:end] = pattern[: end - offset]
    buffer = memoryview(region)
    fd, direct = open_for_writing(args.path)
    print("direct" if direct else "buffered", flush=True)
    try:
        while command := sys.stdin.buffer.read(1):
            if command == b"w":
                write_once(fd, buffer, args.chunk)
            elif command == b"d":
                print("ok", flush=True)
    finally:
        os.close(fd)
        buffer.release()
        region.close()


if __name__ == "__main__":
    main()
