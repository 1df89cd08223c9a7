"""lm_train on 2 processes under torchrun (gloo): train, checkpoint, SIGKILL the whole job after a
committed checkpoint, resume=latest, and the resumed job ends bit for bit where an uninterrupted one does."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from components.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint
from components.checkpoint.layout import split_state
from components.lm.distributed import Ranks, TorchrunSettings, restore_checkpoint, signal_job, torchrun_command
from components.lm.trainer import TrainJob, build_model
from components.lm.training import TrainSettings, build_optimizer, build_scheduler
from tests.checkpoint import _tiny

ROOT = Path(__file__).resolve().parents[2]
VOCAB = 301  # odd: uneven FSDP2 shards of the embedding (151 + 150 rows)
ITERS, EVERY = 40, 4


def tiny_corpus(folder: Path) -> Path:
    """A token corpus folder in TokenCorpus' format: random tokens, the data stream is what matters."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", 20_000), ("val", 2_000)):
        rng.integers(0, VOCAB, n).astype(np.uint16).tofile(folder / f"{split}.bin")
    (folder / "meta.json").write_text(json.dumps({"vocab_size": VOCAB, "dtype": "uint16", "documents": {}}))
    return folder


def write_job(tmp: Path, name: str, corpus: Path, strategy: str, resume: str | None = None) -> Path:
    job = TrainJob(
        model={
            "vocab_size": VOCAB,
            "block_size": 16,
            "n_layer": 2,
            "n_head": 2,
            "n_embd": 24,
            "dropout": 0.1,
            "bias": True,
            "tie_embeddings": True,
            "dtype": "float32",
        },  # dropout: RNG matters
        train={
            "iters": ITERS,
            "batch_size": 2,
            "block_size": 16,
            "warmup_iters": 3,
            "eval_every": 10_000,
            "eval_batches": 1,
            "lr": 1e-2,
        },
        checkpoint={
            "every": EVERY,
            "keep_last": 2,
            "buffer_slots": 2,
            "host_buffer_mb": None,
            "flush_threads": 1,
            "fsync": True,
            "checksum": False,
        },
        corpus_folder=str(corpus),
        run_dir=str(tmp / name / "model"),
        checkpoint_dir=str(tmp / name / "ckpt"),
        resume=resume,
        seed=3,
        device="cpu",
        strategy=strategy,
        metrics_file=str(tmp / name / "metrics.jsonl"),
        result_file=str(tmp / name / "result.json"),
    )
    path = tmp / name / f"job{'_resume' if resume else ''}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(job)))
    return path


def start(job_file: Path) -> subprocess.Popen:
    log = open(job_file.with_suffix(".log"), "w")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        torchrun_command(TorchrunSettings(nproc=2), job_file),
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def finish(proc: subprocess.Popen, job_file: Path) -> dict:
    assert proc.wait(timeout=300) == 0, job_file.with_suffix(".log").read_text()[-4000:]
    return json.loads((job_file.parent / "result.json").read_text())


def flat(checkpoint: Path, rank: int) -> tuple[dict, bytes]:
    """A rank's tensors by key and the rest of its state, for bitwise comparison."""
    skeleton, tensors = split_state(load_checkpoint(checkpoint, rank=rank))
    return {k: v for k, v in tensors}, repr(skeleton).encode()


def assert_same_checkpoint(a: Path, b: Path) -> None:
    for rank in (0, 1):
        (ta, sa), (tb, sb) = flat(a, rank), flat(b, rank)
        assert sa == sb, f"rank {rank}: non-tensor state differs"
        assert ta.keys() == tb.keys() and ta, f"rank {rank}: different tensors"
        for key in ta:
            assert ta[key].dtype == tb[key].dtype and torch.equal(ta[key], tb[key]), f"rank {rank}: {key} differs"


def kill_after_a_commit(proc: subprocess.Popen, folder: Path) -> Path:
    """SIGKILL torchrun and its workers at once after a checkpoint past step 10 is committed."""
    deadline = time.monotonic() + 240
    while (latest := latest_checkpoint(folder)) is None or int(latest.name.split("_")[1]) < 2 * EVERY:
        assert proc.poll() is None, "the job ended before it could be killed"
        assert time.monotonic() < deadline, "no committed checkpoint"
        time.sleep(0.01)
    killed = signal_job(proc.pid, signal.SIGKILL)
    assert len(killed) >= 3, killed  # torchrun and two workers
    proc.wait(timeout=30)
    for _ in range(500):  # wait until the last worker is gone
        if not any(Path(f"/proc/{pid}").exists() and "Z" not in _state(pid) for pid in killed):
            break
        time.sleep(0.02)
    else:
        pytest.fail("torchrun workers outlived SIGKILL")
    return latest


def _state(pid: int) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "Z"
    return stat[stat.rindex(")") + 2]


def run_kill_resume(tmp_path: Path, strategy: str) -> None:
    corpus = tiny_corpus(tmp_path / "corpus")
    reference_job = write_job(tmp_path, "reference", corpus, strategy)
    killed_job = write_job(tmp_path, "killed", corpus, strategy)
    reference = start(reference_job)
    killed = start(killed_job)  # both at once: the two runs share nothing but the corpus
    at_kill = kill_after_a_commit(killed, tmp_path / "killed" / "ckpt")
    killed_step = int(at_kill.name.split("_")[1])
    final = latest_checkpoint(tmp_path / "killed" / "ckpt")
    assert final is not None and int(final.name.split("_")[1]) < ITERS, "killed after the last step, not mid-run"
    ref_result = finish(reference, reference_job)
    assert ref_result["world_size"] == 2 and ref_result["strategy"] == strategy
    assert sorted(p.name for p in (list_checkpoints(tmp_path / "reference" / "ckpt")[-1]).glob("*.shard")) == [
        "rank00000.shard",
        "rank00001.shard",
    ]

    resumed = finish(start(write_job(tmp_path, "killed", corpus, strategy, resume="latest")), killed_job)
    assert resumed["start_step"] >= killed_step and resumed["resumed_from"].endswith(final.name)
    assert_same_checkpoint(
        latest_checkpoint(tmp_path / "reference" / "ckpt"), latest_checkpoint(tmp_path / "killed" / "ckpt")
    )
    assert latest_checkpoint(tmp_path / "killed" / "ckpt").name == f"step_{ITERS:08d}"
    for name in ("model.safetensors", "config.json"):
        reference_file, resumed_file = (tmp_path / run / "model" / name for run in ("reference", "killed"))
        assert reference_file.read_bytes() == resumed_file.read_bytes(), name
    metrics = [json.loads(line) for line in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["step"] == ITERS and "val_loss" in metrics[-1]["metrics"]


def test_ddp_two_processes_killed_and_resumed_equal_an_uninterrupted_run(tmp_path):
    run_kill_resume(tmp_path, "ddp")
    # DDP replicas: rank 0's shard holds model and optimizer, rank 1's only its RNG and data position.
    last = latest_checkpoint(tmp_path / "reference" / "ckpt")
    assert load_checkpoint(last, rank=1)["model"] == {} and load_checkpoint(last, rank=0)["model"]

    # Loaded into a single process it would silently drop rank 1's state: refused, both layouts named.

    model = build_model(json.loads((tmp_path / "reference" / "job.json").read_text())["model"])
    settings = TrainSettings(iters=ITERS, batch_size=2, block_size=16)
    optimizer = build_optimizer(model, settings)
    with pytest.raises(ValueError, match="written by 2 process.*strategy 'ddp'.*this run has 1 with 'none'"):
        restore_checkpoint(last, model, optimizer, build_scheduler(optimizer, settings), torch.Generator(), Ranks())


@pytest.mark.slow
def test_fsdp2_two_processes_killed_and_resumed_equal_an_uninterrupted_run(tmp_path):
    run_kill_resume(tmp_path, "fsdp")
    last = latest_checkpoint(tmp_path / "reference" / "ckpt")
    shards = [load_checkpoint(last, rank=r)["model"]["wte.weight"] for r in (0, 1)]
    assert [s.shape[0] for s in shards] == [151, 150] and not torch.equal(shards[0], shards[1])


def test_torchrun_command_for_one_node_and_for_a_rendezvous():
    one = torchrun_command(TorchrunSettings(nproc=3), "job.json", python="/venv/bin/python")
    assert one == [
        "/venv/bin/python",
        "-m",
        "torch.distributed.run",
        "--nproc-per-node=3",
        "--max-restarts=0",
        "--standalone",
        "-m",
        "components.lm.worker",
        "job.json",
    ]
    many = torchrun_command(TorchrunSettings(nproc=4, nnodes=2, rdzv_endpoint="node0:29400", rdzv_id="draft"), "j")
    assert many[:3] == [sys.executable, "-m", "torch.distributed.run"] and "--standalone" not in many
    assert {"--nnodes=2", "--rdzv-backend=c10d", "--rdzv-endpoint=node0:29400", "--rdzv-id=draft"} <= set(many)


@pytest.mark.slow
def test_two_nodes_meet_at_a_rendezvous_endpoint(tmp_path):
    """Two torchrun agents on loopback, one process each, joined by launcher.nnodes=2 + an endpoint."""
    job = write_job(tmp_path, "nodes", tiny_corpus(tmp_path / "corpus"), "ddp")
    endpoint = f"127.0.0.1:{_tiny.free_port()}"
    settings = TorchrunSettings(nproc=1, nnodes=2, rdzv_endpoint=endpoint, rdzv_id="two-nodes")
    agents = [_tiny.spawn(torchrun_command(settings, job), merge_output=True) for _ in range(2)]
    outputs = [agent.communicate(timeout=300)[0] for agent in agents]
    assert [a.returncode for a in agents] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    result = json.loads((tmp_path / "nodes" / "result.json").read_text())
    assert result["world_size"] == 2 and result["final_step"] == ITERS
    last = latest_checkpoint(tmp_path / "nodes" / "ckpt")
    assert sorted(p.name for p in last.glob("*.shard")) == ["rank00000.shard", "rank00001.shard"]


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
