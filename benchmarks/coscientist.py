"""Co-scientist benchmark: how well the Elo tournament ranks, what Proximity removes, what it costs,
and how wall time scales with parallel workers against a remote LLM.

- Ranking quality: a synthetic research task with HIDDEN TRUE QUALITY (components/coscientist/
  synthetic.py: a hypothesis picks one option per slot, its quality is a hidden sum) and a judge
  that picks the truly better hypothesis but is WRONG 20% of the time (also in debates). A fixed
  pool of 12 hypotheses (generation and review, then ranking only), so tau measures the tournament
  and nothing else. Tuning and evaluation are separate:
    * tuning: the schedule candidates (debate turns, which pairs debate and when, how strongly the
      top is prioritised) at the moderate budget on TUNING_SEEDS; the rule in `select_schedule`
      picks one, and the JSON says whether it is the configured default (components/coscientist/elo.py);
    * evaluation: Kendall tau between the final Elo order and the true quality on HELDOUT_SEEDS
      (disjoint, never used for a choice) vs the budget, for the configured schedule and the previous
      default, plus fixed K = 32 and single-turn comparisons only at the moderate budget; mean, std,
      95% interval, the fraction of seeds reaching 0.8, and whether the true best hypothesis ends
      first (top-1).
- Duplicates: the full loop (generate / review / rank / evolve / meta-review) where Generation
  restates an existing hypothesis 30% of the time; duplicate rate among the hypotheses that stay in
  the tournament, without and with Proximity (MiniLM and TF-IDF), and its false merges.
- Parallel workers: a fake OpenAI-compatible server on 127.0.0.1 that sleeps `latency` per request
  (a remote model's round trip) answers through the project's `openai` backend over HTTP; wall
  time of the same budget with 1, 2, 4, 8 workers (supervisor.max_parallel), alternating, medians;
  once through the component's thread pool and once through the real flow (Prefect task runner).
- One run of the flow with the embedded SmolLM2-135M on a real goal; its report is saved beside
  the JSON (coscientist_embedded_report.md).
The machine is shared with other engineers' jobs: timings are noisy; ratios are what to read.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import tempfile
import threading
import time
from dataclasses import asdict, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the Agg backend)
from mlflow.tracking import MlflowClient  # noqa: E402
from scipy.stats import kendalltau  # noqa: E402
from scipy.stats import t as student_t  # noqa: E402

from benchmarks.common import RESULTS_DIR, parse_mode, target, write_result  # noqa: E402
from components.coscientist.agents import AgentSuite  # noqa: E402
from components.coscientist.elo import EloConfig  # noqa: E402
from components.coscientist.proximity import Proximity, ProximityConfig  # noqa: E402
from components.coscientist.state import TournamentState  # noqa: E402
from components.coscientist.supervisor import Budget, Supervisor, SupervisorConfig, WorkWeights  # noqa: E402
from components.coscientist.synthetic import SyntheticLLM, SyntheticScience  # noqa: E402
from components.llm.openai_compat import OpenAICompatibleLLM  # noqa: E402
from mlsys.flow import compose, run  # noqa: E402
from mlsys.tracking import default_tracking_uri  # noqa: E402

GOAL = "Find the catalyst system that maximises the yield of the reaction."
POOL = 12  # hypotheses in the ranking experiment
MODERATE_BUDGET = POOL * 20  # "moderate budget": 240 calls for 12 hypotheses (incl. their generation and review)
NOISE = 0.2  # the judge is wrong on 20% of verdicts
TAU_GOAL = 0.8
# Every schedule choice is made on TUNING_SEEDS; the reported tau comes from HELDOUT_SEEDS only.
TUNING_SEEDS = {"quick": range(0, 10), "full": range(0, 30)}
HELDOUT_SEEDS = {"quick": range(1000, 1012), "full": range(1000, 1040)}
# The tournament runs time nothing: their SQLite state goes to tmpfs where there is one, so the
# per-commit fsync (synchronous=FULL) does not dominate their wall time (about 4x here).
SCRATCH = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
RANK_ONLY = SupervisorConfig(
    max_parallel=1, initial_hypotheses=POOL, weights=WorkWeights(generate=0, rank=1, evolve=0, meta_review=0)
)
PREVIOUS_DEFAULT = EloConfig(top_k=4, debate_min_matches=2, debate_turns=3, w_top=1.0)  # before held-out evaluation


def schedule_candidates() -> dict[str, EloConfig]:
    """The schedules tuning chooses among: the configured one, each of its one-step neighbours in the
    four settings (debate turns, which pairs debate, top priority, matches before a debate), the
    previous default, and dropping the top priority altogether. K schedule as configured."""
    configured = EloConfig()
    steps = {"debate_turns": (3,), "top_k": (4,), "w_top": (1.0, 0.0), "debate_min_matches": (2,)}
    grid = [configured] + [replace(configured, **{key: v}) for key, values in steps.items() for v in values]
    grid.append(PREVIOUS_DEFAULT)
    return {f"turns{e.debate_turns}_top{e.top_k}_wtop{e.w_top}_dmin{e.debate_min_matches}": e for e in grid}


def keeps_paper_priorities(elo: EloConfig) -> bool:
    """Top-ranked pairs are debated and top-ranked hypotheses are prioritised for matches (the paper)."""
    return elo.top_k >= 2 and elo.w_top > 0


def select_schedule(candidates: dict[str, dict]) -> str:
    """The rule: the highest mean tau on the tuning seeds among the candidates that keep the paper's
    priorities. (Dropping the top priority can raise whole-order tau but loses the best hypothesis
    more often: the JSON shows the top-1 rate of every candidate.)"""
    eligible = [name for name, row in candidates.items() if row["keeps_paper_priorities"]]
    if not eligible:
        raise ValueError("no candidate keeps the paper's priorities")
    return max(eligible, key=lambda name: (candidates[name]["tau"]["mean"], name))


def run_tournament(
    seed: int,
    budget: int,
    elo: EloConfig,
    llm,
    cfg: SupervisorConfig,
    proximity: Proximity,
    submit=None,
    *,
    state_dir: Path,
) -> tuple[Supervisor, dict]:
    state = TournamentState(state_dir / "state.sqlite", GOAL, elo)
    sup = Supervisor(state, AgentSuite(llm, GOAL), proximity, Budget(calls=budget), cfg, elo, submit=submit, seed=seed)
    return sup, sup.run()


def spread(values: list[float], goal: float | None = None) -> dict:
    """Mean, std, a 95% t-interval for the mean, median, min/max and the fraction reaching `goal`."""
    n = len(values)
    mean = statistics.fmean(values)
    sd = statistics.stdev(values) if n > 1 else 0.0
    half = float(student_t.ppf(0.975, n - 1)) * sd / math.sqrt(n) if n > 1 else float("nan")
    out = {
        "n": n,
        "mean": mean,
        "sd": sd,
        "ci95": [mean - half, mean + half],
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
    }
    if goal is not None:
        out["frac_ge_goal"] = sum(v >= goal for v in values) / n
    return out


def rank_once(seed: int, budget: int, elo: EloConfig, proximity: Proximity) -> dict:
    """One tournament on task `seed` (its own hidden truth and judge); how well the final Elo order ranks."""
    science = SyntheticScience(seed)
    llm = SyntheticLLM(science, judge_noise=NOISE, seed=seed)
    with tempfile.TemporaryDirectory(prefix="cosci-rank-", dir=SCRATCH) as tmp:
        sup, summary = run_tournament(seed, budget, elo, llm, RANK_ONLY, proximity, state_dir=Path(tmp))
        ranked = sup.ranking()  # best Elo first
        sup.state.close()
    quality = [science.quality(h["text"]) for h in ranked]
    by_truth = sorted(range(len(ranked)), key=lambda i: -quality[i])
    return {
        "tau": float(kendalltau([h["elo"] for h in ranked], quality).statistic),
        "top1": float(by_truth[0] == 0),
        "top3_overlap": len(set(by_truth[:3]) & {0, 1, 2}) / 3,
        "tokens": summary["spent"]["tokens"],
        "matches": summary["matches"],
        "debates": summary["debates"],
        "judge_errors": llm.wrong_judgements / max(llm.judgements, 1),
    }


def measure(seeds, budget: int, elo: EloConfig, proximity: Proximity) -> dict:
    runs = [rank_once(seed, budget, elo, proximity) for seed in seeds]
    return {
        "budget_calls": budget,
        "tau": spread([r["tau"] for r in runs], TAU_GOAL),
        "taus": [r["tau"] for r in runs],
        "top1_rate": statistics.fmean(r["top1"] for r in runs),
        "top3_overlap": statistics.fmean(r["top3_overlap"] for r in runs),
        **{f"{k}_median": statistics.median(r[k] for r in runs) for k in ("tokens", "matches", "debates")},
        "judge_error_rate": statistics.fmean(r["judge_errors"] for r in runs),
    }


def tune(candidates: dict[str, EloConfig], seeds, proximity: Proximity) -> dict:
    rows = {}
    for name, elo in candidates.items():
        row = measure(seeds, MODERATE_BUDGET, elo, proximity)
        rows[name] = {**row, "elo": asdict(elo), "keeps_paper_priorities": keeps_paper_priorities(elo)}
        print(
            f"tune {name:28s} tau {row['tau']['mean']:.3f} (sd {row['tau']['sd']:.3f}), top-1 {row['top1_rate']:.2f}",
            flush=True,
        )
    selected = select_schedule(rows)
    return {
        "seeds": list(seeds),
        "budget_calls": MODERATE_BUDGET,
        "rule": select_schedule.__doc__.split("\n")[0],
        "candidates": rows,
        "selected": selected,
        "configured_is_selected": candidates[selected] == EloConfig(),
    }


def evaluate(budgets: list[int], seeds, proximity: Proximity) -> dict:
    """Held-out tau vs budget for the configured schedule and the previous default; the other
    baselines at the moderate budget only (the shared 2 cores cannot afford every curve)."""
    variants = {
        "configured": (EloConfig(), budgets),  # the flow's defaults (chosen on the tuning seeds)
        "previous_default": (PREVIOUS_DEFAULT, budgets),  # top-4 pairs debate 3 turns after 2 matches, w_top 1
        "fixed_k32": (EloConfig(k_min=32), [MODERATE_BUDGET]),  # the plain Elo rule of the reproductions
        "single_turn_only": (EloConfig(top_k=0), [MODERATE_BUDGET]),
    }  # no debates, no top priority
    out: dict = {name: [] for name in variants}
    for budget in budgets:
        for name, (elo, its_budgets) in variants.items():
            if budget not in its_budgets:
                continue
            row = measure(seeds, budget, elo, proximity)
            out[name].append(row)
            tau = row["tau"]
            print(
                f"held-out {name:16s} budget {budget:4d}: tau {tau['mean']:.3f} "
                f"[{tau['ci95'][0]:.3f}, {tau['ci95'][1]:.3f}], >=0.8 on {tau['frac_ge_goal']:.0%}, "
                f"top-1 {row['top1_rate']:.2f}, {row['matches_median']} matches",
                flush=True,
            )
    return out


def first_budget_reaching(rows: list[dict], key) -> int | None:
    return next((r["budget_calls"] for r in rows if key(r["tau"]) >= TAU_GOAL), None)


def duplicates(seeds: int, budget: int) -> dict:
    cfg = SupervisorConfig(max_parallel=1, initial_hypotheses=8)
    out = {}
    for backend in ("minilm", "tfidf"):
        proximity = Proximity(ProximityConfig(backend=backend))
        rows = []
        for seed in range(seeds):
            science = SyntheticScience(seed)
            llm = SyntheticLLM(science, judge_noise=NOISE, restate_rate=0.3, seed=seed)
            with tempfile.TemporaryDirectory(prefix="cosci-dups-", dir=SCRATCH) as tmp:
                sup, summary = run_tournament(seed, budget, EloConfig(), llm, cfg, proximity, state_dir=Path(tmp))
                hyps = sup.state.hypotheses()
                sup.state.close()
            by_id = {h["id"]: science.parse(h["text"]) for h in hyps}

            def dup_rate(kept: list[dict]) -> float:
                seen, dups = set(), 0
                for h in kept:
                    choice = by_id[h["id"]]
                    dups += choice in seen
                    seen.add(choice)
                return dups / max(len(kept), 1)

            kept = [h for h in hyps if h["status"] != "duplicate"]
            flagged = [h for h in hyps if h["status"] == "duplicate"]
            false_merges = sum(by_id[h["id"]] != by_id[h["duplicate_of"]] for h in flagged)
            rows.append(
                {
                    "hypotheses": len(hyps),
                    "rate_without_proximity": dup_rate(hyps),
                    "rate_after_proximity": dup_rate(kept),
                    "flagged": len(flagged),
                    "false_merges": false_merges,
                    "tokens": summary["spent"]["tokens"],
                    "best_true_quality": max(science.quality(h["text"]) for h in hyps),
                }
            )
        out[backend] = {
            "runs": rows,
            **{
                k: statistics.mean(r[k] for r in rows)
                for k in ("rate_without_proximity", "rate_after_proximity", "false_merges", "hypotheses")
            },
        }
        print(
            f"dups {backend}: {out[backend]['rate_without_proximity']:.3f} -> "
            f"{out[backend]['rate_after_proximity']:.3f}, "
            f"false merges {out[backend]['false_merges']:.1f}",
            flush=True,
        )
    return out


class FakeOpenAIServer:
    """A loopback OpenAI-compatible chat endpoint playing the synthetic task with a fixed latency."""

    def __init__(self, latency_s: float, seed: int = 0):
        player = SyntheticLLM(SyntheticScience(seed), judge_noise=NOISE, seed=seed)

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                prompt = body["messages"][-1]["content"]
                time.sleep(latency_s)
                text = player.respond(prompt, player._rng(prompt))
                payload = json.dumps(
                    {
                        "id": "x",
                        "object": "chat.completion",
                        "created": int(time.time()),
                        "model": body.get("model", "fake"),
                        "choices": [
                            {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}
                        ],
                        "usage": {
                            "prompt_tokens": len(prompt.split()),
                            "completion_tokens": len(text.split()),
                            "total_tokens": len(prompt.split()) + len(text.split()),
                        },
                    }
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def _speedups(workers: list[int], times: dict[int, list[float]]) -> dict:
    """Median wall time per worker count and the speedup over the first count."""
    med = {w: statistics.median(values) for w, values in times.items()}
    return {
        "workers": workers,
        "wall_s_median": med,
        "wall_s": times,
        "speedup": {w: med[workers[0]] / med[w] for w in workers},
    }


def speedup_component(base_url: str, workers: list[int], budget: int, repeats: int) -> dict:
    proximity = Proximity(ProximityConfig(backend="tfidf"))
    times: dict[int, list[float]] = {w: [] for w in workers}
    for _ in range(repeats):
        for w in workers:  # alternate worker counts inside each repeat
            llm = OpenAICompatibleLLM("fake", base_url=base_url, max_concurrency=w, timeout_s=30)
            cfg = SupervisorConfig(max_parallel=w, initial_hypotheses=6)
            with tempfile.TemporaryDirectory(prefix="cosci-speed-") as tmp:  # on disk: timings include fsync
                start = time.perf_counter()
                _, summary = run_tournament(0, budget, EloConfig(), llm, cfg, proximity, state_dir=Path(tmp))
                times[w].append(time.perf_counter() - start)
            assert summary["spent"]["calls"] <= budget
    return _speedups(workers, times)


def speedup_flow(base_url: str, workers: list[int], budget: int, repeats: int, tracking_uri: str) -> dict:
    times: dict[int, list[float]] = {w: [] for w in workers}
    for _ in range(repeats):
        for w in workers:
            with tempfile.TemporaryDirectory(prefix="cosci-flow-") as work:
                overrides = [
                    "llm=openai",
                    f"llm.base_url={base_url}",
                    "llm.model=fake",
                    f"llm.max_concurrency={w}",
                    f"supervisor.max_parallel={w}",
                    f"runner.max_workers={w}",
                    f"budget.calls={budget}",
                    "proximity.backend=tfidf",
                ]
                result, _ = _run_flow(overrides, work, tracking_uri)
            times[w].append(result["metrics"]["wall_s"])  # the supervisor loop, as the flow measures it
    return _speedups(workers, times)


def _run_flow(overrides: list[str], work: str, tracking_uri: str) -> tuple[dict, float]:
    """The coscientist flow with `overrides`, its state in `work`, its run in the benchmark's
    experiment; (the run's result, seconds the run took after composition)."""
    cfg = compose(
        "coscientist",
        [*overrides, f"tracking.uri={tracking_uri}", f"work_dir={work}", "tracking.experiment=coscientist-benchmark"],
    )
    start = time.perf_counter()
    result = run(cfg)
    return result, time.perf_counter() - start


def embedded_run(budget: int, tracking_uri: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="cosci-emb-") as work:
        overrides = [
            "llm=embedded",
            f"budget.calls={budget}",
            "supervisor.initial_hypotheses=3",
            "supervisor.max_parallel=1",
            "agents.max_tokens=96",
            "report_top=5",
        ]
        result, elapsed = _run_flow(overrides, work, tracking_uri)
    client = MlflowClient(tracking_uri)
    report = Path(client.download_artifacts(result["run_id"], "report/report.md")).read_text()
    out = RESULTS_DIR / "coscientist_embedded_report.md"
    out.write_text(
        f"<!-- python -m benchmarks.coscientist: flow `coscientist` with llm=embedded "
        f"(SmolLM2-135M-Instruct), budget.calls={budget}; a weak 135M model, shown as is -->\n" + report
    )
    return {"metrics": result["metrics"], "wall_s": elapsed, "report": str(out), "run_id": result["run_id"]}


def plot(results: dict):
    fig, axes = plt.subplots(1, 4, figsize=(20, 4.4))
    ax = axes[0]
    for name, rows in results["ranking"].items():
        xs = [r["budget_calls"] for r in rows]
        (line,) = ax.plot(xs, [r["tau"]["mean"] for r in rows], marker="o", label=name)
        ax.fill_between(
            xs,
            [r["tau"]["ci95"][0] for r in rows],
            [r["tau"]["ci95"][1] for r in rows],
            color=line.get_color(),
            alpha=0.15,
        )
    ax.axhline(TAU_GOAL, color="grey", ls=":", label=f"target {TAU_GOAL}")
    ax.axvline(MODERATE_BUDGET, color="lightgrey", ls="--")
    ax.set_xlabel(f"budget (LLM calls, {POOL} hypotheses)")
    ax.set_ylabel("Kendall tau (Elo vs true quality)")
    ax.set_title(
        f"Held-out seeds (n={len(results['setup']['heldout_seeds'])}), {int(NOISE * 100)}%-noisy judge, mean, 95% CI",
        fontsize=9,
    )
    ax.legend(fontsize=8)
    ax = axes[1]
    tuning = results["tuning"]
    for name, row in tuning["candidates"].items():
        faithful = row["keeps_paper_priorities"]
        ax.scatter(
            row["tau"]["mean"],
            row["top1_rate"],
            marker="o" if faithful else "x",
            color="tab:red" if name == tuning["selected"] else ("tab:blue" if faithful else "grey"),
        )
    sel = tuning["candidates"][tuning["selected"]]
    ax.annotate(tuning["selected"], (sel["tau"]["mean"], sel["top1_rate"]), fontsize=7)
    ax.set_xlabel(f"mean Kendall tau at {MODERATE_BUDGET} calls")
    ax.set_ylabel("top-1 rate (true best ranked first)")
    ax.set_title(f"Tuning seeds (n={len(tuning['seeds'])}): o keeps the paper's priorities, x not", fontsize=9)
    ax = axes[2]
    for name in ("component", "flow"):
        if name in results["parallel"]:
            s = results["parallel"][name]
            ax.plot(s["workers"], [s["speedup"][w] for w in s["workers"]], marker="o", label=f"{name} (threads)")
    ws = results["parallel"]["component"]["workers"]
    ax.plot(ws, ws, color="grey", ls=":", label="linear")
    ax.set_xlabel("parallel workers")
    ax.set_ylabel("speedup vs 1 worker")
    ax.set_title(f"Remote LLM ({results['parallel']['latency_s']} s/request, loopback)")
    ax.legend()
    ax = axes[3]
    names = list(results["duplicates"])
    ax.bar(
        [f"none\n({n} run)" for n in names],
        [results["duplicates"][n]["rate_without_proximity"] for n in names],
        color="lightgrey",
    )
    ax.bar([f"{n}" for n in names], [results["duplicates"][n]["rate_after_proximity"] for n in names])
    ax.set_ylabel("duplicate rate among kept hypotheses")
    ax.set_title("Proximity de-duplication")
    fig.tight_layout()
    return fig


def main(argv=None) -> None:
    args = parse_mode(__doc__.split("\n")[0], argv)
    quick = not args.full
    mode = "quick" if quick else "full"
    tuning_seeds, heldout = TUNING_SEEDS[mode], HELDOUT_SEEDS[mode]
    budgets = [60, 120, 240] if quick else [60, 120, 240, 480]
    uri = args.tracking_uri or default_tracking_uri()
    started = time.perf_counter()
    tfidf = Proximity(ProximityConfig(backend="tfidf"))  # the ranking pool has no restatements: cheap backend
    results: dict = {
        "setup": {
            "pool": POOL,
            "judge_noise": NOISE,
            "moderate_budget_calls": MODERATE_BUDGET,
            "tau_goal": TAU_GOAL,
            "tuning_seeds": list(tuning_seeds),
            "heldout_seeds": list(heldout),
            "shared_machine": True,
            "note": "2 shared CPU cores (other engineers' jobs running): timings are noisy",
        }
    }
    results["tuning"] = tune(schedule_candidates(), tuning_seeds, tfidf)
    print(
        f"tuning selects {results['tuning']['selected']} (the configured default: "
        f"{results['tuning']['configured_is_selected']})",
        flush=True,
    )
    results["ranking"] = evaluate(budgets, heldout, tfidf)
    configured = results["ranking"]["configured"]
    results["budget_reaching_goal"] = {  # smallest budget measured where the configured schedule reaches 0.8
        "mean": first_budget_reaching(configured, lambda tau: tau["mean"]),
        "ci95_lower": first_budget_reaching(configured, lambda tau: tau["ci95"][0]),
    }
    results["duplicates"] = duplicates(seeds=2 if quick else 5, budget=100 if quick else 160)
    results["parallel"] = parallel_speedups(quick, uri)
    results["embedded"] = embedded_run(budget=8 if quick else 16, tracking_uri=uri)
    print("embedded:", results["embedded"]["metrics"], flush=True)
    results["total_wall_s"] = time.perf_counter() - started
    write_result(
        "coscientist",
        results,
        _targets(results),
        figure=plot(results),
        args=args,
        extra_artifacts=[Path(results["embedded"]["report"])],
    )


def parallel_speedups(quick: bool, tracking_uri: str) -> dict:
    """Wall time of a tournament against a fake remote LLM with 1-8 agent calls in flight, through
    the component and through the Prefect flow."""
    latency, workers, budget = 0.3, [1, 2, 4, 8], 40 if quick else 80
    out: dict = {"latency_s": latency, "budget_calls": budget}
    with FakeOpenAIServer(latency) as server:
        out["component"] = speedup_component(server.base_url, workers, budget, repeats=2 if quick else 3)
        print("parallel (component):", out["component"]["speedup"], flush=True)
        out["flow"] = speedup_flow(
            server.base_url, [1, 4], budget, repeats=1 if quick else 2, tracking_uri=tracking_uri
        )
        print("parallel (flow):", out["flow"]["speedup"], flush=True)
    return out


def _targets(results: dict) -> list[dict]:
    row = next(r for r in results["ranking"]["configured"] if r["budget_calls"] == MODERATE_BUDGET)
    comp = results["parallel"]["component"]
    top_w = max(comp["workers"])
    return [
        # the mean over the held-out seeds; its 95% interval and the fraction of seeds reaching 0.8 are in results
        target(
            f"kendall_tau_at_{MODERATE_BUDGET}_calls_20pct_noisy_judge_heldout_mean", row["tau"]["mean"], TAU_GOAL, ">="
        ),
        # "near-linear": at least 80% parallel efficiency at 4 workers, through the component and the flow
        target("parallel_efficiency_4_workers_remote_llm", comp["speedup"][4] / 4, 0.8, ">="),
        target(
            "parallel_efficiency_4_workers_remote_llm_prefect_flow",
            results["parallel"]["flow"]["speedup"][4] / 4,
            0.8,
            ">=",
        ),
        target(f"speedup_{top_w}_workers_remote_llm", comp["speedup"][top_w], 0.8 * top_w, ">="),
        target(
            "duplicate_rate_after_proximity_minilm", results["duplicates"]["minilm"]["rate_after_proximity"], 0.02, "<="
        ),
    ]


if __name__ == "__main__":
    main()
