"""staged / zero_copy / DGL loaders: identical batches, aligned buffers, prefetch worker lifecycle."""

from __future__ import annotations

import threading

import pytest
import torch

from components.graph.loaders import AlignedRowBuffer, DglStandardLoader, StagedFeatureLoader, ZeroCopyFeatureLoader


def _collect(loader, epoch):
    out = []
    with loader.epoch(epoch) as batches:
        for b in batches:
            out.append(
                (
                    b.input_nodes.clone(),
                    b.output_nodes.clone(),
                    b.features.clone(),
                    b.labels.clone(),
                    [blk.num_edges() for blk in b.blocks],
                )
            )
    return out


@pytest.mark.parametrize(
    "zero_copy_options", [dict(prefetch=True, align_rows=True), dict(prefetch=False, align_rows=False)]
)
def test_staged_and_zero_copy_yield_identical_batches(small_graph, zero_copy_options):
    g = small_graph
    common = dict(seed=11, max_batches=5)
    staged = StagedFeatureLoader(g, g.train_idx, [5, 5], 256, **common)
    zero = ZeroCopyFeatureLoader(g, g.train_idx, [5, 5], 256, **common, **zero_copy_options)
    for epoch in (0, 1):
        a, b = _collect(staged, epoch), _collect(zero, epoch)
        assert len(a) == len(b) == 5
        for (ia, oa, fa, la, ea), (ib, ob, fb, lb, eb) in zip(a, b):
            assert torch.equal(ia, ib) and torch.equal(oa, ob) and ea == eb
            assert torch.equal(fa, fb) and torch.equal(la, lb)
            assert torch.equal(fa, g.features[ia])  # the rows of the table, in input-node order
            assert torch.equal(la, g.labels[oa])
    assert not torch.equal(_collect(staged, 0)[0][1], _collect(staged, 1)[0][1])  # epochs reshuffle
    every_seed = torch.cat([o for _, o, *_ in _collect(StagedFeatureLoader(g, g.train_idx, [5, 5], 256), 0)])
    assert torch.equal(every_seed.sort().values, g.train_idx.sort().values)


def test_dgl_standard_loader_batches_hold_the_right_rows(small_graph):
    g = small_graph
    loader = DglStandardLoader(g, g.val_idx, [5, 5], 512, shuffle=False, num_workers=0)
    batches = _collect(loader, 0)
    assert len(batches) == len(loader)
    for inputs, outputs, feats, labels, _ in batches:
        assert torch.equal(feats, g.features[inputs]) and torch.equal(labels, g.labels[outputs])


@pytest.mark.parametrize("dim", [1, 3, 32, 33, 100, 256])
def test_alignment_padding_never_changes_values(dim):
    torch.manual_seed(dim)
    table = torch.randn(500, dim)
    idx = torch.randint(0, 500, (77,))
    aligned = AlignedRowBuffer(dim, align_rows=True)
    plain = AlignedRowBuffer(dim, align_rows=False)
    out_a = torch.index_select(table, 0, idx, out=aligned.rows(77))
    out_p = torch.index_select(table, 0, idx, out=plain.rows(77))
    assert torch.equal(out_a, table[idx]) and torch.equal(out_p, table[idx])
    assert out_a.data_ptr() % 128 == 0 and (out_a.stride(0) * 4) % 128 == 0  # every row starts on 128 B
    assert out_a.data_ptr() == aligned.rows(77).data_ptr()  # gathered in place, not into a temporary
    # Growing the buffer (a bigger batch) keeps alignment and values; smaller batches reuse it.
    big = torch.randint(0, 500, (300,))
    out_big = torch.index_select(table, 0, big, out=aligned.rows(300))
    assert torch.equal(out_big, table[big]) and out_big.data_ptr() % 128 == 0


def test_zero_copy_reuses_two_buffers_and_overlaps(small_graph):
    g = small_graph
    loader = ZeroCopyFeatureLoader(g, g.train_idx, [5, 5], 256, max_batches=6)
    pointers = []
    with loader.epoch(0) as batches:
        for b in batches:
            pointers.append(b.features.data_ptr())
    assert len(set(pointers)) == 2  # double buffering: the same two buffers all epoch
    assert pointers[0] != pointers[1]


def _prefetch_threads():
    return [t for t in threading.enumerate() if t.name.startswith("zero-copy-prefetch")]


def test_prefetch_worker_error_reaches_consumer_and_worker_stops(small_graph):
    g = small_graph
    loader = ZeroCopyFeatureLoader(g, g.train_idx, [5, 5], 256, max_batches=8)
    calls = {"n": 0}
    real_gather = loader._gather

    def failing_gather(idx, out):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk read failed")
        real_gather(idx, out)

    loader._gather = failing_gather
    got = []
    with pytest.raises(RuntimeError, match="prefetch worker failed") as info:
        with loader.epoch(0) as batches:
            for b in batches:
                got.append(b.index)
    assert isinstance(info.value.__cause__, OSError)
    assert got == [0, 1]  # the batches before the failure were delivered
    assert not _prefetch_threads()


def test_consumer_error_stops_the_prefetch_worker(small_graph):
    g = small_graph
    loader = ZeroCopyFeatureLoader(g, g.train_idx, [5, 5], 256, max_batches=8)
    iterator = None
    with pytest.raises(ValueError, match="training step blew up"):
        with loader.epoch(0) as batches:
            iterator = batches
            next(batches)
            raise ValueError("training step blew up")
    assert not iterator.worker_alive
    assert not _prefetch_threads()


def test_unknown_loader_option_fails_clearly(small_graph):
    with pytest.raises(TypeError, match="align_rows"):
        StagedFeatureLoader(small_graph, small_graph.train_idx, [5], 64, align_rows=True)
    with pytest.raises(ValueError, match="fanouts"):
        StagedFeatureLoader(small_graph, small_graph.train_idx, [0], 64)


def test_worker_thread_limit_is_restored_after_the_epoch(small_graph):
    g = small_graph
    before = torch.get_num_threads()
    loader = ZeroCopyFeatureLoader(g, g.train_idx, [5, 5], 256, max_batches=3, worker_threads=1)
    with loader.epoch(0) as batches:
        assert len(list(batches)) == 3
    seen = []
    probe = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    probe.start()
    probe.join()
    assert torch.get_num_threads() == before and seen == [before]  # threads made later are not limited
