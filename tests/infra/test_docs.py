"""The docs stay true to the repository: short README, generated tables current, links resolve."""

import re
import subprocess
from pathlib import Path

import pytest

from benchmarks import report

ROOT = Path(__file__).resolve().parents[2]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def test_readme_is_short():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 300


def test_no_file_refers_outside_the_repository():
    outside = "../" + "shared"  # spelled in two parts so that this file does not match itself
    tracked = subprocess.run(
        ["git", "grep", "-l", "-F", "-e", outside, "--", "."], cwd=ROOT, capture_output=True, text=True
    )
    assert tracked.stdout.strip() == "", f"files refer to {outside}: {tracked.stdout.split()}"


def test_generated_tables_match_result_files():
    assert report.main(["--check"]) == 0


@pytest.mark.parametrize("doc", report.markdown_files(ROOT), ids=lambda p: str(p.relative_to(ROOT)))
def test_local_links_resolve(doc):
    for target in LINK.findall(doc.read_text()):
        if "://" in target or target.startswith("mailto:"):
            continue
        assert (doc.parent / target).exists(), f"{doc.relative_to(ROOT)} links to missing {target}"


def test_render_rejects_unknown_benchmark():
    with pytest.raises(KeyError, match="no benchmarks/results/nope.json"):
        report.render("<!-- results: nope -->\n<!-- /results -->", {}, source="x.md")


def test_render_fills_targets_from_the_file():
    result = {
        "command": "python -m benchmarks.x --full",
        "machine": {"cpus": 2, "cpu_model": "cpu"},
        "targets": [{"name": "speedup", "value": 1.234567, "goal": 2.0, "op": ">=", "met": False}],
    }
    text = report.render("a\n<!-- results: x -->\nstale\n<!-- /results -->\nb", {"x": result})
    assert "| `speedup` | 1.23 | >= 2 | **no** |" in text and "stale" not in text
    assert text.startswith("a\n") and text.endswith("<!-- /results -->\nb")
