"""What the paper reports per policy: success rate, mean reward, turns, invalid actions, by hardness."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from statistics import mean


def _first_turn(group: list[Mapping]) -> dict:
    firsts = [e["turns"][0]["reward"] for e in group if e.get("turns") and e["turns"][0].get("reward") is not None]
    return {"first_turn_reward": mean(firsts)} if len(firsts) == len(group) else {}


def summarize(episodes: Iterable[Mapping]) -> dict:
    """Aggregate `Episode.as_dict()` records: overall and per hardness level.

    success_rate: fraction of episodes with reward exactly 1; invalid_action_fraction: invalid
    turns / all turns (pooled over episodes); turns: mean turns taken per episode.
    first_turn_reward (policies that score every turn): the mean reward of the first command alone; for
    try_again that is what single_turn scores (same prompt, greedy decoding), so mean_reward -
    first_turn_reward is what the execution feedback of the later turns added.
    """
    episodes = list(episodes)
    if not episodes:
        return {"episodes": 0}

    def block(group: list[Mapping]) -> dict:
        all_turns = sum(e["n_turns"] for e in group)
        invalid = sum(e["invalid_fraction"] * e["n_turns"] for e in group)
        return {
            "episodes": len(group),
            "success_rate": mean(1.0 if e["success"] else 0.0 for e in group),
            "mean_reward": mean(e["reward"] for e in group),
            "mean_turns": mean(e["n_turns"] for e in group),
            "invalid_action_fraction": invalid / all_turns if all_turns else 0.0,
            "errors": sum(1 for e in group if e.get("error")),
            "llm_calls_per_episode": mean(e.get("llm_calls", 0) for e in group),
            "wall_seconds_per_episode": mean(e.get("wall_seconds", 0.0) for e in group),
            **_first_turn(group),
        }

    by_hardness: dict[str, list] = defaultdict(list)
    for e in episodes:
        by_hardness[e["hardness"]].append(e)
    return {**block(episodes), "by_hardness": {h: block(g) for h, g in sorted(by_hardness.items())}}


SCOPE_KEYS = ("success_rate", "mean_reward", "first_turn_reward", "mean_turns", "invalid_action_fraction")


def policy_summary(episodes: list[Mapping], envs: list[str]) -> dict:
    """One policy's episodes: {"policy": its name, "overall": summarize(all), <env>: summarize(env's)}."""
    summary: dict = {"policy": episodes[0]["policy"] if episodes else "-", "overall": summarize(episodes)}
    for kind in envs:
        mine = [e for e in episodes if e["env"] == kind]
        if mine:
            summary[kind] = summarize(mine)
    return summary


def flat_metrics(summary: dict, prefix: str = "") -> dict[str, float]:
    """`<prefix><scope>.<key>` and `<prefix><scope>.<hardness>.<key>` for every scope of a policy summary,
    plus `<prefix>success_rate`, `mean_reward`, `first_turn_reward`, `episodes` and `errors` of the run."""
    out: dict[str, float] = {}
    for scope, block in summary.items():
        if not isinstance(block, dict):
            continue
        out.update({f"{prefix}{scope}.{k}": float(block[k]) for k in SCOPE_KEYS if k in block})
        for level, sub in block.get("by_hardness", {}).items():
            out.update({f"{prefix}{scope}.{level}.{k}": float(sub[k]) for k in SCOPE_KEYS if k in sub})
    overall = summary["overall"]
    run_keys = ("success_rate", "mean_reward", "first_turn_reward", "episodes", "errors")
    out.update({f"{prefix}{k}": float(overall[k]) for k in run_keys if k in overall})
    return out


def markdown_table(summaries: Mapping[str, dict]) -> str:
    """One row per policy, environment and hardness level."""
    lines = [
        f"policies: {', '.join(s['policy'] for s in summaries.values())}",
        "",
        "| policy | env | hardness | episodes | success rate | mean reward | first-turn reward | mean turns "
        "| invalid actions |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for summary in summaries.values():
        for scope, block in summary.items():
            if not isinstance(block, dict) or scope == "overall":
                continue
            for level, b in [("all", block), *block.get("by_hardness", {}).items()]:
                lines.append(
                    f"| {summary['policy']} | {scope} | {level} | {b['episodes']} | {b['success_rate']:.3f} "
                    f"| {b['mean_reward']:.3f} | {_number(b.get('first_turn_reward'))} | {b['mean_turns']:.2f} "
                    f"| {b['invalid_action_fraction']:.3f} |"
                )
    return "\n".join(lines) + "\n"


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
