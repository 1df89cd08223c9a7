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
from typing import Any, Optional

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from mlsys.tracking import Tracker


@dataclass
class ServingModels:
    target: Any
    draft: Any
    codec: Any
    served_name: str
    target_source: str
    draft_source: str  # what `draft=auto` resolved to
    draft_location: str


def _resolve_draft_source(models_cfg: Any, work_dir: Path, tracking_uri: Optional[str]) -> tuple[str, Optional[str]]:
    """`auto`: the trained draft folder, else the registered MLflow model, else a layer-skip draft."""
    source, path = models_cfg.draft, models_cfg.draft_path
    if source == "mlflow":
        from mlsys.tracking import load_registered_model_dir

        return "gpt_folder", str(load_registered_model_dir(models_cfg.draft_registered_name, tracking_uri))
    if source != "auto":
        return source, path
    folder = work_dir / "lm_train" / "draft"
    if (folder / "config.json").exists() and (folder / "model.safetensors").exists():
        return "gpt_folder", str(folder)
    try:
        from mlsys.tracking import load_registered_model_dir

        return "gpt_folder", str(load_registered_model_dir(models_cfg.draft_registered_name, tracking_uri))
    except Exception:  # no trained draft anywhere yet: self-speculative fallback
        return "layerskip", None


@task(name="serve-resolve-models", cache_policy=NO_CACHE)
def resolve_models(
    models_cfg: Any, work_dir: str, tracking_uri: Optional[str], device: str, need_draft: bool = True
) -> ServingModels:
    """Load the target (SmolLM2 / quantized / folder / tiny random), the draft, and the text codec."""
    from components.decoding.models import load_draft, load_target
    from components.serving.text import ByteCodec, HFTextCodec

    logger = get_run_logger()
    target_path = models_cfg.target_path
    if target_path is None and models_cfg.target_registered_name:
        from mlsys.tracking import load_registered_model_dir

        target_path = str(load_registered_model_dir(models_cfg.target_registered_name, tracking_uri))
        logger.info("target %s from MLflow model %s", target_path, models_cfg.target_registered_name)
    target = load_target(models_cfg.target, target_path, models_cfg.dtype, device)
    draft_source, draft_path = ("none", None)
    if need_draft:
        draft_source, draft_path = _resolve_draft_source(models_cfg, Path(work_dir), tracking_uri)
    draft = load_draft(draft_source, target, draft_path, models_cfg.draft_layers, device)
    if draft is not None and getattr(draft.config, "vocab_size", None) != target.config.vocab_size:
        raise ValueError(
            f"draft vocabulary {draft.config.vocab_size} != target vocabulary "
            f"{target.config.vocab_size}: the draft must share the target's tokenizer"
        )
    if models_cfg.target == "tiny_random":
        codec = ByteCodec(target.config.vocab_size)
    else:
        from components.lm.smollm2 import load_tokenizer

        codec = HFTextCodec(load_tokenizer())
    where = draft_path or (f"first {models_cfg.draft_layers} target layers" if draft_source == "layerskip" else "-")
    logger.info("target=%s draft=%s (%s)", models_cfg.target, draft_source, where)
    return ServingModels(target, draft, codec, models_cfg.served_name, models_cfg.target, draft_source, where)


def thread_budget(decoding_cfg: Any) -> int:
    import torch

    return decoding_cfg.threads or torch.get_num_threads()


@task(name="serve-warm-up", cache_policy=NO_CACHE)
def warm_up(models: ServingModels, decoding_cfg: Any) -> dict:
    """Measure the draft/target cost ratio c, set γ from it unless configured, build the decoder."""
    import torch

    from components.decoding.engine import build_decoder, measure_cost_ratio
    from components.decoding.workers import split_threads

    logger = get_run_logger()
    threads = thread_budget(decoding_cfg)
    torch.set_num_threads(threads)
    prompt = models.codec.chat_prompt([{"role": "user", "content": "Hello"}])
    info: dict[str, float] = {"threads": float(threads)}
    gamma = decoding_cfg.gamma
    if models.draft is not None and decoding_cfg.method != "ar":
        ratio = measure_cost_ratio(models.target, models.draft, prompt, steps=4)
        info.update({k: float(v) for k, v in ratio.items()})
        gamma = gamma or min(decoding_cfg.max_gamma, int(ratio["gamma"]))
    gamma = gamma or 1
    draft_threads, target_threads = split_threads(threads, decoding_cfg.draft_share)
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
    models: ServingModels, decoder: Any, cfg: Any, tracker: Tracker, stop: Optional[threading.Event] = None
) -> dict:
    """Serve the OpenAI-compatible API on cfg.host:cfg.port until `stop` is set (SIGTERM/SIGINT) or
    duration_s has passed, then drain: in-flight requests get cfg.drain_s to finish.

    Right after start it checks itself through the official `openai` client (and fires the
    configured loopback load), so a deployment that cannot answer fails at once, not at first use.
    """
    from components.serving.app import RequestLimits, create_app
    from components.serving.loadtest import run_load
    from components.serving.server import BackgroundServer, ConnectionLimits
    from components.serving.service import GenerationService

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
        limits=RequestLimits(max_body_bytes=cfg.max_body_bytes, body_timeout_s=cfg.body_timeout_s),
    )
    limits = ConnectionLimits(
        max_connections=cfg.max_connections,
        header_timeout_s=cfg.header_timeout_s,
        keep_alive_s=cfg.keep_alive_s,
        drain_s=cfg.drain_s,
    )
    server = BackgroundServer(app, cfg.host, cfg.port, log_level="warning", limits=limits).start()
    try:
        logger.info("serving %s with %s at %s", models.served_name, decoder.method, server.base_url)
        tracker.set_tags({"endpoint": server.base_url, "served_model": models.served_name})
        if cfg.smoke_test:
            from openai import OpenAI

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
                cfg.drain_s,
            )
        server.stop()
    metrics.update({f"served_{k}": float(v) for k, v in service.counters.as_dict().items()})
    return metrics


@task(name="decode-benchmark", cache_policy=NO_CACHE)
def benchmark_decoding(models: ServingModels, bench_cfg: Any, threads: int) -> dict:
    """AR, SD at each γ, PEARL, the ablations, HF assisted generation: side by side (greedy)."""
    from components.decoding.bench import compare_methods
    from components.decoding.prompts import benchmark_prompts

    logger = get_run_logger()
    prompts = [ids for _, ids in benchmark_prompts(models.codec, bench_cfg.code_prompts, bench_cfg.chat_prompts)]
    return compare_methods(
        models.target,
        models.draft,
        prompts,
        max_new_tokens=bench_cfg.max_new_tokens,
        threads=threads,
        pearl_gamma=bench_cfg.pearl_gamma,
        sd_gammas=list(bench_cfg.sd_gammas),
        repeats=bench_cfg.repeats,
        eos=models.codec.eos_ids,
        hf_assisted=bench_cfg.hf_assisted,
        log=logger.info,
    )
