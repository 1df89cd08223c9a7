"""What the paper reports per policy: success rate, mean reward, turns, invalid actions, by hardness."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from statistics import mean


def summarize(episodes: Iterable[Mapping]) -> dict:
    """Aggregate `Episode.as_dict()` records: overall and per hardness level.

    success_rate: fraction of episodes with reward exactly 1; invalid_action_fraction: invalid
    turns / all turns (pooled over episodes); turns: mean turns taken per episode.
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
        }

    by_hardness: dict[str, list] = defaultdict(list)
    for e in episodes:
        by_hardness[e["hardness"]].append(e)
    return {**block(episodes), "by_hardness": {h: block(g) for h, g in sorted(by_hardness.items())}}
