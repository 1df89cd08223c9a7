"""Server-side schedulers behind one event interface, driven by the simulator or by Flower.

A driver calls `start()` once, then `on_arrival(client, update)` for each returned local update and
`on_timer()` whenever `next_deadline()` has passed. Each call returns the `Assignment`s to send now
(the global model and a number of local steps for each named client). Time comes from an injected
`clock` (virtual time in the simulator, `time.monotonic` under Flower), measured from `start()`.

- `CompassScheduler`: FedCompass (Li et al., ICLR 2024), exactly as specified in the
  paper (Algorithms 1-3) and the reference code (APPFL `compass_scheduler.py`): speed
  estimates with momentum, arrival groups (JoinGroup / CreateGroup with Q_min / Q_max and the
  latest-arrival factor lambda), late arrivals to the general buffer, a timer per group, fastest-first
  reassignment after a group aggregation.
- `FedAvgScheduler`: synchronous rounds; waits for the round's clients, or until a round timeout.
- `FedAsyncScheduler`: a global update on every arrival.
- `FedBuffScheduler`: a global update every `buffer_size` arrivals; clients restart at once.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Optional

from components.federated import aggregators as agg
from components.federated.aggregators import WeightedUpdate
from components.federated.config import FedStrategyConfig

Clock = Callable[[], float]
DEFAULTS = FedStrategyConfig  # the hyperparameters' defaults are FedStrategyConfig's (written once, there)


@dataclass
class Assignment:
    """Send `weights` (global version `version`) to `client` and ask for `steps` local steps."""

    client: int
    weights: dict
    version: int
    steps: int
    sent_at: float


@dataclass
class AggregationRecord:
    """One global model update, for the per-aggregation metrics."""

    time: float
    version: int  # global version after this update
    clients: list[int]
    staleness: list[int]
    trigger: str  # "arrival", "group", "timer", "buffer", "round", "timeout"
    group: Optional[int] = None
    late_clients: int = 0  # of `clients`, how many came from the general buffer


@dataclass
class _Group:
    expected_arrival: float  # T_e
    latest_arrival: float  # T_l: arrivals after it are late; its timer fires then
    pending: list[int] = field(default_factory=list)
    arrived: list[int] = field(default_factory=list)
    buffer: dict[int, tuple[dict, int]] = field(default_factory=dict)  # client -> (update, tau)
    aggregated: bool = False


class Scheduler:
    """Global model, version counter t, client timestamps tau, records; subclasses add the policy."""

    name = "base"
    aggregator_class: type = agg.StalenessWeightedAggregator  # the server step this policy takes

    @classmethod
    def make_aggregator(
        cls, client_weights: Sequence[float], alpha: float, staleness_fn: agg.StalenessFn
    ) -> agg.StalenessWeightedAggregator | agg.FedAvgAggregator:
        """The policy's server step: alpha * s(staleness) * p_i weighted deltas (FedAvg overrides)."""
        return cls.aggregator_class(client_weights, alpha=alpha, staleness_fn=staleness_fn)

    def __init__(self, n_clients: int, aggregator, initial_weights: dict, clock: Clock):
        self.n_clients = n_clients
        self.aggregator = aggregator
        self.weights = initial_weights
        self.clock = clock
        self.version = 0  # t: number of global updates so far
        self.tau = [0] * n_clients  # version each client's current local model started from
        self.records: list[AggregationRecord] = []
        self.arrivals = 0
        self.late_arrivals = 0
        self.lost: set[int] = set()  # clients known to have failed or missed their deadline
        self.failure: Optional[str] = None  # set when the run cannot go on (the driver stops and reports it)
        self._origin = 0.0
        self._lock = threading.RLock()

    def now(self) -> float:
        return self.clock() - self._origin

    def start(self) -> list[Assignment]:
        with self._lock:
            self._origin = self.clock()
            return [self._assign(c, self.initial_steps()) for c in range(self.n_clients)]

    def initial_steps(self) -> int:
        raise NotImplementedError

    def on_arrival(self, client: int, update: dict) -> list[Assignment]:
        raise NotImplementedError

    def next_deadline(self) -> Optional[float]:
        """Scheduler time of the next timer, or None."""
        return None

    def on_timer(self) -> list[Assignment]:
        return []

    def on_failure(self, client: int) -> list[Assignment]:
        """The driver learned that `client`'s current round failed (an error reply, a node gone): the
        asynchronous schedulers simply never hear from it again; FedAvg stops waiting for it."""
        with self._lock:
            self.lost.add(client)
            return []

    def _assign(self, client: int, steps: int) -> Assignment:
        return Assignment(client, self.weights, self.version, int(steps), self.now())

    def _aggregate(
        self, items: list[tuple[int, dict, int]], trigger: str, group: Optional[int] = None, late_clients: int = 0
    ) -> None:
        """items: (client, update, tau when the client started); staleness = t - tau."""
        updates = [WeightedUpdate(c, u, self.version - tau) for c, u, tau in items]
        self.weights = self.aggregator.aggregate(self.weights, updates)
        self.version += 1
        self.records.append(
            AggregationRecord(
                self.now(),
                self.version,
                [c for c, _, _ in items],
                [u.staleness for u in updates],
                trigger,
                group,
                late_clients,
            )
        )


class FedAvgScheduler(Scheduler):
    """Synchronous FedAvg: every client runs `local_steps`; the server waits for the round's clients.

    Faults follow Flower's FedAvg: a round ends when every client of the round has answered, or at
    `round_timeout` (scheduler seconds after the round started) with the updates that arrived
    (`accept_failures`); a client that failed (`on_failure`) or missed the deadline is lost and left
    out of later rounds until it answers again (its late update is stale and dropped; it rejoins the
    current round). A round with fewer than `min_clients` updates aggregates nothing: `failure` says
    why, naming the lost clients, and the scheduler hands out no more work.
    """

    name = "fedavg"

    @classmethod
    def make_aggregator(cls, client_weights, alpha, staleness_fn) -> agg.FedAvgAggregator:
        """The sample-weighted mean of the local models: no mixing rate, no staleness in synchronous rounds."""
        return agg.FedAvgAggregator()

    def __init__(
        self,
        *runtime,  # n_clients, aggregator, initial_weights, clock (see Scheduler)
        local_steps: int = DEFAULTS.local_steps,
        round_timeout: Optional[float] = DEFAULTS.round_timeout,
        min_clients: int = DEFAULTS.min_clients,
    ):
        super().__init__(*runtime)
        self.local_steps = local_steps
        self.round_timeout = round_timeout  # None: wait for every live client however long it takes
        self.min_clients = max(1, min(min_clients, self.n_clients))  # Flower's min_fit_clients, capped at N
        self._round: dict[int, dict] = {}
        self._expected: set[int] = set()  # clients working on the current round
        self._round_started = 0.0

    def initial_steps(self) -> int:
        return self.local_steps

    def start(self) -> list[Assignment]:
        with self._lock:
            out = super().start()
            self._expected, self._round_started = set(range(self.n_clients)), self.now()
            return out

    def on_arrival(self, client: int, update: dict) -> list[Assignment]:
        with self._lock:
            self.arrivals += 1
            if self.failure is not None:
                return []
            if client in self.lost or client not in self._expected:
                # A straggler from an earlier round: its update started from an old model and is dropped,
                # as Flower drops replies that miss their round; it joins the round under way.
                self.lost.discard(client)
                self._expected.add(client)
                self.tau[client] = self.version
                return [self._assign(client, self.local_steps)]
            self._round[client] = update
            return self._close_round("round") if self._expected <= set(self._round) else []

    def on_failure(self, client: int) -> list[Assignment]:
        with self._lock:
            self.lost.add(client)
            self._expected.discard(client)
            self._round.pop(client, None)
            if self.failure is None and self._expected <= set(self._round):
                return self._close_round("round")
            return []

    def next_deadline(self) -> Optional[float]:
        if self.round_timeout is None or self.failure is not None or not self._expected:
            return None
        return self._round_started + self.round_timeout

    def on_timer(self) -> list[Assignment]:
        with self._lock:
            due = self.next_deadline()
            if due is None or self.now() < due:
                return []
            missing = self._expected - set(self._round)
            self.lost |= missing
            self._expected -= missing
            return self._close_round("timeout")

    def _close_round(self, trigger: str) -> list[Assignment]:
        if len(self._round) < self.min_clients:
            self.failure = (
                f"FedAvg round {self.version + 1} got {len(self._round)} update(s), fewer than "
                f"min_clients={self.min_clients}; lost clients: {sorted(self.lost)}"
            )
            self._expected = set()
            return []
        items = [(c, self._round[c], self.tau[c]) for c in sorted(self._round)]
        self._round = {}
        self._aggregate(items, trigger)
        self.tau = [self.version] * self.n_clients
        self._expected = set(range(self.n_clients)) - self.lost
        self._round_started = self.now()
        return [self._assign(c, self.local_steps) for c in sorted(self._expected)]


class FedAsyncScheduler(Scheduler):
    """FedAsync: every arrival updates the global model at once (mixing alpha * s(staleness))."""

    name = "fedasync"
    aggregator_class = agg.FedAsyncAggregator

    def __init__(self, *runtime, local_steps: int = DEFAULTS.local_steps):
        super().__init__(*runtime)
        self.local_steps = local_steps

    def initial_steps(self) -> int:
        return self.local_steps

    def on_arrival(self, client: int, update: dict) -> list[Assignment]:
        with self._lock:
            self.arrivals += 1
            self._aggregate([(client, update, self.tau[client])], "arrival")
            self.tau[client] = self.version
            return [self._assign(client, self.local_steps)]


class FedBuffScheduler(Scheduler):
    """FedBuff: arrivals are buffered and the client restarts at once from the current model;
    every `buffer_size` arrivals make one global update."""

    name = "fedbuff"
    aggregator_class = agg.FedBuffAggregator

    def __init__(self, *runtime, local_steps: int = DEFAULTS.local_steps, buffer_size: int = DEFAULTS.buffer_size):
        super().__init__(*runtime)
        if buffer_size < 1:
            raise ValueError(f"buffer_size must be >= 1, got {buffer_size}")
        self.local_steps = local_steps
        self.buffer_size = buffer_size
        self._buffer: list[tuple[int, dict, int]] = []

    def initial_steps(self) -> int:
        return self.local_steps

    def on_arrival(self, client: int, update: dict) -> list[Assignment]:
        with self._lock:
            self.arrivals += 1
            self._buffer.append((client, update, self.tau[client]))
            if len(self._buffer) >= self.buffer_size:
                items, self._buffer = self._buffer, []
                self._aggregate(items, "buffer")
            self.tau[client] = self.version
            return [self._assign(client, self.local_steps)]


class CompassScheduler(Scheduler):
    """FedCompass's computing-power-aware scheduler (see the module docstring and the paper page)."""

    name = "fedcompass"
    aggregator_class = agg.FedCompassAggregator

    def __init__(
        self,
        *runtime,  # n_clients, aggregator, initial_weights, clock (see Scheduler)
        q_max: int = DEFAULTS.q_max,
        q_min: int = DEFAULTS.q_min,
        speed_momentum: float = DEFAULTS.speed_momentum,
        latest_time_factor: float = DEFAULTS.latest_time_factor,
    ):
        super().__init__(*runtime)
        if not 0 < q_min <= q_max:
            raise ValueError(f"need 0 < q_min <= q_max, got q_min={q_min}, q_max={q_max}")
        if latest_time_factor < 1:
            raise ValueError(f"latest_time_factor (lambda) must be >= 1, got {latest_time_factor}")
        self.q_max, self.q_min = q_max, q_min
        self.beta = speed_momentum
        self.lam = latest_time_factor
        self.speed: dict[int, float] = {}  # estimated seconds per local step
        self.steps = [q_max] * self.n_clients  # Q_c of the current local round
        self.start_time = [0.0] * self.n_clients
        self.group_of: dict[int, int] = {}
        self.groups: dict[int, _Group] = {}
        self.timers: dict[int, float] = {}  # group id -> T_l while its timer is armed
        self.general_buffer: dict[int, tuple[dict, int]] = {}
        self._next_group = 0

    def initial_steps(self) -> int:
        return self.q_max

    # --- events -------------------------------------------------------------------------------
    def on_arrival(self, client: int, update: dict) -> list[Assignment]:
        with self._lock:
            now = self.now()
            self.arrivals += 1
            self._update_speed(client, now)
            if client not in self.group_of:  # first arrival: immediate FedAsync-style update
                self._aggregate([(client, update, self.tau[client])], "arrival")
                self.tau[client] = self.version
                self._assign_group(client, now)
                return [self._assign(client, self.steps[client])]
            gid = self.group_of[client]
            group = self.groups[gid]
            if now > group.latest_arrival:  # late: general buffer, restart at once
                self.late_arrivals += 1
                group.pending.remove(client)
                if not group.pending and (group.aggregated or not group.arrived):
                    self._drop_group(gid)
                self.general_buffer[client] = (update, self.tau[client])
                self.tau[client] = self.version
                self._assign_group(client, now)
                return [self._assign(client, self.steps[client])]
            group.pending.remove(client)
            group.arrived.append(client)
            group.buffer[client] = (update, self.tau[client])
            if not group.pending:
                return self._group_aggregate(gid, "group")
            return []

    def next_deadline(self) -> Optional[float]:
        with self._lock:
            return min(self.timers.values()) if self.timers else None

    def on_timer(self) -> list[Assignment]:
        """Fire every group timer that is due (T_l <= now)."""
        with self._lock:
            out: list[Assignment] = []
            for gid, deadline in sorted(self.timers.items(), key=lambda kv: (kv[1], kv[0])):
                if deadline <= self.now():
                    del self.timers[gid]
                    out += self._group_aggregate(gid, "timer")
            return out

    # --- the algorithm ------------------------------------------------------------------------
    def _update_speed(self, client: int, now: float) -> None:
        observed = (now - self.start_time[client]) / self.steps[client]
        if client in self.speed:
            self.speed[client] = (1 - self.beta) * self.speed[client] + self.beta * observed
        else:
            self.speed[client] = observed

    def _group_aggregate(self, gid: int, trigger: str) -> list[Assignment]:
        group = self.groups.get(gid)
        if group is None or group.aggregated or not group.arrived:
            return []  # a timer on a group nobody reached: nothing to aggregate
        self.timers.pop(gid, None)
        general = sorted(self.general_buffer.items())
        items = [(c, u, tau) for c, (u, tau) in general] + [
            (c, group.buffer[c][0], group.buffer[c][1]) for c in group.arrived
        ]
        self.general_buffer = {}
        self._aggregate(items, trigger, group=gid, late_clients=len(general))
        group.aggregated = True
        group.buffer = {}
        # The group takes no more members; whoever is still pending will arrive late.
        group.expected_arrival = group.latest_arrival = 0.0
        now = self.now()
        out = []
        for client in sorted(group.arrived, key=lambda c: (self.speed[c], c)):  # fastest first
            self.tau[client] = self.version
            self._assign_group(client, now)
            out.append(self._assign(client, self.steps[client]))
        if not group.pending:
            self._drop_group(gid)
        return out

    def _drop_group(self, gid: int) -> None:
        self.groups.pop(gid, None)
        self.timers.pop(gid, None)

    def _assign_group(self, client: int, now: float) -> None:
        if not self.groups:
            self._new_group(client, self.q_max, now)
        elif not self._join_group(client, now):
            self._create_group(client, now)

    def _join_group(self, client: int, now: float) -> bool:
        best_gid, best_q = None, -1
        for gid, group in self.groups.items():
            q = math.floor((group.expected_arrival - now) / self.speed[client])
            if q < self.q_min or q > self.q_max or q < best_q:
                continue
            best_gid, best_q = gid, q  # ties go to the later group, as in the reference code
        if best_gid is None:
            return False
        self.groups[best_gid].pending.append(client)
        self._set_round(client, best_gid, best_q, now)
        return True

    def _create_group(self, client: int, now: float) -> None:
        q_star = -1
        for group in self.groups.values():
            if now < group.latest_arrival:
                fastest = min(self.speed[c] for c in group.pending + group.arrived)
                estimate = group.latest_arrival + fastest * self.q_max
                q = math.floor((estimate - now) / self.speed[client])
                if q <= self.q_max:
                    q_star = max(q_star, q)
        if 0 <= q_star < self.q_min:
            q_star = self.q_min
        elif q_star < 0:
            q_star = self.q_max
        self._new_group(client, q_star, now)

    def _new_group(self, client: int, steps: int, now: float) -> None:
        gid = self._next_group
        self._next_group += 1
        span = steps * self.speed[client]
        self.groups[gid] = _Group(expected_arrival=now + span, latest_arrival=now + self.lam * span, pending=[client])
        self.timers[gid] = now + self.lam * span
        self._set_round(client, gid, steps, now)

    def _set_round(self, client: int, gid: int, steps: int, now: float) -> None:
        self.group_of[client] = gid
        self.steps[client] = int(steps)
        self.start_time[client] = now


SCHEDULERS = {cls.name: cls for cls in (CompassScheduler, FedAvgScheduler, FedAsyncScheduler, FedBuffScheduler)}
