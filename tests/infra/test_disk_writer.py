"""benchmarks.disk_writer, the write-only bound's process: the protocol, the bytes it writes, bad input."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _start(path: Path, nbytes: int, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "benchmarks.disk_writer", str(path), str(nbytes), "--nice", "0", *extra],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )


@pytest.mark.parametrize("nbytes", [1, 4096, 12_345, 3 * 8192 + 5])
def test_each_write_is_durable_before_the_drain_answers(tmp_path, nbytes):
    path = tmp_path / "out.bin"
    proc = _start(path, nbytes, "--chunk", "8192")
    try:
        assert proc.stdout.readline().strip() in (b"direct", b"buffered")
        proc.stdin.write(b"wwd")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == b"ok"
        # rounded up to O_DIRECT's 4096-byte blocks, written over the same file each time
        assert path.stat().st_size == -(-nbytes // 4096) * 4096
    finally:
        proc.stdin.close()
        assert proc.wait(timeout=30) == 0


@pytest.mark.parametrize("args", [["0"], ["-5"], ["4096", "--chunk", "1000"], ["4096", "--chunk", "0"]])
def test_bad_sizes_are_refused_by_name(tmp_path, args):
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.disk_writer", str(tmp_path / "x"), *args],
        capture_output=True,
        cwd=ROOT,
        timeout=30,
    )
    assert proc.returncode == 2
    assert b"nbytes must be positive and chunk a positive multiple of 4096" in proc.stderr
    assert not (tmp_path / "x").exists()
