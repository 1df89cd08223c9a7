"""One rank of the 2-process gloo test: DDP training with a checkpoint every step, then restore.

argv: rank world_size port checkpoint_dir result_file
"""

import json
import sys

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from components.checkpoint import LazyAsyncCheckpointer, latest_checkpoint, load_checkpoint
from components.lm.distributed import close_process_group
from components.lm.training import restore_state
from tests.checkpoint import _tiny

rank, world, port, folder, result_file = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
torch.set_num_threads(1)


def fresh():
    model, optimizer, scheduler, _ = _tiny.fresh(6)
    torch.manual_seed(100 + rank)  # each rank's own dropout stream
    ddp = DistributedDataParallel(model)
    # optimizer was built on the same parameters DDP wraps
    return ddp, optimizer, scheduler, torch.Generator().manual_seed(10 + rank)  # each rank's own data


def run(state, start, stop, ckpt=None):
    _tiny.train(*state, 6, start, stop, checkpointer=ckpt, every=1 if ckpt else 0)


first = fresh()
ckpt = LazyAsyncCheckpointer(folder, keep_last=2)
assert ckpt.rank == rank and ckpt.world_size == world
ckpt.attach(first[1])
run(first, 0, 3, ckpt)
ckpt.close()
dist.barrier()  # rank 0 commits asynchronously; wait until everyone's close() returned
saved = _tiny.flat_state(first[0], first[1])
rng = torch.get_rng_state().clone()
run(first, 3, 6)
reference = _tiny.flat_state(first[0], first[1])

second = fresh()
latest = latest_checkpoint(folder)
step = restore_state(load_checkpoint(latest, rank=rank), *second)
ok_restore = step == 3 and all(torch.equal(saved[k], v) for k, v in _tiny.flat_state(second[0], second[1]).items())
ok_rng = torch.equal(torch.get_rng_state(), rng)
run(second, 3, 6)
ok_continue = all(torch.equal(reference[k], v) for k, v in _tiny.flat_state(second[0], second[1]).items())
json.dump(
    {"rank": rank, "latest": latest.name, "restore": ok_restore, "rng": ok_rng, "continue": ok_continue},
    open(result_file, "w"),
)
close_process_group()  # barrier first: a rank tearing down early aborts its peer at exit
