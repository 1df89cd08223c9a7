"""The reward functions: SQL on cases computed with upstream InterCode's formula, Bash on hand-computed cases."""

from __future__ import annotations

import math
import os

import pytest

from components.intercode import fsdiff
from components.intercode.rewards import bash_reward, kendall_tau, sql_reward, tfidf_cosine

# (name, agent rows or None for "no result set", gold rows, reward). Every expected reward was computed by
# running upstream InterCode's SqlEnv.get_reward (intercode/envs/sql/sql_env.py) on these rows; the
# "mixed_*" cases are random draws kept as fixed inputs.
UPSTREAM_SQL_CASES = [
    ("identical", [(1, "a"), (2, "b")], [(1, "a"), (2, "b")], 1.0),
    ("both_empty", [], [], 1.0),
    ("agent_empty", [], [(1,)], 0.0),
    ("gold_empty", [(1,)], [], 0.0),
    ("no_result_set", None, [(1,)], 0.0),
    ("no_result_set_gold_empty", None, [], 0.0),
    ("partial_overlap", [(1,), (2,), (4,)], [(1,), (2,), (3,)], 0.5),
    ("dup_agent", [(1,), (1,)], [(1,)], 0.5),
    ("dup_both_same", [(1,), (1,)], [(1,), (1,)], 1.0),
    ("swap_three", [("a",), ("c",), ("b",)], [("a",), ("b",), ("c",)], 0.33),
    ("reversed", [(3,), (2,), (1,)], [(1,), (2,), (3,)], -1.0),
    ("int_vs_float", [(1.0,)], [(1,)], 0.0),
    ("lexicographic_numbers", [(10,), (9,), (2,)], [(2,), (9,), (10,)], 0.33),
    ("lexicographic_numbers_2", [(2,), (9,), (10,)], [(2,), (9,), (10,)], 1.0),
    ("ties_dups_reordered", [("x",), ("y",), ("x",), ("z",)], [("x",), ("x",), ("y",), ("z",)], 0.4),
    ("ties_dups_2", [("b",), ("a",), ("a",)], [("a",), ("a",), ("b",)], -0.5),
    ("rotate_four", [("b",), ("c",), ("d",), ("a",)], [("a",), ("b",), ("c",), ("d",)], 0.0),
    ("perm_four", [("b",), ("d",), ("a",), ("c",)], [("a",), ("b",), ("c",), ("d",)], 0.0),
    ("perm_five", [(5,), (1,), (4,), (2,), (3,)], [(1,), (2,), (3,), (4,), (5,)], -0.2),
    ("perm_gold_unsorted", [("c",), ("a",), ("b",)], [("b",), ("c",), ("a",)], -0.33),
    ("perm_gold_unsorted_2", [("a",), ("b",), ("c",), ("d",)], [("d",), ("a",), ("c",), ("b",)], -0.33),
    ("rounding_iou_third", [(1,), (2,), (5,)], [(1,), (2,), (3,), (4,)], 0.4),
    ("rounding_tau", [(1,), (3,), (2,), (4,), (5,), (6,), (7,)], [(1,), (2,), (3,), (4,), (5,), (6,), (7,)], 0.9),
    ("one_shared_iou_third", [(1,), (2,)], [(1,), (3,)], 0.3333333333333333),
    ("extra_dup_and_order", [(2,), (1,), (1,), (3,)], [(1,), (2,), (3,)], 0.25),
    ("none_values", [(None,), (1,)], [(1,), (None,)], -1.0),
    ("multi_column", [(1, "x", 2.5), (2, "y", None)], [(2, "y", None), (1, "x", 2.5)], -1.0),
    ("strings_case", [("B",), ("a",), ("C",)], [("a",), ("B",), ("C",)], -1.0),
    ("disjoint", [(7,), (8,)], [(1,), (2,)], 0.0),
    ("large_dups", [(1,), (1,), (1,), (2,), (2,)], [(2,), (2,), (1,), (1,), (1,)], -0.67),
    (
        "mixed_00",
        [(1, 2.5), ("B", 2.5), ("a", -1), ("x y",), (2.5,), (2,)],
        [("x y", -1), (3, 2.5), (2, 2), ("a", None)],
        0.0,
    ),
    ("mixed_01", [(1,), ("x y", 1), (2,)], [(2,), (None,), (10,)], 0.2),
    (
        "mixed_02",
        [("a",), ("B", "a"), (3,), ("B", "B"), (10, 10), ("B",)],
        [("B", "B"), ("a",), (10, 10), (3,), ("B",), ("B", "a")],
        -0.2,
    ),
    ("mixed_03", [("B",), (2,), (1, 2), (-1,)], [("B",), (2,), (1, 2), (-1,), (1,)], 0.8),
    ("mixed_04", [(2,), ("a", "B"), (3, None)], [("x y",), (2,)], 0.25),
    ("mixed_05", [(2,), ("x y", None), (3,), ("a", 1)], [(1,), (1,), (2,), (-1,), ("a",), (3,)], 0.25),
    ("mixed_06", [("x y",), (10, "a"), ("a", 1)], [(1,), (2.5,), ("a",), (2.5,), (-1,), (None,), (2,)], 0.0),
    ("mixed_07", [(None, "B"), ("x y", "B"), (3,)], [(None, "B"), (3,), ("x y", "B"), ("x y", 2)], 0.25),
    ("mixed_08", [(-1,), (2,), ("a",)], [("a",), (-1,), (2,), (2.5,)], -0.25),
    ("mixed_09", [(2.5,), ("a", "a"), (-1,), (2,)], [(2,), (-1,)], -0.5),
    ("mixed_10", [("x y",), (1,), (-1,)], [], 0.0),
    (
        "mixed_11",
        [("x y",), (None,), (-1,), (1,), (-1,), (None, 1), (None,)],
        [("x y",), (None,), (-1,), (-1,), (None,), (None, 1), (1,), (2.5,), (2.5,)],
        0.37,
    ),
]


@pytest.mark.parametrize("name, agent, gold, expected", UPSTREAM_SQL_CASES, ids=[c[0] for c in UPSTREAM_SQL_CASES])
def test_sql_reward_equals_upstream_intercode(name, agent, gold, expected):
    assert sql_reward(agent, gold)[0] == pytest.approx(expected, abs=1e-12)


def test_sql_reward_upstream_ranks_strings_not_positions():
    # upstream pairs the shared row strings by position and compares them as strings: "(10,)" < "(2,)",
    # so this reversed answer scores +0.33; order="position" judges where each row stands: -1
    agent, gold = [(10,), (9,), (2,)], [(2,), (9,), (10,)]
    assert sql_reward(agent, gold)[0] == pytest.approx(0.33)
    assert sql_reward(agent, gold, order="position")[0] == pytest.approx(-1.0)
    assert sql_reward([(1,), (2,)], [(1,), (2,)], order="position")[0] == 1.0


def test_sql_reward_rejects_unknown_order():
    with pytest.raises(ValueError, match="order must be one of"):
        sql_reward([(1,)], [(1,)], order="sorted")


def test_sql_reward_rounds_only_when_tau_is_defined():
    # one shared row: no tau, the IoU 1/3 stays unrounded; with tau the product is rounded to 2 decimals
    assert sql_reward([(1,), (2,)], [(1,), (3,)])[0] == pytest.approx(1 / 3, abs=1e-15)
    reward, info = sql_reward([("a",), ("c",), ("b",)], [("a",), ("b",), ("c",)])
    assert info["kendall_tau"] == pytest.approx(1 / 3) and reward == 0.33


def test_kendall_tau_small_cases():
    assert kendall_tau([0, 1, 2, 3], [0, 1, 2, 3]) == 1.0
    assert kendall_tau([0, 1, 2, 3], [3, 2, 1, 0]) == -1.0
    assert kendall_tau([0, 1, 2, 3], [1, 0, 2, 3]) == pytest.approx((5 - 1) / 6)
    assert math.isnan(kendall_tau([0], [0]))
    assert math.isnan(kendall_tau(["a", "a"], ["b", "a"]))  # one side constant: tau-b undefined
    # tau-b with ties: x = b,a,a  y = a,a,b: pair (0,2) discordant, (0,1) tied in y, (1,2) tied in x
    # -> (0 - 1) / sqrt((3 - 1) * (3 - 1)) = -1/2
    assert kendall_tau(["b", "a", "a"], ["a", "a", "b"]) == pytest.approx(-0.5)


def test_tfidf_cosine():
    assert tfidf_cosine("alpha beta", "alpha beta") == pytest.approx(1.0)
    assert tfidf_cosine("alpha beta", "gamma delta") == pytest.approx(0.0)
    assert tfidf_cosine("", "") == 1.0  # no vocabulary: exact equality
    assert tfidf_cosine("", "word") == 0.0


def test_bash_reward_hand_computed():
    changes = {("a.txt", "A"), ("b.txt", "M")}
    hashes = {"a.txt": "h1", "b.txt": "h2"}
    assert bash_reward(changes, changes, hashes, hashes, "out put", "out put")[0] == 1.0
    # one extra change: 0.33 * (1 - erf(1)) = 0.0519 -> 0.05; contents and output right: 0.01+0.05+0.33+0.33
    extra = changes | {("c.txt", "A")}
    reward, info = bash_reward(extra, changes, {**hashes, "c.txt": "h3"}, hashes, "x", "x")
    assert info["file_diff"] == 0.05 and reward == pytest.approx(0.72)
    # same changes, one of the two files with other contents: 0.33 * 1/2 = 0.165 -> 0.17 (rounded as upstream)
    reward, info = bash_reward(changes, changes, {"a.txt": "h1", "b.txt": "zz"}, hashes, "x", "x")
    assert info["file_changes"] == pytest.approx(0.17) and reward == pytest.approx(0.84)
    # no changes on either side, output wrong: contents part is full by definition, answer part 0
    reward, info = bash_reward(set(), set(), {}, {}, "nothing alike", "totally different")
    assert reward == pytest.approx(0.67)
    # two missing changes: erf(2) = 0.9953 -> 0.33 * 0.0047 = 0.0015 -> 0.0; nothing in common -> 0.33
    reward, _ = bash_reward(set(), changes, {}, hashes, "", "")
    assert reward == pytest.approx(0.01 + 0.0 + 0.33 + 0.33)


def test_fsdiff_collapses_new_dirs_and_sees_modes(tmp_path):
    root = tmp_path / "fs"
    (root / "keep").mkdir(parents=True)
    (root / "keep" / "a.txt").write_text("a")
    (root / "old").mkdir()
    (root / "old" / "x.txt").write_text("x")
    (root / "run.sh").write_text("echo")
    before = fsdiff.snapshot(root)
    (root / "new" / "deep").mkdir(parents=True)
    (root / "new" / "deep" / "f.txt").write_text("f")
    (root / "keep" / "a.txt").write_text("changed")
    (root / "old" / "x.txt").unlink()
    (root / "old").rmdir()
    (root / "run.sh").chmod(0o755)
    os.symlink("/etc/passwd", root / "link")  # recorded by target, never followed
    os.mkfifo(root / "pipe")  # never opened (opening a FIFO would block the host)
    changes = fsdiff.diff(before, fsdiff.snapshot(root))
    assert changes == {("new/", "A"), ("keep/a.txt", "M"), ("old/", "D"), ("run.sh", "M"), ("link", "A"), ("pipe", "A")}
    assert fsdiff.content_hash(root, "new/") != fsdiff.content_hash(root, "keep/")
    assert fsdiff.content_hash(root, "missing.txt") == "missing"
