"""InterCode benchmark: policies side by side on the SQL and Bash environments.

1. Gold replay (no LLM) over every task of both environments: the sanity check that execution and
   reward give exactly 1 for correct solutions, plus the sandbox's cost per episode.
2. LLM policies (single turn, try again, ReAct, Plan & Solve) with the configured model (default:
   the embedded SmolLM2-135M-Instruct) on a hardness-stratified subset. Episodes are interleaved
   (round k: each policy on the k-th task of SQL then Bash) so load and budget hit all alike.
   A wall-clock budget bounds the run; episodes it leaves unplayed are counted, never invented.

Reports success rate (reward exactly 1), mean reward, turns, invalid-action fraction, by hardness.

    python -m benchmarks.intercode --quick                 # 2+2 tasks, 2 turns, small budget
    python -m benchmarks.intercode --full                  # 8+6 tasks, 3 turns
    python -m benchmarks.intercode --quick --llm openai    # any OpenAI-compatible endpoint ($OPENAI_BASE_URL)
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

from matplotlib.figure import Figure

from benchmarks.common import parse_mode, target, write_result
from components.intercode import assets
from components.intercode.env import make_env
from components.intercode.metrics import summarize
from components.intercode.policies import GoldReplay, PolicyConfig, build_policy
from components.intercode.tasksets import TASK_SETS, select_tasks
from components.llm.config import LLMConfig
from components.llm.factory import build_llm

PAPER_REFERENCE = {  # upstream trajectories (Spider dev / NL2Bash on MySQL / Docker): context, not targets
    "sql": {
        "gpt-4 single turn": 0.091,
        "gpt-4 try again 10 turns": 0.737,
        "gpt-3.5 react": 0.587,
        "gpt-3.5 plan and solve": 0.491,
        "human": 0.867,
    },
    "bash": {"gpt-4 try again 10 turns": 0.485, "gpt-3.5 react": 0.205},
}
POLICY_CLASSES = {  # the `_target_` of conf/ic_policy/<name>.yaml; single_turn is TryAgain with one turn
    "single_turn": "components.intercode.policies.TryAgain",
    "try_again": "components.intercode.policies.TryAgain",
    "react": "components.intercode.policies.ReAct",
    "plan_solve": "components.intercode.policies.PlanAndSolve",
}
POLICIES = list(POLICY_CLASSES)


def policy_config(name: str, turns: int, max_tokens: int) -> PolicyConfig:
    """The policy at the benchmark's budget: every policy gets `turns` turns (single_turn: one)."""
    return PolicyConfig(POLICY_CLASSES[name], max_turns=1 if name == "single_turn" else turns, max_tokens=max_tokens)


def own_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--llm", choices=["embedded", "openai"], default="embedded")
    parser.add_argument("--budget-s", type=float, default=None, help="wall-clock budget of the LLM phase")
    parser.add_argument("--dtype", default="float32", help="embedded model dtype (bfloat16 is faster on CPU)")
    return parser.parse_known_args(argv)


def gold_phase(asset_dir: Path) -> dict:
    out = {}
    for kind, tasks in TASK_SETS.items():
        env = make_env(kind, tasks, asset_dir)
        try:
            episodes = [GoldReplay().run(env, i).as_dict() for i in range(len(tasks))]
        finally:
            env.close()
        out[kind] = summarize(episodes)
        print(
            f"gold {kind}: success {out[kind]['success_rate']:.3f} over {len(episodes)} tasks, "
            f"{out[kind]['wall_seconds_per_episode']:.2f} s/episode",
            flush=True,
        )
    return out


def llm_phase(asset_dir: Path, llm, n_sql: int, n_bash: int, turns: int, max_tokens: int, budget_s: float) -> dict:
    """Round k plays the k-th selected task of each environment with every policy, interleaved
    policy by policy across the environments (sql/single, bash/single, sql/try_again, ...), so a
    budget that runs out leaves every policy and environment equally short, not the last ones empty."""
    start = time.monotonic()
    envs = {kind: make_env(kind, TASK_SETS[kind], asset_dir) for kind in ("sql", "bash")}
    chosen = {"sql": select_tasks(TASK_SETS["sql"], n_sql), "bash": select_tasks(TASK_SETS["bash"], n_bash)}
    episodes = {kind: {p: [] for p in POLICIES} for kind in envs}
    unplayed = {kind: {p: 0 for p in POLICIES} for kind in envs}
    try:
        for round_ in range(max(n_sql, n_bash)):
            for name in POLICIES:
                for kind, env in envs.items():
                    if round_ >= len(chosen[kind]):
                        continue
                    if time.monotonic() - start > budget_s:
                        unplayed[kind][name] += 1
                        continue
                    index = chosen[kind][round_]
                    try:
                        episode = build_policy(policy_config(name, turns, max_tokens), llm).run(env, index).as_dict()
                    except KeyboardInterrupt:  # SIGINT/SIGTERM: stop playing, keep what was measured
                        print("interrupted: the remaining episodes count as unplayed", flush=True)
                        budget_s = -1.0
                        unplayed[kind][name] += 1
                        continue
                    episodes[kind][name].append(episode)
                    print(
                        f"{kind} {TASK_SETS[kind][index].id} {name}: reward {episode['reward']:.2f}, "
                        f"{episode['n_turns']} turns, {episode['wall_seconds']:.0f} s"
                        f"{', error: ' + episode['error'] if episode['error'] else ''}",
                        flush=True,
                    )
    finally:
        for env in envs.values():
            env.close()
    return {
        kind: {
            name: {**summarize(eps), "unplayed": unplayed[kind][name], "trajectories": [_short(e) for e in eps]}
            for name, eps in per_policy.items()
        }
        for kind, per_policy in episodes.items()
    }


def _short(episode: dict) -> dict:
    """What the JSON keeps of a trajectory: enough to read what the model did."""
    return {
        "task_id": episode["task_id"],
        "reward": episode["reward"],
        "error": episode["error"],
        "turns": [
            {
                "action": t["action"][:300],
                "observation": t["observation"][:200],
                "reward": t["reward"],
                "valid": t["valid"],
            }
            for t in episode["turns"]
        ],
    }


def plot(results: dict):
    fig = Figure(figsize=(11, 4))  # no pyplot: no GUI backend, nothing left open
    axes = fig.subplots(1, 2, sharey=True)
    for ax, kind in zip(axes, ("sql", "bash")):
        names = ["gold"] + POLICIES
        blocks = [results["gold"][kind]] + [results["llm"].get(kind, {}).get(p, {}) for p in POLICIES]
        success = [b.get("success_rate", 0.0) for b in blocks]
        reward = [b.get("mean_reward", 0.0) for b in blocks]
        xs = range(len(names))
        ax.bar([x - 0.2 for x in xs], success, 0.4, label="success rate")
        ax.bar([x + 0.2 for x in xs], reward, 0.4, label="mean reward")
        ax.set_xticks(list(xs), names, rotation=20)
        ax.set_title(f"InterCode-{kind.upper()} ({results['llm_model']})")
    axes[0].legend()
    fig.tight_layout()
    return fig


def main(argv: list[str] | None = None) -> None:
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # `kill` ends the LLM phase gracefully
    extra, rest = own_args(list(sys.argv[1:] if argv is None else argv))
    args = parse_mode(__doc__.split("\n")[0], rest)
    sizes = (
        {"n_sql": 8, "n_bash": 6, "turns": 3, "max_tokens": 128}
        if args.full
        else {"n_sql": 2, "n_bash": 2, "turns": 2, "max_tokens": 48}
    )
    budget = extra.budget_s if extra.budget_s is not None else (3600.0 if args.full else 900.0)
    asset_dir = assets.prepare(Path(tempfile.mkdtemp(prefix="intercode-bench-")))
    gold = gold_phase(asset_dir)

    if extra.llm == "openai":
        cfg = LLMConfig(
            _target_="components.llm.factory.openai_compatible", model=os.environ.get("OPENAI_MODEL", "gpt-4o-mini")
        )
    else:
        cfg = LLMConfig(dtype=extra.dtype, timeout_s=600.0)  # one request may be slow on a shared CPU
    llm = build_llm(cfg)
    llm_start = time.monotonic()
    llm_results = llm_phase(asset_dir, llm, budget_s=budget, **sizes)
    results = {
        "gold": gold,
        "llm": llm_results,
        "llm_model": cfg.model,
        "llm_backend": extra.llm,
        "sizes": sizes,
        "llm_phase_seconds": time.monotonic() - llm_start,
        "llm_usage": llm.usage.as_dict(),
        "budget_s": budget,
        "paper_reference_success_rates": PAPER_REFERENCE,
        "notes": (
            "Machine shared by ~9 engineers on 2 cores: timings and the number of LLM episodes that fit "
            "the budget depend on load. The embedded model is SmolLM2-135M-Instruct (a 135M model): it "
            "exercises the agent loop, it is not a capable coder; compare with the paper's GPT-4 figures "
            "only as context. Tasks are this project's own (not Spider/NL2Bash)."
        ),
    }
    targets = [target(f"gold_{kind}_success_rate", gold[kind]["success_rate"], 1.0, ">=") for kind in ("sql", "bash")]
    targets.append(target("gold_tasks_replayed", gold["sql"]["episodes"] + gold["bash"]["episodes"], 100, ">="))
    write_result("intercode", results, targets, figure=plot(results), args=args)


if __name__ == "__main__":
    main()
