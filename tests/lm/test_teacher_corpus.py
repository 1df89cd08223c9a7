"""The teacher-corpus prompt pool: disjoint from the decoding benchmark, deterministic, sliceable."""

from __future__ import annotations

from components.decoding.prompts import CHAT_PROMPTS, CODE_PROMPTS
from components.lm.teacher_prompts import HELD_OUT
from tests.scripts_module import load_script

teacher_corpus = load_script("teacher_corpus")

SOURCE = '''
def parse_header(line, strict=False):
    """Split an HTTP header line into its name and value."""

def fibonacci(n):
    """Return the n-th Fibonacci number, like the benchmark's prompt."""

def _private(x):
    """Not public, so never a prompt."""

def undocumented(x):
    return x

def merge_ranges(ranges):
    """Join overlapping integer ranges into disjoint ones."""
'''


def _tree(tmp_path):
    for rel in ("pkg/__init__.py", "pkg/util.py", "tests/test_util.py", "pkg/_impl.py"):
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(SOURCE.replace("merge_ranges", f"merge_{path.stem.strip('_')}"))
    return tmp_path


def test_documented_functions_are_public_documented_and_exclude_the_benchmarks_subjects(tmp_path):
    found = teacher_corpus.documented_functions([_tree(tmp_path)])
    # first-seen wins across files; tests/ and private modules are skipped
    assert [f.name for f in found] == ["parse_header", "merge_init", "merge_util"]
    assert found[0] == (
        "pkg",
        "parse_header",
        "line, strict=False",
        "Split an HTTP header line into its name and value.",
    )
    assert found[2].module == "pkg.util"


def test_the_pool_alternates_kinds_never_names_a_benchmark_prompts_subject_and_is_fixed_by_the_seed(tmp_path):
    functions = teacher_corpus.documented_functions([_tree(tmp_path)])
    chats = teacher_corpus.chat_prompts(functions, seed=0)
    codes = teacher_corpus.code_prompts(functions)
    pool = teacher_corpus.prompt_pool(chats, codes, seed=0)

    assert len(pool) == len(chats) + len(codes) and len(set(pool)) == len(pool)
    assert [p.startswith("def ") for p in pool[:6]] == [False, True] * 3
    assert chats[0] == teacher_corpus.CHAT_TEMPLATES[0].format(t=teacher_corpus.TOPICS[0])  # topics come first
    assert any("merge_util" in c and "`pkg.util`" in c for c in chats)
    benchmark = [p.lower() for p in CHAT_PROMPTS + CODE_PROMPTS]
    assert not set(p.lower() for p in pool) & set(benchmark)
    assert not any(subject in p.lower() for p in pool for subject in HELD_OUT)
    assert teacher_corpus.prompt_pool(chats, codes, seed=0) == pool
    assert teacher_corpus.prompt_pool(chats, codes, seed=1) != pool
