"""Child process for the crash test: trains with a checkpoint every step until killed (or done).

argv: checkpoint_dir iters n_embd resume(0/1) [done_marker]
"""
import sys
from pathlib import Path

from components.checkpoint import LazyAsyncCheckpointer, latest_checkpoint, load_checkpoint
from components.lm.training import restore_state, train_loop
from tests.checkpoint import _tiny

ckpt_dir, iters, n_embd, resume = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
model, optimizer, scheduler, gen = _tiny.fresh(iters, n_embd)
start = 0
if resume and latest_checkpoint(ckpt_dir) is not None:  # killed before the first commit: start over
    start = restore_state(load_checkpoint(latest_checkpoint(ckpt_dir)), model, optimizer, scheduler, gen)
ckpt = LazyAsyncCheckpointer(ckpt_dir, keep_last=3, checksum=True)
ckpt.attach(optimizer)
print("started", flush=True)
train_loop(model, optimizer, scheduler, _tiny.InMemoryCorpus(), _tiny.settings(iters), data_generator=gen,
           start_step=start, checkpointer=ckpt, checkpoint_every=1)
ckpt.close()
if len(sys.argv) > 5:
    Path(sys.argv[5]).write_text("done")
