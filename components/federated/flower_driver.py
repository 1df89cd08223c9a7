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
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from components.federated.schedulers import Assignment, Scheduler
from components.federated.simulator import SimulationResult, history_row, require_complete, summarize

TRAIN = "train"
WARMUP = "query"  # before the clock starts: every ClientApp loads its data and model once


# --- codec: numpy weight dicts <-> Flower records --------------------------------------------
def to_array_record(weights: dict):
    from flwr.app import Array, ArrayRecord

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
    from types import SimpleNamespace

    from components.federated.federation import build_federation, build_speeds

    s = json.loads(settings_json)
    fed = build_federation(SimpleNamespace(**s["data"]), SimpleNamespace(**s["model"]), s["n_clients"], s["seed"])
    return fed.client_data, fed.spec, build_speeds(SimpleNamespace(**s["speed"]), s["n_clients"], s["seed"]), s


def client_train(content_config: dict, weights: dict) -> dict:
    """The ClientApp's work for one "train" message: sleep out the emulated speed, then train."""
    import torch

    torch.set_num_threads(1)  # many clients share two cores
    client_data, spec, client_speeds, s = _client_side(content_config["settings"])
    client, steps = int(content_config["client"]), int(content_config["steps"])
    virtual_now = float(content_config["virtual_now"])
    if client in s["crash_clients"] and virtual_now >= s["crash_at"]:
        raise RuntimeError(f"client {client} crashed (emulated)")
    rng = np.random.default_rng([s["seed"], client, int(content_config["round"]), 1])
    started = time.monotonic()
    x, y = client_data[client]
    from components.federated import task as fl_task

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
    from flwr.app import ConfigRecord, Message, RecordDict

    n = run.scheduler.n_clients
    deadline = time.monotonic() + run.timeout
    nodes: list[int] = []
    while len(nodes) < n:
        nodes = sorted(grid.get_node_ids())
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(nodes)} of {n} Flower nodes connected")
        if len(nodes) < n:
            time.sleep(0.2)
    node_of = {c: nodes[c] for c in range(n)}
    _warm_up(grid, node_of, run.settings.to_json(), deadline)
    if run.on_started is not None:
        run.on_started()
    lost_clients: set[int] = set()
    in_flight: dict[str, int] = {}  # message id -> client
    rounds = [0] * n
    waiting_since: dict[int, float] = {}
    idle = 0.0
    history: list[dict] = []
    settings_json = run.settings.to_json()
    scheduler = run.scheduler

    def push(assignments: list[Assignment]) -> None:
        nonlocal idle
        messages, clients = [], []
        for a in assignments:
            idle += scheduler.now() - waiting_since.pop(a.client, scheduler.now())
            seed = int(np.random.SeedSequence([run.settings.seed, a.client, rounds[a.client]]).generate_state(1)[0])
            config = ConfigRecord(
                {
                    "client": a.client,
                    "steps": a.steps,
                    "round": rounds[a.client],
                    "seed": seed,
                    "virtual_now": float(scheduler.now()),
                    "settings": settings_json,
                }
            )
            rounds[a.client] += 1
            content = RecordDict({"arrays": to_array_record(a.weights), "config": config})
            messages.append(Message(content=content, dst_node_id=node_of[a.client], message_type=TRAIN))
            clients.append(a.client)
        if messages:
            for mid, client in zip(grid.push_messages(messages), clients):
                in_flight[mid] = client

    def record(before: int) -> None:
        if scheduler.version != before:
            row = history_row(scheduler, before, scheduler.now(), run.evaluate)
            history.append(row)
            if run.on_event is not None:
                run.on_event(row)

    push(scheduler.start())
    while scheduler.version < run.max_updates and time.monotonic() < deadline and scheduler.failure is None:
        due = scheduler.next_deadline()
        if due is not None and scheduler.now() >= due:
            before = scheduler.version
            push(scheduler.on_timer())
            record(before)
        if not in_flight and scheduler.next_deadline() is None:
            break  # nothing can happen any more (every client lost)
        for reply in grid.pull_messages(list(in_flight)):
            client = in_flight.pop(reply.metadata.reply_to_message_id)
            if reply.has_error():  # its ClientApp failed, or its node is gone (Flower's NODE_UNAVAILABLE)
                run.lost += 1
                lost_clients.add(client)
                before = scheduler.version
                push(scheduler.on_failure(client))
                record(before)
                continue
            lost_clients.discard(client)
            update = {
                "delta": from_array_record(reply.content["delta"]),
                "buffers": from_array_record(reply.content["buffers"]) if "buffers" in reply.content else {},
                **{k: v for k, v in reply.content["metrics"].items()},
            }
            waiting_since[client] = scheduler.now()
            before = scheduler.version
            push(scheduler.on_arrival(client, update))
            record(before)
        time.sleep(run.poll_interval)
    end = scheduler.now()
    idle += sum(end - since for since in waiting_since.values())
    lost = sorted(lost_clients | scheduler.lost)
    stopped_by = (
        f"the server loop's timeout of {run.timeout:g} s"
        if time.monotonic() >= deadline
        else "no client could answer any more"
    )
    require_complete(scheduler, run.max_updates, lost, stopped_by)
    summary = summarize(scheduler, history, end, idle, n - len(lost), run.target_accuracy)
    run.result = SimulationResult(
        history, list(scheduler.records), scheduler.weights, summary, sum(rounds), run.lost, lost
    )
    return run.result


def _warm_up(grid, node_of: dict[int, int], settings_json: str, deadline: float) -> None:
    """Have every ClientApp build its partition before the scheduler's clock starts: otherwise actor
    start-up (seconds of imports) would be mistaken for slow training by the speed estimates."""
    from flwr.app import ConfigRecord, Message, RecordDict

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
    import importlib

    from flwr.simulation import run_simulation

    from components.federated.server_app import make_server_app

    client_app = importlib.import_module(client_app_module).app
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
    from types import SimpleNamespace

    from components.federated.federation import build_federation, build_scheduler

    settings = FederationSettings(**json.loads(run_config["settings"]))
    strategy = SimpleNamespace(**json.loads(run_config["strategy"]))
    fed = build_federation(
        SimpleNamespace(**settings.data), SimpleNamespace(**settings.model), settings.n_clients, settings.seed
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
