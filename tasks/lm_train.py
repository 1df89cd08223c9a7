"""Prefect tasks of the `lm_train` flow: prepare the corpus, train (checkpointed, resumable), evaluate."""

from __future__ import annotations

import collections
import contextlib
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task

from mlsys.environment import PROJECT_ROOT
from mlsys.progress import Progress
from mlsys.tracking import Tracker


@task(name="lm-prepare-corpus")
def prepare_corpus(corpus_cfg: Any, cache_root: str) -> dict:
    """Tokenize the on-machine text once (cached by settings); return its folder and sizes."""
    from components.lm.corpus import CorpusSpec, TokenCorpus, build_corpus
    from components.lm.tokenizer import end_of_text_id, load_tokenizer, tokenizer_name

    spec = CorpusSpec(**asdict(corpus_cfg))
    tokenizer = load_tokenizer()
    folder = build_corpus(spec, Path(cache_root), tokenizer, tokenizer_name(), end_of_text_id(tokenizer))
    corpus = TokenCorpus(folder)
    info = {
        "folder": str(folder),
        "train_tokens": corpus.num_tokens("train"),
        "val_tokens": corpus.num_tokens("val"),
        "documents": sum(corpus.meta["documents"].values()),
    }
    get_run_logger().info("corpus %s: %d train / %d val tokens", folder, info["train_tokens"], info["val_tokens"])
    return info


@task(name="lm-train")
def train_model(cfg: Any, corpus_folder: str, run_dir: str, checkpoint_dir: str, tracker: Tracker) -> dict:
    """Train to cfg.train.iters with a lazy async checkpoint every cfg.checkpoint.every steps, in this
    process (launcher=local) or on launcher.nproc x launcher.nnodes processes started by torchrun.

    `cfg.resume='latest'` (or a checkpoint folder) restores model, optimizer, LR schedule, RNG and data
    position from the newest committed checkpoint and continues from there.
    """
    from components.lm.trainer import (  # imports torch: only when a task runs
        TrainJob,
        run_training,
    )

    logger = get_run_logger()
    launcher = cfg.launcher
    job = TrainJob(
        model=asdict(cfg.model),
        train=asdict(cfg.train),
        checkpoint=asdict(cfg.checkpoint),
        corpus_folder=corpus_folder,
        run_dir=run_dir,
        checkpoint_dir=checkpoint_dir,
        resume=cfg.resume,
        seed=cfg.seed,
        device=cfg.torch_device() if launcher.kind == "local" else cfg.device,
        strategy="none" if launcher.kind == "local" else launcher.strategy,
    )

    progress: list[Progress] = []  # made at the first step, so that a resumed run's rate counts from there

    def log(step: int, metrics: dict) -> None:
        if not progress:
            progress.append(Progress(cfg.train.iters, "lm-train", every=cfg.log_every, start=step - 1))
        progress[0].update(step, metrics)  # console + Prefect logs, with rate and ETA
        if step % cfg.log_every == 0 or "val_loss" in metrics:
            tracker.log_metrics(metrics, step=step)

    if launcher.kind == "local":
        return run_training(job, on_metrics=log, logger=logger)
    return _train_under_torchrun(job, launcher, Path(run_dir).parent / f"{Path(run_dir).name}.launch", log, logger)


def _train_under_torchrun(job: Any, launcher: Any, launch_dir: Path, log, logger) -> dict:
    """Start torchrun, stream its output to the Prefect log, tail rank 0's metrics into MLflow."""
    from components.lm.distributed import TorchrunSettings, process_tree, torchrun_command

    if launch_dir.exists():
        shutil.rmtree(launch_dir)  # the previous launch's job, metrics and result: this run writes its own
    launch_dir.mkdir(parents=True)
    job.metrics_file, job.result_file = str(launch_dir / "metrics.jsonl"), str(launch_dir / "result.json")
    job_file = launch_dir / "job.json"
    job_file.write_text(json.dumps(asdict(job), indent=1))
    settings = TorchrunSettings(
        nproc=launcher.nproc,
        nnodes=launcher.nnodes,
        rdzv_endpoint=launcher.rdzv_endpoint,
        rdzv_id=launcher.rdzv_id or Path(job.run_dir).name,
    )
    command = torchrun_command(settings, job_file)
    logger.info("starting %s", " ".join(command))
    if launcher.nnodes > 1:
        logger.info(
            "on each other node (this work_dir on shared storage, the project at the same path) run: "
            "cd %s && PYTHONPATH=%s %s",
            PROJECT_ROOT,
            PROJECT_ROOT,
            " ".join(command),
        )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen(
        command,
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
        start_new_session=True,
    )
    tail: collections.deque = collections.deque(maxlen=40)

    def stream() -> None:
        for line in proc.stdout:
            tail.append(line.rstrip())
            logger.info("%s", line.rstrip())

    reader = threading.Thread(target=stream, name="torchrun-log", daemon=True)
    reader.start()
    metrics = MetricsTail(Path(job.metrics_file))
    try:
        while proc.poll() is None:
            metrics.forward(log)
            time.sleep(0.25)
        reader.join(timeout=10)
        metrics.forward(log)
    finally:
        if proc.poll() is None:  # the flow was cancelled or failed: stop every rank
            workers = process_tree(proc.pid)  # before torchrun exits and its workers lose their parent
            proc.terminate()  # torchrun forwards SIGTERM to its workers
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
            for pid in workers:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
    result_file = Path(job.result_file)
    if proc.returncode != 0 or not result_file.exists():
        missing = "" if result_file.exists() else " without a result"
        raise RuntimeError(
            f"torchrun ({launcher.nproc} x {launcher.nnodes} processes) exited with "
            f"{proc.returncode}{missing}; its last lines:\n" + "\n".join(tail)
        )
    return json.loads(result_file.read_text())


class MetricsTail:
    """Reads the JSON lines rank 0 appends, complete lines only."""

    def __init__(self, path: Path):
        self.path, self.offset, self.partial = path, 0, ""

    def forward(self, log) -> None:
        if not self.path.exists():
            return
        with open(self.path, encoding="utf-8") as fh:
            fh.seek(self.offset)
            chunk = fh.read()
            self.offset = fh.tell()
        lines = (self.partial + chunk).split("\n")
        self.partial = lines.pop()
        for line in lines:
            if line.strip():
                record = json.loads(line)
                log(int(record["step"]), record["metrics"])


@task(name="lm-evaluate")
def evaluate_model(cfg: Any, model_dir: str, corpus_folder: str) -> dict:
    """Validation loss/perplexity of the saved model and a greedy sample of text."""
    import torch

    from components.lm.corpus import TokenCorpus
    from components.lm.model import GPT
    from components.lm.tokenizer import load_tokenizer
    from components.lm.training import TrainSettings, evaluate

    settings = TrainSettings(**asdict(cfg.train))
    if cfg.model.kind == "gpt":
        model = GPT.from_folder(model_dir)
    else:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    metrics = evaluate(model, TokenCorpus(corpus_folder), settings)
    tokenizer = load_tokenizer()
    prompt_ids = torch.tensor([tokenizer.encode(cfg.sample_prompt).ids])
    with torch.no_grad():
        if isinstance(model, GPT):
            out = model.generate(prompt_ids, cfg.sample_tokens, temperature=0.0)
        else:
            out = model.generate(prompt_ids, max_new_tokens=cfg.sample_tokens, do_sample=False)
    sample = tokenizer.decode(out[0].tolist())
    return {"metrics": metrics, "sample": sample, "parameters": sum(p.numel() for p in model.parameters())}
