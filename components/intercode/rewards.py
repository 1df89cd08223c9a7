"""InterCode's reward functions (Yang et al., 2023), as pure functions of what the episodes produced.

SQL: intersection-over-union of the agent's and the gold result rows, taken as multisets of
stringified rows, scaled by the Kendall tau between the orders in which the two results list their
shared rows; both results empty -> 1.

Bash: 0.01 + 0.33 * (1 - erf(#missing + #extra file-system changes))
             + 0.33 * (fraction of changes made by both whose contents (md5) agree)
             + 0.33 * (TF-IDF cosine similarity of the agent's last output and the gold output),
each part rounded to 2 decimals as upstream does, so only an exact match reaches 1.0.
"""
from __future__ import annotations

import math
from collections import Counter
from typing import Any, Hashable, Mapping, Optional, Sequence

Row = Sequence[Any]


def stringify_rows(rows: Sequence[Row]) -> list[str]:
    """Upstream stringifies every row tuple so that mixed types compare without errors."""
    return [str(tuple(row)) for row in rows]


def kendall_tau(first: Sequence[float], second: Sequence[float]) -> float:
    """Kendall's tau-a of two rankings without ties (NaN when fewer than two items)."""
    n = len(first)
    if n != len(second):
        raise ValueError("kendall_tau needs two rankings of the same items")
    if n < 2:
        return math.nan
    concordant = discordant = 0
    for i in range(n):
        for j in range(i + 1, n):
            sign = (first[i] - first[j]) * (second[i] - second[j])
            concordant += sign > 0
            discordant += sign < 0
    return (concordant - discordant) / (n * (n - 1) / 2)


def _occurrences(items: Sequence[Hashable], keep: Counter) -> list[tuple[Hashable, int]]:
    """The shared items in list order, each tagged with its occurrence number (duplicates stay distinct)."""
    budget, seen, out = Counter(keep), Counter(), []
    for item in items:
        if budget[item] > 0:
            budget[item] -= 1
            out.append((item, seen[item]))
            seen[item] += 1
    return out


def sql_reward(agent_rows: Optional[Sequence[Row]], gold_rows: Sequence[Row]) -> tuple[float, dict]:
    """IoU of the row multisets x Kendall tau of the shared rows' order. `agent_rows=None`: no result
    set (an error or a statement without rows) scores 0, as upstream."""
    if agent_rows is None:
        return 0.0, {"iou": 0.0, "kendall_tau": None, "reason": "no result set"}
    agent, gold = Counter(stringify_rows(agent_rows)), Counter(stringify_rows(gold_rows))
    union = agent | gold  # multiset union: max of the counts
    if not union:
        return 1.0, {"iou": 1.0, "kendall_tau": None, "reason": "both empty"}
    shared = agent & gold  # multiset intersection: min of the counts
    iou = sum(shared.values()) / sum(union.values())
    tau = math.nan
    if shared:
        agent_order = _occurrences(stringify_rows(agent_rows), shared)
        gold_position = {item: pos for pos, item in enumerate(_occurrences(stringify_rows(gold_rows), shared))}
        tau = kendall_tau(list(range(len(agent_order))), [gold_position[item] for item in agent_order])
    reward = iou if math.isnan(tau) else iou * tau  # one shared row has no order to judge
    return reward, {"iou": iou, "kendall_tau": None if math.isnan(tau) else tau}


# ----------------------------------------------------------------------------------------- Bash
Change = tuple[str, str]  # (path, status) with status "A" added, "M" modified, "D" deleted


def tfidf_cosine(first: str, second: str) -> float:
    """Cosine similarity of the two texts' TF-IDF vectors fitted on the pair (upstream's measure);
    texts with no word at all fall back to exact equality."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    try:
        matrix = TfidfVectorizer().fit_transform([first, second])
    except ValueError:  # empty vocabulary: neither text has a token
        return 1.0 if first == second else 0.0
    return float((matrix * matrix.T).toarray()[0][1])


def bash_reward(agent_changes: set[Change], gold_changes: set[Change],
                agent_hashes: Mapping[str, str], gold_hashes: Mapping[str, str],
                agent_output: str, gold_output: str) -> tuple[float, dict]:
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
    return reward, {"file_diff": file_diff, "file_changes": file_changes, "answer_similarity": answer,
                    "missing_changes": sorted(missing), "extra_changes": sorted(extra),
                    "tfidf_cosine": similarity}
