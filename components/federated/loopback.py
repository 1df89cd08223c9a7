"""Flower deployment on loopback: one SuperLink + one SuperNode per client, all on 127.0.0.1.

`run_on_loopback` starts the processes (never letting the SuperLink install dependencies at run
time), submits the app with `flwr run`, waits for the ServerApp's result file and stops every
process it started, whatever happens. The project root goes on PYTHONPATH so the ServerApp and
ClientApp processes import `components.federated` directly; the app folder holds only pyproject.toml.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _toml_value(value) -> str:
    return json.dumps(value) if isinstance(value, str) else repr(value).lower() if isinstance(value, bool) else repr(value)


def _stop_app_processes(addresses: list[str]) -> None:
    for proc_dir in Path("/proc").glob("[0-9]*"):
        try:
            argv = (proc_dir / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        words = [a.decode(errors="replace") for a in argv]
        if any(w.startswith("/") and w.endswith(("flwr-serverapp", "flwr-clientapp")) for w in words[:2]) and \
                any(addr in words for addr in addresses):
            try:
                os.kill(int(proc_dir.name), signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                pass


def write_app(folder: Path, run_config: dict) -> None:
    """A Flower app folder whose components are this package's ServerApp and ClientApp."""
    config_lines = "\n".join(f"{key} = {_toml_value(value)}" for key, value in run_config.items())
    (folder / "pyproject.toml").write_text(f"""[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "fedcompass-loopback"
version = "1.0.0"
dependencies = []

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "mlsys"

[tool.flwr.app.components]
serverapp = "components.federated.server_app:app"
clientapp = "components.federated.client_app:app"

[tool.flwr.app.config]
{config_lines}
""")


def run_on_loopback(settings_json: str, strategy_json: str, rounds: int, n_clients: int,
                    target_accuracy: float = -1.0, client_weighting: str = "equal", timeout: float = 600.0,
                    workdir: str | None = None) -> dict:
    """Run the scheduler over a loopback SuperLink with `n_clients` SuperNodes; return the ServerApp's result."""
    work = Path(workdir or tempfile.mkdtemp(prefix="flwr-loopback-"))
    (work / "app").mkdir(parents=True, exist_ok=True)
    home = work / "flwr_home"
    home.mkdir(exist_ok=True)
    result_path = work / "result.json"
    fleet, serverappio, control = _free_port(), _free_port(), _free_port()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "loopback"\n\n[superlink.loopback]\naddress = "127.0.0.1:{control}"\ninsecure = true\n')
    write_app(work / "app", {"settings": settings_json, "strategy": strategy_json, "rounds": int(rounds),
                             "target-accuracy": float(target_accuracy), "client-weighting": client_weighting,
                             "timeout": float(timeout), "result-path": str(result_path)})
    env = {**os.environ, "FLWR_HOME": str(home), "PYTHONPATH": os.pathsep.join([str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")])}
    bin_dir = Path(sys.executable).parent
    procs: list[subprocess.Popen] = []
    clientappio: list[int] = []
    log = open(work / "processes.log", "ab")

    def start(cmd: list[str]) -> subprocess.Popen:
        proc = subprocess.Popen(cmd, env=env, cwd=work, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        procs.append(proc)
        return proc

    try:
        start([str(bin_dir / "flower-superlink"), "--insecure", "--disable-runtime-dependency-installation",
               "--fleet-api-address", f"127.0.0.1:{fleet}", "--serverappio-api-address", f"127.0.0.1:{serverappio}",
               "--control-api-address", f"127.0.0.1:{control}", "--database", str(work / "state.db")])
        clientappio = [_free_port() for _ in range(n_clients)]
        for client in range(n_clients):
            start([str(bin_dir / "flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{fleet}",
                   "--clientappio-api-address", f"127.0.0.1:{clientappio[client]}", "--node-config", f"partition-id={client}"])
        deadline = time.monotonic() + timeout
        submit = None
        while submit is None or submit.returncode not in (0, None):
            if time.monotonic() > deadline:
                raise TimeoutError(f"flwr run was not accepted; see {work / 'processes.log'}")
            time.sleep(2)  # the SuperLink needs a moment to listen
            submit = subprocess.run([str(bin_dir / "flwr"), "run", str(work / "app"), "loopback"], env=env, cwd=work,
                                    stdout=log, stderr=subprocess.STDOUT, timeout=120)
        while not result_path.exists():
            if time.monotonic() > deadline:
                raise TimeoutError(f"no result from the ServerApp after {timeout} s; see {work / 'processes.log'}")
            time.sleep(1)
        time.sleep(0.5)  # let the writer finish
        result = json.loads(result_path.read_text())
        import numpy as np

        with np.load(result_path.with_suffix(".npz")) as arrays:
            result["weights"] = {k: arrays[k] for k in arrays.files}
        return result
    finally:
        for proc in procs:  # each started in its own session: stop it and its app subprocesses
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        # App processes (flwr-serverapp / flwr-clientapp) may outlive their parents: stop the ones
        # attached to this run's own API addresses, by pid.
        _stop_app_processes([f"127.0.0.1:{port}" for port in (serverappio, *clientappio)])
        log.close()
