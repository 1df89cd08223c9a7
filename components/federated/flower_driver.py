"""The Flower driver: one scheduler (FedCompass or a baseline) run asynchronously over real ClientApps.

Flower's strategies are round-synchronous, so the ServerApp's main loop drives the scheduler itself
with the Grid's message API: it `push_messages` a "train" message to individual nodes as the
scheduler hands out assignments, `pull_messages` replies as they arrive, hands each to
`scheduler.on_arrival`, and fires group timers when `next_deadline()` passes. The scheduler's clock
is wall time scaled to virtual seconds, so Q_min/Q_max and speeds mean the same as in the simulator.

A client emulates its speed model by sleeping `steps * step_time * seconds_per_virtual_second`, then
trains for real (`task.local_train`). A client told to crash replies with an error: the server
counts it lost and never hears from it again (its group's timer keeps the run going).

Messages carry the model as an ArrayRecord and the round's settings as a ConfigRecord; the client
rebuilds its data partition from the federation settings (as Flower's examples do), so the same
ClientApp serves the simulation engine and SuperNodes.
"""

from __future__ import annotations

import functools
import importlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict

from components.federated import task as fl_task
from components.federated.config import (
    FedDataConfig,
    FederatedRunSettings,
    FedModelConfig,
    FedSpeedConfig,
    FedStrategyConfig,
)
from components.federated.federation import Federation, build_federation, build_scheduler, build_speeds
from components.federated.loopback import run_on_loopback
from components.federated.schedulers import AggregationRecord, Assignment, Scheduler
from components.federated.simulator import SimulationResult, history_row, require_complete, summarize

TRAIN = "train"
WARMUP = "query"  # before the clock starts: every ClientApp loads its data and model once


# --- codec: numpy weight dicts <-> Flower records --------------------------------------------
def to_array_record(weights: dict) -> ArrayRecord:
    return ArrayRecord(array_dict={k: Array(np.ascontiguousarray(v)) for k, v in weights.items()})


def from_array_record(record) -> dict:
    return {k: np.array(v.numpy(), copy=True) for k, v in record.items()}


@dataclass
class FederationSettings:
    """What a ClientApp needs to rebuild its partition, model and speed: plain JSON-able values."""

    data: dict  # FedDataConfig fields
    model: dict  # FedModelConfig fields
    speed: dict  # FedSpeedConfig fields
    n_clients: int
    seed: int
    lr: float
    batch_size: int
    seconds_per_virtual_second: float
    crash_clients: list = field(default_factory=list)
    crash_at: float = 0.0

    def to_json(self) -> str:
        return json.dumps(self.__dict__, sort_keys=True)


@functools.lru_cache(maxsize=4)
def _client_side(settings_json: str):
    """Per process (Ray actor / SuperNode): dataset split, model spec and speeds, built once."""
    s = json.loads(settings_json)
    fed = build_federation(FedDataConfig(**s["data"]), FedModelConfig(**s["model"]), s["n_clients"], s["seed"])
    return fed.client_data, fed.spec, build_speeds(FedSpeedConfig(**s["speed"]), s["n_clients"], s["seed"]), s


def client_train(content_config: dict, weights: dict) -> dict:
    """The ClientApp's work for one "train" message: sleep out the emulated speed, then train."""
    torch.set_num_threads(1)  # many clients share two cores
    client_data, spec, client_speeds, s = _client_side(content_config["settings"])
    client, steps = int(content_config["client"]), int(content_config["steps"])
    virtual_now = float(content_config["virtual_now"])
    if client in s["crash_clients"] and virtual_now >= s["crash_at"]:
        raise RuntimeError(f"client {client} crashed (emulated)")
    rng = np.random.default_rng([s["seed"], client, int(content_config["round"]), 1])
    started = time.monotonic()
    x, y = client_data[client]
    update = fl_task.local_train(
        weights, x, y, steps, spec, lr=s["lr"], batch_size=s["batch_size"], seed=int(content_config["seed"])
    )
    emulated = client_speeds.duration(client, steps, virtual_now, rng) * s["seconds_per_virtual_second"]
    time.sleep(max(0.0, emulated - (time.monotonic() - started)))  # training time counts toward it
    return update


# --- the server loop ------------------------------------------------------------------------
@dataclass
class FlowerRun:
    """Everything the ServerApp's main loop needs, and where it leaves its result."""

    scheduler: Scheduler
    settings: FederationSettings
    evaluate: Callable[[dict], dict]
    max_updates: int
    target_accuracy: Optional[float] = None
    timeout: float = 600.0  # wall seconds
    on_event: Optional[Callable[[dict], None]] = None
    on_started: Optional[Callable[[], None]] = None  # called once every ClientApp answered the warm-up
    poll_interval: float = 0.01
    result: Optional[SimulationResult] = None
    lost: int = 0


class VirtualWallClock:
    """Wall time since construction, in virtual seconds (the scheduler's injectable clock)."""

    def __init__(self, seconds_per_virtual_second: float):
        self.scale = seconds_per_virtual_second
        self.origin = time.monotonic()

    def __call__(self) -> float:
        return (time.monotonic() - self.origin) / self.scale


def serve(grid, run: FlowerRun) -> SimulationResult:
    """Drive `run.scheduler` over the Grid's nodes until `max_updates` global updates (or timeout)."""
    deadline = time.monotonic() + run.timeout
    node_of = _connected_nodes(grid, run.scheduler.n_clients, deadline)
    _warm_up(grid, node_of, run.settings.to_json(), deadline)
    if run.on_started is not None:
        run.on_started()
    run.result = _ServerLoop(grid, run, node_of, deadline).run()
    return run.result


def _connected_nodes(grid, n: int, deadline: float) -> dict[int, int]:
    """Client id -> Flower node id, once all `n` nodes have connected."""
    nodes: list[int] = []
    while len(nodes) < n:
        nodes = sorted(grid.get_node_ids())
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(nodes)} of {n} Flower nodes connected")
        if len(nodes) < n:
            time.sleep(0.2)
    return {c: nodes[c] for c in range(n)}


class _ServerLoop:
    """The ServerApp's main loop: assignments out as "train" messages, replies in as arrivals, timers fired."""

    def __init__(self, grid, run: FlowerRun, node_of: dict[int, int], deadline: float):
        self.grid, self.run_spec, self.node_of, self.deadline = grid, run, node_of, deadline
        self.scheduler = run.scheduler
        self.settings_json = run.settings.to_json()
        n = self.scheduler.n_clients
        self.lost_clients: set[int] = set()
        self.in_flight: dict[str, int] = {}  # message id -> client
        self.rounds = [0] * n
        self.waiting_since: dict[int, float] = {}
        self.idle = 0.0
        self.history: list[dict] = []

    def _message(self, a: Assignment) -> Message:
        seed = int(
            np.random.SeedSequence([self.run_spec.settings.seed, a.client, self.rounds[a.client]]).generate_state(1)[0]
        )
        config = ConfigRecord(
            {
                "client": a.client,
                "steps": a.steps,
                "round": self.rounds[a.client],
                "seed": seed,
                "virtual_now": float(self.scheduler.now()),
                "settings": self.settings_json,
            }
        )
        self.rounds[a.client] += 1
        content = RecordDict({"arrays": to_array_record(a.weights), "config": config})
        return Message(content=content, dst_node_id=self.node_of[a.client], message_type=TRAIN)

    def push(self, assignments: list[Assignment]) -> None:
        now = self.scheduler.now()
        messages = []
        for a in assignments:
            self.idle += now - self.waiting_since.pop(a.client, now)
            messages.append(self._message(a))
        if messages:
            for mid, a in zip(self.grid.push_messages(messages), assignments):
                self.in_flight[mid] = a.client

    def event(self, handle: Callable[[], list[Assignment]]) -> None:
        """Hand one event to the scheduler, send what it assigns, evaluate when the global model changed."""
        before = self.scheduler.version
        self.push(handle())
        if self.scheduler.version != before:
            row = history_row(self.scheduler, before, self.scheduler.now(), self.run_spec.evaluate)
            self.history.append(row)
            if self.run_spec.on_event is not None:
                self.run_spec.on_event(row)

    def reply(self, reply) -> None:
        client = self.in_flight.pop(reply.metadata.reply_to_message_id)
        if reply.has_error():  # its ClientApp failed, or its node is gone (Flower's NODE_UNAVAILABLE)
            self.run_spec.lost += 1
            self.lost_clients.add(client)
            self.event(lambda: self.scheduler.on_failure(client))
            return
        self.lost_clients.discard(client)
        update = {
            "delta": from_array_record(reply.content["delta"]),
            "buffers": from_array_record(reply.content["buffers"]) if "buffers" in reply.content else {},
            **{k: v for k, v in reply.content["metrics"].items()},
        }
        self.waiting_since[client] = self.scheduler.now()
        self.event(lambda: self.scheduler.on_arrival(client, update))

    def run(self) -> SimulationResult:
        scheduler, run = self.scheduler, self.run_spec
        self.push(scheduler.start())
        while scheduler.version < run.max_updates and time.monotonic() < self.deadline and scheduler.failure is None:
            due = scheduler.next_deadline()
            if due is not None and scheduler.now() >= due:
                self.event(scheduler.on_timer)
            if not self.in_flight and scheduler.next_deadline() is None:
                break  # nothing can happen any more (every client lost)
            for reply in self.grid.pull_messages(list(self.in_flight)):
                self.reply(reply)
            time.sleep(run.poll_interval)
        return self.result()

    def result(self) -> SimulationResult:
        scheduler, run = self.scheduler, self.run_spec
        end = scheduler.now()
        idle = self.idle + sum(end - since for since in self.waiting_since.values())
        lost = sorted(self.lost_clients | scheduler.lost)
        stopped_by = (
            f"the server loop's timeout of {run.timeout:g} s"
            if time.monotonic() >= self.deadline
            else "no client could answer any more"
        )
        require_complete(scheduler, run.max_updates, lost, stopped_by)
        n = scheduler.n_clients
        summary = summarize(scheduler, self.history, end, idle, n - len(lost), run.target_accuracy)
        return SimulationResult(
            self.history, list(scheduler.records), scheduler.weights, summary, sum(self.rounds), run.lost, lost
        )


def _warm_up(grid, node_of: dict[int, int], settings_json: str, deadline: float) -> None:
    """Have every ClientApp build its partition before the scheduler's clock starts: otherwise actor
    start-up (seconds of imports) would be mistaken for slow training by the speed estimates."""
    messages = [
        Message(
            content=RecordDict({"config": ConfigRecord({"client": c, "settings": settings_json})}),
            dst_node_id=node,
            message_type=WARMUP,
        )
        for c, node in node_of.items()
    ]
    waiting = set(grid.push_messages(messages))
    while waiting:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(waiting)} Flower clients did not answer the warm-up")
        for reply in grid.pull_messages(list(waiting)):
            waiting.discard(reply.metadata.reply_to_message_id)
            if reply.has_error():
                client = next((c for c, node in node_of.items() if node == reply.metadata.src_node_id), "?")
                raise RuntimeError(
                    f"Flower client {client} (node {reply.metadata.src_node_id}) failed to start: {reply.error.reason}"
                )
        time.sleep(0.05)


def client_warm_up(content_config: dict) -> int:
    """The ClientApp's answer to the warm-up: build (and cache) this process's client side."""
    client_data, _, _, _ = _client_side(content_config["settings"])
    return len(client_data[int(content_config["client"])][1])


def run_in_simulation(run: FlowerRun, client_app_module: str = "components.federated.client_app") -> SimulationResult:
    """Run the loop in Flower's simulation engine (Ray): one SuperNode per client, ClientApps as actors."""
    from flwr.simulation import run_simulation  # noqa: PLC0415  (start-up cost: Ray, only for this driver)

    from components.federated.server_app import make_server_app  # noqa: PLC0415  (import cycle: it imports us)

    client_app = importlib.import_module(client_app_module).app  # the ClientApp module imports this one
    run_simulation(
        server_app=make_server_app(run),
        client_app=client_app,
        num_supernodes=run.scheduler.n_clients,
        # One Ray actor per client: clients mostly sleep out their emulated speed, so they
        # must not queue behind each other on the two real cores (that would change speeds).
        backend_config={
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {"num_cpus": run.scheduler.n_clients, "include_dashboard": False},
        },
    )
    if run.result is None:
        raise RuntimeError("the Flower ServerApp ended without a result (see Flower's log above)")
    return run.result


def flower_run_from_run_config(run_config: dict) -> FlowerRun:
    """A deployment ServerApp's run, rebuilt from plain run-config values (JSON strings)."""
    settings = FederationSettings(**json.loads(run_config["settings"]))
    strategy = FedStrategyConfig(**json.loads(run_config["strategy"]))
    fed = build_federation(
        FedDataConfig(**settings.data), FedModelConfig(**settings.model), settings.n_clients, settings.seed
    )
    clock = VirtualWallClock(settings.seconds_per_virtual_second)
    scheduler = build_scheduler(
        strategy,
        settings.n_clients,
        fed.num_examples,
        fed.initial_weights,
        clock,
        str(run_config.get("client-weighting", "equal")),
    )
    target = float(run_config.get("target-accuracy", -1.0))
    return FlowerRun(
        scheduler,
        settings,
        fed.evaluate,
        max_updates=int(run_config["rounds"]),
        target_accuracy=target if target >= 0 else None,
        timeout=float(run_config.get("timeout", 600.0)),
    )


def federation_settings(run: FederatedRunSettings, seed: int) -> FederationSettings:
    """What every ClientApp rebuilds its side from (the user's step times already read from their file)."""
    return FederationSettings(
        data=asdict(run.fed_data),
        model=asdict(run.model),
        speed=asdict(replace(run.fed_speed, step_times_file=None)),
        n_clients=run.clients,
        seed=seed,
        lr=run.lr,
        batch_size=run.batch_size,
        seconds_per_virtual_second=run.flower.seconds_per_virtual_second,
        crash_clients=list(run.crash_clients),
        crash_at=run.crash_at,
    )


def run_flower(
    run: FederatedRunSettings,
    seed: int,
    federation: Federation,
    workdir: Path,
    on_event: Optional[Callable[[dict], None]] = None,
) -> SimulationResult:
    """driver=flower: the configured scheduler over real Flower ClientApps, in Flower's simulation engine
    (flower.backend=simulation) or on a loopback SuperLink + SuperNodes (deployment, a run folder in `workdir`)."""
    strategy = replace(run.fed_strategy)  # the round timeout in virtual seconds, at least the wall floor
    if strategy.round_timeout is not None:
        strategy.round_timeout = max(
            strategy.round_timeout, run.flower.round_timeout_floor / run.flower.seconds_per_virtual_second
        )
    settings = federation_settings(run, seed)
    if run.flower.backend == "deployment":
        return _run_loopback_deployment(run, settings, strategy, workdir, on_event)
    clock = VirtualWallClock(run.flower.seconds_per_virtual_second)
    scheduler = build_scheduler(
        strategy, run.clients, federation.num_examples, federation.initial_weights, clock, run.client_weighting
    )
    flower_run = FlowerRun(
        scheduler,
        settings,
        federation.evaluate,
        max_updates=run.rounds,
        target_accuracy=run.target_accuracy,
        timeout=run.flower.timeout,
        on_event=on_event,
    )
    return run_in_simulation(flower_run)


def _run_loopback_deployment(
    run: FederatedRunSettings,
    settings: FederationSettings,
    strategy: FedStrategyConfig,
    workdir: Path,
    on_event: Optional[Callable[[dict], None]],
) -> SimulationResult:
    """SuperLink + one SuperNode per client on 127.0.0.1 (stopped afterwards), in a fresh folder under
    `workdir` per run; history rows are handed to `on_event` as they arrive."""
    out = run_on_loopback(
        settings.to_json(),
        json.dumps(asdict(strategy)),
        run.rounds,
        run.clients,
        run.target_accuracy,
        run.client_weighting,
        run.flower.timeout,
        workdir=str(workdir),
        on_event=on_event,
    )
    summary = {k: (math.inf if v is None else v) for k, v in out["summary"].items()}
    records = [AggregationRecord(**r) for r in out["records"]]
    return SimulationResult(out["history"], records, out["weights"], summary, 0, out["lost"], out["lost_clients"])
