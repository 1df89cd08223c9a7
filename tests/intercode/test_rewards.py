"""The reward functions on hand-computed cases (numbers worked out in the comments)."""
from __future__ import annotations

import math
import os

import pytest

from components.intercode import fsdiff
from components.intercode.rewards import bash_reward, kendall_tau, sql_reward, tfidf_cosine


def test_sql_reward_identical_and_empty():
    assert sql_reward([(1, "a"), (2, "b")], [(1, "a"), (2, "b")])[0] == 1.0
    assert sql_reward([], [])[0] == 1.0  # both empty -> 1
    assert sql_reward(None, [(1,)])[0] == 0.0  # an error / no result set
    assert sql_reward([], [(1,)])[0] == 0.0  # union 1, intersection 0


def test_sql_reward_partial_overlap():
    # multisets {1,2,4} vs {1,2,3}: intersection 2, union 4 -> IoU 0.5; shared rows in the same order -> tau 1
    reward, info = sql_reward([(1,), (2,), (4,)], [(1,), (2,), (3,)])
    assert reward == pytest.approx(0.5) and info["kendall_tau"] == pytest.approx(1.0)


def test_sql_reward_duplicates_count_as_a_multiset():
    # {1,1} vs {1}: intersection 1, union 2 -> 0.5; one shared row has no order -> no tau scaling
    reward, info = sql_reward([(1,), (1,)], [(1,)])
    assert reward == pytest.approx(0.5) and info["kendall_tau"] is None


def test_sql_reward_scales_by_kendall_tau_of_the_order():
    # same rows, agent order a,c,b vs gold a,b,c: pairs (a,c) and (a,b) concordant, (c,b) discordant
    # -> tau = (2 - 1) / 3 = 1/3; IoU 1 -> reward 1/3
    reward, info = sql_reward([("a",), ("c",), ("b",)], [("a",), ("b",), ("c",)])
    assert info["iou"] == 1.0 and reward == pytest.approx(1 / 3)
    # fully reversed: tau = -1, and upstream multiplies by it (the reward can be negative)
    assert sql_reward([(3,), (2,), (1,)], [(1,), (2,), (3,)])[0] == pytest.approx(-1.0)


def test_sql_rows_compare_as_strings():
    # upstream stringifies rows: 1 and 1.0 are different answers
    assert sql_reward([(1.0,)], [(1,)])[0] == 0.0


def test_kendall_tau_small_cases():
    assert kendall_tau([0, 1, 2, 3], [0, 1, 2, 3]) == 1.0
    assert kendall_tau([0, 1, 2, 3], [3, 2, 1, 0]) == -1.0
    assert kendall_tau([0, 1, 2, 3], [1, 0, 2, 3]) == pytest.approx((5 - 1) / 6)
    assert math.isnan(kendall_tau([0], [0]))


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
    assert changes == {("new/", "A"), ("keep/a.txt", "M"), ("old/", "D"), ("run.sh", "M"), ("link", "A"),
                       ("pipe", "A")}
    assert fsdiff.content_hash(root, "new/") != fsdiff.content_hash(root, "keep/")
    assert fsdiff.content_hash(root, "missing.txt") == "missing"
