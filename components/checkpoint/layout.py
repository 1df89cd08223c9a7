"""On-disk layout of a checkpoint and the safe (de)serialisation of its non-tensor state.

A checkpoint is a folder `step_00000123/` holding, per rank r:
  rank00000.shard   magic, header length, JSON header {key -> dtype, shape, offset, nbytes}, then
                    the raw tensor bytes at 64-byte aligned offsets (safetensors-like);
  rank00000.state   the pickled "skeleton": the nested state with every tensor replaced by a
                    `TensorRef` into the shard (optimizer hyper-parameters, step, RNG tuples...);
  rank00000.done    this rank's vote: sizes (and CRCs) of its two files, fsynced last;
and `COMMIT`, written by rank 0 once every rank has voted, before the folder is atomically renamed
from `step_00000123.tmp-<session>` to its final name. Only folders with a valid COMMIT are loaded.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

MAGIC = b"LACKPT01"
ALIGN = 64  # byte alignment of every tensor in the shard and in the host buffer
COMMIT_FILE = "COMMIT"
STEP_PREFIX = "step_"


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or read; the message names the folder and the cause."""


def align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def step_dirname(step: int) -> str:
    return f"{STEP_PREFIX}{step:08d}"


SHARD_SUFFIX = ".shard"


def shard_name(rank: int) -> str:
    return f"rank{rank:05d}{SHARD_SUFFIX}"


def state_name(rank: int) -> str:
    return f"rank{rank:05d}.state"


def vote_name(rank: int) -> str:
    return f"rank{rank:05d}.done"


@dataclass(frozen=True)
class TensorRef:
    """Placeholder for a tensor stored in the shard (numpy=True: it was a numpy array)."""

    key: str
    numpy: bool = False


def split_state(state: Any) -> tuple[Any, list[tuple[str, torch.Tensor]]]:
    """Replace every tensor (and numpy array) in a nested structure by a TensorRef.

    Tensors that alias the same memory (tied weights) are stored once.
    """
    tensors: list[tuple[str, torch.Tensor]] = []
    seen: dict[tuple, str] = {}

    def walk(obj: Any, path: str) -> Any:
        if isinstance(obj, torch.Tensor):
            t = obj.detach()
            ident = (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)
            if t.numel() and ident in seen:
                return TensorRef(seen[ident])
            key = f"t{len(tensors)}:{path}"[:200]
            seen[ident] = key
            tensors.append((key, t))
            return TensorRef(key)
        if isinstance(obj, np.ndarray):
            key = f"t{len(tensors)}:{path}"[:200]
            tensors.append((key, torch.from_numpy(np.ascontiguousarray(obj)).clone()))
            return TensorRef(key, numpy=True)
        if isinstance(obj, dict):
            return type(obj)((k, walk(v, f"{path}.{k}")) for k, v in obj.items())
        if isinstance(obj, (list, tuple)) and not hasattr(obj, "_fields"):
            return type(obj)(walk(v, f"{path}.{i}") for i, v in enumerate(obj))
        return obj

    return walk(state, "s"), tensors


def join_state(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    def walk(obj: Any) -> Any:
        if isinstance(obj, TensorRef):
            t = tensors[obj.key]
            return t.numpy() if obj.numpy else t
        if isinstance(obj, dict):
            return type(obj)((k, walk(v)) for k, v in obj.items())
        if isinstance(obj, (list, tuple)):
            return type(obj)(walk(v) for v in obj)
        return obj

    return walk(skeleton)


# Only plain containers and our placeholder may appear in a skeleton: a tampered .state file cannot
# make the loader run code.
_ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "complex"),
    (__name__, "TensorRef"),
    ("components.checkpoint.layout", "TensorRef"),
}


class _SkeletonUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise CheckpointError(f"checkpoint state refers to {module}.{name}, which is not allowed")
        return TensorRef if name == "TensorRef" else super().find_class(module, name)


def dumps_skeleton(skeleton: Any) -> bytes:
    return pickle.dumps(skeleton, protocol=pickle.HIGHEST_PROTOCOL)


def loads_skeleton(data: bytes) -> Any:
    return _SkeletonUnpickler(io.BytesIO(data)).load()


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def parse_dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise CheckpointError(f"unknown dtype {name!r} in checkpoint header")
    return dtype


def encode_header(entries: list[dict]) -> tuple[bytes, int]:
    """Shard prefix (magic, length, JSON) and the aligned offset where tensor data starts."""
    body = json.dumps({"tensors": entries}).encode()
    prefix = MAGIC + struct.pack("<Q", len(body)) + body
    return prefix, align(len(prefix))


def read_shard(path: Path) -> dict[str, torch.Tensor]:
    with open(path, "rb") as fh:
        magic = fh.read(len(MAGIC))
        if magic != MAGIC:
            raise CheckpointError(f"{path} is not a checkpoint shard (bad magic {magic!r})")
        (length,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(length))
        out = {}
        for entry in header["tensors"]:
            buf = torch.empty(entry["nbytes"], dtype=torch.uint8)
            fh.seek(entry["offset"])
            if entry["nbytes"] and fh.readinto(buf.numpy()) != entry["nbytes"]:
                raise CheckpointError(f"{path} is truncated at tensor {entry['key']}")
            out[entry["key"]] = buf.view(parse_dtype(entry["dtype"])).view(entry["shape"])
    return out


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durable(path: Path, data: bytes) -> None:
    """Write `data`, fsync it, then rename it into place: a reader (rank 0 polling for votes, a
    loader) sees either no file or the whole file, never one that exists but is still empty."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
    with open(partial, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(partial, path)
