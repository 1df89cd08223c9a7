"""The run's report: top hypotheses with their reviews, the Elo history plot and the proximity
clusters, as markdown and as a self-contained HTML page (the plot is embedded)."""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass
from typing import Any

from components.coscientist.proximity import Proximity
from components.coscientist.state import TournamentState


@dataclass
class Report:
    markdown: str
    html: str
    figure: Any  # matplotlib Figure of the Elo history
    ranking: list[dict]  # JSON-ready rows: id, elo, matches, wins, source, text, review
    clusters: list[list[str]]


def run_metrics(summary: dict, ranking: list[dict], initial_elo: float) -> dict[str, float]:
    """A run's figures: the tournament's outcome (top Elo, the spread of the active ratings, matches
    played) and what it cost."""
    elos = [h["elo"] for h in ranking]
    spent = summary["spent"]
    return {
        "top_elo": elos[0] if elos else initial_elo,
        "elo_spread": max(elos) - min(elos) if elos else 0.0,
        "hypotheses": summary["hypotheses"],
        "active_hypotheses": summary["by_status"].get("active", 0),
        "duplicates": summary["by_status"].get("duplicate", 0),
        "matches": summary["matches"],
        "debates": summary["debates"],
        "void_matches": summary["void_matches"],
        "llm_calls": spent["calls"],
        "tokens": spent["tokens"],
        "malformed_outputs": spent["malformed"],
    }


def elo_history(state: TournamentState) -> dict[str, list[tuple[int, float]]]:
    """Per hypothesis: (match number, rating after it), starting from its initial rating."""
    history: dict[str, list[tuple[int, float]]] = {}
    for n, m in enumerate(state.matches(), start=1):
        for hyp, before, after in (
            (m["a"], m["elo_a_before"], m["elo_a_after"]),
            (m["b"], m["elo_b_before"], m["elo_b_after"]),
        ):
            series = history.setdefault(hyp, [(n - 1, before)])
            series.append((n, after))
    return history


def plot_elo_history(state: TournamentState, highlight: list[str]):
    import matplotlib  # noqa: PLC0415  (start-up cost: only a report draws)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415  (after choosing the Agg backend)

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for hyp, series in elo_history(state).items():
        xs, ys = zip(*series)
        top = hyp in highlight
        ax.plot(xs, ys, lw=1.8 if top else 0.7, alpha=1.0 if top else 0.35, label=hyp if top else None)
    ax.axhline(state.initial_elo, color="grey", ls=":", lw=0.8)
    ax.set_xlabel("match")
    ax.set_ylabel("Elo")
    ax.set_title("Elo history (top hypotheses highlighted)")
    if ax.get_legend_handles_labels()[0]:  # no matches yet: nothing to label
        ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return fig


def build_report(state: TournamentState, proximity: Proximity, goal: str, summary: dict, top_n: int = 10) -> Report:
    hyps = state.hypotheses(statuses=("active",))
    ranked = sorted(hyps, key=lambda h: (-h["elo"], h["id"]))
    reviews = state.reviews()
    rows = [
        {
            "rank": i + 1,
            "id": h["id"],
            "elo": round(h["elo"], 1),
            "matches": h["matches"],
            "wins": h["wins"],
            "source": h["source"],
            "parents": h["parents"],
            "strategy": h["strategy"],
            "text": h["text"],
            "review": reviews.get(h["id"]),
        }
        for i, h in enumerate(ranked)
    ]
    if ranked:
        sims = proximity.similarities([h["text"] for h in ranked], [h["embedding"] for h in ranked])
        clusters = proximity.clusters([h["id"] for h in ranked], sims)
    else:
        clusters = []
    duplicates = state.hypotheses(statuses=("duplicate",))
    figure = plot_elo_history(state, [r["id"] for r in rows[:5]])
    feedback = state.latest_feedback()

    md = [
        "# Co-scientist report",
        "",
        f"**Goal:** {goal}",
        "",
        f"{summary['hypotheses']} hypotheses ({_statuses(summary['by_status'])}), {summary['matches']} matches "
        f"({summary['debates']} debates, {summary['void_matches']} void: unparseable verdicts), "
        f"{summary['spent']['calls']} LLM calls, {summary['spent']['tokens']} tokens, "
        f"proximity by {summary['proximity_backend']}."
        + (f" Active ratings span Elo {rows[-1]['elo']:.0f} to {rows[0]['elo']:.0f}." if rows else ""),
        "",
        "## Top hypotheses",
        "",
    ]
    for r in rows[:top_n]:
        md += [
            f"### {r['rank']}. {r['id']} — Elo {r['elo']} ({r['wins']}/{r['matches']} wins, {_origin(r)})",
            "",
            r["text"],
            "",
        ]
        if r["review"]:
            scores = ", ".join(f"{k} {v}/5" for k, v in r["review"]["scores"].items()) or "no scores parsed"
            md += [f"*Review ({r['review']['verdict']}; {scores}):* {r['review']['critique']}", ""]
    md += ["## Elo history", "", "![Elo history](elo_history.png)", "", "## Proximity clusters", ""]
    for i, cluster in enumerate(clusters, start=1):
        md.append(f"- cluster {i}: {', '.join(cluster)}")
    if duplicates:
        md += [
            "",
            "Duplicates removed by Proximity: "
            + ", ".join(f"{d['id']} (restates {d['duplicate_of']})" for d in duplicates),
        ]
    if feedback:
        md += ["", "## Latest meta-review", "", feedback]
    markdown = "\n".join(md) + "\n"
    return Report(
        markdown, _html(goal, rows[:top_n], clusters, duplicates, figure, feedback, md[4]), figure, rows, clusters
    )


def _statuses(by_status: dict) -> str:
    return ", ".join(f"{n} {s}" for s, n in sorted(by_status.items())) or "none"


def _origin(row: dict) -> str:
    if row["source"] == "evolution":
        return f"evolved ({row['strategy']}) from {', '.join(row['parents'])}"
    return "generated"


def _html(goal: str, rows: list[dict], clusters, duplicates, figure, feedback, headline: str) -> str:
    buf = io.BytesIO()
    figure.savefig(buf, format="png", dpi=100)
    img = base64.b64encode(buf.getvalue()).decode()
    e = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>Co-scientist report</title>",
        "<style>body{font-family:sans-serif;max-width:60em;margin:auto}td,th{padding:4px;vertical-align:top;"
        "border-bottom:1px solid #ddd}</style></head><body>",
        f"<h1>Co-scientist report</h1><p><b>Goal:</b> {e(goal)}</p><p>{e(headline)}</p>",
        "<h2>Top hypotheses</h2><table><tr><th>#</th><th>id</th><th>Elo</th><th>W/M</th><th>hypothesis</th>"
        "<th>review</th></tr>",
    ]
    for r in rows:
        review = r["review"] or {}
        parts.append(
            f"<tr><td>{r['rank']}</td><td>{e(r['id'])}</td><td>{r['elo']}</td><td>{r['wins']}/{r['matches']}</td>"
            f"<td>{e(r['text'])}<br><small>{e(_origin(r))}</small></td>"
            f"<td>{e(review.get('verdict', ''))}: {e(review.get('critique', ''))}</td></tr>"
        )
    parts.append(f"</table><h2>Elo history</h2><img alt='Elo history' src='data:image/png;base64,{img}'>")
    parts.append("<h2>Proximity clusters</h2><ul>" + "".join(f"<li>{e(', '.join(c))}</li>" for c in clusters) + "</ul>")
    if duplicates:
        parts.append(
            "<p>Duplicates removed: " + e(", ".join(f"{d['id']} → {d['duplicate_of']}" for d in duplicates)) + "</p>"
        )
    if feedback:
        parts.append(f"<h2>Latest meta-review</h2><pre>{e(feedback)}</pre>")
    parts.append("</body></html>")
    return "\n".join(parts)
