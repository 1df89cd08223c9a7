"""LazyAsyncCheckpointer: bitwise restore, exact continuation, crash safety, errors, retention, 2 ranks."""

from __future__ import annotations

import errno
import json
import os
import pickle
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch

from components.checkpoint import (
    CheckpointError,
    LazyAsyncCheckpointer,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    set_aside_earlier_run,
)
from components.checkpoint.host_pool import HostBufferPool
from components.checkpoint.layout import COMMIT_FILE, state_name
from components.lm.training import capture_state, restore_state
from tests.checkpoint import _tiny

ROOT = Path(__file__).resolve().parents[2]


def _train(model, optimizer, scheduler, gen, start, stop, ckpt=None, every=0):
    _tiny.train(model, optimizer, scheduler, gen, 8, start, stop, checkpointer=ckpt, every=every)


def test_restore_is_bitwise_and_training_continues_exactly(tmp_path):
    # Uninterrupted reference run: 8 steps, no checkpointer.
    ref = _tiny.fresh()
    _train(*ref, 0, 8)
    reference = _tiny.flat_state(ref[0], ref[1])

    # Checkpointed run, stopped after step 5 (checkpoints every step, copied lazily).
    model, optimizer, scheduler, gen = _tiny.fresh()
    with LazyAsyncCheckpointer(tmp_path, keep_last=2, checksum=True) as ckpt:
        ckpt.attach(optimizer)
        _train(model, optimizer, scheduler, gen, 0, 5, ckpt, every=1)
        ckpt.wait()
        at_5 = _tiny.flat_state(model, optimizer)
        rng_at_5 = torch.get_rng_state().clone()
        data_at_5 = gen.get_state().clone()
        lr_at_5 = scheduler.get_last_lr()
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000004", "step_00000005"]

    # A fresh process-like start: new objects, different RNG, then restore.
    torch.manual_seed(1234)
    m2, o2, s2, g2 = _tiny.fresh(seed=7)
    state = load_checkpoint(latest_checkpoint(tmp_path))
    assert restore_state(state, m2, o2, s2, g2) == 5
    _tiny.assert_bitwise_equal(at_5, _tiny.flat_state(m2, o2))
    assert torch.equal(torch.get_rng_state(), rng_at_5)
    assert torch.equal(g2.get_state(), data_at_5)
    assert s2.get_last_lr() == lr_at_5
    _train(m2, o2, s2, g2, 5, 8)
    _tiny.assert_bitwise_equal(reference, _tiny.flat_state(m2, o2))


def test_lazy_copy_waits_before_the_optimizer_mutates_state(tmp_path):
    """The snapshot holds the values of the requested step even though the copy runs afterwards."""
    model, optimizer, scheduler, gen = _tiny.fresh()
    _train(model, optimizer, scheduler, gen, 0, 2)
    with LazyAsyncCheckpointer(tmp_path, chunk_bytes=256) as ckpt:  # many small pieces: a slow copy
        ckpt.attach(optimizer)
        expected = _tiny.flat_state(model, optimizer)
        ckpt.save(2, capture_state(2, model, optimizer, scheduler, gen))
        _train(model, optimizer, scheduler, gen, 2, 4)  # steps mutate parameters in place
        ckpt.wait()
    saved = load_checkpoint(tmp_path / "step_00000002")
    m2, o2, _, _ = _tiny.fresh()
    m2.load_state_dict(saved["model"])
    o2.load_state_dict(saved["optimizer"])
    _tiny.assert_bitwise_equal(expected, _tiny.flat_state(m2, o2))
    assert ckpt.records[0].wait_blocked_s >= 0 and ckpt.records[0].durable_s > 0


def test_host_pool_is_a_fifo_ring_with_backpressure():
    pool = HostBufferPool(1000)
    a, b = pool.allocate(400), pool.allocate(400)
    assert (a.offset, b.offset) == (0, 448)  # contiguous, 64-byte aligned
    got = []
    t = threading.Thread(target=lambda: got.append(pool.allocate(300)))
    t.start()
    t.join(0.2)
    assert t.is_alive() and not got  # full: blocks (backpressure)
    pool.release(b)  # not the oldest: nothing reclaimed yet
    t.join(0.2)
    assert t.is_alive()
    pool.release(a)
    t.join(5)
    assert got and got[0].offset == 0
    with pytest.raises(CheckpointError, match="does not fit"):
        pool.allocate(2000)


def test_torn_and_uncommitted_checkpoints_are_never_picked(tmp_path):
    model, optimizer, scheduler, gen = _tiny.fresh()
    with LazyAsyncCheckpointer(tmp_path, keep_last=5) as ckpt:
        ckpt.attach(optimizer)
        _train(model, optimizer, scheduler, gen, 0, 3, ckpt, every=1)
    good = latest_checkpoint(tmp_path)
    assert good.name == "step_00000003"
    # A later step without COMMIT, one with a truncated shard, and a temporary folder: all ignored.
    for name in ("step_00000009", "step_00000008", "step_00000010.tmp-abc"):
        (tmp_path / name).mkdir()
    for f in good.iterdir():
        (tmp_path / "step_00000008" / f.name).write_bytes(f.read_bytes())
        (tmp_path / "step_00000010.tmp-abc" / f.name).write_bytes(f.read_bytes())
    shard = next((tmp_path / "step_00000008").glob("*.shard"))
    shard.write_bytes(shard.read_bytes()[:-10])
    assert latest_checkpoint(tmp_path) == good
    with pytest.raises(CheckpointError, match="not a committed checkpoint"):
        load_checkpoint(tmp_path / "step_00000008")


def test_keep_last_retention(tmp_path):
    model, optimizer, scheduler, gen = _tiny.fresh()
    with LazyAsyncCheckpointer(tmp_path, keep_last=2) as ckpt:
        ckpt.attach(optimizer)
        _train(model, optimizer, scheduler, gen, 0, 6, ckpt, every=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000004", "step_00000006"]


def test_retired_shards_are_overwritten_by_later_checkpoints(tmp_path):
    # keep_last=1 and a drain after each save: from the third checkpoint on, each is written over the
    # shard the previous commit retired; a state that shrinks (step 5) truncates the recycled file.
    gen = torch.Generator().manual_seed(0)
    states = [{"w": torch.randn(300_001 if i < 4 else 999, generator=gen), "step": i} for i in range(6)]
    (tmp_path / ".spare-crashedrun").mkdir()  # a crashed run's spare: removed at start
    (tmp_path / ".spare-crashedrun" / "rank00000.shard").write_bytes(b"x" * 5000)
    with LazyAsyncCheckpointer(tmp_path, keep_last=1) as ckpt:
        assert not (tmp_path / ".spare-crashedrun").exists()
        for i, state in enumerate(states):
            ckpt.save(i + 1, state)
            ckpt.wait()
            got = load_checkpoint(latest_checkpoint(tmp_path))
            assert torch.equal(got["w"], state["w"]) and got["step"] == i
        assert [r.recycled for r in ckpt.records] == [False, False, True, True, True, True]
    assert [p.name for p in tmp_path.iterdir()] == ["step_00000006"]  # no spare left behind


def test_a_fresh_run_sets_the_earlier_runs_checkpoints_aside(tmp_path):
    folder = tmp_path / "run"
    model, optimizer, scheduler, gen = _tiny.fresh()
    with LazyAsyncCheckpointer(folder, keep_last=2) as ckpt:  # an earlier, longer run
        ckpt.attach(optimizer)
        _train(model, optimizer, scheduler, gen, 0, 6, ckpt, every=3)
    aside = set_aside_earlier_run(folder)
    assert aside is not None and [p.name for p in list_checkpoints(aside)] == ["step_00000003", "step_00000006"]
    assert latest_checkpoint(folder) is None and set_aside_earlier_run(folder) is None
    # The new run's step 2 is its latest: neither retention nor resume sees the earlier step 6.
    model, optimizer, scheduler, gen = _tiny.fresh()
    with LazyAsyncCheckpointer(folder, keep_last=2) as ckpt:
        ckpt.attach(optimizer)
        _train(model, optimizer, scheduler, gen, 0, 2, ckpt, every=2)
    assert latest_checkpoint(folder).name == "step_00000002"


def test_hostile_state_file_is_refused(tmp_path):
    model, optimizer, scheduler, gen = _tiny.fresh()
    with LazyAsyncCheckpointer(tmp_path, fsync=False) as ckpt:
        ckpt.save(1, capture_state(1, model, optimizer, scheduler, gen))
    path = latest_checkpoint(tmp_path)

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    payload = pickle.dumps(Evil())
    (path / state_name(0)).write_bytes(payload)
    commit = json.loads((path / COMMIT_FILE).read_text())
    commit["votes"][0]["state_bytes"] = len(payload)
    (path / COMMIT_FILE).write_text(json.dumps(commit))
    with pytest.raises(CheckpointError, match="not allowed"):
        load_checkpoint(path)


def test_unwritable_target_gives_clear_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(CheckpointError, match="is not writable"):
        LazyAsyncCheckpointer(blocker / "checkpoints")
    if os.geteuid() != 0:  # root ignores permission bits
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        with pytest.raises(CheckpointError, match="is not writable"):
            LazyAsyncCheckpointer(ro)


_FULL_DISK_CHILD = textwrap.dedent("""
    import json, resource, signal, sys
    from components.checkpoint import CheckpointError, LazyAsyncCheckpointer, list_checkpoints, load_checkpoint
    from components.lm.training import capture_state, train_loop
    from tests.checkpoint import _tiny
    folder = sys.argv[1]
    model, optimizer, scheduler, gen = _tiny.fresh()
    ckpt = LazyAsyncCheckpointer(folder, keep_last=3)
    ckpt.attach(optimizer)
    train_loop(model, optimizer, scheduler, _tiny.InMemoryCorpus(), _tiny.settings(8), data_generator=gen,
               stop_step=2, checkpointer=ckpt, checkpoint_every=1)
    ckpt.wait()
    before = [p.name for p in list_checkpoints(folder)]
    # The "disk" fills up: no file may grow beyond 4 kB (EFBIG instead of SIGXFSZ).
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))
    ckpt.save(3, capture_state(3, model, optimizer, scheduler, gen))
    try:
        ckpt.wait()
        error = None
    except CheckpointError as exc:
        error = str(exc)
    after = [p.name for p in list_checkpoints(folder)]
    loads = all(load_checkpoint(p)["step"] > 0 for p in list_checkpoints(folder))
    print(json.dumps({"before": before, "after": after, "error": error, "loads": loads}))
""")


def test_full_disk_gives_clear_error_and_keeps_previous_checkpoints(tmp_path):
    out = subprocess.run(
        [sys.executable, "-c", _FULL_DISK_CHILD, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["before"] == ["step_00000001", "step_00000002"]
    assert result["after"] == result["before"] and result["loads"]
    assert result["error"] and "step 3" in result["error"] and str(tmp_path) in result["error"]
    assert "File too large" in result["error"]
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]  # the torn attempt was cleaned up


def test_commit_needs_every_rank(tmp_path):
    """Rank 0 of 2 alone: its shard is written but the checkpoint never counts."""
    model, optimizer, scheduler, gen = _tiny.fresh()
    ckpt = LazyAsyncCheckpointer(tmp_path, rank=0, world_size=2, commit_timeout_s=0.5, session="solo")
    ckpt.save(1, capture_state(1, model, optimizer, scheduler, gen))
    with pytest.raises(CheckpointError, match="missing"):
        ckpt.wait()
    assert list_checkpoints(tmp_path) == []


def _reference_states(iters: int, n_embd: int) -> dict[int, dict]:
    """Uninterrupted training, one thread like the child (float sums depend on the thread count)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model, optimizer, scheduler, gen = _tiny.fresh(iters, n_embd)
        states = {}
        for step in range(iters):
            _tiny.train(model, optimizer, scheduler, gen, iters, step, step + 1)
            states[step + 1] = _tiny.flat_state(model, optimizer)
    finally:
        torch.set_num_threads(threads)
    return states


def _in_flight(folder: Path) -> bool:
    """A checkpoint folder not yet renamed to its final name (written, or being committed)."""
    try:
        return any(".tmp-" in entry.name for entry in os.scandir(folder))
    except FileNotFoundError:
        return False


def _wait_until(condition, proc: subprocess.Popen, timeout_s: float, poll_s: float = 0.02) -> None:
    """Polls until the condition holds, the child exits or the time is up."""
    deadline = time.monotonic() + timeout_s
    while not condition() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(poll_s)


@pytest.mark.parametrize("unaligned", [False, True], ids=["aligned", "unaligned"])
def test_sigkill_at_random_moments_never_yields_a_torn_checkpoint(tmp_path, unaligned):
    # ~11 MB checkpoints, one per step: long enough that no kill finds it done. Unaligned: an odd
    # width (760-byte biases) and an int64 scalar as the last tensor, so the shard ends off 64 bytes.
    iters, n_embd = 60, 190 if unaligned else 192
    rng = random.Random(0)
    folder = tmp_path / "ckpt"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    child = [sys.executable, str(ROOT / "tests/checkpoint/_crash_child.py"), str(folder), str(iters), str(n_embd)]
    reference = _reference_states(iters, n_embd)
    torn_seen, restored_steps, outcomes = 0, [], []
    # Kills aimed at a checkpoint in flight until one lands there, then three at random moments
    # (mid-copy, mid-flush or mid-commit). Aimed first: training is fast enough that random kills can
    # leave it finished, and on a quiet machine a flush and its commit are a small part of each step
    # that a poll from this process can miss, so for the aimed kills the child holds each written
    # checkpoint uncommitted.
    random_kills = 0
    for kill in range(30):
        if random_kills == 3:
            break
        aimed = not torn_seen
        random_kills += not aimed
        commit_delay_s = 0.2 if aimed else 0.0
        proc = subprocess.Popen(
            child + ["1", str(int(unaligned)), str(commit_delay_s)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout.readline().strip() == "started", proc.stderr.read()
        if aimed:  # a few steps in, then the moment a temporary folder appears
            time.sleep(rng.uniform(0.05, 0.3))
            _wait_until(lambda: _in_flight(folder), proc, timeout_s=60, poll_s=0.0)
        else:
            if not restored_steps:  # a loaded machine: let one checkpoint commit first
                _wait_until(lambda: latest_checkpoint(folder) is not None, proc, timeout_s=120)
            time.sleep(rng.uniform(0.1, 0.8))
        ended_by_itself = proc.poll() is not None
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if ended_by_itself:  # finished, or failed: either way no kill landed, and a failure is a defect
            outcomes.append(f"kill {kill}: exit {proc.returncode}: {proc.stderr.read()[-2000:]}")
        torn_seen += any(".tmp-" in p.name for p in folder.iterdir())
        latest = latest_checkpoint(folder)
        if latest is None:  # killed before the first commit: nothing may be listed
            assert not restored_steps and not list_checkpoints(folder)
            continue
        state = load_checkpoint(latest)  # checksums verified
        step = state["step"]
        if unaligned:
            assert state["extra"]["tail"].item() == step
        m, o, s, g = _tiny.fresh(iters, n_embd)
        restore_state(state, m, o, s, g)
        _tiny.assert_bitwise_equal(reference[step], _tiny.flat_state(m, o))
        restored_steps.append(step)
    assert restored_steps and restored_steps == sorted(restored_steps)
    assert torn_seen >= 1, f"no kill landed while a checkpoint was in flight; steps {restored_steps}; {outcomes}"
    # Resume after the last crash and finish: identical to training that never crashed.
    done = tmp_path / "done"
    subprocess.run(
        child + ["1", str(int(unaligned)), "0", str(done)],
        cwd=ROOT,
        env=env,
        check=True,
        timeout=300,
        capture_output=True,
    )
    final = load_checkpoint(latest_checkpoint(folder))
    assert final["step"] == iters
    m, o, s, g = _tiny.fresh(iters, n_embd)
    restore_state(final, m, o, s, g)
    _tiny.assert_bitwise_equal(reference[iters], _tiny.flat_state(m, o))


def test_two_rank_gloo_save_and_restore(tmp_path):
    port = _tiny.free_port()
    folder = tmp_path / "ckpt"
    procs = [
        _tiny.spawn(
            [
                sys.executable,
                str(ROOT / "tests/checkpoint/_dist_child.py"),
                str(rank),
                "2",
                str(port),
                str(folder),
                str(tmp_path / f"rank{rank}.json"),
            ]
        )
        for rank in range(2)
    ]
    errors = [proc.communicate(timeout=240)[1] for proc in procs]
    for rank, proc in enumerate(procs):
        assert proc.returncode == 0, (
            f"rank {rank}: " + errors[rank][-3000:] + "\n(other rank: " + errors[1 - rank][-1500:]
        )
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for r in results:
        assert r["latest"] == "step_00000003" and r["restore"] and r["rng"] and r["continue"], r
    commit = json.loads((folder / "step_00000003" / COMMIT_FILE).read_text())
    assert commit["world_size"] == 2 and sorted(v["rank"] for v in commit["votes"]) == [0, 1]
    assert sorted(p.name for p in (folder / "step_00000003").glob("*.shard")) == ["rank00000.shard", "rank00001.shard"]
    assert not [p for p in folder.iterdir() if ".tmp-" in p.name]


def _mount_small_tmpfs(path: Path, size: str) -> bool:
    path.mkdir()
    if os.geteuid() != 0:
        return False
    return (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, check=False
        ).returncode
        == 0
    )


def test_no_space_left_names_the_folder_free_and_needed_sizes(tmp_path):
    small = tmp_path / "small"
    if not _mount_small_tmpfs(small, "4m"):
        pytest.skip("needs root to mount a 4 MB tmpfs")
    try:
        folder = small / "ckpt"
        with LazyAsyncCheckpointer(folder, keep_last=3) as ckpt:
            ckpt.save(1, {"w": torch.arange(1000, dtype=torch.float32)})
            ckpt.wait()
            ckpt.save(2, {"w": torch.zeros(2_000_000)})  # 8 MB: does not fit
            with pytest.raises(CheckpointError) as info:
                ckpt.wait()
        message = str(info.value)
        assert f"no space left on {folder}" in message and "MB free, checkpoint needs 8.0 MB" in message
        assert "step 2" in message
        assert [p.name for p in list_checkpoints(folder)] == ["step_00000001"]
        assert torch.equal(load_checkpoint(folder / "step_00000001")["w"], torch.arange(1000, dtype=torch.float32))
        assert not [p for p in folder.iterdir() if ".tmp-" in p.name]
    finally:
        subprocess.run(["umount", str(small)], check=False)


def test_direct_io_refused_mid_write_never_closes_a_handle_in_use(tmp_path, monkeypatch):
    """One flush thread is told EINVAL by the direct handle while the other is writing through it:
    the handle stays open until that write returns (a closed number can be reused by the next open,
    which would then get the other thread's bytes), the rest goes buffered, and the checkpoint is whole."""
    real_open, real_pwritev, real_close = os.open, os.pwritev, os.close
    lock = threading.Lock()
    direct, in_flight, closed_in_use, closes = set(), {}, [], []
    calls, slow_write_started = [0], threading.Event()

    def fake_open(path, flags, *args):
        if flags & getattr(os, "O_DIRECT", 0):  # a plain handle stands in, on any file system
            fd = real_open(path, flags & ~os.O_DIRECT, *args)
            direct.add(fd)
            return fd
        return real_open(path, flags, *args)

    def fake_pwritev(fd, buffers, offset):
        if fd not in direct:
            return real_pwritev(fd, buffers, offset)
        with lock:
            calls[0] += 1
            call = calls[0]
            in_flight[fd] = in_flight.get(fd, 0) + 1
        try:
            if call == 1:  # a slow write in flight on the direct handle
                slow_write_started.set()
                time.sleep(0.3)
            elif call == 2:  # meanwhile the other thread's write is refused
                slow_write_started.wait(5)
                raise OSError(errno.EINVAL, "Invalid argument")
            return real_pwritev(fd, buffers, offset)
        finally:
            with lock:
                in_flight[fd] -= 1

    def fake_close(fd):
        with lock:
            if in_flight.get(fd):
                closed_in_use.append(fd)
            if fd in direct:
                closes.append(fd)
        real_close(fd)

    monkeypatch.setattr(os, "open", fake_open)
    monkeypatch.setattr(os, "pwritev", fake_pwritev)
    monkeypatch.setattr(os, "close", fake_close)
    state = {"w": torch.randn(64, 1024), "b": torch.arange(100, dtype=torch.int64)}
    expected = {k: v.clone() for k, v in state.items()}
    ckpt = LazyAsyncCheckpointer(tmp_path, flush_threads=2, chunk_bytes=8192, direct_io=True)
    record = ckpt.save(1, state)  # no optimizer attached: everything is staged, both threads write at once
    ckpt.close()
    assert calls[0] >= 2 and not closed_in_use
    assert closes == sorted(direct) and not record.direct_io and not ckpt.direct_io
    loaded = load_checkpoint(latest_checkpoint(tmp_path))
    assert all(torch.equal(loaded[k], v) for k, v in expected.items())
