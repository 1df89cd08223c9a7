"""Measured tables in the docs, generated from benchmarks/results/*.json so they never drift from the files.

A markdown file asks for a table with a marker pair::

    <!-- results: checkpointing -->
    (generated: the targets of benchmarks/results/checkpointing.json)
    <!-- /results -->

`<!-- results: summary -->` is one row per result file (targets met of listed). Run
`python -m benchmarks.report` after a benchmark run to rewrite every table; `--check` exits 1 and names
the files whose tables differ from the result files (the test suite runs it).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from benchmarks.common import RESULTS_DIR

ROOT = RESULTS_DIR.parent.parent
MARKER = re.compile(r"(<!-- results: *(?P<name>[\w-]+) *-->\n)(?P<body>.*?)(<!-- /results -->)", re.S)


def _number(value: float) -> str:
    if value == int(value) and abs(value) < 1e6:
        return str(int(value))
    return f"{value:.3g}"


def load_results(results_dir: Path = RESULTS_DIR) -> dict[str, dict]:
    return {path.stem: json.loads(path.read_text()) for path in sorted(results_dir.glob("*.json"))}


def _source_line(result: dict) -> str:
    machine = result.get("machine", {})
    where = f"{machine.get('cpus', '?')} CPUs, {machine.get('cpu_model', 'unknown CPU')}"
    if machine.get("gpu"):
        where += f", {machine['gpu']}"
    return f"From `{result.get('command', '?')}` ({where})."


def targets_table(result: dict) -> str:
    rows = ["| target | measured | goal | met |", "|---|---|---|---|"]
    for t in result.get("targets", []):
        rows.append(f"| `{t['name']}` | {_number(t['value'])} | {t['op']} {_number(t['goal'])} "
                    f"| {'yes' if t['met'] else '**no**'} |")
    if len(rows) == 2:
        rows.append("| (this benchmark lists no targets) | | | |")
    return "\n".join([_source_line(result), "", *rows])


def summary_table(results: dict[str, dict]) -> str:
    rows = ["| benchmark | command | targets met |", "|---|---|---|"]
    for name, result in results.items():
        targets = result.get("targets", [])
        met = sum(t["met"] for t in targets)
        rows.append(f"| `{name}` | `{result.get('command', '?')}` | {met} of {len(targets)} |")
    return "\n".join(rows)


def render(text: str, results: dict[str, dict], source: str = "") -> str:
    """`text` with every marked table regenerated; an unknown benchmark name is an error naming it."""

    def fill(match: re.Match) -> str:
        name = match["name"]
        if name == "summary":
            body = summary_table(results)
        elif name in results:
            body = targets_table(results[name])
        else:
            raise KeyError(f"{source or 'markdown'}: no benchmarks/results/{name}.json for marker {name!r}")
        return f"{match.group(1)}{body}\n{match.group(4)}"

    return MARKER.sub(fill, text)


def markdown_files(root: Path = ROOT) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").rglob("*.md"))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a table is stale")
    args = parser.parse_args(argv)
    results = load_results()
    stale = []
    for path in markdown_files():
        if not path.exists():
            continue
        text = path.read_text()
        new = render(text, results, source=str(path.relative_to(ROOT)))
        if new != text:
            stale.append(str(path.relative_to(ROOT)))
            if not args.check:
                path.write_text(new)
    if args.check and stale:
        print("tables differ from benchmarks/results/*.json (run python -m benchmarks.report): "
              + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
