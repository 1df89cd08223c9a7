"""The sandbox bounded as a whole: memory and processes across all of its processes, a size-limited
working folder, no nested user namespaces, no host paths in the mount table, workspaces removed
whatever the payload built, and no base site-packages when packages are not exposed.

Each case is bounded (wall clock, tmpfs sizes, the cgroup) and touches no network."""

from __future__ import annotations

import os
import sys
import sysconfig
from pathlib import Path

import pytest

from components.sandbox import Sandbox, SandboxLimits, core, isolation_mode
from components.sandbox.cgroup import CgroupSupport
from components.sandbox.core import remove_tree

pytestmark = pytest.mark.skipif(isolation_mode() is None, reason="no namespace support on this host")
ROOT_ONLY = pytest.mark.skipif(isolation_mode() != "root", reason="cgroups and host tmpfs need root")

FIVE_HOLDERS = """
for i in 1 2 3 4 5; do
  python3 -S -c "x = b'x' * (700 << 20); import time; time.sleep(2); print('held')" &
done
wait
"""


@pytest.fixture
def no_cgroup(monkeypatch):
    """The machine without usable cgroups: the supervisor's budget must hold instead."""
    monkeypatch.setitem(core._probe_cache, "cgroup", CgroupSupport(None))


@ROOT_ONLY
def test_five_processes_of_700_mb_do_not_get_past_1_gib_together():
    support = core.cgroup_support()
    if support.version is None:
        pytest.skip("no writable cgroup here (the supervisor test covers this machine)")
    box = Sandbox(SandboxLimits(wall_seconds=20, memory_bytes=1 << 30, cpu_seconds=10))
    result = box.run_command(FIVE_HOLDERS)
    assert result.limits_enforced_by == f"cgroup v{support.version}"
    assert result.stdout.count("held") <= 1  # 5 x 700 MB would be 3.5 GB: at most one fits in 1 GiB
    assert result.killed_reason == "memory limit"
    assert 0 < result.sandbox_peak_memory_bytes <= 1 << 30


def test_five_processes_of_700_mb_are_stopped_by_the_supervisor_without_a_cgroup(no_cgroup):
    box = Sandbox(SandboxLimits(wall_seconds=20, memory_bytes=1 << 30, cpu_seconds=10))
    result = box.run_command(FIVE_HOLDERS)
    assert result.limits_enforced_by == "supervisor"
    assert result.killed_reason == "memory limit"
    assert result.stdout.count("held") <= 1


FORK_30 = """
import os, time
started = 0
for _ in range(30):
    try:
        if os.fork() == 0:
            time.sleep(3)
            os._exit(0)
        started += 1
    except OSError:
        break
print("started", started, flush=True)
time.sleep(0.5)
"""


@ROOT_ONLY
def test_fork_bomb_stops_at_the_sandbox_process_cap():
    if core.cgroup_support().version is None:
        pytest.skip("no writable cgroup here")
    box = Sandbox(SandboxLimits(wall_seconds=10, max_processes=8))
    result = box.run_python(FORK_30)
    started = int(result.stdout.split()[1])
    assert started < 8  # PID 1 and the payload itself count too
    assert result.killed_reason == "process limit"


def test_fork_bomb_past_the_cap_is_killed_by_the_supervisor_without_a_cgroup(no_cgroup):
    box = Sandbox(SandboxLimits(wall_seconds=10, max_processes=8))
    result = box.run_command(":(){ :|:& };:; sleep 5")
    assert result.killed_reason == "process limit"


WRITE_430_MB = "for i in $(seq 43); do head -c 10M /dev/zero > f$i || exit 1; done; echo wrote all"


@ROOT_ONLY
def test_430_mb_written_to_the_working_folder_hits_its_size_limit():
    box = Sandbox(SandboxLimits(wall_seconds=20, work_bytes=64 << 20, file_bytes=16 << 20))
    result = box.run_command(WRITE_430_MB + "; df -B1 --output=size /sandbox")
    assert "wrote all" not in result.stdout
    assert result.killed_reason == "disk space limit (working folder)"


@ROOT_ONLY
def test_430_mb_written_to_a_workspace_stays_within_work_bytes_on_the_host(tmp_path):
    box = Sandbox(SandboxLimits(wall_seconds=20, work_bytes=64 << 20, file_bytes=16 << 20))
    with box.workspace() as ws:
        result = box.run_command(WRITE_430_MB, workspace=ws)
        assert "wrote all" not in result.stdout
        used = sum(f.stat().st_size for f in ws.path.iterdir())
        assert used <= 64 << 20
        host = ws.path
    assert not host.exists()


def test_the_working_folder_limit_is_checked_in_the_config():
    with pytest.raises(ValueError, match="work_bytes"):
        SandboxLimits(work_bytes=0)
    with pytest.raises(ValueError, match="max_processes"):
        SandboxLimits(max_processes=1)


@pytest.mark.parametrize(
    "command",
    [
        "unshare -U -r id",
        "unshare -U -r -m sh -c 'mount -t tmpfs x /tmp && echo mounted'",
        "python3 -S -c 'import ctypes, os, sys; libc = ctypes.CDLL(None, use_errno=True); "
        'print("in a user namespace") if libc.unshare(0x10000000) == 0 else '
        "sys.exit(os.strerror(ctypes.get_errno()))'",
    ],
)
def test_nested_user_namespaces_are_denied(command):
    result = Sandbox(SandboxLimits(wall_seconds=10)).run_command(command)
    assert result.returncode != 0
    assert "uid=0" not in result.stdout and "mounted" not in result.stdout
    assert "in a user namespace" not in result.stdout
    assert "Operation not permitted" in result.stderr


def test_threads_and_subprocesses_still_work_under_the_filter():
    code = (
        "import subprocess, threading; t = threading.Thread(target=print, args=('thread',)); t.start(); "
        "t.join(); print(subprocess.run(['echo', 'child'], capture_output=True, text=True).stdout.strip())"
    )
    result = Sandbox(SandboxLimits(wall_seconds=15)).run_python(code)
    assert result.stdout.split() == ["thread", "child"], result.stderr


def test_mountinfo_shows_no_host_path_beyond_its_own_mount_points(tmp_path):
    fixture = tmp_path / "fixture"
    fixture.mkdir()
    (fixture / "a.txt").write_text("x")
    box = Sandbox(SandboxLimits(wall_seconds=10))
    outputs = [box.run_command("cat /proc/self/mountinfo").stdout]
    with box.workspace(fixture, inside="/testbed") as ws:
        outputs.append(box.run_command("cat /proc/self/mountinfo", workspace=ws).stdout)
        host_folder = str(ws.path)
    for text in outputs:
        assert text.strip()
        for line in text.splitlines():
            fields = line.split()
            root, point, fstype = fields[3], fields[4], fields[fields.index("-") + 1]
            assert fstype == "devtmpfs" or root in ("/", point), line  # a bind shows only where it is
        assert "sandbox-run" not in text and "sandbox-ws" not in text and host_folder not in text
        assert str(tmp_path) not in text


@ROOT_ONLY
def test_a_1100_deep_tree_in_a_workspace_is_removed_by_reset_and_close(tmp_path):
    deep = "import os\nfor _ in range(1100):\n    os.mkdir('d')\n    os.chdir('d')\nopen('leaf', 'w').write('x')\n"
    box = Sandbox(SandboxLimits(wall_seconds=20))
    ws = box.workspace(inside="/testbed")
    assert box.run_python(deep, workspace=ws).ok
    ws.reset()
    assert list(ws.path.iterdir()) == []
    assert box.run_python(deep, workspace=ws).ok
    parent = ws.path.parent
    ws.close()
    assert not parent.exists()


def test_remove_tree_removes_a_3000_deep_tree_with_unreadable_folders(tmp_path):
    top = tmp_path / "top"
    top.mkdir()
    fd = os.open(top, os.O_RDONLY)
    try:
        for _ in range(3000):  # deeper than Python's recursion limit; built by fd to stay under PATH_MAX
            os.mkdir("d", dir_fd=fd)
            child = os.open("d", os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = child
        os.open("leaf", os.O_WRONLY | os.O_CREAT, dir_fd=fd)
        os.chmod(fd, 0o000)
    finally:
        os.close(fd)
    os.chmod(top, 0o000)
    remove_tree(top)
    assert not top.exists()


def test_hidden_python_packages_hide_the_base_interpreters_site_packages():
    base = sysconfig.get_paths(vars={"base": sys.base_prefix, "platbase": sys.base_prefix})["purelib"]
    if not os.listdir(base):
        pytest.skip("the base interpreter has no site-packages to hide")
    box = Sandbox(SandboxLimits(wall_seconds=15, expose_python_packages=False))
    listing = box.run_python(f"import os; print(os.listdir({os.path.realpath(base)!r}))")
    assert listing.stdout.strip() == "[]", listing.stderr
    first = sorted(p for p in os.listdir(base) if p.isidentifier())[0]
    imported = box.run_python(f"import {first}")
    assert imported.returncode != 0 and "ModuleNotFoundError" in imported.stderr
    assert box.run_python("import json, sqlite3; print('stdlib ok')").stdout == "stdlib ok\n"


def test_exposed_packages_still_import():
    result = Sandbox(SandboxLimits(wall_seconds=30)).run_python("import numpy; print(numpy.__name__)")
    assert result.stdout == "numpy\n", result.stderr


def test_no_sandbox_folder_is_left_on_the_host_after_runs(tmp_path):
    box = Sandbox(SandboxLimits(wall_seconds=10), base_dir=str(tmp_path))
    box.run_command("mkdir -p a/b/c; echo x > a/b/c/f")
    box.run_command("exit 3")
    assert Sandbox(SandboxLimits(wall_seconds=1), base_dir=str(tmp_path)).run_command("sleep 30").timed_out
    assert list(Path(tmp_path).iterdir()) == []
