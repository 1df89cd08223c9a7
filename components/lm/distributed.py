"""lm_train across processes: the process group, DDP / FSDP2 wrapping, and what each rank checkpoints.

Every rank writes its own shard through the lazy checkpointer (one two-phase commit per step):

- ``ddp``: the model and AdamW state are replicas, so rank 0's shard holds them; every rank's
  shard holds its own RNG and data position (each rank draws its own batches). A restore reads
  the replica from rank 0's shard and the rest from the rank's own.
- ``fsdp``: FSDP2 (``torch.distributed.fsdp.fully_shard``) shards parameters and AdamW moments
  on dim 0; each rank's shard holds its local pieces (the DTensors' local tensors, read lazily
  where they live), and a restore puts them back as DTensors on the same mesh.

A checkpoint records its world size and strategy: resuming it under others fails with both named.
The launch side (``torchrun_command``) builds the ``python -m torch.distributed.run`` command line
that starts ``components.lm.worker`` on every rank.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel

from components.checkpoint import load_checkpoint
from components.lm.training import capture_state, restore_state
from components.processes import descendants

STRATEGIES = ("ddp", "fsdp")


@dataclass(frozen=True)
class Ranks:
    """This process's place in the job; world_size 1 and strategy 'none' for a single process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    strategy: str = "none"

    @property
    def distributed(self) -> bool:
        return self.strategy != "none"


def init_process_group(strategy: str, device: str) -> tuple[Ranks, str]:
    """Join the job torchrun started (RANK/WORLD_SIZE/MASTER_* in the environment); return the ranks
    and this rank's device (cuda:<local rank> under NCCL, else the CPU with gloo)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"launcher.strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        raise RuntimeError(
            "no RANK/WORLD_SIZE in the environment: start this under torchrun "
            "(python -m torch.distributed.run), or use launcher=local"
        )
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
    else:
        device = "cpu"
    dist.init_process_group("nccl" if use_cuda else "gloo")
    return Ranks(dist.get_rank(), dist.get_world_size(), local_rank, strategy), device


def close_process_group() -> None:
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def from_rank0(obj: Any, ranks: Ranks) -> Any:
    """Rank 0's value of `obj` on every rank (a decision only one rank may take, e.g. a path)."""
    if not ranks.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(ranks: Ranks) -> None:
    if ranks.distributed:
        dist.barrier()


def mean_over_ranks(values: dict[str, float], ranks: Ranks) -> dict[str, float]:
    """The mean of each value over the ranks (every rank must call it, with the same keys)."""
    if not ranks.distributed or not values:
        return values
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    packed = torch.tensor(list(values.values()), dtype=torch.float64, device=device)
    dist.all_reduce(packed)
    return dict(zip(values, (packed / ranks.world_size).tolist()))


def transformer_blocks(model: torch.nn.Module) -> Sequence[torch.nn.Module]:
    """The repeated layers FSDP2 shards one by one (our GPT's blocks, a Llama's decoder layers)."""
    if hasattr(model, "blocks"):
        return list(model.blocks)
    inner = getattr(model, "model", None)
    if inner is not None and hasattr(inner, "layers"):
        return list(inner.layers)
    raise ValueError(f"FSDP2: no transformer blocks found in {type(model).__name__}")


def wrap_model(model: torch.nn.Module, ranks: Ranks, device: str) -> torch.nn.Module:
    """DDP replica or FSDP2-sharded model (build the optimizer on what this returns)."""
    if ranks.strategy == "ddp":
        return DistributedDataParallel(model, device_ids=[ranks.local_rank] if device.startswith("cuda") else None)
    if ranks.strategy == "fsdp":
        mesh = init_device_mesh("cuda" if device.startswith("cuda") else "cpu", (ranks.world_size,))
        for block in transformer_blocks(model):
            fully_shard(block, mesh=mesh)
        fully_shard(model, mesh=mesh)
    return model


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module whose state_dict keys match a single-process model's (DDP adds 'module.')."""

    return model.module if isinstance(model, DistributedDataParallel) else model


def _local(value: Any) -> Any:
    return value.to_local() if isinstance(value, DTensor) else value


def checkpoint_state(step: int, model, optimizer, scheduler, data_generator: torch.Generator, ranks: Ranks) -> dict:
    """What this rank writes at an iteration boundary (tensors live: the checkpointer copies lazily)."""
    extra = {"world_size": ranks.world_size, "strategy": ranks.strategy, "rank": ranks.rank}
    if ranks.strategy == "ddp" and ranks.rank > 0:  # a replica of rank 0's model and optimizer
        state = capture_state(step, torch.nn.Module(), optimizer, scheduler, data_generator, extra)
        state["optimizer"] = {}
        return state
    state = capture_state(step, unwrap(model), optimizer, scheduler, data_generator, extra)
    if ranks.strategy == "fsdp":
        state["model"] = {k: _local(v) for k, v in state["model"].items()}
        opt = state["optimizer"]
        opt["state"] = {pid: {k: _local(v) for k, v in st.items()} for pid, st in opt["state"].items()}
    return state


def _check_layout(path: Path, state: dict, ranks: Ranks) -> None:
    saved = state.get("extra", {})
    world, strategy = saved.get("world_size", 1), saved.get("strategy", "none")
    if (world, strategy) != (ranks.world_size, ranks.strategy):
        raise ValueError(
            f"{path} was written by {world} process(es) with strategy {strategy!r}; this run has "
            f"{ranks.world_size} with {ranks.strategy!r}: resume with the launcher settings "
            f"that wrote it (launcher.nproc x launcher.nnodes, launcher.strategy)"
        )


def restore_checkpoint(path: Path, model, optimizer, scheduler, data_generator: torch.Generator, ranks: Ranks) -> int:
    """Load this rank's part of a committed checkpoint into the live objects; returns its step."""

    state = load_checkpoint(path, rank=ranks.rank)
    _check_layout(path, state, ranks)
    if ranks.strategy == "ddp" and ranks.rank > 0:
        replica = load_checkpoint(path, rank=0)
        state["model"], state["optimizer"] = replica["model"], replica["optimizer"]
    elif ranks.strategy == "fsdp":
        state["model"] = _as_dtensors_like(state["model"], unwrap(model).state_dict())
        params = [p for group in optimizer.param_groups for p in group["params"]]
        for pid, st in state["optimizer"]["state"].items():
            param = params[int(pid)]
            if isinstance(param, DTensor):  # moments are sharded like their parameter; 'step' is a scalar
                st.update({k: _like(v, param) for k, v in st.items() if torch.is_tensor(v) and v.dim() > 0})
    return restore_state(state, unwrap(model), optimizer, scheduler, data_generator)


def _like(local: torch.Tensor, live: DTensor) -> DTensor:
    return DTensor.from_local(
        local.to(live.device),
        live.device_mesh,
        live.placements,
        run_check=False,
        shape=live.shape,
        stride=live.stride(),
    )


def _as_dtensors_like(saved: dict, live: dict) -> dict:
    missing = sorted(set(live) - set(saved))
    if missing:
        raise ValueError(f"checkpoint lacks model entries {missing[:5]}")
    return {k: _like(v, live[k]) if isinstance(live.get(k), DTensor) else v for k, v in saved.items()}


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's state on every rank, on the CPU (FSDP2 gathers each shard: a collective)."""
    out = {}
    for key, value in unwrap(model).state_dict().items():
        value = value.full_tensor() if isinstance(value, DTensor) else value
        out[key] = value.detach().cpu()
    return out


# ------------------------------------------------------------------------ launching
@dataclass(frozen=True)
class TorchrunSettings:
    nproc: int = 2  # processes per node
    nnodes: int = 1
    rdzv_endpoint: Optional[str] = None  # host:port of the rendezvous (any node's); None: a single node
    rdzv_id: str = "lm_train"  # the same on every node of one job
    max_restarts: int = 0


def torchrun_command(settings: TorchrunSettings, job_file: str | Path, python: str = sys.executable) -> list[str]:
    """`python -m torch.distributed.run ... -m components.lm.worker JOB` for this node (the
    interpreter's own torch, so no console script has to be on PATH)."""
    cmd = [
        python,
        "-m",
        "torch.distributed.run",
        f"--nproc-per-node={settings.nproc}",
        f"--max-restarts={settings.max_restarts}",
    ]
    if settings.nnodes == 1 and not settings.rdzv_endpoint:
        cmd.append("--standalone")  # a free local port, no rendezvous server to name
    else:
        cmd += [
            f"--nnodes={settings.nnodes}",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint={settings.rdzv_endpoint}",
            f"--rdzv-id={settings.rdzv_id}",
        ]
    return cmd + ["-m", "components.lm.worker", str(job_file)]


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants (torchrun starts each worker in a session of its own, so a
    signal to torchrun's process group does not reach them). Linux /proc."""
    return [pid, *descendants(pid)]


def signal_job(pid: int, sig: int) -> list[int]:
    """Send `sig` to torchrun (`pid`) and every worker under it at once; returns the pids signalled."""
    tree = process_tree(pid)
    for member in tree:
        try:
            os.kill(member, sig)
        except ProcessLookupError:
            pass
    return tree
