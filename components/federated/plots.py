"""The federated run's figure: test accuracy of the global model against (virtual) time."""

from __future__ import annotations

from collections.abc import Sequence

from matplotlib.figure import Figure


def curve_figure(history: Sequence[dict], title: str) -> Figure:
    """Accuracy against (virtual) time, one line per run name in `history` rows' "run" key."""
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    runs: dict[str, list[dict]] = {}
    for row in history:
        runs.setdefault(row.get("run", "global model"), []).append(row)
    for name, rows in runs.items():
        ax.plot([r["time"] for r in rows], [r["accuracy"] for r in rows], label=name)
    ax.set_xlabel("time (virtual seconds)")
    ax.set_ylabel("test accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return fig
