"""CompassScheduler against hand-computed traces (Q_max=10, Q_min=2, beta=0.9, lambda=1.5).

The clock is a plain variable moved by the test; updates are opaque tokens recorded by a fake
aggregator, so every expected number below is worked out by hand from the algorithm in
the FedCompass paper (Li et al., ICLR 2024, Algorithms 1-3).
"""

import pytest

from components.federated.schedulers import CompassScheduler, FedAsyncScheduler, FedAvgScheduler, FedBuffScheduler


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class RecordingAggregator:
    """Remembers each aggregation as [(client, staleness)] and bumps a counter in the weights."""

    def __init__(self):
        self.calls = []

    def aggregate(self, weights, updates):
        self.calls.append([(u.client, u.staleness) for u in updates])
        return {"n": weights["n"] + 1}


def compass(n=2, q_max=10, q_min=2):
    clock, aggregator = Clock(), RecordingAggregator()
    scheduler = CompassScheduler(
        n, aggregator, {"n": 0}, clock, q_max=q_max, q_min=q_min, speed_momentum=0.9, latest_time_factor=1.5
    )
    return scheduler, clock, aggregator


def arrive(scheduler, clock, when, client):
    clock.now = when
    return scheduler.on_arrival(client, {"from": client})


def test_start_sends_every_client_q_max():
    s, clock, _ = compass(n=3)
    out = s.start()
    assert [(a.client, a.steps, a.version) for a in out] == [(0, 10, 0), (1, 10, 0), (2, 10, 0)]


def test_first_arrivals_update_at_once_then_create_and_join_groups():
    s, clock, agg = compass()
    s.start()
    # c0 at t=10: speed 10/10 = 1; immediate update (staleness 0); no group yet -> group 0 with
    # Q_max: T_e = 10 + 10*1 = 20, T_l = 10 + 1.5*10 = 25.
    out = arrive(s, clock, 10.0, 0)
    assert [(a.client, a.steps, a.version) for a in out] == [(0, 10, 1)]
    assert agg.calls == [[(0, 0)]]
    assert (s.groups[0].expected_arrival, s.groups[0].latest_arrival, s.groups[0].pending) == (20.0, 25.0, [0])
    assert s.next_deadline() == 25.0
    # c1 at t=12: speed 1.2; immediate update with staleness 1 - 0 = 1; JoinGroup(0):
    # Q = floor((20 - 12) / 1.2) = 6, within [2, 10] -> joins group 0 with 6 steps.
    out = arrive(s, clock, 12.0, 1)
    assert [(a.client, a.steps, a.version) for a in out] == [(1, 6, 2)]
    assert agg.calls[-1] == [(1, 1)]
    assert s.groups[0].pending == [0, 1] and s.group_of[1] == 0


def test_group_aggregates_when_all_arrive_and_reassigns_fastest_first():
    s, clock, agg = compass()
    s.start()
    arrive(s, clock, 10.0, 0)
    arrive(s, clock, 12.0, 1)
    # c1 back at 19.5 (on time): speed obs (19.5-12)/6 = 1.25 -> 0.1*1.2 + 0.9*1.25 = 1.245; waits.
    assert arrive(s, clock, 19.5, 1) == []
    assert s.speed[1] == pytest.approx(1.245)
    # c0 at 20: last pending member -> GroupAggregate(0): staleness c1 = 2-2 = 0, c0 = 2-1 = 1.
    out = arrive(s, clock, 20.0, 0)
    assert agg.calls[-1] == [(1, 0), (0, 1)]
    assert s.records[-1].trigger == "group" and s.version == 3
    # Fastest first: c0 (speed 1.0) before c1 (1.245). c0: group 0 takes no one (T_e = T_l = 0),
    # CreateGroup finds no open group -> Q_max: T_e = 30, T_l = 35. c1 then joins it with
    # Q = floor((30 - 20) / 1.245) = 8.
    assert [(a.client, a.steps, a.version) for a in out] == [(0, 10, 3), (1, 8, 3)]
    assert 0 not in s.groups  # no one pending: dropped
    new = s.groups[s.group_of[0]]
    assert (new.expected_arrival, new.latest_arrival, new.pending) == (30.0, 35.0, [0, 1])
    assert s.timers == {s.group_of[0]: 35.0}


def test_create_group_uses_latest_arrival_plus_fastest_member_and_clamps_to_q_min():
    s, clock, _ = compass(q_min=5)
    s.start()
    arrive(s, clock, 10.0, 0)  # group 0: T_e 20, T_l 25, c0 speed 1
    # c1 first back at 24 (speed 2.4). Join: Q = floor((20-24)/2.4) < 0 -> no.
    # Create: group 0 still open (24 < 25): T_est = 25 + 1.0 * 10 = 35, Q = floor(11 / 2.4) = 4,
    # and 0 <= 4 < Q_min = 5 -> Q_min. New group: T_e = 24 + 5*2.4 = 36, T_l = 24 + 1.5*12 = 42.
    out = arrive(s, clock, 24.0, 1)
    assert out[0].steps == 5
    group = s.groups[s.group_of[1]]
    assert group.expected_arrival == pytest.approx(36.0) and group.latest_arrival == pytest.approx(42.0)


def test_create_group_q_star_from_open_group():
    s, clock, _ = compass()
    s.start()
    arrive(s, clock, 10.0, 0)  # group 0: T_e 20, T_l 25
    # c1 first back at 20 (speed 2): join Q = 0 < Q_min; create: T_est = 25 + 10 = 35,
    # Q* = floor(15 / 2) = 7: T_e = 20 + 14 = 34, T_l = 20 + 21 = 41.
    out = arrive(s, clock, 20.0, 1)
    assert out[0].steps == 7
    group = s.groups[s.group_of[1]]
    assert (group.expected_arrival, group.latest_arrival) == (34.0, 41.0)


def test_timer_aggregates_arrived_members_and_late_arrival_goes_to_general_buffer():
    s, clock, agg = compass()
    s.start()
    arrive(s, clock, 10.0, 0)
    arrive(s, clock, 12.0, 1)  # both in group 0 (T_l = 25), c1 with 6 steps
    assert arrive(s, clock, 20.0, 0) == []  # c0 on time, c1 still pending
    clock.now = 25.0
    assert s.next_deadline() == 25.0
    out = s.on_timer()  # timer: aggregate what arrived (c0, staleness 2 - 1 = 1)
    assert agg.calls[-1] == [(0, 1)] and s.records[-1].trigger == "timer"
    # c0 reassigned: group 0 closed (T_l = 0) -> new group with Q_max: T_e 35, T_l 40.
    assert [(a.client, a.steps, a.version) for a in out] == [(0, 10, 3)]
    assert 0 in s.groups and s.groups[0].pending == [1]  # kept until its straggler shows up
    # c1 at 30 is late (30 > T_l): its update goes to the general buffer, it restarts at once with
    # the current model. Speed obs (30-12)/6 = 3 -> 0.1*1.2 + 0.9*3 = 2.82.
    # Join group 1: Q = floor((35-30)/2.82) = 1 < 2. Create: group 1 open (30 < 40), fastest c0 = 1:
    # T_est = 40 + 10 = 50, Q* = floor(20 / 2.82) = 7.
    out = arrive(s, clock, 30.0, 1)
    assert [(a.client, a.steps, a.version) for a in out] == [(1, 7, 3)]
    assert s.late_arrivals == 1 and 1 in s.general_buffer and 0 not in s.groups
    assert len(agg.calls) == 3  # no aggregation on a late arrival
    # c0 back at 35 closes group 1: the general buffer joins (c1 tau 2 -> staleness 1) with c0 (0).
    out = arrive(s, clock, 35.0, 0)
    assert agg.calls[-1] == [(1, 1), (0, 0)]
    assert s.records[-1].late_clients == 1 and s.general_buffer == {}


def test_timer_without_arrivals_does_nothing_and_run_continues():
    s, clock, agg = compass()
    s.start()
    arrive(s, clock, 10.0, 0)  # group 0 with only c0; c1 never returns (crashed)
    clock.now = 25.0
    assert s.on_timer() == [] and s.next_deadline() is None
    assert len(agg.calls) == 1


def test_join_rejects_q_above_q_max():
    s, clock, _ = compass(n=3)
    s.start()
    arrive(s, clock, 10.0, 0)  # group 0: T_e 20, T_l 25 (c0 speed 1)
    arrive(s, clock, 12.0, 1)  # joins group 0 with 6 steps
    arrive(s, clock, 19.5, 1)
    arrive(s, clock, 20.0, 0)  # group aggregate; c0 -> group 1 (T_e 30, T_l 35); c1 joins it, 8 steps
    # c2 first arrival at t=20.0 would be speed 2: join group 1 with Q = floor(10/2) = 5.
    out = arrive(s, clock, 20.0, 2)
    assert out[0].steps == 5 and s.group_of[2] == s.group_of[0]
    # A fast client (speed 0.5): Q = floor(10 / 0.5) = 20 > Q_max -> no join; create: group 1 open,
    # fastest member 1.0: T_est = 35 + 10 = 45, Q = floor(25 / 0.5) = 50 > Q_max -> ignored ->
    # Q* < 0 -> Q_max.
    s.speed[2] = 0.5
    s.groups[s.group_of[2]].pending.remove(2)
    s._assign_group(2, 20.0)
    assert s.steps[2] == 10 and s.group_of[2] != s.group_of[0]


def test_baselines_fedavg_waits_fedasync_updates_fedbuff_buffers():
    clock, agg = Clock(), RecordingAggregator()
    avg = FedAvgScheduler(3, agg, {"n": 0}, clock, local_steps=5)
    assert len(avg.start()) == 3
    assert avg.on_arrival(2, {}) == [] and avg.on_arrival(0, {}) == []
    out = avg.on_arrival(1, {})
    assert [a.client for a in out] == [0, 1, 2] and avg.version == 1 and agg.calls[-1] == [(0, 0), (1, 0), (2, 0)]

    agg = RecordingAggregator()
    fa = FedAsyncScheduler(2, agg, {"n": 0}, clock, local_steps=5)
    fa.start()
    fa.on_arrival(0, {})
    out = fa.on_arrival(1, {})
    assert agg.calls == [[(0, 0)], [(1, 1)]] and out[0].version == 2

    agg = RecordingAggregator()
    fb = FedBuffScheduler(3, agg, {"n": 0}, clock, local_steps=5, buffer_size=2)
    fb.start()
    assert [a.version for a in fb.on_arrival(0, {})] == [0]  # buffered, restarts at once
    fb.on_arrival(1, {})  # buffer full -> one update
    assert agg.calls == [[(0, 0), (1, 0)]] and fb.version == 1
    fb.on_arrival(0, {})
    fb.on_arrival(2, {})  # c0 restarted from version 0 before the update, c2 started at 0: both 1 stale
    assert agg.calls[-1] == [(0, 1), (2, 1)]
    fb.on_arrival(1, {})
    fb.on_arrival(0, {})  # c1 restarted from version 1 (staleness 1), c0 from version 1 too
    assert agg.calls[-1] == [(1, 1), (0, 1)]


def test_bad_hyperparameters_are_named():
    with pytest.raises(ValueError, match="q_min"):
        CompassScheduler(2, RecordingAggregator(), {"n": 0}, Clock(), q_max=5, q_min=10)
    with pytest.raises(ValueError, match="latest_time_factor"):
        CompassScheduler(2, RecordingAggregator(), {"n": 0}, Clock(), latest_time_factor=0.5)
    with pytest.raises(ValueError, match="buffer_size"):
        FedBuffScheduler(2, RecordingAggregator(), {"n": 0}, Clock(), buffer_size=0)


def fedavg(n=3, **kw):
    clock, aggregator = Clock(), RecordingAggregator()
    return FedAvgScheduler(n, aggregator, {"n": 0}, clock, local_steps=5, **kw), clock, aggregator


def test_fedavg_round_timeout_aggregates_the_arrivals_and_drops_the_lost_client():
    s, clock, agg = fedavg(round_timeout=30.0, min_clients=2)
    s.start()
    arrive(s, clock, 5.0, 0)
    arrive(s, clock, 6.0, 1)  # c2 never answers
    assert s.next_deadline() == 30.0 and agg.calls == []
    clock.now = 30.0
    out = s.on_timer()
    assert agg.calls == [[(0, 0), (1, 0)]] and s.records[-1].trigger == "timeout"
    assert sorted(a.client for a in out) == [0, 1] and s.lost == {2}
    # the next round waits only for the two live clients: no second timeout
    arrive(s, clock, 35.0, 0)
    out = arrive(s, clock, 36.0, 1)
    assert len(agg.calls) == 2 and s.records[-1].trigger == "round" and len(out) == 2


def test_fedavg_straggler_update_is_dropped_and_it_rejoins_the_round():
    s, clock, agg = fedavg(round_timeout=30.0)
    s.start()
    arrive(s, clock, 5.0, 0)
    arrive(s, clock, 6.0, 1)
    clock.now = 30.0
    s.on_timer()  # c2 missed round 1
    out = arrive(s, clock, 40.0, 2)  # its round-1 update arrives late: dropped, it gets the current model
    assert [(a.client, a.version) for a in out] == [(2, 1)] and len(agg.calls) == 1 and s.lost == set()
    arrive(s, clock, 41.0, 0)
    arrive(s, clock, 42.0, 1)
    arrive(s, clock, 45.0, 2)
    assert agg.calls[-1] == [(0, 0), (1, 0), (2, 0)]


def test_fedavg_below_min_clients_fails_naming_the_lost_clients():
    s, clock, agg = fedavg(round_timeout=30.0, min_clients=2)
    s.start()
    arrive(s, clock, 5.0, 0)
    clock.now = 31.0
    assert s.on_timer() == [] and agg.calls == []
    assert s.failure == "FedAvg round 1 got 1 update(s), fewer than min_clients=2; lost clients: [1, 2]"
    assert s.next_deadline() is None


def test_fedavg_failed_client_ends_the_round_without_waiting_for_the_timeout():
    s, clock, agg = fedavg(round_timeout=1000.0, min_clients=1)
    s.start()
    arrive(s, clock, 5.0, 0)
    arrive(s, clock, 6.0, 1)
    clock.now = 7.0
    out = s.on_failure(2)  # an error reply: no need to wait
    assert agg.calls == [[(0, 0), (1, 0)]] and sorted(a.client for a in out) == [0, 1]
