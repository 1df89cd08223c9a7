"""InterCode's reward functions (Yang et al., 2023), as pure functions of what the episodes produced.

SQL: intersection-over-union of the agent's and the gold result rows, taken as multisets of
stringified rows, scaled by Kendall's tau-b of the shared row strings (upstream's formula: the agent's
and the gold's shared rows paired by position, compared as strings, ties counted) and rounded to two
decimals; both results empty -> 1; a single shared row or a constant one has no tau: the IoU alone.

Bash: 0.01 + 0.33 * (1 - erf(#missing + #extra file-system changes))
             + 0.33 * (fraction of changes made by both whose contents (md5) agree)
             + 0.33 * (TF-IDF cosine similarity of the agent's last output and the gold output),
each part rounded to 2 decimals as upstream does, so only an exact match reaches 1.0.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any, Optional

Row = Sequence[Any]


def stringify_rows(rows: Sequence[Row]) -> list[str]:
    """Upstream stringifies every row tuple so that mixed types compare without errors."""
    return [str(tuple(row)) for row in rows]


SQL_ORDERS = ("upstream", "position")


def kendall_tau(first: Sequence[Any], second: Sequence[Any]) -> float:
    """Kendall's tau-b of two paired sequences of comparable values, ties allowed (scipy's default
    variant, which upstream calls); NaN when fewer than two items or either side is constant."""
    if len(first) != len(second):
        raise ValueError("kendall_tau needs two sequences of the same length")
    if len(first) < 2:
        return math.nan
    # Ranks of the values (equal values share a rank) so that any comparable type works, strings included.
    levels = {value: rank for rank, value in enumerate(sorted(set(first) | set(second)))}
    from scipy.stats import kendalltau  # noqa: PLC0415  (start-up cost: scipy.stats ~0.3 s, only when scored)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant input: scipy warns and returns NaN, which is the answer
        tau = kendalltau([levels[v] for v in first], [levels[v] for v in second]).statistic
    return float(tau)


def _shared_in_order(items: Sequence[str], shared: Counter) -> list[str]:
    """The items that are in the intersection, in list order, each kept at most as often as shared."""
    budget, out = Counter(shared), []
    for item in items:
        if budget[item] > 0:
            budget[item] -= 1
            out.append(item)
    return out


def _position_order(agent_shared: list[str], gold_shared: list[str]) -> tuple[list[int], list[int]]:
    """Agent positions against the gold positions of the same occurrence of each shared row."""
    seen, gold_position = Counter(), {}
    for pos, item in enumerate(gold_shared):
        gold_position[(item, seen[item])] = pos
        seen[item] += 1
    seen, paired = Counter(), []
    for item in agent_shared:
        paired.append(gold_position[(item, seen[item])])
        seen[item] += 1
    return list(range(len(paired))), paired


def sql_reward(
    agent_rows: Optional[Sequence[Row]], gold_rows: Sequence[Row], order: str = "upstream"
) -> tuple[float, dict]:
    """IoU of the stringified row multisets, times Kendall tau of the shared rows, rounded to 2 decimals
    when tau is defined (upstream InterCode's reward). `agent_rows=None`: no result set (an error or a
    statement without rows) scores 0, as upstream.

    order="upstream" (default): tau between the agent's and the gold's shared row strings paired by
    position, compared as strings, exactly as upstream computes it, so rewards compare with its tables.
    order="position": tau between where each shared row stands in the two results; a variant for
    users who want order judged as order (upstream's can score a reversed answer positive: rows
    10, 9, 2 against gold 2, 9, 10 score +0.33 because "(10,)" < "(2,)" as strings).
    """
    if order not in SQL_ORDERS:
        raise ValueError(f"sql_reward order must be one of {SQL_ORDERS}, not {order!r}")
    if agent_rows is None:
        return 0.0, {"iou": 0.0, "kendall_tau": None, "reason": "no result set"}
    agent_strings, gold_strings = stringify_rows(agent_rows), stringify_rows(gold_rows)
    agent, gold = Counter(agent_strings), Counter(gold_strings)
    union = agent | gold  # multiset union: max of the counts
    if not union:
        return 1.0, {"iou": 1.0, "kendall_tau": None, "reason": "both empty"}
    shared = agent & gold  # multiset intersection: min of the counts
    iou = sum(shared.values()) / sum(union.values())
    tau = math.nan
    if shared:
        agent_shared, gold_shared = _shared_in_order(agent_strings, shared), _shared_in_order(gold_strings, shared)
        if order == "upstream":
            tau = kendall_tau(agent_shared, gold_shared)
        else:
            tau = kendall_tau(*_position_order(agent_shared, gold_shared))
    # Tau undefined (one shared row, or all shared rows equal): the IoU alone, unrounded, as upstream.
    reward = iou if math.isnan(tau) else round(iou * tau, 2)
    return reward, {"iou": iou, "kendall_tau": None if math.isnan(tau) else tau}


# ----------------------------------------------------------------------------------------- Bash
Change = tuple[str, str]  # (path, status) with status "A" added, "M" modified, "D" deleted


def tfidf_cosine(first: str, second: str) -> float:
    """Cosine similarity of the two texts' TF-IDF vectors fitted on the pair (upstream's measure);
    texts with no word at all fall back to exact equality."""
    from sklearn.feature_extraction.text import TfidfVectorizer  # noqa: PLC0415  (start-up cost: sklearn)

    try:
        matrix = TfidfVectorizer().fit_transform([first, second])
    except ValueError:  # empty vocabulary: neither text has a token
        return 1.0 if first == second else 0.0
    return float((matrix * matrix.T).toarray()[0][1])


def bash_reward(
    agent_changes: set[Change],
    gold_changes: set[Change],
    agent_hashes: Mapping[str, str],
    gold_hashes: Mapping[str, str],
    agent_output: str,
    gold_output: str,
) -> tuple[float, dict]:
    """The weighted sum of file-system diff, changed-file contents and output similarity.

    `*_hashes` map each added/modified path to a content hash (md5 of the file, or of the whole
    subtree for a directory) in the agent's and in the gold's final file system.
    """
    missing, extra = gold_changes - agent_changes, agent_changes - gold_changes
    file_diff = round(0.33 * (1 - math.erf(len(missing) + len(extra))), 2)
    common = sorted(c for c in agent_changes & gold_changes if c[1] in ("A", "M"))
    file_changes = 0.33
    if common:
        same = sum(agent_hashes.get(path) == gold_hashes.get(path) for path, _ in common)
        file_changes = round(0.33 * same / len(common), 2)
    similarity = tfidf_cosine(agent_output, gold_output)
    answer = round(0.33 * similarity, 2)
    reward = round(0.01 + file_diff + file_changes + answer, 2)  # 0.01 + 3 x 0.33 = 1.0 exactly
    return reward, {
        "file_diff": file_diff,
        "file_changes": file_changes,
        "answer_similarity": answer,
        "missing_changes": sorted(missing),
        "extra_changes": sorted(extra),
        "tfidf_cosine": similarity,
    }
