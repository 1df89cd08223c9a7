"""Federated runs under faults: a SuperNode killed mid-run on the loopback deployment (every strategy),
two deployment runs in a row in one work_dir, Flower executables found next to sys.executable, results
tied to the run that wrote them, and bad configs stopped at composition."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path

import pytest

from components.checks import ConfigError
from components.federated import loopback
from components.federated.config import FedDataConfig, FedModelConfig, FedSpeedConfig, FedStrategyConfig
from components.federated.flower_driver import FederationSettings
from components.federated.loopback import RunFiles, run_on_loopback
from components.federated.schedulers import SCHEDULERS
from mlsys.flow import compose

SCALE = 0.02  # wall seconds per virtual second


def _settings(n_clients: int = 3) -> str:
    return FederationSettings(
        data=asdict(FedDataConfig()),
        model=asdict(FedModelConfig(kind="mlp", width=4)),
        speed=asdict(FedSpeedConfig(_target_="components.federated.speeds.homogeneous_step_times")),
        n_clients=n_clients,
        seed=0,
        lr=0.05,
        batch_size=32,
        seconds_per_virtual_second=SCALE,
    ).to_json()


def _strategy(name: str) -> str:
    return json.dumps(
        asdict(
            FedStrategyConfig(
                _target_=f"components.federated.schedulers.{SCHEDULERS[name].__name__}",
                q_max=8,
                q_min=2,
                local_steps=8,
                buffer_size=2,
                round_timeout=60.0 / SCALE,
                min_clients=2,
            )
        )
    )


def _supernode_of(run_folder: Path, client: int):
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            argv = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
            cwd = (proc / "cwd").resolve()
        except OSError:
            continue
        is_supernode = any(word.endswith("flower-supernode") for word in argv[:2])  # [python,] script
        if is_supernode and f"partition-id={client}" in argv and cwd == run_folder.resolve():
            return int(proc.name)
    return None


def _kill_supernode_after_first_update(run_folder: Path, client: int, killed: dict, give_up: float) -> None:
    """SIGKILL the SuperNode of `client` and everything in its session once the run made one global update."""
    while time.monotonic() < give_up:
        events = RunFiles(run_folder, "").folder / "events.jsonl"
        if events.exists() and '"event": "row"' in events.read_text():
            pid = _supernode_of(run_folder, client)
            if pid is not None:
                os.killpg(pid, signal.SIGKILL)  # the SuperNode leads its own session: its apps go too
                killed["version"] = sum('"event": "row"' in line for line in events.read_text().splitlines())
                return
        time.sleep(0.2)


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["fedavg", "fedasync", "fedbuff", "fedcompass"])
def test_killed_supernode_on_loopback_every_strategy(tmp_path, strategy):
    name, rounds = "run-kill", 5
    killed: dict = {}
    killer = threading.Thread(
        target=_kill_supernode_after_first_update,
        args=(tmp_path / name, 1, killed, time.monotonic() + 500),
        daemon=True,
    )
    killer.start()
    out = run_on_loopback(
        _settings(), _strategy(strategy), rounds, 3, timeout=500, workdir=str(tmp_path), run_name=name
    )
    killer.join(timeout=5)
    assert "version" in killed, "the SuperNode was never killed"
    assert out["summary"]["global_updates"] == rounds
    # the server numbers clients by node id, not by partition-id: the killed one is whichever stops answering
    after_kill = [r for r in out["records"] if r["version"] > killed["version"] + 1]
    still_answering = {c for r in after_kill for c in r["clients"]}
    assert after_kill and len(still_answering) == 2, out["records"]
    (gone,) = {0, 1, 2} - still_answering
    if strategy == "fedavg":
        # the round with the dead node ended with the two arrivals: at its round timeout, or as soon as Flower
        # answered the dead node's message with NODE_UNAVAILABLE (what it does once the node's heartbeat lapses)
        assert out["lost_clients"] == [gone]
        assert all(len(r["clients"]) == 2 for r in after_kill)


@pytest.mark.slow
def test_two_deployment_runs_in_a_row_in_one_work_dir(tmp_path):
    first = run_on_loopback(_settings(2), _strategy("fedasync"), 2, 2, timeout=400, workdir=str(tmp_path))
    second = run_on_loopback(_settings(2), _strategy("fedavg"), 3, 2, timeout=400, workdir=str(tmp_path))
    assert first["summary"]["global_updates"] == 2 and second["summary"]["global_updates"] == 3
    assert first["nonce"] != second["nonce"]
    runs = sorted(p for p in tmp_path.iterdir() if p.is_dir())
    assert len(runs) == 2 and all((p / "state.db").exists() and (p / "result.json").exists() for p in runs)


@pytest.mark.slow
def test_serverapp_failure_reaches_the_user_with_its_reason(tmp_path):
    bad = json.loads(_strategy("fedavg"))
    bad["_target_"] = "components.federated.schedulers.FedProxScheduler"  # the ServerApp raises building it
    started = time.monotonic()
    with pytest.raises(
        RuntimeError, match=r"the ServerApp failed: ConfigError: fed_strategy._target_=.*FedProx.*unknown strategy"
    ):
        run_on_loopback(_settings(2), json.dumps(bad), 2, 2, timeout=500, workdir=str(tmp_path))
    assert time.monotonic() - started < 400  # well before the 500 s timeout


def test_flower_executables_are_looked_up_next_to_sys_executable(tmp_path, monkeypatch):
    fake_bin = tmp_path / "venv" / "bin"
    fake_bin.mkdir(parents=True)
    (fake_bin / "flwr").write_text("")
    monkeypatch.setattr(sys, "executable", str(fake_bin / "python"))
    monkeypatch.setenv("PATH", "/nonexistent")  # the venv's bin is not on PATH
    with pytest.raises(FileNotFoundError, match=r"flower-superlink.*flower-superexec.*not in .*venv/bin"):
        run_on_loopback(_settings(2), _strategy("fedavg"), 2, 2, timeout=5, workdir=str(tmp_path / "work"))


def test_a_leftover_result_is_never_taken_for_this_run(tmp_path):
    old = RunFiles(tmp_path, "old-run-nonce")
    old._write_atomically(old.result_path, json.dumps({"nonce": "old-run-nonce", "summary": {"global_updates": 9}}))
    old.write_error(ValueError("an earlier failure"))
    old.append_event({"event": "started"})
    mine = RunFiles(tmp_path, "this-run-nonce")
    assert mine.read_result() is None and mine.read_error() is None
    assert mine.read_events(0) == [{"event": "foreign"}]
    assert old.read_result()["summary"] == {"global_updates": 9}
    assert old.read_error().startswith("ValueError: an earlier failure")


def test_every_run_gets_its_own_folder(tmp_path, monkeypatch):
    names = {loopback.new_run_name() for _ in range(50)}
    assert len(names) == 50 and all(str(os.getpid()) in n for n in names)
    (tmp_path / "taken").mkdir()
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    with pytest.raises(FileExistsError):
        run_on_loopback(_settings(2), _strategy("fedavg"), 2, 2, workdir=str(tmp_path), run_name="taken")


@pytest.mark.parametrize(
    "override, key",
    [
        ("clients=0", "clients"),
        ("rounds=0", "rounds"),
        ("lr=-1", "lr"),
        ("batch_size=0", "batch_size"),
        ("fed_strategy.q_min=60", "fed_strategy.q_max"),
        ("fed_strategy.alpha=1.5", "fed_strategy.alpha"),
        ("fed_strategy.round_timeout=-3", "fed_strategy.round_timeout"),
        ("fed_strategy.min_clients=0", "fed_strategy.min_clients"),
        ("fed_speed.mean=0", "fed_speed.mean"),
        ("fed_speed.kind=uniform", "fed_speed.kind"),
        ("fed_data.partition=random", "fed_data.partition"),
        ("fed_data.test_fraction=1.0", "fed_data.test_fraction"),
        ("model.kind=resnet", "model.kind"),
        ("flower.backend=cloud", "flower.backend"),
        ("flower.timeout=0", "flower.timeout"),
        ("crash_clients=[7]", "crash_clients"),
        ("client_weighting=size", "client_weighting"),
        ("target_accuracy=2", "target_accuracy"),
        ("driver=ray", "driver"),
    ],
)
def test_bad_federated_configs_fail_at_composition_naming_the_key(flow_overrides, override, key):
    with pytest.raises(Exception) as caught:
        compose("federated", flow_overrides + [override])
    error = caught.value
    while not isinstance(error, ConfigError) and error.__cause__ is not None:
        error = error.__cause__
    assert key in str(error)


def test_round_timeout_defaults_to_ten_rounds_of_work(flow_overrides):
    cfg = compose(
        "federated", flow_overrides + ["fed_strategy=fedavg", "fed_strategy.local_steps=20", "fed_speed.mean=2.0"]
    )
    assert cfg.fed_strategy.round_timeout == 400.0 and cfg.fed_strategy.min_clients == 2
