"""Checkpointing during training, side by side: none, torch.save, naive async, DCP async_save, lazy async.

The paper's metrics (DataStates-LLM, HPDC'24), for a checkpoint every k in {1, 2, 5, 10} iterations:
blocked time per checkpoint, perceived throughput (checkpoint bytes / blocked time), iteration time
split into compute vs blocked, end-to-end time for N iterations including the final drain, time to
durable (request -> fsynced on storage), host memory overhead (peak RSS growth during the run).

Every method trains the same model with the same AdamW state, writes the same state (model +
optimizer state_dicts) and makes it durable (fsync) to the same disk; methods alternate (rotated
order for each k) after a shared warm-up. `--full` uses the SmolLM2-135M fine-tuning model (~1.6 GB
checkpoint); `--quick` a 22M-parameter GPT (0.27 GB), batch 1 x 32 tokens, so that it finishes in minutes.

    python -m benchmarks.checkpointing --quick
    python -m benchmarks.checkpointing --full [--iters 10 --ks 1,2,5,10]
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import threading
import time
from pathlib import Path
from typing import Any, Callable

import torch

from benchmarks.common import parse_mode, target, write_result

METHODS = ["none", "torch_save", "naive_async", "dcp_async", "lazy_async"]
PAGE = os.sysconf("SC_PAGE_SIZE")


# ----------------------------------------------------------------------------- the five methods
class NoCheckpoint:
    def save(self, step: int, state: dict) -> None:
        pass

    def drain(self) -> None:
        pass


def _fsync_tree(path: Path) -> None:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)


class TorchSaveSync:
    """torch.save + fsync in the training thread: training waits for all of it."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.blocked: list[float] = []
        self.durable: list[float] = []

    def save(self, step: int, state: dict) -> None:
        start = time.perf_counter()
        path = self.folder / f"slot{step % 2}.pt"
        with open(path, "wb") as fh:
            torch.save(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        self.blocked.append(time.perf_counter() - start)
        self.durable.append(self.blocked[-1])

    def drain(self) -> None:
        pass


def _clone_to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _clone_to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_clone_to_cpu(v) for v in obj)
    return obj


class NaiveAsync:
    """A fresh host copy (new buffers) in the training thread, then torch.save + fsync on a new thread.

    One write may be outstanding: a new checkpoint first joins the previous thread (else host
    copies pile up without bound when storage is slower than training).
    """

    def __init__(self, folder: Path):
        self.folder = folder
        self.blocked: list[float] = []
        self.durable: list[float] = []
        self._thread: threading.Thread | None = None

    def save(self, step: int, state: dict) -> None:
        start = time.perf_counter()
        if self._thread is not None:
            self._thread.join()
        copy = _clone_to_cpu(state)
        path = self.folder / f"slot{step % 2}.pt"

        def write() -> None:
            with open(path, "wb") as fh:
                torch.save(copy, fh)
                fh.flush()
                os.fsync(fh.fileno())
            self.durable.append(time.perf_counter() - start)

        self._thread = threading.Thread(target=write, daemon=True)
        self._thread.start()
        self.blocked.append(time.perf_counter() - start)

    def drain(self) -> None:
        if self._thread is not None:
            self._thread.join()


class DCPAsync:
    """torch.distributed.checkpoint.async_save: blocks while staging to CPU, writes on a thread."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.blocked: list[float] = []
        self.durable: list[float] = []
        self._future = None

    def save(self, step: int, state: dict) -> None:
        import torch.distributed.checkpoint as dcp

        start = time.perf_counter()
        if self._future is not None:  # DCP allows one save in flight
            self._future.result()
        path = self.folder / f"slot{step % 2}"
        shutil.rmtree(path, ignore_errors=True)
        future = dcp.async_save(state, checkpoint_id=str(path), no_dist=True)
        future.add_done_callback(lambda _: self.durable.append(time.perf_counter() - start))
        self._future = future
        self.blocked.append(time.perf_counter() - start)

    def drain(self) -> None:
        if self._future is not None:
            self._future.result()


class LazyAsync:
    """components.checkpoint.LazyAsyncCheckpointer: the copy overlaps the next forward/backward."""

    def __init__(self, folder: Path, optimizer: torch.optim.Optimizer, device: str):
        from components.checkpoint import LazyAsyncCheckpointer

        self.ckpt = LazyAsyncCheckpointer(folder, keep_last=2, buffer_slots=2, device=device)
        self.ckpt.attach(optimizer)

    def save(self, step: int, state: dict) -> None:
        self.ckpt.save(step, state)

    def drain(self) -> None:
        self.ckpt.close()

    @property
    def blocked(self) -> list[float]:  # save() + the pre-step wait, per checkpoint
        return [r.blocked_s for r in self.ckpt.records]

    @property
    def durable(self) -> list[float]:
        return [r.durable_s for r in self.ckpt.records]


# ----------------------------------------------------------------------------- measurement
class PeakRSS:
    """Samples this process's resident memory; `peak_growth` = max RSS - RSS at start."""

    def __init__(self, interval: float = 0.02):
        self.interval = interval
        self.start = self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * PAGE

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self._rss())

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return max(0, self.peak - self.start)


def build_workload(model_kind: str, batch: int, block: int, device: str):
    """Model, AdamW (state initialised), and one training iteration (forward, backward, step)."""
    from components.lm.training import TrainSettings, build_optimizer, forward_logits
    from components.lm.model import lm_loss

    torch.manual_seed(0)
    if model_kind == "smollm2":
        from components.lm import smollm2

        model = smollm2.load_model(device=device).train()
    else:
        from components.lm.model import GPT, GPTConfig

        # Embedding-heavy like a real LM (22M params, 0.27 GB with AdamW) but cheap per token.
        model = GPT(GPTConfig(n_layer=2, n_head=6, n_embd=384, block_size=block)).to(device).train()
    optimizer = build_optimizer(model, TrainSettings(lr=1e-5, warmup_iters=1))
    data = torch.Generator().manual_seed(0)

    def iteration() -> None:
        x = torch.randint(0, 49152, (batch, block + 1), generator=data).to(device)
        loss = lm_loss(forward_logits(model, x[:, :-1]), x[:, 1:])
        loss.backward()
        optimizer.step()  # the lazy checkpointer's pre-step hook waits here
        optimizer.zero_grad(set_to_none=True)

    iteration()  # AdamW state exists from here on: checkpoints have their full size
    return model, optimizer, iteration


def checkpoint_bytes(state: dict) -> int:
    from components.checkpoint.layout import split_state

    return sum(t.numel() * t.element_size() for _, t in split_state(state)[1])


def make_method(name: str, folder: Path, optimizer, device: str):
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return {"none": lambda: NoCheckpoint(), "torch_save": lambda: TorchSaveSync(folder),
            "naive_async": lambda: NaiveAsync(folder), "dcp_async": lambda: DCPAsync(folder),
            "lazy_async": lambda: LazyAsync(folder, optimizer, device)}[name]()


def run_one(name: str, k: int, iters: int, model, optimizer, iteration: Callable[[], None], folder: Path,
            device: str) -> dict:
    method = make_method(name, folder, optimizer, device)

    def state() -> dict:
        return {"model": model.state_dict(), "optimizer": optimizer.state_dict()}

    # Warm-up: one iteration and one checkpoint, drained (allocates buffers, opens thread pools).
    iteration()
    method.save(0, state())
    if name != "lazy_async":
        method.drain()
    else:
        method.ckpt.wait()
    n_warm = len(getattr(method, "blocked", []))
    rss = PeakRSS()
    iter_times = []
    start = time.perf_counter()
    for i in range(iters):
        t0 = time.perf_counter()
        iteration()
        if (i + 1) % k == 0:
            method.save(i + 1, state())
        iter_times.append(time.perf_counter() - t0)
    loop_s = time.perf_counter() - start
    # Blocked time is what the training loop waited for; the final drain is counted in end_to_end_s.
    blocked = list(getattr(method, "blocked", []))[n_warm:]
    method.drain()
    end_to_end = time.perf_counter() - start
    host_growth = rss.stop()
    durable = [d for d in list(getattr(method, "durable", []))[n_warm:] if d == d]
    out = {
        "iters": iters, "checkpoints": len(blocked), "end_to_end_s": end_to_end, "drain_s": end_to_end - loop_s,
        "iteration_s_median": statistics.median(iter_times),
        "blocked_s_total": sum(blocked),
        "blocked_per_checkpoint_s": statistics.median(blocked) if blocked else 0.0,
        "time_to_durable_s": statistics.median(durable) if durable else 0.0,
        "host_memory_growth_mb": host_growth / 2**20,
    }
    out["compute_per_iter_s"] = (loop_s - out["blocked_s_total"]) / iters
    out["blocked_per_iter_s"] = out["blocked_s_total"] / iters
    if name == "lazy_async":
        out["host_buffer_mb"] = method.ckpt.host_memory_bytes / 2**20
    shutil.rmtree(folder, ignore_errors=True)
    return out


def main(argv=None) -> None:
    extra = argparse.ArgumentParser(add_help=False)
    extra.add_argument("--model", choices=["gpt", "smollm2"], default=None, help="default: gpt (quick), smollm2 (full)")
    extra.add_argument("--iters", type=int, default=10, help="timed iterations per (method, k)")
    extra.add_argument("--ks", default="1,2,5,10", help="checkpoint every k iterations")
    extra.add_argument("--batch", type=int, default=None)
    extra.add_argument("--block", type=int, default=None, help="tokens per sequence (default 32 quick, 128 full)")
    extra.add_argument("--dir", default=None, help="where checkpoints are written (default data/benchmarks/...)")
    known, rest = extra.parse_known_args(argv)
    args = parse_mode(__doc__.split("\n")[0], rest)
    model_kind = known.model or ("smollm2" if args.full else "gpt")
    batch = known.batch or 1
    known.block = known.block or (128 if args.full else 32)
    ks = [int(k) for k in known.ks.split(",")]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    folder = Path(known.dir or Path(__file__).resolve().parents[1] / "data" / "benchmarks" / "checkpointing")

    model, optimizer, iteration = build_workload(model_kind, batch, known.block, device)
    nbytes = checkpoint_bytes({"model": model.state_dict(), "optimizer": optimizer.state_dict()})
    print(f"model={model_kind} checkpoint={nbytes / 1e9:.3f} GB iters={known.iters} ks={ks}", flush=True)
    runs: dict[str, dict[str, dict]] = {m: {} for m in METHODS}
    setup = {"model": model_kind, "checkpoint_bytes": nbytes, "iters_per_run": known.iters, "batch": batch,
             "block": known.block, "device": device}
    for ki, k in enumerate(ks):  # the no-checkpoint baseline runs in every round too: an alternation anchor
        order = METHODS[ki % len(METHODS):] + METHODS[:ki % len(METHODS)]  # rotate: no method always first
        for name in order:
            result = run_one(name, k, known.iters, model, optimizer, iteration, folder / name, device)
            runs[name][str(k)] = result
            print(f"k={k:<3} {name:<12} e2e={result['end_to_end_s']:.2f}s blocked/ckpt="
                  f"{result['blocked_per_checkpoint_s'] * 1e3:.1f}ms durable={result['time_to_durable_s']:.2f}s "
                  f"rss+={result['host_memory_growth_mb']:.0f}MB", flush=True)
        final = ki == len(ks) - 1
        # After every round the JSON holds what is measured so far (MLflow only gets the final one).
        report(runs, ks[:ki + 1], setup, args, final=final)
    shutil.rmtree(folder, ignore_errors=True)


def report(runs: dict, ks: list[int], setup: dict, args: argparse.Namespace, final: bool) -> None:
    nbytes = setup["checkpoint_bytes"]
    baseline_e2e = statistics.median(runs["none"][str(k)]["end_to_end_s"] for k in ks)
    for k in map(str, ks):  # host memory a method adds beyond training itself (+ its resident buffer)
        for name in METHODS:
            r = runs[name][k]
            r["host_memory_overhead_mb"] = (max(0.0, r["host_memory_growth_mb"] - runs["none"][k]["host_memory_growth_mb"])
                                            + r.get("host_buffer_mb", 0.0))
    ratios: dict[str, dict[str, float]] = {}
    for k in map(str, ks):
        lazy = runs["lazy_async"][k]
        for name in METHODS[1:]:
            r = runs[name][k]
            r["perceived_throughput_gbps"] = (nbytes / r["blocked_per_checkpoint_s"] / 1e9
                                              if r["blocked_per_checkpoint_s"] > 0 else float("inf"))
            r["end_to_end_vs_no_checkpoint"] = r["end_to_end_s"] / baseline_e2e
            # Within-run split (the paper's compute vs blocked): immune to load drifting between runs.
            r["end_to_end_vs_own_compute"] = r["end_to_end_s"] / (r["compute_per_iter_s"] * r["iters"])
        ratios[k] = {
            "lazy_blocked_vs_torch_save": lazy["blocked_per_checkpoint_s"] / runs["torch_save"][k]["blocked_per_checkpoint_s"],
            "lazy_blocked_vs_dcp_async": lazy["blocked_per_checkpoint_s"] / runs["dcp_async"][k]["blocked_per_checkpoint_s"],
            "lazy_blocked_vs_naive_async": lazy["blocked_per_checkpoint_s"] / runs["naive_async"][k]["blocked_per_checkpoint_s"],
            "lazy_end_to_end_vs_no_checkpoint": lazy["end_to_end_s"] / baseline_e2e,
            "torch_save_end_to_end_vs_no_checkpoint": runs["torch_save"][k]["end_to_end_s"] / baseline_e2e,
            "dcp_end_to_end_vs_no_checkpoint": runs["dcp_async"][k]["end_to_end_s"] / baseline_e2e,
        }
    k1 = str(ks[0])
    targets = [
        target(f"blocked_time_vs_torch_save_k{k1}", ratios[k1]["lazy_blocked_vs_torch_save"], 1 / 20, "<="),
        target(f"blocked_time_vs_dcp_async_save_k{k1}", ratios[k1]["lazy_blocked_vs_dcp_async"], 1 / 3, "<="),
        target(f"train_time_ckpt_every_iter_vs_none_k{k1}", ratios[k1]["lazy_end_to_end_vs_no_checkpoint"], 1.15, "<="),
    ]
    results = {
        **setup, "ks": ks, "complete": final, "no_checkpoint_end_to_end_s": baseline_e2e,
        "runs": runs, "ratios": ratios,
        "fairness": "same model, AdamW state, data and threads for every method; every method fsyncs; "
                    "methods alternate (rotated order per k) after a shared warm-up checkpoint",
        "notes": f"shared machine ({os.cpu_count()} cores, several other engineers' jobs running): absolute "
                 "times are noisy, compare the ratios within this run",
    }
    partial_args = args if final else argparse.Namespace(**{**vars(args), "no_mlflow": True})
    figure = _plot(runs, ks, nbytes, setup["model"])
    write_result("checkpointing", results, targets, figure=figure, args=partial_args, device=setup["device"])
    import matplotlib.pyplot as plt

    plt.close(figure)


def _plot(runs: dict, ks: list[int], nbytes: int, model_kind: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    names = METHODS[1:]
    k1 = str(ks[0])
    ax1.bar(names, [max(runs[n][k1]["blocked_per_checkpoint_s"], 1e-4) for n in names], color="C0")
    ax1.set_yscale("log")
    ax1.set_ylabel("blocked time per checkpoint (s, log)")
    ax1.set_title(f"{model_kind}: {nbytes / 1e9:.2f} GB checkpoint, k={k1}")
    ax1.tick_params(axis="x", rotation=20)
    for name in METHODS:
        ax2.plot(ks, [runs[name][str(k)]["end_to_end_s"] for k in ks], marker="o", label=name)
    ax2.set_xlabel("checkpoint every k iterations")
    ax2.set_ylabel("end-to-end time incl. final drain (s)")
    ax2.set_xscale("log")
    ax2.set_xticks(ks, [str(k) for k in ks])
    ax2.legend()
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    main()
