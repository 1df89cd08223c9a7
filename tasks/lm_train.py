"""Prefect tasks of the `lm_train` flow: prepare the corpus, train (checkpointed, resumable), evaluate, record."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from components.lm.corpus import CorpusSpec, TokenCorpus, build_corpus
from components.lm.launch import LaunchSettings
from components.lm.model import GPTConfig
from components.lm.tokenizer import end_of_text_id, load_tokenizer, tokenizer_name
from components.lm.trainer import TrainJob, evaluate_saved
from components.lm.training import TrainSettings
from mlsys.progress import Progress
from mlsys.tracking import Tracker


@task(name="lm-prepare-corpus")
def prepare_corpus(spec: CorpusSpec, cache_root: str) -> dict:
    """Tokenize the on-machine text once (cached by settings); return its folder and sizes."""
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


@task(name="lm-train", cache_policy=NO_CACHE)
def train_model(job: TrainJob, launcher: LaunchSettings, tracker: Tracker, log_every: int) -> dict:
    """Train to job.train.iters with a lazy async checkpoint every job.checkpoint.every steps, where
    `launcher` says: in this process, or on launcher.nproc x launcher.nnodes processes under torchrun.

    `job.resume='latest'` (or a checkpoint folder) restores model, optimizer, LR schedule, RNG and data
    position from the newest committed checkpoint and continues from there. Progress (rate, ETA) goes
    to the console and the Prefect log; metrics every `log_every` steps to MLflow.
    """
    progress: list[Progress] = []  # made at the first step, so that a resumed run's rate counts from there

    def log(step: int, metrics: dict) -> None:
        if not progress:
            progress.append(Progress(job.train.iters, "lm-train", every=log_every, start=step - 1))
        progress[0].update(step, metrics)
        if step % log_every == 0 or "val_loss" in metrics:
            tracker.log_metrics(metrics, step=step)

    return launcher.build().run(job, log, get_run_logger())


@task(name="lm-evaluate")
def evaluate_model(
    model: GPTConfig, train: TrainSettings, model_dir: str, corpus_folder: str, prompt: str, sample_tokens: int
) -> dict:
    """Validation loss/perplexity of the saved model and a greedy sample of text."""
    return evaluate_saved(model, model_dir, corpus_folder, train, prompt, sample_tokens)


@task(name="lm-record", cache_policy=NO_CACHE)
def record_run(tracker: Tracker, corpus: dict, trained: dict, evaluated: dict, registered_name: str) -> dict:
    """Metrics, sample, summary and the model to MLflow (registered as `registered_name`); returns
    the run's summary figures (validation perplexity before and after training among them)."""
    initial = {f"initial_{k}": v for k, v in trained["initial"].items()}  # empty for a resumed run
    if trained["initial"]:
        tracker.log_metrics(trained["initial"], step=0)  # the validation curve starts at the untrained model
    tracker.log_params({f"corpus_{k}": v for k, v in corpus.items() if k != "folder"})
    tracker.log_metrics({f"ckpt_{k}": v for k, v in trained["checkpoints"].items()})
    tracker.set_tags({"resumed_from": trained["resumed_from"], "checkpoint_dir": trained["checkpoint_dir"]})
    final = {**evaluated["metrics"], "parameters": evaluated["parameters"]}
    tracker.log_metrics(final, step=trained["final_step"])
    tracker.log_text(evaluated["sample"], "samples/greedy.txt")
    tracker.log_dict({"corpus": corpus, "train": trained, "eval": evaluated}, "summary.json")
    version = tracker.log_model_dir(trained["model_dir"], "model", registered_name=registered_name)
    tracker.set_tags({"registered_model": f"{registered_name}/{version}"})
    if initial:
        get_run_logger().info(
            "validation perplexity %.1f -> %.1f", initial["initial_val_perplexity"], final["val_perplexity"]
        )
    return {
        **evaluated["metrics"],
        **initial,
        "start_step": float(trained["start_step"]),
        "checkpoints": float(trained["checkpoints"]["count"]),
    }
