"""DataStates-style lazy asynchronous multi-level checkpointing (see lazy_async.py)."""

from components.checkpoint.layout import CheckpointError
from components.checkpoint.lazy_async import (
    CheckpointRecord,
    LazyAsyncCheckpointer,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    set_aside_earlier_run,
)
from components.checkpoint.settings import CheckpointSettings

__all__ = [
    "CheckpointError",
    "CheckpointRecord",
    "CheckpointSettings",
    "LazyAsyncCheckpointer",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "set_aside_earlier_run",
]
