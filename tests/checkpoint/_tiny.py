"""A tiny, fully deterministic training setup shared by the checkpoint tests and their child processes."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import numpy as np
import torch

from components.lm.corpus import TokenCorpus
from components.lm.model import GPT, GPTConfig
from components.lm.training import TrainSettings, build_optimizer, build_scheduler, train_loop

VOCAB = 512
ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A loopback port nobody listens on (for a rendezvous)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def spawn(command: list[str], merge_output: bool = False) -> subprocess.Popen:
    """A child process of the project on one thread; stderr apart, or merged into stdout."""
    return subprocess.Popen(
        command,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if merge_output else subprocess.PIPE,
        text=True,
    )


class InMemoryCorpus(TokenCorpus):
    """Random tokens in memory: the checkpoint tests need a data stream, not language."""

    def __init__(self, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.splits = {
            "train": rng.integers(0, VOCAB, 50_000).astype(np.uint16),
            "val": rng.integers(0, VOCAB, 5_000).astype(np.uint16),
        }
        self.vocab_size = VOCAB
        self.meta = {}


def settings(iters: int = 8) -> TrainSettings:
    return TrainSettings(
        iters=iters, batch_size=2, block_size=16, warmup_iters=2, eval_every=10_000, eval_batches=1, lr=1e-2
    )


def fresh(iters: int = 8, n_embd: int = 32, seed: int = 0):
    """Model (with dropout, so the RNG state matters), optimizer, schedule and data generator."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=VOCAB, block_size=16, n_layer=2, n_head=2, n_embd=n_embd, dropout=0.1))
    s = settings(iters)
    optimizer = build_optimizer(model, s)
    return model, optimizer, build_scheduler(optimizer, s), torch.Generator().manual_seed(seed + 1)


def train(model, optimizer, scheduler, gen, iters: int, start: int = 0, stop=None, checkpointer=None, every: int = 0):
    """Steps start..stop (default: iters) of the tiny setup, checkpointing every `every` steps."""
    return train_loop(
        model,
        optimizer,
        scheduler,
        InMemoryCorpus(),
        settings(iters),
        data_generator=gen,
        start_step=start,
        stop_step=stop,
        checkpointer=checkpointer,
        checkpoint_every=every,
    )


def flat_state(model, optimizer) -> dict[str, torch.Tensor]:
    out = {f"model.{k}": v.detach().clone() for k, v in model.state_dict().items()}
    for pid, st in optimizer.state_dict()["state"].items():
        for k, v in st.items():
            out[f"opt.{pid}.{k}"] = v.detach().clone() if torch.is_tensor(v) else torch.tensor(v)
    return out


def assert_bitwise_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), f"{key} differs"
