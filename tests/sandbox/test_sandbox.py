"""The sandbox's guarantees, checked with a battery of hostile snippets (see docs/sandbox.md)."""

from __future__ import annotations

import os
import signal
import uuid
from pathlib import Path

import pytest

from components.sandbox import Sandbox, SandboxError, SandboxLimits, SandboxUnavailable, core, isolation_mode

PROJECT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(isolation_mode() is None, reason="no namespace support on this host")


@pytest.fixture(scope="module")
def box() -> Sandbox:
    # Tight limits keep the battery fast; each hostile case must hit one of them.
    return Sandbox(
        SandboxLimits(
            wall_seconds=4,
            cpu_seconds=2,
            memory_bytes=512 << 20,
            max_processes=32,
            file_bytes=1 << 20,
            output_bytes=64 << 10,
            tmp_bytes=8 << 20,
        )
    )


def processes_of(uid: int | None) -> list[int]:
    if uid is None:
        return []
    found = []
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and f"Uid:\t{uid}\t" in Path(f"/proc/{entry}/status").read_text():
                found.append(int(entry))
        except OSError:
            pass
    return found


@pytest.fixture(autouse=True)
def host_unaffected(box):
    """After every case: no process of the sandbox is left and the project tree gained no file."""
    before = set(os.listdir(PROJECT))
    yield
    assert processes_of(box.uid) == []
    assert set(os.listdir(PROJECT)) <= before | {".pytest_cache"}


def test_runs_python_and_shell_with_stdin(box):
    result = box.run_python("import sys; print(sum(int(x) for x in sys.stdin.read().split()))", stdin="1 2 3")
    assert result.ok and result.stdout == "6\n" and result.isolation == "namespaces"
    shell = box.run_command("echo hello > note.txt && cat note.txt && pwd")
    assert shell.ok and shell.stdout == "hello\n/sandbox\n"
    assert box.run_command(["/bin/sh", "-c", "exit 3"]).returncode == 3


def test_network_is_unreachable(box):
    result = box.run_python("import socket\nsocket.create_connection(('1.1.1.1', 53), timeout=2)")
    assert result.returncode == 1 and "Network is unreachable" in result.stderr
    dns = box.run_python("import socket\nsocket.gethostbyname('pypi.org')")
    assert dns.returncode == 1 and "gaierror" in dns.stderr


def test_cannot_write_outside_its_folder(box, tmp_path):
    target = PROJECT / f"pwned-{uuid.uuid4().hex}"
    result = box.run_python(f"open({str(target)!r}, 'w').write('x')")
    # Read-only root (EROFS); for a checkout under /tmp, the root-owned mount-point folder (EACCES); or, when
    # the venv is a symlink into another tree (bound at its real path), the project folder is not there (ENOENT).
    assert result.returncode == 1 and any(
        e in result.stderr for e in ("Read-only file system", "Permission denied", "No such file or directory")
    )
    assert not target.exists()
    etc = box.run_command("echo x >> /etc/passwd || echo refused")
    assert "refused" in etc.stdout
    # /tmp inside is private: a marker there never reaches the host's /tmp
    marker = f"sandbox-marker-{uuid.uuid4().hex}"
    assert marker in box.run_command(f"touch /tmp/{marker} && ls /tmp").stdout.split()
    assert not Path("/tmp", marker).exists()
    assert box.run_command("mount -t tmpfs x /sandbox").returncode != 0


def test_cannot_read_project_files(box):
    result = box.run_python(f"print(open({str(PROJECT / 'pyproject.toml')!r}).read())")
    assert result.returncode == 1 and "No such file or directory" in result.stderr
    # only the interpreter's folders are bound in (read-only); nothing else of the project or /root
    listing = box.run_command(f"ls -A {PROJECT} /root")
    visible = set(listing.stdout.split()) - {f"{PROJECT}:", "/root:"}
    assert visible <= {".venv", ".pyenv"}


def test_fork_bomb_is_contained(box):
    result = box.run_command("bomb(){ bomb | bomb; }; bomb")
    assert result.killed_reason is not None and "Resource temporarily unavailable" in result.stderr
    python_bomb = box.run_python("import os\nwhile True: os.fork()")
    assert python_bomb.killed_reason in {"process limit", "wall-clock timeout"}


def test_memory_blowup_gets_memory_error(box):
    result = box.run_python("x = bytearray(4 << 30)")
    assert result.killed_reason == "memory limit" and "MemoryError" in result.stderr


def test_infinite_loop_hits_cpu_limit_and_sleep_hits_wall_clock(box):
    # a wall clock far above the CPU limit, so a busy shared machine cannot make this a timeout
    spinner_box = Sandbox(SandboxLimits(cpu_seconds=1, wall_seconds=60))
    spin = spinner_box.run_python("while True: pass")
    assert spin.killed_reason == "cpu time limit" and spin.signal == signal.SIGXCPU
    sleeper = box.run_command("sleep 60")
    assert sleeper.timed_out and sleeper.killed_reason == "wall-clock timeout"


def test_output_flood_is_cut(box):
    result = box.run_command("yes")
    assert result.killed_reason == "output limit" and result.stdout_truncated
    assert len(result.stdout) <= 64 << 10


def test_file_size_and_tmp_space_are_limited(box):
    big = box.run_command("head -c 5000000 /dev/zero > big; stat -c %s big")
    assert big.killed_reason == "file size limit" and big.stdout.strip() == str(1 << 20)
    flood = box.run_command("for i in $(seq 20); do head -c 1000000 /dev/zero > /tmp/f$i || exit 1; done")
    assert flood.killed_reason == "disk space limit (/tmp)"


def test_background_processes_die_with_the_run(box):
    result = box.run_command("sleep 1000 & echo started")
    assert result.ok and result.stdout == "started\n"
    # host_unaffected then checks that the backgrounded sleep is gone


def test_workspace_persists_and_resets(box, tmp_path):
    fixture = tmp_path / "fixture"
    fixture.mkdir()
    (fixture / "a.txt").write_text("original\n")
    with box.workspace(fixture, inside="/testbed") as ws:
        assert box.run_command("echo changed > a.txt; touch b.txt", workspace=ws).ok
        assert box.run_command("cat a.txt; ls", workspace=ws).stdout == "changed\na.txt\nb.txt\n"
        ws.reset()
        assert box.run_command("cat /testbed/a.txt; ls", workspace=ws).stdout == "original\na.txt\n"
        assert (fixture / "a.txt").read_text() == "original\n"  # the fixture itself is never touched


def test_refuses_without_isolation_unless_allowed(monkeypatch):
    monkeypatch.setattr(core, "isolation_mode", lambda: None)
    with pytest.raises(SandboxUnavailable, match="allow_unisolated"):
        Sandbox()
    fallback = Sandbox(SandboxLimits(allow_unisolated=True, wall_seconds=10))
    result = fallback.run_python("print('ran')")
    assert result.stdout == "ran\n" and result.isolation == "rlimits-only"


def test_bad_requests_get_clear_errors(box):
    with pytest.raises(SandboxError, match="empty command"):
        box.run_command([])
    with pytest.raises(SandboxError, match="code must be a str"):
        box.run_python(b"print(1)")
    missing = box.run_command(["/no/such/binary"])
    assert missing.returncode == 127 and "cannot start" in missing.stderr
