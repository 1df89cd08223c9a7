"""Measured tables in the docs, generated from benchmarks/results/*.json so they never drift from the files.

A markdown file asks for a table with a marker pair::

    <!-- results: checkpointing -->
    (generated: the targets of benchmarks/results/checkpointing.json)
    <!-- /results -->

`<!-- results: summary -->` is one row per result file (targets met of listed).
`<!-- results: gcn_loader/methods: epoch_seconds, stall_fraction -->` is the part of the file's
`results` at that path: a dict of dicts becomes one row per key with the named columns (all scalar
fields when none are named; a column may be a dotted path such as `tau.mean`), a list of dicts one row
per item, a dict of scalars one row per key. Run
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
MARKER = re.compile(
    r"(<!-- results: *(?P<name>[\w-]+)(?P<path>(?:/[\w.@-]+)*)(?:: *(?P<columns>[\w., -]+?))? *-->\n)"
    r"(?P<body>.*?)(<!-- /results -->)",
    re.S,
)


def _number(value: float) -> str:
    if value == int(value) and abs(value) < 1e15:
        return f"{int(value):,}"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def _cell(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)):
        return _number(value)
    return str(value)


def _table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def _is_scalar(value) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def load_results(results_dir: Path = RESULTS_DIR) -> dict[str, dict]:
    return {path.stem: json.loads(path.read_text()) for path in sorted(results_dir.glob("*.json"))}


def _source_line(result: dict) -> str:
    machine = result.get("machine", {})
    where = f"{machine.get('cpus', '?')} CPUs, {machine.get('cpu_model', 'unknown CPU')}"
    if machine.get("gpu"):
        where += f", {machine['gpu']}"
    return f"From `{result.get('command', '?')}` ({where})."


def targets_table(result: dict) -> str:
    rows = [
        [f"`{t['name']}`", _number(t["value"]), f"{t['op']} {_number(t['goal'])}", "yes" if t["met"] else "**no**"]
        for t in result.get("targets", [])
    ] or [["(this benchmark lists no targets)", "", "", ""]]
    return "\n".join([_source_line(result), "", _table(["target", "measured", "goal", "met"], rows)])


def summary_table(results: dict[str, dict]) -> str:
    rows = []
    for name, result in results.items():
        targets = result.get("targets", [])
        rows.append(
            [f"`{name}`", f"`{result.get('command', '?')}`", f"{sum(t['met'] for t in targets)} of {len(targets)}"]
        )
    return _table(["benchmark", "command", "targets met"], rows)


def _get(row: dict, dotted: str):
    value = row
    for key in dotted.split("."):
        value = value.get(key) if isinstance(value, dict) else None
    return value


def _format(value) -> str:
    if isinstance(value, list) and all(isinstance(v, (int, float)) for v in value):
        return "[" + ", ".join(_cell(v) for v in value) + "]"
    return _cell(value)


def _headers(columns: list[str]) -> list[str]:
    """Column headers without the path prefix that every column shares (`1.end_to_end_s` -> `end_to_end_s`)."""
    prefixes = {c.split(".", 1)[0] for c in columns}
    if len(prefixes) == 1 and all("." in c for c in columns):
        return [c.split(".", 1)[1] for c in columns]
    return columns


def part_table(result: dict, path: list[str], columns: list[str]) -> str:
    """The `results` subtree at `path` as a markdown table (see the module docstring)."""
    node = result.get("results", {})
    for key in path:
        if not isinstance(node, dict) or key not in node:
            raise KeyError(f"results has no {'/'.join(path)!r} (missing {key!r})")
        node = node[key]
    if isinstance(node, list) and all(isinstance(v, dict) for v in node):  # rows without a key column
        columns = columns or [c for c, x in node[0].items() if _is_scalar(x)]
        return _table(_headers(columns), [[_format(_get(r, c)) for c in columns] for r in node])
    if not isinstance(node, dict):
        raise KeyError(f"results/{'/'.join(path)} is a {type(node).__name__}, not a table")
    table_rows = {k: v for k, v in node.items() if isinstance(v, dict)}
    if not table_rows or (columns and all(_is_scalar(node.get(c, {})) for c in columns)):
        # a dict of scalars (or named scalar keys of a mixed dict): one row per key
        keys = columns or [k for k, v in node.items() if _is_scalar(v)]
        missing = [k for k in keys if k not in node]
        if missing:
            raise KeyError(f"results/{'/'.join(path)} has no {', '.join(missing)}")
        return _table(["name", "value"], [[f"`{k}`", _format(node[k])] for k in keys])
    if not columns:
        columns = list(dict.fromkeys(c for v in table_rows.values() for c, x in v.items() if _is_scalar(x)))
    rows = [[f"`{key}`", *(_format(_get(value, c)) for c in columns)] for key, value in table_rows.items()]
    return _table([path[-1], *_headers(columns)], rows)


def render(text: str, results: dict[str, dict], source: str = "") -> str:
    """`text` with every marked table regenerated; an unknown benchmark name is an error naming it."""

    def fill(match: re.Match) -> str:
        name = match["name"]
        if name == "summary":
            body = summary_table(results)
        elif name not in results:
            raise KeyError(f"{source or 'markdown'}: no benchmarks/results/{name}.json for marker {name!r}")
        elif match["path"]:
            columns = [c.strip() for c in (match["columns"] or "").split(",") if c.strip()]
            body = part_table(results[name], match["path"].strip("/").split("/"), columns)
        else:
            body = targets_table(results[name])
        return f"{match.group(1)}{body}\n{match.group(6)}"

    rendered = MARKER.sub(fill, text)
    opened = rendered.count("<!-- results:")
    if opened != len(MARKER.findall(rendered)):
        raise ValueError(
            f"{source or 'markdown'}: a '<!-- results: ... -->' marker does not parse "
            "(name/path/columns) or has no '<!-- /results -->'"
        )
    return rendered


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
        print(
            "tables differ from benchmarks/results/*.json (run python -m benchmarks.report): " + ", ".join(stale),
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
