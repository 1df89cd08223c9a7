"""Aggregators (staleness direction, BatchNorm buffers), partitions, speed models, the PyTorch task."""

import numpy as np
import pytest

from components.federated import aggregators as agg
from components.federated import partitions, speeds
from components.federated import task as fl_task
from components.federated.aggregators import WeightedUpdate


def update(delta, buffers=None, n=10):
    return {"delta": {"w": np.array(delta, dtype=np.float32)}, "buffers": buffers or {}, "num_examples": n}


def test_polynomial_staleness_decreases_unlike_the_reference_codes_plus_a():
    s = agg.make_staleness_fn("polynomial", a=0.5)
    assert s(0) == 1.0 and s(3) == pytest.approx(0.5)  # (3+1)^-0.5
    assert all(s(u + 1) < s(u) for u in range(20))
    # The reference code's (u+1)^(+a) would grow with staleness: our function must not.
    assert s(8) < 1.0 < (8 + 1) ** 0.5
    hinge = agg.make_staleness_fn("hinge", a=0.5, b=4)
    assert hinge(4) == 1.0 and hinge(6) == pytest.approx(1 / (0.5 * 2 + 1))
    assert agg.make_staleness_fn("constant")(100) == 1.0
    with pytest.raises(ValueError, match="staleness"):
        agg.make_staleness_fn("exponential")


def test_staleness_weighted_step_and_plain_buffer_average():
    a = agg.FedCompassAggregator([0.5, 0.5], alpha=0.8, staleness_fn=agg.make_staleness_fn("polynomial", 0.5))
    w = {"w": np.array([1.0], dtype=np.float32), "bn.running_mean": np.array([0.0], dtype=np.float32)}
    new = a.aggregate(
        w,
        [
            WeightedUpdate(0, update([1.0], {"bn.running_mean": np.array([2.0])}), 0),
            WeightedUpdate(1, update([1.0], {"bn.running_mean": np.array([4.0])}), 3),
        ],
    )
    # w - 0.8*0.5*(1*1 + 0.5*1) = 1 - 0.6
    assert new["w"][0] == pytest.approx(0.4)
    assert new["bn.running_mean"][0] == pytest.approx(3.0)  # plain mean, no staleness weighting
    assert w["w"][0] == 1.0  # the old global model is not modified in place


def test_fedavg_is_sample_weighted_mean_of_local_models():
    w = {"w": np.array([1.0])}
    new = agg.FedAvgAggregator().aggregate(
        w, [WeightedUpdate(0, update([1.0], n=30), 0), WeightedUpdate(1, update([-1.0], n=10), 0)]
    )
    # local models 0 and 2, weights 3/4 and 1/4 -> 0.5
    assert new["w"][0] == pytest.approx(0.5)


@pytest.mark.parametrize("name", partitions.PARTITIONS)
def test_partitions_cover_disjoint_samples(name):
    labels = np.repeat(np.arange(10), 50)
    parts = partitions.make_partition(name, labels, 5, seed=1)
    joined = np.concatenate(parts)
    assert len(parts) == 5 and all(len(p) > 0 for p in parts)
    assert len(np.unique(joined)) == len(joined)  # disjoint
    if name != "dual_dirichlet":
        assert len(joined) == len(labels)
    assert parts[0].tolist() == partitions.make_partition(name, labels, 5, seed=1)[0].tolist()


def test_class_partition_limits_classes_and_dirichlet_skews():
    labels = np.repeat(np.arange(10), 50)
    for part in partitions.make_partition("class", labels, 5, classes_per_client=2):
        assert len(np.unique(labels[part])) == 2
    skewed = partitions.make_partition("dirichlet", labels, 5, alpha=0.1, seed=0)
    shares = [np.bincount(labels[p], minlength=10).max() / len(p) for p in skewed]
    assert np.mean(shares) > 0.3  # IID would be ~0.1-0.15
    sizes = [len(p) for p in partitions.make_partition("dual_dirichlet", labels, 5, alpha_clients=0.5, seed=0)]
    assert max(sizes) > 2 * min(sizes)  # unequal client sizes
    with pytest.raises(ValueError, match="partition"):
        partitions.make_partition("pathological", labels, 5)


def test_speed_models():
    homo = speeds.sample_step_times("homogeneous", 10, mean=2.0)
    assert np.all(homo == 2.0)
    normal = speeds.sample_step_times("normal", 4000, mean=1.0, seed=0)
    assert normal.mean() == pytest.approx(1.0, abs=0.03) and normal.std() == pytest.approx(0.3, abs=0.03)
    expo = speeds.sample_step_times("exponential", 4000, mean=1.0, seed=0)
    assert expo.std() > 0.8 and expo.min() >= 0.1  # heavy spread, floored at 0.1 mu
    drifting = speeds.make_speeds("normal", 5, seed=0, drift_time=100.0, drift_fraction=0.4, drift_factor=4.0)
    fastest = int(np.argmin(drifting.step_times))
    assert fastest in drifting.drift_clients
    rng = np.random.default_rng(0)
    before = drifting.duration(fastest, 10, 50.0, rng)
    after = drifting.duration(fastest, 10, 150.0, rng)
    assert after == pytest.approx(4 * before)
    with pytest.raises(ValueError, match="speed model"):
        speeds.sample_step_times("pareto", 3)


def test_local_training_learns_and_is_deterministic():
    ds = fl_task.load_dataset("digits", seed=0)
    spec = fl_task.ModelSpec("cnn", ds.input_shape, ds.n_classes, width=8)
    w0 = fl_task.initial_weights(spec, 0)
    u1 = fl_task.local_train(w0, ds.x_train, ds.y_train, 30, spec, seed=3)
    u2 = fl_task.local_train(w0, ds.x_train, ds.y_train, 30, spec, seed=3)
    assert all(np.array_equal(u1["delta"][k], u2["delta"][k]) for k in u1["delta"])
    assert any("running_mean" in k for k in u1["buffers"]) and "0.weight" in u1["delta"]
    trained = {k: (w0[k] - u1["delta"][k]) if k in u1["delta"] else u1["buffers"][k] for k in w0}
    assert (
        fl_task.evaluate(trained, ds.x_test, ds.y_test, spec)[1]
        > fl_task.evaluate(w0, ds.x_test, ds.y_test, spec)[1] + 0.3
    )
    with pytest.raises(ValueError, match="dataset"):
        fl_task.load_dataset("cifar10")


def test_mnist1d_is_generated_offline_and_trains_a_1d_cnn():
    ds = fl_task.load_dataset("mnist1d", seed=0)
    assert ds.x_train.shape == (4000, 1, 40) and ds.x_test.shape == (1000, 1, 40) and ds.n_classes == 10
    spec = fl_task.ModelSpec("cnn", ds.input_shape, ds.n_classes, width=4)
    update = fl_task.local_train(fl_task.initial_weights(spec, 0), ds.x_train[:200], ds.y_train[:200], 3, spec)
    assert update["delta"]["0.weight"].shape == (4, 1, 3) and np.isfinite(update["train_loss"])
