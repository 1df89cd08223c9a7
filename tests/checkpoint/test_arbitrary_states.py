"""The checkpointer over states the project never produces: any shapes, dtypes, nesting and leaves.

Every state is saved, listed, loaded and compared bit for bit; a model whose forward mutates its
buffers (BatchNorm) is checkpointed every step and each checkpoint must equal the state at save().
"""

from __future__ import annotations

import copy
import tempfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from components.checkpoint import LazyAsyncCheckpointer, latest_checkpoint, list_checkpoints, load_checkpoint

DTYPES = [
    torch.float32,
    torch.float64,
    torch.float16,
    torch.bfloat16,
    torch.int8,
    torch.uint8,
    torch.int16,
    torch.int32,
    torch.int64,
    torch.bool,
    torch.complex64,
]


@st.composite
def tensors(draw):
    dtype = draw(st.sampled_from(DTYPES))
    shape = tuple(draw(st.lists(st.integers(0, 7), min_size=0, max_size=3)))
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    numel = int(np.prod(shape)) if shape else 1
    if dtype == torch.bool:
        t = torch.randint(0, 2, (numel,), generator=gen).bool()
    else:  # random bytes: every bit pattern, NaN payloads and subnormals included
        itemsize = torch.empty(0, dtype=dtype).element_size()
        t = torch.randint(0, 256, (numel * itemsize,), dtype=torch.uint8, generator=gen).view(dtype)
    t = t.reshape(shape)
    if len(shape) >= 2 and draw(st.booleans()):
        t = t.transpose(0, 1)  # non-contiguous
    return t


leaves = st.one_of(
    tensors(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False),
    st.text(max_size=8),
    st.none(),
    st.booleans(),
    st.binary(max_size=16),
    st.integers(-(2**63), 2**63 - 1).map(lambda v: torch.tensor(v, dtype=torch.int64)),
    st.lists(st.integers(0, 9), max_size=4).map(lambda v: np.array(v, dtype=np.int32)),
)
states = st.recursive(
    leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.lists(inner, max_size=3).map(tuple),
        st.dictionaries(st.text("abcxyz_", min_size=1, max_size=6), inner, max_size=4),
        st.dictionaries(st.text("abc", min_size=1, max_size=3), inner, max_size=3).map(OrderedDict),
    ),
    max_leaves=12,
)


def assert_same(a, b, path="state"):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), path
        assert a.dtype == b.dtype and a.shape == b.shape, path
        assert torch.equal(
            a.contiguous().view(-1).view(torch.uint8) if a.numel() else a.reshape(-1),
            b.contiguous().view(-1).view(torch.uint8) if b.numel() else b.reshape(-1),
        ), path
    elif isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b), path
    elif isinstance(a, dict):
        assert type(a) is type(b) and list(a) == list(b), path
        for key in a:
            assert_same(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}.{i}")
    else:
        assert type(a) is type(b) and a == b, path


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(state=states, second=states)
def test_any_state_is_saved_listed_loaded_and_pruned_bitwise(state, second):
    with tempfile.TemporaryDirectory(dir="/tmp") as folder:
        expected = copy.deepcopy({"payload": state})
        with LazyAsyncCheckpointer(folder, keep_last=1, fsync=False, checksum=True, chunk_bytes=64) as ckpt:
            ckpt.save(1, {"payload": state})
            ckpt.wait()
            assert [p.name for p in list_checkpoints(folder)] == ["step_00000001"]
            assert_same(expected, load_checkpoint(latest_checkpoint(folder)))
            ckpt.save(2, {"payload": second})
        assert [p.name for p in list_checkpoints(folder)] == ["step_00000002"]  # keep_last pruned step 1
        assert [p.name for p in Path(folder).iterdir()] == ["step_00000002"]
        assert_same({"payload": second}, load_checkpoint(Path(folder) / "step_00000002"))


@pytest.mark.parametrize(
    "state",
    [
        torch.nn.Linear(512, 10).state_dict(),
        {"x": torch.zeros(10)},
        torch.nn.BatchNorm1d(3).state_dict(),
        {"e": torch.zeros(0)},
    ],
    ids=["linear_512_10", "zeros_10", "batchnorm", "empty"],
)
def test_unaligned_states_are_listed_and_loaded(tmp_path, state):
    with LazyAsyncCheckpointer(tmp_path, keep_last=1) as ckpt:
        ckpt.save(3, state)
    assert latest_checkpoint(tmp_path) == tmp_path / "step_00000003"
    assert_same(
        dict(state) if not isinstance(state, OrderedDict) else state, load_checkpoint(tmp_path / "step_00000003")
    )


class _BNNet(torch.nn.Module):
    """Large weights first, BatchNorm buffers last: the lazy copy reaches them after forward ran."""

    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(64, 1000)
        self.bn = torch.nn.BatchNorm1d(1000)
        self.fc2 = torch.nn.Linear(1000, 3)

    def forward(self, x):
        return self.fc2(torch.relu(self.bn(self.fc1(x))))


@pytest.mark.parametrize("opt", ["adamw", "sgd"])
def test_batchnorm_model_every_checkpoint_equals_the_state_at_save(tmp_path, opt):
    torch.manual_seed(0)
    model = _BNNet()
    optimizer = (
        torch.optim.AdamW(model.parameters(), lr=1e-2)
        if opt == "adamw"
        else torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    )
    expected = {}
    steps = 6
    with LazyAsyncCheckpointer(tmp_path, keep_last=steps, chunk_bytes=4096) as ckpt:  # small pieces: slow copy
        ckpt.attach(optimizer)
        for step in range(1, steps + 1):
            x = torch.randn(16, 64)
            loss = model(x).square().mean()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            state = {"model": model.state_dict(), "optimizer": optimizer.state_dict()}
            expected[step] = copy.deepcopy(state)
            ckpt.save(step, state)
            # The next forward mutates running_mean/var/num_batches_tracked before the next step.
            model(torch.randn(16, 64))
    saved = [p.name for p in list_checkpoints(tmp_path)]
    assert saved == [f"step_{s:08d}" for s in range(1, steps + 1)]
    for step, state in expected.items():
        assert_same(state, load_checkpoint(tmp_path / f"step_{step:08d}"), f"step {step}")
    assert expected[1]["model"]["bn.num_batches_tracked"] != expected[steps]["model"]["bn.num_batches_tracked"]


def test_each_checkpoint_holds_its_own_tensors_when_the_state_changes_between_saves(tmp_path):
    """A run reuses the previous checkpoint's layout while its tensors are the same memory; a state
    whose tensors were replaced, reshaped, retyped, transposed, added or dropped gets its own."""
    base = torch.arange(4096 * 3, dtype=torch.float32).reshape(3, 4096)
    states = [
        {"w": base, "b": torch.ones(5)},
        {"w": base, "b": torch.ones(5)},  # the same memory: the layout is reused, the values are read again
        {"w": base.view(4096, 3), "b": torch.ones(5)},  # same memory, another shape
        {"w": base.view(torch.int32), "b": torch.ones(5)},  # same memory, another dtype
        {"w": base.t(), "b": torch.ones(5)},  # not contiguous: a private copy at save()
        {"w": base.clone() * 2},  # replaced and a key dropped
        {"w": base, "b": torch.ones(5), "c": torch.zeros(3, dtype=torch.int64)},  # a key added
    ]
    expected = {}
    with LazyAsyncCheckpointer(tmp_path, keep_last=len(states)) as ckpt:
        for step, state in enumerate(states, start=1):
            expected[step] = copy.deepcopy(state)
            ckpt.save(step, state)
            base.add_(1)  # changed right after save(): no optimizer guards it, so save() captured it
    for step, state in expected.items():
        assert_same(state, load_checkpoint(tmp_path / f"step_{step:08d}"), f"step {step}")
