"""FedCompass vs FedAvg vs FedAsync vs FedBuff in virtual time (the discrete-event simulator).

    python -m benchmarks.federated --quick   # 1 seed, exponential + normal speeds, m = 5 (a few minutes)
    python -m benchmarks.federated --full    # 3 seeds x 2 partitions x 3 speed models x m in {5, 10}

Every method sees the same clients (data split, speeds, seeds) and the same virtual-time budget;
local work per round is the same (baselines: `local_steps` = FedCompass's Q_max). Time to target is
virtual time, so the machine's load does not change the figures (training is deterministic).
Model: the MLP on scikit-learn digits (the CNN is ~5x slower per step; 144 runs must fit in minutes).
"""

from __future__ import annotations

import json
import math
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from itertools import product

import torch
from matplotlib.figure import Figure

from benchmarks.common import RESULTS_DIR, parse_mode, target, write_result
from components.federated import task as fl_task
from components.federated.config import FedDataConfig, FedModelConfig, FedSpeedConfig, FedStrategyConfig
from components.federated.federation import build_federation, build_scheduler, build_speeds
from components.federated.schedulers import SCHEDULERS
from components.federated.simulator import LocalTrainer, Simulator, VirtualClock

METHODS = ("fedcompass", "fedavg", "fedasync", "fedbuff")
PARTITIONS = ("class", "dual_dirichlet")
SPEEDS = ("homogeneous", "normal", "exponential")
CLIENTS = (5, 10)
SEEDS = (0, 1, 2)
Q_MAX, Q_MIN = 20, 4  # FedCompass's range (paper ratio Q_min = Q_max / 5); baselines run Q_MAX steps
TIME_BUDGET = 300.0  # virtual seconds = 15 rounds of a client with the mean speed
TARGET_ACCURACY = 0.85  # digits test accuracy every method reaches within the budget in most settings
ALPHA, BUFFER_SIZE = 0.9, 3
LR, BATCH = 0.2, 32  # the MLP learns digits in a few hundred steps at 0.2
WEIGHTING = "samples"  # p_i = n_i / n for every method (FedAvg weights by samples too): fair on unequal splits


def run_one(setting: dict) -> dict:
    """One simulated run; returns its summary and its accuracy-vs-time curve."""
    torch.set_num_threads(1)
    fed = build_federation(
        FedDataConfig(partition=setting["partition"]), FedModelConfig(kind="mlp"), setting["clients"], setting["seed"]
    )
    scheduler_class = SCHEDULERS[setting["method"]]
    strategy = FedStrategyConfig(
        _target_=f"{scheduler_class.__module__}.{scheduler_class.__name__}",
        alpha=ALPHA,
        q_max=Q_MAX,
        q_min=Q_MIN,
        local_steps=Q_MAX,
        buffer_size=BUFFER_SIZE,
    )
    speed = FedSpeedConfig(_target_=f"components.federated.speeds.{setting['speed']}_step_times")
    clock = VirtualClock()
    scheduler = build_scheduler(strategy, setting["clients"], fed.num_examples, fed.initial_weights, clock, WEIGHTING)
    trainer = LocalTrainer(fl_task.local_train, fed.client_data, spec=fed.spec, lr=LR, batch_size=BATCH)
    started = time.perf_counter()
    result = Simulator(
        scheduler,
        clock,
        build_speeds(speed, setting["clients"], setting["seed"]),
        trainer,
        fed.evaluate,
        seed=setting["seed"],
        time_budget=TIME_BUDGET,
        target_accuracy=TARGET_ACCURACY,
    ).run()
    summary = dict(result.summary)
    group_sizes = [len(r.clients) for r in result.records]
    summary["max_group_size"] = float(max(group_sizes)) if group_sizes else 0.0
    summary["wall_seconds"] = time.perf_counter() - started
    curve = [(round(row["time"], 3), round(row["accuracy"], 4)) for row in result.history]
    return {**setting, "summary": summary, "curve": curve}


def thin(curve: list, points: int = 150) -> list:
    """At most `points` samples of an accuracy curve (FedAsync logs hundreds), keeping the last."""
    step = max(1, math.ceil(len(curve) / points))
    return curve[::step] + ([curve[-1]] if curve and (len(curve) - 1) % step else [])


def median(values):
    finite = [v for v in values if v is not None]
    return statistics.median(finite) if finite else math.nan


def ratio(compass: float, baseline: float) -> float:
    """FedCompass's time to target over a baseline's. A baseline that never reaches the target within
    the budget is censored at the budget, so the ratio is then an upper bound of the true one; runs
    where neither reaches it are left out (nan); FedCompass alone missing it gives inf."""
    if math.isinf(compass):
        return math.nan if math.isinf(baseline) else math.inf
    return compass / min(baseline, TIME_BUDGET)


def aggregate(runs: list[dict]) -> dict:
    """Medians over seeds and partitions, per speed model, client count and method."""
    table: dict = {}
    keys = (
        "time_to_target",
        "top_accuracy",
        "global_updates",
        "client_updates",
        "mean_staleness",
        "max_staleness",
        "idle_fraction",
        "mean_group_size",
        "max_group_size",
        "late_fraction",
    )
    for speed, m, method in product(SPEEDS, CLIENTS, METHODS):
        rows = [r["summary"] for r in runs if (r["speed"], r["clients"], r["method"]) == (speed, m, method)]
        if rows:
            entry = {k: median([row[k] for row in rows]) for k in keys}
            entry["reached_target"] = sum(math.isfinite(row["time_to_target"]) for row in rows) / len(rows)
            table.setdefault(speed, {}).setdefault(f"m{m}", {})[method] = entry
    return table


def paired_ratios(runs: list[dict], speed: str) -> dict:
    """Per (seed, partition, m) setting: FedCompass's time to target over each baseline's, and the
    top-accuracy difference; medians across settings."""
    by_setting: dict = {}
    for r in runs:
        if r["speed"] == speed:
            by_setting.setdefault((r["seed"], r["partition"], r["clients"]), {})[r["method"]] = r["summary"]
    out = {}
    for base in METHODS[1:]:
        ratios, acc_gaps = [], []
        for methods in by_setting.values():
            if "fedcompass" in methods and base in methods:
                ratios.append(ratio(methods["fedcompass"]["time_to_target"], methods[base]["time_to_target"]))
                acc_gaps.append(methods["fedcompass"]["top_accuracy"] - methods[base]["top_accuracy"])
        ratios = [x for x in ratios if not math.isnan(x)]
        out[base] = {
            "median_ttt_ratio": median(ratios) if ratios else math.nan,
            "ratios": ratios,
            "median_top_accuracy_gap": median(acc_gaps) if acc_gaps else math.nan,
        }
    return out


def figure(runs: list[dict], table: dict) -> Figure:
    fig = Figure(figsize=(12, 4.5))
    axes = fig.subplots(1, 2)
    m = max(r["clients"] for r in runs)
    shown = {"seed": 0, "partition": runs[0]["partition"], "speed": "exponential", "clients": m}
    for r in runs:
        if all(r[k] == v for k, v in shown.items()):
            axes[0].plot([t for t, _ in r["curve"]], [a for _, a in r["curve"]], label=r["method"])
    axes[0].axhline(TARGET_ACCURACY, color="grey", ls="--", lw=0.8)
    axes[0].set(
        xlabel="virtual time (s)",
        ylabel="test accuracy",
        ylim=(0, 1),
        title=f"exponential speeds, m={m}, {shown['partition']} partition, seed 0",
    )
    axes[0].legend()
    labels, width = [], 0.2
    cells = [(s, k) for s in table for k in table[s]]
    for i, method in enumerate(METHODS):
        values = [table[s][k][method]["time_to_target"] for s, k in cells]
        xs = [j + i * width for j in range(len(cells))]
        bars = axes[1].bar(xs, [v if math.isfinite(v) else TIME_BUDGET for v in values], width, label=method)
        for bar, v in zip(bars, values):
            if not math.isfinite(v):  # median run never reached the target within the budget
                bar.set_hatch("//")
                bar.set_alpha(0.35)
    labels = [f"{s}\n{k}" for s, k in cells]
    axes[1].set_xticks([j + 1.5 * width for j in range(len(cells))], labels, fontsize=7)
    axes[1].set(
        ylabel="median virtual time to target",
        title=f"time to {TARGET_ACCURACY:.0%} accuracy (lower is better; hatched: not reached in budget)",
    )
    axes[1].legend()
    fig.tight_layout()
    return fig


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    rescore = "--rescore" in argv  # recompute tables/targets from the runs in the existing JSON
    args = parse_mode(__doc__.split("\n")[0], [a for a in argv if a != "--rescore"])
    if rescore:
        return rescore_saved(args)
    if args.full:
        seeds, parts, speeds_, clients = SEEDS, PARTITIONS, SPEEDS, CLIENTS
    else:
        seeds, parts, speeds_, clients = (0,), PARTITIONS, ("normal", "exponential"), (5,)
    # Methods alternate inside each setting, so every setting's four runs are side by side.
    settings = [
        dict(seed=s, partition=p, speed=v, clients=m, method=meth)
        for s, p, v, m in product(seeds, parts, speeds_, clients)
        for meth in METHODS
    ]
    jobs = int(os.environ.get("FED_BENCH_JOBS", "2"))
    started = time.perf_counter()
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        runs = list(pool.map(run_one, settings))
    score(
        runs,
        args,
        dict(seeds=list(seeds), partitions=list(parts), speeds=list(speeds_), clients=list(clients)),
        time.perf_counter() - started,
    )


def score(runs: list[dict], args, grid: dict, wall_seconds: float) -> None:
    """Tables, paired ratios, targets, JSON + plot + MLflow from the finished runs."""
    table = aggregate(runs)
    ratios = paired_ratios(runs, "exponential")
    exp_cells = [table["exponential"][k] for k in table.get("exponential", {})]
    best_baseline_top = median([max(c[b]["top_accuracy"] for b in METHODS[1:]) for c in exp_cells])
    compass_top = median([c["fedcompass"]["top_accuracy"] for c in exp_cells])
    targets = [
        target("exp_ttt_compass_over_fedasync", ratios["fedasync"]["median_ttt_ratio"], 0.7, "<="),
        target("exp_ttt_compass_over_fedbuff", ratios["fedbuff"]["median_ttt_ratio"], 0.7, "<="),
        target("exp_ttt_compass_over_fedavg", ratios["fedavg"]["median_ttt_ratio"], 0.5, "<="),
        # "equal or better top accuracy", with one point of tolerance for evaluation noise
        target("exp_top_accuracy_compass_minus_best_baseline", compass_top - best_baseline_top, -0.01, ">="),
    ]
    results = {
        "setup": {
            "dataset": "digits (sklearn, 1437 train / 360 test)",
            "model": "MLP (64-64-10)",
            "q_max": Q_MAX,
            "q_min": Q_MIN,
            "baseline_local_steps": Q_MAX,
            "alpha": ALPHA,
            "staleness": "polynomial (u+1)^-0.5",
            "fedbuff_buffer": BUFFER_SIZE,
            "client_weighting": WEIGHTING,
            "lr": LR,
            "batch_size": BATCH,
            "lambda": 1.5,
            "beta": 0.9,
            "time_budget_virtual_s": TIME_BUDGET,
            "target_accuracy": TARGET_ACCURACY,
            **grid,
            "ttt_ratio": "per setting FedCompass / baseline, baseline censored at the budget "
            "when it never reaches the target (then an upper bound); median over settings",
            "speed_mean_s_per_step": 1.0,
            "exponential_floor": "0.1 x mean",
            "note": "virtual-time figures are deterministic; wall_seconds is noisy (shared 2-core machine)",
        },
        "table_medians": table,
        "exponential_paired": ratios,
        "runs": [{k: v for k, v in r.items() if k != "curve"} for r in runs],
        "curves_seed0": {
            f"{r['method']}|{r['partition']}|{r['speed']}|m{r['clients']}": thin(r["curve"])
            for r in runs
            if r["seed"] == 0
        },
        "wall_seconds_total": wall_seconds,
    }
    write_result("federated", json_safe(results), targets, figure=figure(runs, table), args=args)


def json_safe(obj):
    """inf / nan (a target never reached) become null so the file is strict JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def rescore_saved(args) -> None:
    """Rebuild the runs (summaries + seed-0 curves) from benchmarks/results/federated.json and score again."""
    saved = json.loads((RESULTS_DIR / "federated.json").read_text())
    res = saved["results"]
    curves = res.get("curves_seed0") or {
        k.replace("|m=", "|m").rsplit("|seed=", 1)[0]: v
        for k, v in res.get("curves", {}).items()
        if k.endswith("|seed=0")
    }
    runs = []
    for r in res["runs"]:
        r = dict(r)
        r["summary"] = {k: (math.inf if v is None else v) for k, v in r["summary"].items()}
        r["curve"] = curves.get(f"{r['method']}|{r['partition']}|{r['speed']}|m{r['clients']}", [])
        runs.append(r)
    args.full = saved["mode"] == "full"
    grid = {k: res["setup"][k] for k in ("seeds", "partitions", "speeds", "clients")}
    score(runs, args, grid, res["wall_seconds_total"])


if __name__ == "__main__":
    main()
