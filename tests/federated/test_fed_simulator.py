"""The discrete-event simulator: determinism, crashed clients, group behaviour in virtual time."""

import math

import numpy as np
import pytest

from components.federated import aggregators as agg
from components.federated import partitions, speeds
from components.federated import task as fl_task
from components.federated.schedulers import SCHEDULERS
from components.federated.simulator import FederatedRunFailed, LocalTrainer, Simulator, VirtualClock


@pytest.fixture(scope="module")
def setup():
    ds = fl_task.load_dataset("digits", seed=0)
    spec = fl_task.ModelSpec("mlp", ds.input_shape, ds.n_classes, width=8)
    parts = partitions.make_partition("dirichlet", ds.y_train, 4, seed=0)
    data = [(ds.x_train[p], ds.y_train[p]) for p in parts]
    return ds, spec, data


def simulate(
    setup, name="fedcompass", seed=0, kind="exponential", crash_at=None, max_updates=12, time_budget=math.inf, **kw
):
    ds, spec, data = setup
    clock = VirtualClock()
    weights = agg.client_weights([len(y) for _, y in data])
    aggregator = agg.FedAvgAggregator() if name == "fedavg" else agg.StalenessWeightedAggregator(weights, 0.9)
    params = dict(q_max=10, q_min=2) if name == "fedcompass" else dict(local_steps=10)
    scheduler = SCHEDULERS[name](len(data), aggregator, fl_task.initial_weights(spec, seed), clock, **params, **kw)
    calls = []

    def trainer(jobs):
        calls.append([j.client for j in jobs])
        return LocalTrainer(fl_task.local_train, data, spec=spec, lr=0.05)(jobs)

    def evaluate(w):
        loss, acc = fl_task.evaluate(w, ds.x_test, ds.y_test, spec)
        return {"accuracy": acc, "loss": loss}

    sim = Simulator(
        scheduler,
        clock,
        speeds.make_speeds(kind, len(data), 1.0, seed),
        trainer,
        evaluate,
        seed=seed,
        max_updates=max_updates,
        time_budget=time_budget,
        target_accuracy=0.5,
        crash_at=crash_at or {},
    )
    return sim.run(), calls


def test_identical_seeds_give_identical_runs(setup):
    a, _ = simulate(setup, seed=1)
    b, _ = simulate(setup, seed=1)
    c, _ = simulate(setup, seed=2)
    assert a.history == b.history and a.summary == b.summary
    assert all(np.array_equal(a.weights[k], b.weights[k]) for k in a.weights)
    assert [r.time for r in a.records] != [r.time for r in c.records]


def test_crashed_client_does_not_deadlock_compass(setup):
    # Homogeneous speeds: all four first arrive at t=10 (4 immediate updates) and are put in one
    # group due at T_e=20, T_l=25. Client 0 dies at t=15 and never answers: the other three wait
    # until the group timer fires at 25, which aggregates them; the run then reaches 12 updates.
    result, _ = simulate(setup, kind="homogeneous", crash_at={0: 15.0}, max_updates=12)
    assert result.summary["global_updates"] == 12
    assert result.lost_jobs == 1
    fired = [r for r in result.records if r.trigger == "timer"]
    assert fired[0].time == 25.0 and sorted(fired[0].clients) == [1, 2, 3]
    assert all(0 not in r.clients for r in result.records[4:])


def test_crashed_client_in_the_simulator_fedavg_without_round_timeout_fails_naming_it(setup):
    # FedAvg waits for every client: with client 0 dead and no round timeout nothing can happen any more;
    # the run fails (no "completed" with 0 of 5 updates) and names the client
    with pytest.raises(FederatedRunFailed, match=r"made 0 of 5 global updates.*lost clients: \[0\].*round_timeout"):
        simulate(setup, name="fedavg", crash_at={0: 0.0}, max_updates=5)


def test_crashed_client_in_the_simulator_fedavg_round_timeout_goes_on_with_the_arrivals(setup):
    # homogeneous speed 1, 10 steps: a round takes 10 s; client 0 dies at once. Round 1 ends at the
    # 40 s timeout with clients 1-3; later rounds wait only for them (10 s each, no more timeouts).
    result, _ = simulate(
        setup, name="fedavg", kind="homogeneous", crash_at={0: 0.0}, max_updates=4, round_timeout=40.0, min_clients=2
    )
    assert result.summary["global_updates"] == 4 and result.lost_clients == [0]
    assert [r.time for r in result.records] == [40.0, 50.0, 60.0, 70.0]
    assert [r.trigger for r in result.records] == ["timeout", "round", "round", "round"]
    assert all(r.clients == [1, 2, 3] for r in result.records)


def test_crashed_clients_in_the_simulator_below_min_clients_fail_the_run(setup):
    with pytest.raises(FederatedRunFailed, match=r"fewer than min_clients=2; lost clients: \[0, 1, 2\]"):
        simulate(
            setup,
            name="fedavg",
            kind="homogeneous",
            crash_at={0: 0.0, 1: 0.0, 2: 0.0},
            max_updates=4,
            round_timeout=40.0,
            min_clients=2,
        )


@pytest.mark.parametrize("name", ["fedasync", "fedbuff", "fedcompass"])
def test_crashed_client_in_the_simulator_async_strategies_go_on(setup, name):
    result, _ = simulate(setup, name=name, kind="homogeneous", crash_at={2: 0.0}, max_updates=6)
    assert result.summary["global_updates"] == 6 and result.lost_clients == [2]
    assert all(2 not in r.clients for r in result.records)


def test_jobs_of_one_scheduling_point_train_together(setup):
    _, calls = simulate(setup, name="fedavg", kind="homogeneous", max_updates=2)
    assert calls[0] == [0, 1, 2, 3]  # the initial broadcast: all four in one parallel batch
    result, _ = simulate(setup, name="fedavg", kind="normal", max_updates=3)
    assert result.summary["idle_fraction"] > 0.05  # fast clients wait for the slowest
    assert result.summary["mean_group_size"] == 4 and result.summary["max_staleness"] == 0


def test_compass_groups_clients_and_keeps_staleness_low(setup):
    compass, _ = simulate(setup, kind="exponential", max_updates=None, time_budget=80)
    fedasync, _ = simulate(setup, name="fedasync", kind="exponential", max_updates=None, time_budget=80)
    assert compass.summary["mean_group_size"] > 1.0
    assert compass.summary["mean_staleness"] < fedasync.summary["mean_staleness"]
    assert compass.summary["end_time"] == 80 and compass.history[-1]["time"] <= 80
    assert 0 <= compass.summary["idle_fraction"] < 1 and 0 <= compass.summary["late_fraction"] <= 1


def test_drifting_speeds_are_tracked_by_the_speed_estimate(setup):
    ds, spec, data = setup
    clock = VirtualClock()
    aggregator = agg.StalenessWeightedAggregator(agg.client_weights([1] * 4), 0.9)
    scheduler = SCHEDULERS["fedcompass"](4, aggregator, fl_task.initial_weights(spec, 0), clock, q_max=10, q_min=2)
    drifting = speeds.make_speeds("homogeneous", 4, 1.0, 0, drift_time=60.0, drift_fraction=0.25, drift_factor=3.0)
    slow = drifting.drift_clients[0]
    trainer = LocalTrainer(fl_task.local_train, data, spec=spec)
    Simulator(scheduler, clock, drifting, trainer, lambda w: {"accuracy": 0.0, "loss": 0.0}, time_budget=200).run()
    others = [scheduler.speed[c] for c in range(4) if c != slow]
    assert scheduler.speed[slow] == pytest.approx(3.0, rel=0.05)
    assert others == pytest.approx([1.0] * 3, rel=0.05)
