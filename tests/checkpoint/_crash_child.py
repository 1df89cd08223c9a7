"""Child process for the crash test: trains with a checkpoint every step until killed (or done).

argv: checkpoint_dir iters n_embd resume(0/1) unaligned(0/1) commit_delay_s [done_marker]
unaligned=1 appends an int64 scalar as the state's last tensor (its shard does not end on 64 bytes).
commit_delay_s > 0 holds every written checkpoint that long before it is made durable and committed,
so a kill aimed at a checkpoint in flight cannot miss it on a fast or a busy machine.
"""

import sys
import time
from pathlib import Path

import torch

from components.checkpoint import LazyAsyncCheckpointer, latest_checkpoint, load_checkpoint
from components.lm.training import restore_state
from tests.checkpoint import _tiny

ckpt_dir, iters, n_embd, resume = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
unaligned = sys.argv[5] == "1"
commit_delay_s = float(sys.argv[6])
model, optimizer, scheduler, gen = _tiny.fresh(iters, n_embd)
start = 0
if resume and latest_checkpoint(ckpt_dir) is not None:  # killed before the first commit: start over
    start = restore_state(load_checkpoint(latest_checkpoint(ckpt_dir)), model, optimizer, scheduler, gen)


class SlowCommit(LazyAsyncCheckpointer):
    """Fault injection: a pause between the shard written and the checkpoint made durable."""

    def _persist_and_vote(self, job):
        time.sleep(commit_delay_s)
        return super()._persist_and_vote(job)


ckpt = SlowCommit(ckpt_dir, keep_last=3, checksum=True)
ckpt.attach(optimizer)


class WithTail:
    """Adds a trailing 8-byte tensor to every checkpointed state."""

    def save(self, step, state):
        state["extra"] = {"tail": torch.tensor(step, dtype=torch.int64)}
        return ckpt.save(step, state)


print("started", flush=True)
_tiny.train(model, optimizer, scheduler, gen, iters, start, checkpointer=WithTail() if unaligned else ckpt, every=1)
ckpt.close()
if len(sys.argv) > 7:
    Path(sys.argv[7]).write_text("done")
