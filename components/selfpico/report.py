"""A selfpico run's per-snippet table and coverage histogram (the flow logs both to MLflow)."""

from __future__ import annotations

from matplotlib.figure import Figure


def snippet_table(reports: list[dict]) -> str:
    rows = "\n".join(
        f"| {r['snippet_id']} | {r['origin']} | {r['coverage']:.2f} | {r['runs']} | {r['predictions']} | "
        f"{r['final_status']} | {', '.join(e['error_type'] for e in r['errors']) or '-'} |"
        for r in reports
    )
    header = "| snippet | origin | coverage | runs | predictions | status | errors |\n" + "|---" * 7 + "|\n"
    return header + rows


def coverage_figure(reports: list[dict], predictor: str):
    fig = Figure(figsize=(6, 3.5))  # no pyplot: no GUI backend, nothing left open
    ax = fig.subplots()
    ax.hist([r["coverage"] for r in reports], bins=10, range=(0, 1), color="tab:blue")
    ax.set_xlabel("line coverage per snippet")
    ax.set_ylabel("snippets")
    ax.set_title(f"SelfPiCo, predictor {predictor}")
    return fig
