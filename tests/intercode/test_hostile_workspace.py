"""Host-side walks of an agent's file system are iterative and bounded, and workspaces are removed
whatever the agent built: an 1100-deep directory, thousands of files, unwritable folders."""

from __future__ import annotations

import os
import stat
import subprocess
import warnings

import pytest

from components.intercode import fsdiff
from components.intercode.env import BashEnv, make_env
from components.intercode.tasksets import BASH_TASKS
from components.sandbox.core import remove_tree

DEEP_1100 = "mkdir -p $(printf 'd/%.0s' $(seq 1100)) && echo built"


def _make_deep(root, levels, name="d"):
    """A `levels`-deep chain of folders built by file descriptor (no path ever gets long here)."""
    fd = os.open(root, os.O_RDONLY)
    try:
        for _ in range(levels):
            os.mkdir(name, dir_fd=fd)
            child = os.open(name, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = child
        with open(os.open("leaf.txt", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd), "w") as handle:
            handle.write("bottom")
    finally:
        os.close(fd)


@pytest.fixture
def deep_tmp(tmp_path):
    """A folder for deep trees, removed by coreutils afterwards whatever the test did: pytest's own
    clean-up of old tmp folders recurses and would fail on an 1100-deep leftover."""
    folder = tmp_path / "deep"
    folder.mkdir()
    yield folder
    subprocess.run(["rm", "-rf", "--", str(folder)], check=False)


@pytest.fixture
def bash_env(asset_dir):
    env = make_env("bash", BASH_TASKS, asset_dir)
    yield env
    env.close()


def _workspace_path(env: BashEnv):
    return env._agent_ws[env.task.fixture].path


def test_1100_deep_directory_submit_observes_too_deep_instead_of_recursion_error(bash_env):
    bash_env.reset(0)
    assert "built" in bash_env.step(DEEP_1100)[0]
    observation, reward, terminated, _, info = bash_env.step("submit")
    assert terminated and reward == 0.0
    assert observation.startswith("workspace too deep") and "64 folder levels" in observation
    assert info["workspace_error"].startswith("workspace too deep")


def test_1100_deep_directory_reset_gives_a_clean_fixture(bash_env):
    bash_env.reset(0)
    bash_env.step(DEEP_1100)
    bash_env.reset(0)
    assert "d" not in bash_env.step("ls /testbed")[0].split()
    assert bash_env.evaluate()[1]["extra_changes"] == []


def test_1100_deep_directory_close_removes_the_workspace(asset_dir):
    env = make_env("bash", BASH_TASKS, asset_dir)
    env.reset(0)
    env.step(DEEP_1100)
    folder = _workspace_path(env)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a workspace left behind would warn
        env.close()
    assert not folder.exists()


def test_unwritable_and_unreadable_folders_are_removed_on_close(asset_dir):
    env = make_env("bash", BASH_TASKS, asset_dir)
    env.reset(0)
    env.step(
        "mkdir -p /testbed/locked/inner && touch /testbed/locked/inner/f && chmod 000 /testbed/locked/inner "
        "&& chmod 500 /testbed/locked"
    )
    folder = _workspace_path(env)
    env.close()
    assert not folder.exists()


def test_many_files_observe_too_large(asset_dir):
    env = BashEnv(BASH_TASKS, asset_dir / "filesystems", limits=fsdiff.WalkLimits(max_entries=500))
    try:
        env.reset(0)
        env.step("mkdir /testbed/many && cd /testbed/many && touch $(seq 1000)")
        observation, reward, _, _, _ = env.step("submit")
        assert reward == 0.0 and observation.startswith("workspace too large: more than 500 files")
    finally:
        env.close()


def test_snapshot_limits_depth_entries_and_bytes(tmp_path, deep_tmp):
    _make_deep(deep_tmp, 1100)
    with pytest.raises(fsdiff.WorkspaceTooLarge, match="too deep: d/d/d.*more than 64 folder levels"):
        fsdiff.snapshot(deep_tmp)
    assert len(fsdiff.snapshot(deep_tmp, fsdiff.WalkLimits(max_depth=2000))) == 1101
    wide = tmp_path / "wide"
    wide.mkdir()
    for i in range(30):
        (wide / f"f{i}").write_bytes(b"x" * 1000)
    with pytest.raises(fsdiff.WorkspaceTooLarge, match="more than 20 files"):
        fsdiff.snapshot(wide, fsdiff.WalkLimits(max_entries=20))
    with pytest.raises(fsdiff.WorkspaceTooLarge, match="MiB of files"):
        fsdiff.snapshot(wide, fsdiff.WalkLimits(max_bytes=10_000))
    assert len(fsdiff.snapshot(wide)) == 30


def test_remove_tree_deeper_than_path_max_and_unwritable(deep_tmp):
    tmp_path = deep_tmp
    _make_deep(tmp_path, 60, name="n" * 200)  # ~12,000-character paths: beyond PATH_MAX
    _make_deep(tmp_path, 1100)
    locked = tmp_path / "locked"
    (locked / "inner").mkdir(parents=True)
    (locked / "inner" / "f").write_text("x")
    os.chmod(locked / "inner", 0)
    os.chmod(locked, stat.S_IRUSR | stat.S_IXUSR)
    os.symlink("/etc", tmp_path / "link_to_etc")  # removed as a link, never followed
    remove_tree(tmp_path)  # the sandbox's one implementation, which InterCode's workspaces use
    assert not tmp_path.exists() and os.path.isdir("/etc")


def test_hashes_from_one_snapshot_match_content_hash(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "f").write_text("1")
    (tmp_path / "a0").write_text("sorts right after a/")
    (tmp_path / "c.txt").write_text("c")
    state = fsdiff.snapshot(tmp_path)
    paths = ["a/", "a/b/", "a0", "c.txt", "gone.txt"]
    assert fsdiff.hashes_of(state, paths) == {p: fsdiff.content_hash(tmp_path, p) for p in paths}
