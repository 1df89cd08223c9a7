"""Prefect tasks of the `serve` and `decode_bench` flows: resolve models, warm up, serve, measure.

Models are Python objects handed between tasks on the local runner (they hold shared weights and
a worker pair; they are not meant to travel to Dask workers), so every task here skips Prefect's
input hashing (NO_CACHE).
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import torch
from openai import OpenAI
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from components.decoding.bench import compare_methods
from components.decoding.config import BenchConfig, DecodingConfig, ModelsConfig
from components.decoding.engine import Decoder, build_decoder, measure_cost_ratio
from components.decoding.models import load_draft, load_target
from components.decoding.prompts import benchmark_prompts
from components.decoding.roundmodel import GOAL_VS_AR, GOAL_VS_SD, requirement_map
from components.decoding.summary import draft_shortfall, summarize
from components.decoding.workers import split_threads
from components.lm.smollm2 import load_tokenizer
from components.serving.app import create_app
from components.serving.loadtest import run_load
from components.serving.server import BackgroundServer
from components.serving.service import GenerationService
from components.serving.text import ByteCodec, HFTextCodec
from mlsys.tracking import Tracker, load_registered_model_dir

if TYPE_CHECKING:  # the flow module imports these tasks: its config class is only a type here
    from flows.serve import ServeConfig


@dataclass
class ServingModels:
    target: Any  # a transformers causal LM or a components.decoding CausalLM (native Q4_1, ...)
    draft: Any  # the same kinds, a PromptLookupDraft, a GPT, or None
    codec: HFTextCodec | ByteCodec
    served_name: str
    target_source: str
    draft_source: str  # what `draft=auto` resolved to
    draft_location: str


def _resolve_draft_source(
    models_cfg: ModelsConfig, work_dir: Path, tracking_uri: Optional[str]
) -> tuple[str, Optional[str]]:
    """`auto`: the trained draft folder, else the registered MLflow model (`@serving`), else prompt lookup;
    `exit_adapter` / `eagle_head` without a path: the draft_train flow's folder, else its registered model
    (`@serving`)."""
    source, path = models_cfg.draft, models_cfg.draft_path
    if source == "mlflow":
        return "gpt_folder", str(load_registered_model_dir(models_cfg.draft_registered_name, tracking_uri))
    registered = {
        "exit_adapter": models_cfg.draft_adapter_registered_name,
        "eagle_head": models_cfg.draft_eagle_registered_name,
    }
    if source in registered and not path:  # the draft_train flow's output, else its registered model
        folder = work_dir / "draft_train" / source
        if folder.is_dir():
            return source, str(folder)
        return source, str(load_registered_model_dir(registered[source], tracking_uri))
    if source != "auto":
        return source, path
    folder = work_dir / "lm_train" / "draft"
    if (folder / "config.json").exists() and (folder / "model.safetensors").exists():
        return "gpt_folder", str(folder)
    try:
        return "gpt_folder", str(load_registered_model_dir(models_cfg.draft_registered_name, tracking_uri))
    except Exception:  # no trained draft anywhere yet: n-gram copy from the context (no weights, ~no cost)
        return "prompt_lookup", None


@task(name="serve-resolve-models", cache_policy=NO_CACHE)
def resolve_models(
    models_cfg: ModelsConfig, work_dir: str, tracking_uri: Optional[str], device: str, need_draft: bool = True
) -> ServingModels:
    """Load the target (native Q4_1 SmolLM2 / fp32 copy / quantized / folder / tiny), the draft, the codec."""
    logger = get_run_logger()
    target_path = models_cfg.target_path
    if target_path is None and models_cfg.target_registered_name:
        target_path = str(load_registered_model_dir(models_cfg.target_registered_name, tracking_uri))
        logger.info("target %s from MLflow model %s", target_path, models_cfg.target_registered_name)
    target = load_target(models_cfg.target, target_path, models_cfg.dtype, device)
    draft_source, draft_path = ("none", None)
    if need_draft:
        draft_source, draft_path = _resolve_draft_source(models_cfg, Path(work_dir), tracking_uri)
    draft = load_draft(
        draft_source,
        target,
        draft_path,
        models_cfg.draft_layers,
        device,
        ngram=models_cfg.draft_ngram,
        bits=models_cfg.draft_bits,
    )
    vocab = _vocab_size(target)
    if draft is not None and _vocab_size(draft) != vocab:
        raise ValueError(
            f"draft vocabulary {_vocab_size(draft)} != target vocabulary {vocab}: "
            "the draft must share the target's tokenizer"
        )
    codec = ByteCodec(vocab) if models_cfg.target == "tiny_random" else HFTextCodec(load_tokenizer())
    where = draft_path or {
        "layerskip": f"first {models_cfg.draft_layers} target layers",
        "prompt_lookup": f"n-grams up to {models_cfg.draft_ngram} from the context",
        "requantized": f"the target at {models_cfg.draft_bits} bits",
    }.get(draft_source, "-")
    logger.info("target=%s draft=%s (%s)", models_cfg.target, draft_source, where)
    return ServingModels(target, draft, codec, models_cfg.served_name, models_cfg.target, draft_source, where)


def _vocab_size(model) -> int:
    """The vocabulary of a transformers model, the project's GPT or a decoding CausalLM."""
    config = getattr(model, "config", None)
    return int(config.vocab_size) if config is not None else int(model.vocab_size)


@task(name="serve-warm-up", cache_policy=NO_CACHE)
def warm_up(models: ServingModels, decoding_cfg: DecodingConfig) -> dict:
    """Measure the draft/target cost ratio c, set γ from it unless configured, build the decoder."""
    logger = get_run_logger()
    threads = decoding_cfg.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    prompt = models.codec.chat_prompt([{"role": "user", "content": "Hello"}])
    info: dict[str, float] = {"threads": float(threads)}
    gamma = decoding_cfg.gamma
    if models.draft is not None and decoding_cfg.method != "ar":
        ratio = measure_cost_ratio(models.target, models.draft, prompt, steps=4)
        info.update({k: float(v) for k, v in ratio.items()})
        gamma = gamma or min(decoding_cfg.max_gamma, int(ratio["gamma"]))
    gamma = gamma or 1
    draft_threads, target_threads = split_threads(threads, decoding_cfg.draft_share, models.draft)
    decoder = build_decoder(
        decoding_cfg.method,
        models.target,
        models.draft,
        gamma=gamma,
        parallel=decoding_cfg.parallel,
        draft_threads=draft_threads,
        target_threads=target_threads,
    )
    start = time.perf_counter()
    _, stats = decoder.generate(prompt, 8, stop_ids=models.codec.eos_ids)
    info.update(
        {
            "gamma": float(gamma),
            "warmup_seconds": time.perf_counter() - start,
            "warmup_tokens_per_s": stats.tokens_per_second,
        }
    )
    logger.info("decoder %s ready: gamma=%d, c=%.2f", decoder.method, gamma, info.get("cost_ratio", 0.0))
    return {"decoder": decoder, "info": info}


@task(name="serve-endpoint", cache_policy=NO_CACHE)
def serve_endpoint(
    models: ServingModels, decoder: Decoder, cfg: ServeConfig, tracker: Tracker, stop: Optional[threading.Event] = None
) -> dict:
    """Serve the OpenAI-compatible API on cfg.host:cfg.port until `stop` is set (SIGTERM/SIGINT) or
    duration_s has passed, then drain: in-flight requests get cfg.connections.drain_s to finish.

    Right after start it checks itself through the official `openai` client (and fires the
    configured loopback load), so a deployment that cannot answer fails at once, not at first use.
    """
    logger = get_run_logger()
    stop = stop or threading.Event()
    metrics: dict[str, float] = {}
    if stop.is_set():
        logger.info("stop requested before serving started: not serving")
        return metrics
    api_key = os.environ.get(cfg.api_key_env) if cfg.api_key_env else None
    service = GenerationService(decoder, models.codec, models.served_name)
    app = create_app(
        service,
        api_key=api_key,
        max_queue=cfg.max_queue,
        default_max_tokens=cfg.default_max_tokens,
        limits=cfg.requests,
    )
    server = BackgroundServer(app, cfg.host, cfg.port, log_level="warning", limits=cfg.connections).start()
    try:
        logger.info("serving %s with %s at %s", models.served_name, decoder.method, server.base_url)
        tracker.set_tags({"endpoint": server.base_url, "served_model": models.served_name})
        if cfg.smoke_test:
            client = OpenAI(base_url=server.base_url, api_key=api_key or "none", max_retries=0, timeout=300)
            reply = client.chat.completions.create(
                model=models.served_name,
                messages=[{"role": "user", "content": cfg.smoke_prompt}],
                max_tokens=cfg.smoke_max_tokens,
                temperature=0,
            )
            tracker.log_text(reply.choices[0].message.content or "", "smoke/reply.txt")
            metrics["smoke_completion_tokens"] = float(reply.usage.completion_tokens)
        if cfg.load_test_requests > 0:
            report = run_load(
                server.base_url, models.served_name, cfg.load_test_requests, cfg.load_test_max_tokens, api_key
            )
            tracker.log_dict(report, "load_test.json")
            metrics.update(
                {
                    "load_errors": float(report["errors"]),
                    "load_p50_s": report["p50_s"],
                    "load_p99_s": report["p99_s"],
                    "load_requests_per_s": report["requests_per_s"],
                }
            )
        deadline = None if cfg.duration_s is None else time.monotonic() + cfg.duration_s
        last_log = time.monotonic()
        while server.thread.is_alive() and not stop.is_set() and (deadline is None or time.monotonic() < deadline):
            time.sleep(0.2)
            if time.monotonic() - last_log > cfg.metrics_every_s:  # long-running: counters to MLflow
                tracker.log_metrics(
                    {f"served_{k}": v for k, v in service.counters.as_dict().items()}, step=service.counters.requests
                )
                last_log = time.monotonic()
    finally:
        if stop.is_set():
            logger.info(
                "stop requested: draining %d in-flight requests for up to %.0f s",
                app.state.queue_state["admitted"],
                cfg.connections.drain_s,
            )
        server.stop()
    metrics.update({f"served_{k}": float(v) for k, v in service.counters.as_dict().items()})
    return metrics


@task(name="decode-benchmark", cache_policy=NO_CACHE)
def benchmark_decoding(models: ServingModels, bench_cfg: BenchConfig, threads: int) -> dict:
    """AR, SD at each γ, PEARL, the ablations, HF assisted generation: side by side (greedy)."""
    logger = get_run_logger()
    counts = (bench_cfg.code_prompts, bench_cfg.chat_prompts, bench_cfg.edit_prompts)
    prompts = [ids for _, ids in benchmark_prompts(models.codec, *counts)]
    return compare_methods(
        models.target,
        models.draft,
        prompts,
        max_new_tokens=bench_cfg.max_new_tokens,
        threads=threads,
        pearl_gamma=bench_cfg.pearl_gamma,
        sd_gammas=list(bench_cfg.sd_gammas),
        max_gamma=bench_cfg.max_gamma,
        repeats=bench_cfg.repeats,
        eos=models.codec.eos_ids,
        hf_assisted=bench_cfg.hf_assisted,
        cost_rounds=bench_cfg.cost_rounds,
        log=logger.info,
    )


@task(name="decode-summary", cache_policy=NO_CACHE)
def summarize_decoding(result: dict, tracker: Tracker) -> dict[str, float]:
    """Speedups, α, the round models and the α map (what a draft of each cost would need) to MLflow;
    where PEARL misses the goals, the summary says by how much the draft's α falls short."""
    summary = summarize(result)
    if "draft_step_s" in result["costs"]:
        alpha_map = requirement_map(result["costs"], GOAL_VS_AR, GOAL_VS_SD)
        tracker.log_dict(alpha_map, "alpha_map.json")
        summary.update({k: v for k, v in alpha_map.items() if k.startswith("least_alpha") and v is not None})
        shortfall = draft_shortfall(result, GOAL_VS_AR, GOAL_VS_SD)
        summary.update({k: v for k, v in shortfall.items() if isinstance(v, float)})
        tracker.log_text(shortfall["why"], "why.txt")
        get_run_logger().info("%s", shortfall["why"])
    for i, name in enumerate(result["methods"]):
        tracker.log_metrics({"tokens_per_s": result["methods"][name]["tokens_per_s"]}, step=i)
    tracker.log_dict(result, "decode_bench.json")
    return summary
