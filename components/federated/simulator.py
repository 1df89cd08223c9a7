"""A deterministic discrete-event driver for the schedulers, in virtual time (no sleeps).

Each `Assignment` becomes a `TrainJob` whose arrival time is `now + steps * step_time` from the
speed model. Events are processed in time order; a group timer that falls strictly before the next
arrival fires first (an arrival exactly at T_l is on time, as in `now > T_l` for lateness).

Training is lazy and batched: when the next arrival needs its update, every job dispatched so far
and not yet trained (all start from models that are already fixed) is handed to `trainer` at once.
The flow's trainer fans these out as parallel Prefect tasks (threads or Dask workers); the results
do not depend on how they were run, so the same seed gives the same run.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from components.federated.schedulers import Assignment, Scheduler
from components.federated.speeds import ClientSpeeds


class VirtualClock:
    """The injectable clock of a simulated run: the simulator moves it, schedulers read it."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass
class TrainJob:
    """One client's local round: train `steps` steps from `weights` (global version `version`)."""

    client: int
    weights: dict
    version: int
    steps: int
    seed: int
    sent_at: float
    arrival: float  # virtual time its update reaches the server (inf: never, the client crashed)
    update: Optional[dict] = None


Trainer = Callable[[Sequence[TrainJob]], list]
Evaluator = Callable[[dict], dict]


@dataclass
class SimulationResult:
    history: list[dict]  # one row per event that changed the global model: time, version, accuracy...
    records: list  # the scheduler's AggregationRecords
    weights: dict
    summary: dict[str, float]
    jobs_trained: int = 0
    lost_jobs: int = 0  # updates of crashed clients that never arrived
    lost_clients: list[int] = field(default_factory=list)  # clients whose updates stopped arriving


class FederatedRunFailed(RuntimeError):
    """The run could not make the global updates it was asked for (lost clients, too few updates)."""


def require_complete(
    scheduler: Scheduler, max_updates: Optional[int], lost_clients: Sequence[int], stopped_by: str = ""
) -> None:
    """Raise FederatedRunFailed when the scheduler gave up (FedAvg below min_clients) or the run ended
    with fewer global updates than asked for, naming the clients that were lost."""
    if scheduler.failure is not None:
        raise FederatedRunFailed(scheduler.failure)
    if max_updates is not None and scheduler.version < max_updates:
        why = f" ({stopped_by})" if stopped_by else ""
        raise FederatedRunFailed(
            f"{scheduler.name} made {scheduler.version} of {max_updates} global updates{why}; lost clients: "
            f"{sorted(set(lost_clients)) or 'none'}"
            + (
                ""
                if scheduler.name != "fedavg" or getattr(scheduler, "round_timeout", None) is not None
                else "; set fed_strategy.round_timeout so that a round ends without the clients it lost"
            )
        )


@dataclass
class Simulator:
    scheduler: Scheduler
    clock: VirtualClock
    speeds: ClientSpeeds
    trainer: Trainer
    evaluate: Evaluator
    seed: int = 0
    time_budget: float = math.inf  # stop at this virtual time
    max_updates: Optional[int] = None  # stop after this many global updates
    target_accuracy: Optional[float] = None  # for time_to_target in the summary
    crash_at: dict[int, float] = field(default_factory=dict)  # client -> time after which it never returns
    on_event: Optional[Callable[[dict], None]] = None  # called with each history row (live logging)

    def run(self) -> SimulationResult:
        self._heap: list[tuple[float, int, TrainJob]] = []
        self._untrained: list[TrainJob] = []
        self._rounds = [0] * self.scheduler.n_clients
        self._waiting_since: dict[int, float] = {}
        self._idle = 0.0
        self._lost = 0
        self._lost_clients: set[int] = set()
        self._trained = 0
        self._seq = 0
        history: list[dict] = []
        self.clock.now = 0.0
        end = None
        self._dispatch(self.scheduler.start())
        drained = False
        while self.max_updates is None or self.scheduler.version < self.max_updates:
            if self.scheduler.failure is not None:
                break
            next_arrival = self._heap[0][0] if self._heap else math.inf
            deadline = self.scheduler.next_deadline()
            timer_first = deadline is not None and deadline < next_arrival
            when = deadline if timer_first else next_arrival
            if when == math.inf or when > self.time_budget:
                end = self.time_budget if when != math.inf else self.clock.now  # budget reached / drained
                drained = when == math.inf
                break
            self.clock.now = when
            before = self.scheduler.version
            if timer_first:
                out = self.scheduler.on_timer()
            else:
                _, _, job = heapq.heappop(self._heap)
                if job.update is None:
                    self._train_pending()
                self._waiting_since[job.client] = when
                out = self.scheduler.on_arrival(job.client, job.update)
            self._dispatch(out)
            if self.scheduler.version != before:
                row = history_row(self.scheduler, before, when, self.evaluate)
                history.append(row)
                if self.on_event is not None:
                    self.on_event(row)
        if end is None:
            end = self.clock.now  # stopped by max_updates
        idle = self._idle + sum(end - since for since in self._waiting_since.values() if since <= end)
        alive = self.scheduler.n_clients - len([c for c, t in self.crash_at.items() if t < end])
        summary = summarize(self.scheduler, history, end, idle, alive, self.target_accuracy)
        lost = sorted(self._lost_clients | self.scheduler.lost)
        if drained or self.scheduler.failure is not None:  # a time budget that ran out is a normal end
            require_complete(self.scheduler, self.max_updates, lost, "no client could answer any more")
        return SimulationResult(
            history, list(self.scheduler.records), self.scheduler.weights, summary, self._trained, self._lost, lost
        )

    # --- internals ----------------------------------------------------------------------------
    def _dispatch(self, assignments: Sequence[Assignment]) -> None:
        now = self.clock.now
        for a in assignments:
            self._idle += now - self._waiting_since.pop(a.client, now)
            k = self._rounds[a.client]
            self._rounds[a.client] += 1
            rng = np.random.default_rng([self.seed, a.client, k, 1])
            arrival = now + self.speeds.duration(a.client, a.steps, now, rng)
            job_seed = int(np.random.SeedSequence([self.seed, a.client, k]).generate_state(1)[0])
            if a.client in self.crash_at and arrival > self.crash_at[a.client]:
                self._lost += 1  # the client dies during this round: its update never comes
                self._lost_clients.add(a.client)
                continue
            job = TrainJob(a.client, a.weights, a.version, a.steps, job_seed, now, arrival)
            heapq.heappush(self._heap, (arrival, self._seq, job))
            self._seq += 1
            self._untrained.append(job)

    def _train_pending(self) -> None:
        batch = [j for j in self._untrained if j.arrival <= self.time_budget]
        self._untrained = []
        if not batch:
            return
        for job, update in zip(batch, self.trainer(batch)):
            job.update = update
        self._trained += len(batch)


def history_row(scheduler: Scheduler, version_before: int, now: float, evaluate: Evaluator) -> dict:
    """Evaluate the global model after an event that made `scheduler.version - version_before` updates."""
    new_records = scheduler.records[version_before - scheduler.version :] if scheduler.version > version_before else []
    staleness = [s for r in new_records for s in r.staleness]
    return {
        "time": now,
        "version": scheduler.version,
        **evaluate(scheduler.weights),
        "aggregated_updates": sum(len(r.clients) for r in new_records),
        "mean_staleness": float(np.mean(staleness)) if staleness else 0.0,
        "trigger": new_records[-1].trigger if new_records else "",
    }


def summarize(
    scheduler: Scheduler,
    history: list[dict],
    end: float,
    idle: float,
    alive_clients: int,
    target_accuracy: Optional[float] = None,
) -> dict[str, float]:
    """The run's figures: accuracy, time to target, updates, staleness, idle and late fractions.

    `idle` is the client-seconds spent waiting at the server (for a group, a round, or after the
    last event); the idle fraction divides it by `alive_clients * end`.
    """
    records = scheduler.records
    staleness = [s for r in records for s in r.staleness]
    accuracies = [row["accuracy"] for row in history if "accuracy" in row]
    ttt = math.inf
    if target_accuracy is not None:
        ttt = next((row["time"] for row in history if row.get("accuracy", 0) >= target_accuracy), math.inf)
    return {
        "top_accuracy": max(accuracies) if accuracies else 0.0,
        "final_accuracy": accuracies[-1] if accuracies else 0.0,
        "time_to_target": ttt,
        "end_time": end,
        "global_updates": float(scheduler.version),
        "client_updates": float(scheduler.arrivals),
        "mean_staleness": float(np.mean(staleness)) if staleness else 0.0,
        "max_staleness": float(max(staleness)) if staleness else 0.0,
        "mean_group_size": float(np.mean([len(r.clients) for r in records])) if records else 0.0,
        "idle_fraction": idle / (max(alive_clients, 1) * end) if end > 0 else 0.0,
        "late_fraction": scheduler.late_arrivals / scheduler.arrivals if scheduler.arrivals else 0.0,
    }


class LocalTrainer:
    """Runs jobs one after another in this process (tests, benchmarks); the flow fans them out instead."""

    def __init__(
        self, train_fn: Callable[..., dict], client_data: Sequence[tuple[np.ndarray, np.ndarray]], **train_kwargs
    ):
        self.train_fn = train_fn
        self.client_data = client_data
        self.train_kwargs = train_kwargs

    def __call__(self, jobs: Sequence[TrainJob]) -> list[dict]:
        out = []
        for job in jobs:
            x, y = self.client_data[job.client]
            out.append(self.train_fn(job.weights, x, y, job.steps, seed=job.seed, **self.train_kwargs))
        return out
