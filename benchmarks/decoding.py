"""Decoding benchmark: AR vs vanilla SD (best γ) vs PEARL (+ its two ablations), same prompts, greedy,
equal total cores, on the served target (SmolLM2's native Q4_1 weights through the integer kernel);
AR on the fp32 copy and transformers' own generate (plain and prompt lookup) beside it; the
200-request loopback load test; and the α map: the acceptance a draft of each cost would need for the
targets, with the drafts the pipeline builds (prompt lookup, the target's first layers, the target
requantized, the first layers + a trained exit adapter, the EAGLE head, trained GPTs) placed on it, the
trained ones also in PEARL runs (their in-run α).

    python -m benchmarks.decoding --quick                 # CPU, a few minutes
    python -m benchmarks.decoding --full                  # what the docs quote
    python -m benchmarks.decoding --full --device cuda    # the GPU path (fp32 targets)
    python -m benchmarks.decoding --load-test-only        # only the load test (200 valid + malformed, abandoned,
                                                          # slow clients), updating just its part of decoding.json

Options: --target smollm2_q4_native|smollm2|quantized --target-path DIR --draft prompt_lookup|auto|layerskip|
requantized|exit_adapter|eagle_head|gpt_folder --draft-path DIR --draft-layers N --threads N --frontier-drafts DIR,DIR
--frontier-layers 1,2,4,... --exit-adapters DIR,DIR|none --eagle-heads DIR,DIR|none --no-fp32-peer
Writes benchmarks/results/decoding.json + decoding.png, logs to MLflow.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from datetime import UTC, datetime
from pathlib import Path

# Before torch loads OpenMP: on a shared, oversubscribed CPU, spinning OpenMP workers made a 2-thread
# SmolLM2 step ~30x slower than a 1-thread one (7 s vs 0.24 s measured here); passive waiting fixes it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from benchmarks.common import RESULTS_DIR, _log_to_mlflow, machine_info, parse_mode, target, write_result  # noqa: E402
from components.decoding.bench import compare_methods, draft_frontier, in_run_alpha  # noqa: E402
from components.decoding.config import ModelsConfig  # noqa: E402
from components.decoding.eagle_head import META_FILE as EAGLE_META_FILE  # noqa: E402
from components.decoding.engine import build_decoder  # noqa: E402
from components.decoding.exit_adapter import META_FILE as EXIT_META_FILE  # noqa: E402
from components.decoding.hf_peers import hf_generate  # noqa: E402
from components.decoding.models import layer_skip_draft, load_draft, load_target, tiny_llama  # noqa: E402
from components.decoding.prompts import benchmark_prompts  # noqa: E402
from components.decoding.roundmodel import (  # noqa: E402
    GOAL_VS_AR,
    GOAL_VS_SD,
    best_over_gamma,
    pearl_tokens_per_s,
    requirement_map,
    scaled_draft,
    step_costs,
)
from components.decoding.summary import draft_shortfall, summarize  # noqa: E402
from components.lm.smollm2 import load_tokenizer  # noqa: E402
from components.serving.app import RequestLimits, create_app  # noqa: E402
from components.serving.loadtest import run_hostile_load  # noqa: E402
from components.serving.server import BackgroundServer, ConnectionLimits  # noqa: E402
from components.serving.service import GenerationService  # noqa: E402
from components.serving.text import ByteCodec, HFTextCodec  # noqa: E402
from mlsys.environment import PROJECT_ROOT  # noqa: E402


def _own_args(argv):
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--device", default="cpu", help="cpu | cuda")
    parser.add_argument("--target", default="smollm2_q4_native")
    parser.add_argument("--target-path", default=None)
    parser.add_argument(
        "--draft",
        default="prompt_lookup",
        help="prompt_lookup | auto | layerskip | requantized | exit_adapter | eagle_head | gpt_folder | mlflow",
    )
    parser.add_argument("--draft-path", default=None)
    parser.add_argument("--draft-layers", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None, help="total cores for every method (default: all)")
    parser.add_argument("--skip-load-test", action="store_true")
    parser.add_argument(
        "--load-test-only",
        action="store_true",
        help="run only the load test and update its figures in the existing decoding.json",
    )
    parser.add_argument(
        "--frontier-drafts",
        default="",
        help="more GPT draft folders (comma-separated) to place on the alpha-vs-cost map",
    )
    parser.add_argument(
        "--frontier-layers",
        default="1,2,4,8,16",
        help="layer-skip drafts (the target's first N layers) to place on the map; '' for none",
    )
    parser.add_argument(
        "--exit-adapters",
        default="",
        help="exit-adapter folders (draft_train's) to place on the map; default: every one under data/draft_train; "
        "'none' for none",
    )
    parser.add_argument(
        "--eagle-heads",
        default="",
        help="EAGLE-head folders (draft_train draft=eagle_head) to place on the map; default: every one under "
        "data/draft_train; 'none' for none",
    )
    parser.add_argument(
        "--prompts", type=int, default=None, help="prompts per kind (code, chat); default 1 quick, 3 full"
    )
    parser.add_argument("--max-new", type=int, default=None, help="tokens per prompt; default 24 quick, 64 full")
    parser.add_argument("--repeats", type=int, default=None, help="default 2 quick, 3 full")
    parser.add_argument("--no-fp32-peer", action="store_true", help="skip AR and transformers rows on the fp32 copy")
    return parser.parse_known_args(argv)


MODEL_ARGS = ("target", "target_path", "draft", "draft_path", "draft_layers")  # options named as ModelsConfig's fields
LOAD_TEST_TARGETS = ("load_test_errors_200_concurrent", "load_test_5xx")


def load_test(requests: int = 200, malformed: int = 60, abandoned: int = 60, slow: int = 20) -> dict:
    """200 concurrent requests through the openai client against a loopback server (tiny models),
    beside malformed, abandoned and slow clients; every client and the whole run are time-bounded."""
    model = tiny_llama(vocab_size=260, hidden=32, layers=2, dtype=torch.float32)
    decoder = build_decoder("pearl", model, layer_skip_draft(model, 1), gamma=3)
    service = GenerationService(decoder, ByteCodec(260), "tiny")
    request_limits = RequestLimits(body_timeout_s=5.0)
    connection_limits = ConnectionLimits(header_timeout_s=5.0)  # the serve flow's default is 10 s
    app = create_app(service, max_queue=requests + abandoned + 56, limits=request_limits)
    load_average = os.getloadavg()[0]
    try:
        with BackgroundServer(app, limits=connection_limits) as server:
            report = run_hostile_load(
                server.base_url,
                "tiny",
                requests=requests,
                max_tokens=8,
                malformed=malformed,
                abandoned=abandoned,
                slow=slow,
                max_body_bytes=request_limits.max_body_bytes,
                client_timeout_s=60,
                overall_timeout_s=600,
            )
        report.update(
            {
                "server_cancelled": service.counters.cancelled,
                "server_decodes_started": service.counters.requests,
                "header_timeout_s": connection_limits.header_timeout_s,
                "body_timeout_s": request_limits.body_timeout_s,
                "load_average_at_start": load_average,
            }
        )
        return report
    finally:
        decoder.close()


def load_test_targets(load: dict) -> list[dict]:
    return [
        target("load_test_errors_200_concurrent", load["errors"], 0, "<="),
        target("load_test_5xx", load["status_5xx"], 0, "<="),
        target("load_test_malformed_not_4xx", load["malformed_not_4xx"], 0, "<="),
        target("load_test_hostile_clients_unanswered", load["hostile_failures"], 0, "<="),
    ]


def load_test_only(args) -> None:
    """Rerun only the load test: replace its figures and targets in decoding.json, keep every other figure."""
    path = RESULTS_DIR / "decoding.json"
    payload = json.loads(path.read_text())
    load = load_test(200)
    load.update(
        {
            "command": "python -m benchmarks.decoding --load-test-only",
            "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "machine": machine_info("cpu"),
        }
    )
    payload["results"]["load_test"] = load
    kept = [t for t in payload["targets"] if not t["name"].startswith("load_test_")]
    payload["targets"] = kept + load_test_targets(load)
    path.write_text(json.dumps(payload, indent=2))
    if not args.no_mlflow:
        only = {
            **payload,
            "results": {"load_test": load},
            "targets": load_test_targets(load),
            "command": load["command"],
            "mode": "load-test-only",
        }
        _log_to_mlflow("decoding_load_test", only, [path], args.tracking_uri)
    for t in load_test_targets(load):
        print(f"target {t['name']}: {t['value']:.4g} {t['op']} {t['goal']} -> {'met' if t['met'] else 'NOT met'}")
    print(
        f"load test: {load['requests']} valid, {load['malformed']} malformed, {load['abandoned']} abandoned, "
        f"{load['slow']} slow; statuses {load['statuses']}; p50 {load['p50_s']:.2f} s, p99 {load['p99_s']:.2f} s"
    )
    print(f"updated the load test in {path}")


def draft_map(own, tgt, drf, draft_source: str, prompts, result: dict, threads: int) -> tuple[dict, dict]:
    """The α a draft of each cost needs for both goals, and where the benchmark's draft and the drafts
    the pipeline builds sit (their c and greedy α, measured here): prompt lookup, the target's first
    layers, the target requantized to fewer bits (native target), any --frontier-drafts."""
    requirements = requirement_map(result["costs"], GOAL_VS_AR, GOAL_VS_SD)
    drafts = {} if drf is None else {f"draft ({draft_source})": drf}
    if draft_source != "prompt_lookup":
        drafts["prompt_lookup"] = load_draft("prompt_lookup", tgt)
    for folder in filter(None, own.frontier_drafts.split(",")):
        drafts[f"gpt:{os.path.basename(folder.rstrip('/'))}"] = load_draft("gpt_folder", tgt, folder, device=own.device)
    for layers in filter(None, own.frontier_layers.split(",")):
        drafts[f"layerskip_{int(layers)}"] = load_draft("layerskip", tgt, layers=int(layers))
    if own.target == "smollm2_q4_native" and draft_source != "requantized":
        drafts["requantized_2bit"] = load_draft("requantized", tgt, bits=2)
    trained = []  # the drafts trained on the target's states: also measured in PEARL runs (in-run α)
    if own.target == "smollm2_q4_native":
        for folder in trained_folders(own.exit_adapters, EXIT_META_FILE):
            trained.append(f"exit_adapter:{folder.name}")
            drafts[trained[-1]] = load_draft("exit_adapter", tgt, str(folder))
        for folder in trained_folders(own.eagle_heads, EAGLE_META_FILE):
            trained.append(f"eagle_head:{folder.name}")
            drafts[trained[-1]] = load_draft("eagle_head", tgt, str(folder))
    sequences = [(ids, out) for (_, ids), out in zip(prompts, result["ar_outputs"])]
    frontier = draft_frontier(tgt, drafts, sequences, threads, result["costs"], GOAL_VS_AR, GOAL_VS_SD)
    for name in trained:
        frontier[name].update(in_run_alpha(tgt, drafts[name], sequences, frontier[name]["c"], threads))
        print(
            f"{name}: PEARL at gamma {frontier[name]['gamma']:.0f}: in-run alpha {frontier[name]['alpha_in_run']:.3f}, "
            f"{frontier[name]['mean_accepted_tokens']:.2f} tokens per target forward, "
            f"{frontier[name]['greedy_mismatches']:.0f} prompts differing from AR"
        )
    split = step_costs(result["costs"], split=True)
    ar_rate = 1 / step_costs(result["costs"], split=False).target(1)
    for name, point in frontier.items():  # PEARL's round model at this draft's greedy α and cost
        costs = scaled_draft(split, point["c"])
        point["pearl_model_vs_ar"] = best_over_gamma(pearl_tokens_per_s, point["alpha_greedy"], costs)[0] / ar_rate
        print(
            f"{name}: c {point['c']:.3f}, greedy alpha {point['alpha_greedy']:.3f}, PEARL model "
            f"{point['pearl_model_vs_ar']:.2f}x AR, needs {point['alpha_needed']['pearl_vs_ar']} for "
            f"{GOAL_VS_AR:g}x AR, {point['alpha_needed']['both']} for both goals"
        )
    return requirements, frontier


def trained_folders(option: str, meta_file: str) -> list[Path]:
    """The trained drafts to measure: the folders named, or every one the draft_train flow saved under data/
    (a folder holding `meta_file`)."""
    if option == "none":
        return []
    if option:
        return [Path(folder) for folder in option.split(",") if folder]
    return sorted(meta.parent for meta in (PROJECT_ROOT / "data" / "draft_train").glob(f"*/{meta_file}"))


def best_draft(frontier: dict) -> dict:
    """The draft whose round-model PEARL speed at its measured (c, greedy α) is highest, and what it lacks."""
    name = max(frontier, key=lambda n: frontier[n]["pearl_model_vs_ar"])
    point = frontier[name]
    need = point["alpha_needed"]["pearl_vs_ar"]
    return {
        "best_draft": name,
        "best_draft_alpha": point["alpha_greedy"],
        "best_draft_cost": point["c"],
        "best_draft_pearl_model_vs_ar": point["pearl_model_vs_ar"],
        "best_draft_alpha_needed_pearl_2x_ar": need,
        "best_draft_alpha_needed_both": point["alpha_needed"]["both"],
        "best_draft_meets_map": need is not None and point["alpha_greedy"] >= need,
    }


def fp32_peers(prompts, max_new: int, repeats: int, threads: int, eos, served) -> dict:
    """AR on the served target and on the fp32 copy (the engine, same threads, alternating), and
    transformers' generate on the fp32 copy: plain greedy and `prompt_lookup_num_tokens=8`."""
    fp32 = load_target("smollm2")
    rows = {
        "ar_served": lambda ids: build_decoder("ar", served).generate(ids, max_new, stop_ids=eos),
        "ar_fp32": lambda ids: build_decoder("ar", fp32).generate(ids, max_new, stop_ids=eos),
        "hf_generate_fp32": lambda ids: hf_generate(fp32, ids, max_new, eos),
        "hf_prompt_lookup_fp32": lambda ids: hf_generate(
            fp32, ids, max_new, eos, "hf_prompt_lookup", prompt_lookup_num_tokens=8
        ),
    }
    rates: dict[str, list[float]] = {name: [] for name in rows}
    outputs: dict[str, list[list[int]]] = {name: [] for name in rows}
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        rows["ar_served"](prompts[0])  # warm-up
        rows["ar_fp32"](prompts[0])
        for rep in range(repeats):
            order = list(rows)[rep % len(rows) :] + list(rows)[: rep % len(rows)]
            for name in order:
                runs = [rows[name](ids) for ids in prompts]
                rates[name].append(sum(st.new_tokens for _, st in runs) / sum(st.seconds for _, st in runs))
                outputs[name] = [tokens for tokens, _ in runs]
    finally:
        torch.set_num_threads(before)
    return {
        "tokens_per_s": {name: statistics.median(r) for name, r in rates.items()},
        "tokens_per_s_repeats": rates,
        "weight_bytes": {
            "served": served.lean.weight_bytes() if hasattr(served, "lean") else None,
            "fp32": sum(p.numel() * p.element_size() for p in fp32.parameters()),
        },
        "greedy_agreement_fp32_vs_served": _agreement(outputs["ar_fp32"], outputs["ar_served"]),
        "hf_prompt_lookup_equals_hf_generate": outputs["hf_prompt_lookup_fp32"] == outputs["hf_generate_fp32"],
    }


def _agreement(a: list[list[int]], b: list[list[int]]) -> float:
    """Share of positions where two greedy continuations agree, up to their first difference each."""
    same = total = 0
    for x, y in zip(a, b):
        n = min(len(x), len(y))
        first = next((i for i in range(n) if x[i] != y[i]), n)
        same, total = same + first, total + max(len(x), len(y))
    return same / total if total else 1.0


def plot(methods: dict, summary: dict, requirements: dict, frontier: dict):
    names = list(methods)
    fig, (ax, ax_map) = plt.subplots(1, 2, figsize=(15, 4.5), gridspec_kw={"width_ratios": [3, 2]})
    ax.bar(names, [methods[n]["tokens_per_s"] for n in names], color=["#888" if n == "ar" else "#3a7" for n in names])
    ar = methods["ar"]["tokens_per_s"]
    for bound, label, style in (
        (summary.get("leviathan_bound_sd_best_gamma"), "SD, Leviathan bound (verify = 1 step)", "--"),
        (summary.get("sd_model_vs_ar"), "SD, round model at measured costs", "-."),
        (summary.get("pearl_model_vs_ar"), "PEARL, round model at measured costs", ":"),
    ):
        if bound:
            ax.axhline(bound * ar, linestyle=style, color="k", label=f"{label} ({bound:.2f}x AR)")
    ax.set_ylabel("tokens / s (median over repeats)")
    ax.set_title("Greedy decoding, same prompts, equal total cores")
    ax.legend(fontsize=8)
    plt.setp(ax.get_xticklabels(), rotation=30, ha="right")

    curve = requirements["curve"]
    cs = [p["c"] for p in curve]
    # (PEARL >= 1.3x SD alone is not drawn: past c ~ 0.2 SD at any γ is slower than AR, so a useless
    # draft "meets" it; the JSON has it per cost)
    both = f"PEARL >= {GOAL_VS_AR:g}x AR and >= {GOAL_VS_SD:g}x SD"
    for regime, key, label, style in (
        ("measured", "pearl_vs_ar", f"PEARL >= {GOAL_VS_AR:g}x AR, this CPU", "--"),
        ("measured", "both", f"{both}, this CPU", "-"),
        ("gpu_like", "pearl_vs_ar", f"PEARL >= {GOAL_VS_AR:g}x AR, GPU-like costs", ":"),
        ("gpu_like", "both", f"{both}, GPU-like", "-."),
    ):
        alphas = [p[regime][key] if p[regime][key] is not None else float("nan") for p in curve]
        ax_map.plot(cs, alphas, style, color="k" if regime == "measured" else "#36c", label=label)
    for name, point in frontier.items():
        color = "#d62" if name.startswith("draft") else "#3a7"
        ax_map.scatter(point["c"], point["alpha_greedy"], color=color, zorder=3)
        ax_map.annotate(
            name.replace("layerskip_", "L"),
            (point["c"], point["alpha_greedy"]),
            fontsize=7,
            xytext=(3, 3),
            textcoords="offset points",
        )
    ax_map.set_xscale("log")
    ax_map.set_xlim(min(cs), max(max(cs), *(p["c"] for p in frontier.values())) * 1.1 if frontier else max(cs))
    ax_map.set_ylim(0, 1.02)
    ax_map.set_xlabel("draft cost c (draft step / target step)")
    ax_map.set_ylabel("greedy acceptance α")
    ax_map.set_title("α needed (lines) vs drafts measured (points)")
    ax_map.legend(fontsize=7, loc="center left")  # lines sit high, measured drafts low
    fig.tight_layout()
    return fig


def bench_size(full: bool, own) -> dict:
    """Prompts per kind, tokens, SD's γs and repeats of --quick / --full, with the command line's overrides."""
    if full:
        size = dict(code=3, chat=2, edit=3, max_new=64, gammas=[2, 3, 4, 6], repeats=3)
    else:
        size = dict(code=1, chat=1, edit=2, max_new=32, gammas=[2, 4], repeats=2)
    if own.prompts:
        size["code"] = size["chat"] = size["edit"] = own.prompts
    size["max_new"] = own.max_new or size["max_new"]
    size["repeats"] = own.repeats or size["repeats"]
    return size


def result_targets(summary: dict, peers: dict | None, load: dict | None) -> list[dict]:
    """The issue's goals with the measured values (`met` computed by benchmarks.common.target)."""
    targets = [
        target("pearl_speedup_vs_sd", summary["pearl_speedup_vs_sd"], GOAL_VS_SD, ">="),
        target("pearl_speedup_vs_ar", summary["pearl_speedup_vs_ar"], GOAL_VS_AR, ">="),
        target("greedy_mismatches_vs_ar", summary["greedy_mismatches"], 0, "<="),
    ]
    if peers is not None:
        targets.append(target("served_ar_speedup_vs_fp32_ar", summary["served_ar_speedup_vs_fp32_ar"], 2.5, ">="))
    if load is not None:
        targets.extend(load_test_targets(load))
    return targets


def main(argv=None) -> None:
    own, rest = _own_args(sys.argv[1:] if argv is None else argv)
    args = parse_mode(__doc__.splitlines()[0], rest)
    if own.load_test_only:
        load_test_only(args)
        return
    torch.manual_seed(0)
    threads = own.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    size = bench_size(args.full, own)
    models_cfg = ModelsConfig(**{key: getattr(own, key) for key in MODEL_ARGS})  # the flows' dataclass
    draft_source, draft_path = models_cfg.draft, models_cfg.draft_path
    trained_draft = models_cfg.draft in ("exit_adapter", "eagle_head")
    if models_cfg.draft in ("auto", "mlflow") or (trained_draft and not draft_path):
        # the same resolution as the flows (needs Prefect and MLflow)
        from tasks.serve import _resolve_draft_source  # noqa: PLC0415  (start-up cost: Prefect only for auto/mlflow)

        draft_source, draft_path = _resolve_draft_source(models_cfg, PROJECT_ROOT / "data", args.tracking_uri)
    tgt = load_target(models_cfg.target, models_cfg.target_path, models_cfg.dtype, own.device)
    drf = load_draft(draft_source, tgt, draft_path, models_cfg.draft_layers, own.device, models_cfg.draft_ngram)
    codec = HFTextCodec(load_tokenizer())
    prompts = benchmark_prompts(codec, size["code"], size["chat"], size["edit"])
    load_at_start = os.getloadavg()
    print(
        f"target={own.target} draft={draft_source} {draft_path or ''} threads={threads} device={own.device} "
        f"prompts={[k for k, _ in prompts]} max_new={size['max_new']} load={load_at_start}"
    )
    result = compare_methods(
        tgt,
        drf,
        [ids for _, ids in prompts],
        max_new_tokens=size["max_new"],
        threads=threads,
        pearl_gamma=None,
        sd_gammas=size["gammas"],
        repeats=size["repeats"],
        eos=codec.eos_ids,
    )
    summary = summarize(result)
    shortfall = draft_shortfall(result, GOAL_VS_AR, GOAL_VS_SD)
    requirements, frontier = draft_map(own, tgt, drf, draft_source, prompts, result, threads)
    best = best_draft(frontier)
    summary.update({k: v for k, v in shortfall.items() if k != "why"})
    summary.update({k: v for k, v in best.items() if isinstance(v, float)})
    for key in ("least_alpha_both_measured", "c_at_least_alpha_both_measured", "least_alpha_both_gpu_like"):
        summary[key] = requirements[key]
    peers = None
    if not own.no_fp32_peer and own.target == "smollm2_q4_native":
        peers = fp32_peers([ids for _, ids in prompts], size["max_new"], size["repeats"], threads, codec.eos_ids, tgt)
        rates = peers["tokens_per_s"]
        summary["served_ar_tokens_per_s"], summary["fp32_ar_tokens_per_s"] = rates["ar_served"], rates["ar_fp32"]
        summary["served_ar_speedup_vs_fp32_ar"] = rates["ar_served"] / rates["ar_fp32"]
        summary["hf_prompt_lookup_fp32_speedup_vs_hf_generate_fp32"] = (
            rates["hf_prompt_lookup_fp32"] / rates["hf_generate_fp32"]
        )
        summary["pearl_speedup_vs_fp32_ar"] = summary["pearl_tokens_per_s"] / rates["ar_fp32"]
    summary = {k: v for k, v in summary.items() if v is not None}
    load = None if own.skip_load_test else load_test(200)
    results = {
        "setup": {
            "target": own.target,
            "draft": draft_source,
            "draft_location": draft_path or "-",
            "device": own.device,
            "threads_every_method": threads,
            "prompts": [k for k, _ in prompts],
            "max_new_tokens": size["max_new"],
            "greedy": True,
            "repeats": size["repeats"],
            "load_average_at_start": load_at_start[0],
            "load_average_at_end": os.getloadavg()[0],
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "note": "2-core machine (see load_average_*): absolute tokens/s are noisy; compare ratios within "
            "this run. PEARL's workers split the cores that AR/SD use whole (a draft that needs no core, "
            "prompt lookup, leaves them all to the target).",
        },
        "summary": summary,
        "why": shortfall["why"],
        "best_draft": best,
        "methods": result["methods"],
        "costs": result["costs"],
        "fp32_peers": peers,
        "load_test": load,
        "alpha_needed": requirements,
        "draft_frontier": frontier,
    }
    write_result(
        "decoding",
        results,
        result_targets(summary, peers, load),
        figure=plot(result["methods"], summary, requirements, frontier),
        args=args,
        device=own.device,
    )
    print(shortfall["why"])
    print({k: best[k] for k in best})
    for key in sorted(summary):
        print(f"{key}: {summary[key]:.3f}")


if __name__ == "__main__":
    main()
