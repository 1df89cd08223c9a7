"""Co-scientist benchmark: how well the Elo tournament ranks, what Proximity removes, what it costs,
and how wall time scales with parallel workers against a remote LLM.

- Ranking quality: a synthetic research task with HIDDEN TRUE QUALITY (components/coscientist/
  synthetic.py: a hypothesis picks one option per slot, its quality is a hidden sum) and a judge
  that picks the truly better hypothesis but is WRONG 20% of the time (also in debates). Kendall tau
  between the final Elo order and the true quality, vs the compute budget (LLM calls), for the
  configured Elo (K 32 shrinking to 8 as a hypothesis plays, debates for top-4 pairs), the plain
  fixed K = 32, and single-turn comparisons only, side by side on the same seeds. Fixed pool of 12 hypotheses (generation then ranking only), so tau
  measures the tournament and nothing else.
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
import statistics
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from benchmarks.common import RESULTS_DIR, parse_mode, target, write_result
from components.coscientist.agents import AgentSuite
from components.coscientist.elo import EloConfig
from components.coscientist.proximity import Proximity, ProximityConfig
from components.coscientist.state import TournamentState
from components.coscientist.supervisor import Budget, Supervisor, SupervisorConfig, WorkWeights
from components.coscientist.synthetic import SyntheticLLM, SyntheticScience

GOAL = "Find the catalyst system that maximises the yield of the reaction."
POOL = 12  # hypotheses in the ranking experiment
MODERATE_CALLS_PER_HYPOTHESIS = 20  # "moderate budget": 240 calls for 12 hypotheses (incl. their generation and review)
NOISE = 0.2  # the judge is wrong on 20% of verdicts


def run_tournament(seed: int, budget: int, elo: EloConfig, llm, cfg: SupervisorConfig, proximity: Proximity,
                   submit=None) -> tuple[Supervisor, dict]:
    state = TournamentState(Path(tempfile.mkdtemp(prefix="cosci-bench-")) / "state.sqlite", GOAL, elo)
    sup = Supervisor(state, AgentSuite(llm, GOAL), proximity, Budget(calls=budget), cfg, elo, submit=submit, seed=seed)
    return sup, sup.run()


def kendall_tau(sup: Supervisor, science: SyntheticScience) -> float:
    from scipy.stats import kendalltau

    ranked = sup.ranking()
    return float(kendalltau([h["elo"] for h in ranked], [science.quality(h["text"]) for h in ranked]).statistic)


def tau_vs_budget(budgets: list[int], seeds: int, proximity: Proximity) -> dict:
    variants = {"configured": EloConfig(),  # K 32 -> 8, debates between top-4 pairs (the flow's defaults)
                "fixed_k32": EloConfig(k_factor=32, k_min=32),  # the plain Elo rule of the reproductions
                "single_turn_only": EloConfig(top_k=0)}  # no debates: every call is one verdict
    rank_only = SupervisorConfig(max_parallel=1, initial_hypotheses=POOL,
                                 weights=WorkWeights(generate=0, rank=1, evolve=0, meta_review=0))
    out: dict = {name: [] for name in variants}
    for budget in budgets:
        for name, elo in variants.items():
            taus, tokens, matches = [], [], []
            for seed in range(seeds):
                science = SyntheticScience(seed)
                llm = SyntheticLLM(science, judge_noise=NOISE, seed=seed)
                sup, summary = run_tournament(seed, budget, elo, llm, rank_only, proximity)
                taus.append(kendall_tau(sup, science))
                tokens.append(summary["spent"]["tokens"])
                matches.append(summary["matches"])
            row = {"budget_calls": budget, "tau_median": statistics.median(taus), "tau_min": min(taus),
                   "taus": taus, "tokens_median": statistics.median(tokens), "matches_median": statistics.median(matches),
                   "judge_error_rate": llm.wrong_judgements / max(llm.judgements, 1)}
            out[name].append(row)
            print(f"tau  {name:14s} budget {budget:4d}: median {row['tau_median']:.3f} (min {row['tau_min']:.3f}), "
                  f"{row['matches_median']} matches, {row['tokens_median']:.0f} tokens", flush=True)
    return out


def duplicates(seeds: int, budget: int) -> dict:
    cfg = SupervisorConfig(max_parallel=1, initial_hypotheses=8)
    out = {}
    for backend in ("minilm", "tfidf"):
        proximity = Proximity(ProximityConfig(backend=backend))
        rows = []
        for seed in range(seeds):
            science = SyntheticScience(seed)
            llm = SyntheticLLM(science, judge_noise=NOISE, restate_rate=0.3, seed=seed)
            sup, summary = run_tournament(seed, budget, EloConfig(), llm, cfg, proximity)
            hyps = sup.state.hypotheses()
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
            rows.append({"hypotheses": len(hyps), "rate_without_proximity": dup_rate(hyps),
                         "rate_after_proximity": dup_rate(kept), "flagged": len(flagged), "false_merges": false_merges,
                         "tokens": summary["spent"]["tokens"], "best_true_quality": max(science.quality(h["text"]) for h in hyps)})
        out[backend] = {"runs": rows, **{k: statistics.mean(r[k] for r in rows) for k in
                                         ("rate_without_proximity", "rate_after_proximity", "false_merges", "hypotheses")}}
        print(f"dups {backend}: {out[backend]['rate_without_proximity']:.3f} -> {out[backend]['rate_after_proximity']:.3f}, "
              f"false merges {out[backend]['false_merges']:.1f}", flush=True)
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
                payload = json.dumps({
                    "id": "x", "object": "chat.completion", "created": int(time.time()), "model": body.get("model", "fake"),
                    "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}],
                    "usage": {"prompt_tokens": len(prompt.split()), "completion_tokens": len(text.split()),
                              "total_tokens": len(prompt.split()) + len(text.split())}}).encode()
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


def speedup_component(base_url: str, workers: list[int], budget: int, repeats: int) -> dict:
    from components.llm.openai_compat import OpenAICompatibleLLM

    proximity = Proximity(ProximityConfig(backend="tfidf"))
    times: dict[int, list[float]] = {w: [] for w in workers}
    for _ in range(repeats):
        for w in workers:  # alternate worker counts inside each repeat
            llm = OpenAICompatibleLLM("fake", base_url=base_url, max_concurrency=w, timeout_s=30)
            cfg = SupervisorConfig(max_parallel=w, initial_hypotheses=6)
            start = time.perf_counter()
            _, summary = run_tournament(0, budget, EloConfig(), llm, cfg, proximity)
            times[w].append(time.perf_counter() - start)
            assert summary["spent"]["calls"] <= budget
    med = {w: statistics.median(t) for w, t in times.items()}
    return {"workers": workers, "wall_s_median": med, "wall_s": times,
            "speedup": {w: med[workers[0]] / med[w] for w in workers}}


def speedup_flow(base_url: str, workers: list[int], budget: int, repeats: int, tracking_uri: str) -> dict:
    from flows.platform import compose, run

    times: dict[int, list[float]] = {w: [] for w in workers}
    for _ in range(repeats):
        for w in workers:
            work = tempfile.mkdtemp(prefix="cosci-flow-")
            cfg = compose("coscientist", ["llm=openai", f"llm.base_url={base_url}", "llm.model=fake",
                                          f"llm.max_concurrency={w}", f"supervisor.max_parallel={w}",
                                          f"runner.max_workers={w}", f"budget.calls={budget}", "proximity.backend=tfidf",
                                          f"tracking.uri={tracking_uri}", f"work_dir={work}",
                                          "tracking.experiment=coscientist-benchmark"])
            result = run(cfg)
            times[w].append(result["metrics"]["wall_s"])  # the supervisor loop, as the flow measures it
    med = {w: statistics.median(t) for w, t in times.items()}
    return {"workers": workers, "wall_s_median": med, "wall_s": times,
            "speedup": {w: med[workers[0]] / med[w] for w in workers}}


def embedded_run(budget: int, tracking_uri: str) -> dict:
    from mlflow.tracking import MlflowClient

    from flows.platform import compose, run

    cfg = compose("coscientist", ["llm=embedded", f"budget.calls={budget}", "supervisor.initial_hypotheses=3",
                                  "supervisor.max_parallel=1", "agents.max_tokens=96", "report_top=5",
                                  f"tracking.uri={tracking_uri}", f"work_dir={tempfile.mkdtemp(prefix='cosci-emb-')}",
                                  "tracking.experiment=coscientist-benchmark"])
    start = time.perf_counter()
    result = run(cfg)
    elapsed = time.perf_counter() - start
    client = MlflowClient(tracking_uri)
    report = Path(client.download_artifacts(result["run_id"], "report/report.md")).read_text()
    out = RESULTS_DIR / "coscientist_embedded_report.md"
    out.write_text(f"<!-- python -m benchmarks.coscientist: flow `coscientist` with llm=embedded "
                   f"(SmolLM2-135M-Instruct), budget.calls={budget}; a weak 135M model, shown as is -->\n" + report)
    return {"metrics": result["metrics"], "wall_s": elapsed, "report": str(out), "run_id": result["run_id"]}


def plot(results: dict):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    ax = axes[0]
    for name, rows in results["ranking"].items():
        ax.plot([r["budget_calls"] for r in rows], [r["tau_median"] for r in rows], marker="o", label=name)
    ax.axhline(0.8, color="grey", ls=":", label="target 0.8")
    ax.set_xlabel("budget (LLM calls, 12 hypotheses)")
    ax.set_ylabel("Kendall tau (Elo vs true quality)")
    ax.set_title(f"Ranking with a {int(NOISE * 100)}%-noisy judge")
    ax.legend()
    ax = axes[1]
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
    ax = axes[2]
    names = list(results["duplicates"])
    ax.bar([f"none\n({n} run)" for n in names], [results["duplicates"][n]["rate_without_proximity"] for n in names],
           color="lightgrey")
    ax.bar([f"{n}" for n in names], [results["duplicates"][n]["rate_after_proximity"] for n in names])
    ax.set_ylabel("duplicate rate among kept hypotheses")
    ax.set_title("Proximity de-duplication")
    fig.tight_layout()
    return fig


def main(argv=None) -> None:
    args = parse_mode(__doc__.split("\n")[0], argv)
    quick = not args.full
    seeds = 6 if quick else 10
    budgets = [48, 120, 240, 360] if quick else [48, 96, 168, 240, 360, 480]
    tracking_uri = args.tracking_uri or None
    started = time.perf_counter()
    tfidf = Proximity(ProximityConfig(backend="tfidf"))  # the ranking pool has no restatements: cheap backend
    results: dict = {"setup": {"pool": POOL, "judge_noise": NOISE, "seeds": seeds, "shared_machine": True,
                               "note": "2 shared CPU cores (other engineers' jobs running): timings are noisy"}}
    results["ranking"] = tau_vs_budget(budgets, seeds, tfidf)
    results["duplicates"] = duplicates(seeds=2 if quick else 5, budget=100 if quick else 160)

    latency, workers, budget = 0.3, [1, 2, 4, 8], 40 if quick else 80
    results["parallel"] = {"latency_s": latency, "budget_calls": budget}
    from tasks.tracking import default_tracking_uri

    uri = tracking_uri or default_tracking_uri()
    with FakeOpenAIServer(latency) as server:
        results["parallel"]["component"] = speedup_component(server.base_url, workers, budget, repeats=2 if quick else 3)
        print("parallel (component):", results["parallel"]["component"]["speedup"], flush=True)
        results["parallel"]["flow"] = speedup_flow(server.base_url, [1, 4], budget, repeats=1 if quick else 2,
                                                   tracking_uri=uri)
        print("parallel (flow):", results["parallel"]["flow"]["speedup"], flush=True)
    results["embedded"] = embedded_run(budget=8 if quick else 16, tracking_uri=uri)
    print("embedded:", results["embedded"]["metrics"], flush=True)
    results["total_wall_s"] = time.perf_counter() - started

    moderate = POOL * MODERATE_CALLS_PER_HYPOTHESIS
    row = next(r for r in results["ranking"]["configured"] if r["budget_calls"] == moderate)
    comp = results["parallel"]["component"]
    top_w = max(comp["workers"])
    targets = [
        target(f"kendall_tau_at_{moderate}_calls_20pct_noisy_judge", row["tau_median"], 0.8, ">="),
        # "near-linear": at least 80% parallel efficiency at 4 workers, through the component and the flow
        target("parallel_efficiency_4_workers_remote_llm", comp["speedup"][4] / 4, 0.8, ">="),
        target("parallel_efficiency_4_workers_remote_llm_prefect_flow", results["parallel"]["flow"]["speedup"][4] / 4, 0.8, ">="),
        target(f"speedup_{top_w}_workers_remote_llm", comp["speedup"][top_w], 0.8 * top_w, ">="),
        target("duplicate_rate_after_proximity_minilm", results["duplicates"]["minilm"]["rate_after_proximity"], 0.02, "<="),
    ]
    write_result("coscientist", results, targets, figure=plot(results), args=args,
                 extra_artifacts=[Path(results["embedded"]["report"])])


if __name__ == "__main__":
    main()
