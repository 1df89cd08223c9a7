"""Flower deployment on loopback: one SuperLink + one SuperNode per client, all on 127.0.0.1.

`run_on_loopback` starts the processes (never letting the SuperLink install dependencies at run
time), submits the app with `flwr run`, waits for the ServerApp's result file and stops every
process it started, whatever happens. The project root goes on PYTHONPATH so the ServerApp and
ClientApp processes import `components.federated` directly; the app folder holds only pyproject.toml.

Every run gets its own folder (`<workdir>/<run name>/`: app, FLWR_HOME, the SuperLink's state.db,
logs, result) and a nonce that the ServerApp writes into its progress, result and error files
(`RunFiles`), so a file left by another run is never taken for this one's. Flower's executables are
those next to `sys.executable`, also on the PATH the SuperLink and SuperNodes get (they start
`flower-superexec` by name). While waiting, the supervisor watches for the reasons a run cannot
finish and reports them at once with the log's last lines: the SuperLink or a SuperNode exiting
before the run started, the ServerApp writing an error, or Flower marking the ServerApp's task failed.
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _toml_value(value) -> str:
    return (
        json.dumps(value) if isinstance(value, str) else repr(value).lower() if isinstance(value, bool) else repr(value)
    )


def _stop_app_processes(addresses: list[str]) -> None:
    for proc_dir in Path("/proc").glob("[0-9]*"):
        try:
            argv = (proc_dir / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        words = [a.decode(errors="replace") for a in argv]
        if any(w.startswith("/") and w.endswith(("flwr-serverapp", "flwr-clientapp")) for w in words[:2]) and any(
            addr in words for addr in addresses
        ):
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


@dataclass
class RunFiles:
    """The files one deployment run's ServerApp writes, each stamped with the run's nonce."""

    folder: Path
    nonce: str

    @classmethod
    def from_run_config(cls, run_config: dict) -> RunFiles:
        return cls(Path(str(run_config["run-folder"])), str(run_config["run-nonce"]))

    @property
    def result_path(self) -> Path:
        return self.folder / "result.json"

    def _write_atomically(self, path: Path, text: str) -> None:
        partial = path.with_name(path.name + ".partial")
        partial.write_text(text)
        os.replace(partial, path)

    def append_event(self, event: dict) -> None:
        with open(self.folder / "events.jsonl", "a") as handle:
            handle.write(json.dumps({"nonce": self.nonce, **event}, default=_plain_number) + "\n")

    def write_result(self, result) -> None:
        partial = self.folder / "result.partial.npz"
        np.savez(partial, **result.weights)
        os.replace(partial, self.result_path.with_suffix(".npz"))
        clean = lambda v: None if isinstance(v, float) and not math.isfinite(v) else v  # noqa: E731
        self._write_atomically(
            self.result_path,
            json.dumps(
                {  # written last: its presence means complete
                    "nonce": self.nonce,
                    "summary": {k: clean(v) for k, v in result.summary.items()},
                    "history": result.history,
                    "records": [r.__dict__ for r in result.records],
                    "lost": result.lost_jobs,
                    "lost_clients": list(result.lost_clients),
                },
                default=_plain_number,
            ),
        )

    def write_error(self, err: BaseException) -> None:
        where = traceback.extract_tb(err.__traceback__)[-1:] if err.__traceback__ else []
        place = f" (at {where[0].filename}:{where[0].lineno})" if where else ""
        self._write_atomically(
            self.folder / "error.json",
            json.dumps({"nonce": self.nonce, "error": f"{type(err).__name__}: {err}{place}"}),
        )

    def _read(self, name: str) -> Optional[dict]:
        try:
            data = json.loads((self.folder / name).read_text())
        except (OSError, ValueError):
            return None
        return data if data.get("nonce") == self.nonce else None  # another run's file: not ours

    def read_result(self) -> Optional[dict]:
        return self._read("result.json")

    def read_error(self) -> Optional[str]:
        data = self._read("error.json")
        return None if data is None else data["error"]

    def read_events(self, skip: int) -> list[dict]:
        """This run's events after the first `skip` lines (a line still being written is left for later)."""
        try:
            lines = (self.folder / "events.jsonl").read_text().split("\n")[:-1]
        except OSError:
            return []
        out = []
        for line in lines[skip:]:
            event = json.loads(line)
            out.append(event if event.get("nonce") == self.nonce else {"event": "foreign"})
        return out


def _plain_number(value):
    """numpy scalars in result rows as plain JSON numbers."""
    return value.item() if hasattr(value, "item") else str(value)


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)
    kept = [line for line in text.splitlines() if line.strip()][-lines:]
    return "\n".join("    " + line for line in kept)


def _serverapp_task_status(state_db: Path, flower_run_id: Optional[int]) -> Optional[tuple[str, str]]:
    """(sub_status, details) of the run's finished ServerApp task in the SuperLink's state, or None."""
    if flower_run_id is None or not state_db.exists():
        return None
    stored_id = flower_run_id - (1 << 64) if flower_run_id >= 1 << 63 else flower_run_id  # Flower keeps sint64
    try:
        with sqlite3.connect(f"file:{state_db}?mode=ro", uri=True, timeout=1) as con:
            row = con.execute(
                "SELECT sub_status, details FROM task WHERE run_id = ? AND finished_at IS NOT NULL "
                "AND finished_at != '' ORDER BY finished_at DESC LIMIT 1",
                (stored_id,),
            ).fetchone()
    except sqlite3.Error:  # schema of another Flower version, or the database is busy: no answer this time
        return None
    return (str(row[0]), str(row[1])) if row else None


def new_run_name() -> str:
    return f"run-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{secrets.token_hex(3)}"


FLOWER_EXECUTABLES = ("flower-superlink", "flower-supernode", "flower-superexec", "flwr")


@dataclass
class _Ports:
    """The loopback ports of one run: the SuperLink's three APIs and each SuperNode's ClientAppIo API."""

    fleet: int
    serverappio: int
    control: int
    clientappio: list[int]

    @classmethod
    def free(cls, n_clients: int) -> _Ports:
        return cls(_free_port(), _free_port(), _free_port(), [_free_port() for _ in range(n_clients)])

    @property
    def app_addresses(self) -> list[str]:
        """The addresses the run's app processes (flwr-serverapp / flwr-clientapp) attach to."""
        return [f"127.0.0.1:{port}" for port in (self.serverappio, *self.clientappio)]


def _flower_bin() -> Path:
    """The folder of Flower's executables: next to sys.executable (the SuperLink starts them by name)."""
    bin_dir = Path(sys.executable).parent
    missing = [name for name in FLOWER_EXECUTABLES if not (bin_dir / name).exists()]
    if missing:
        raise FileNotFoundError(
            f"Flower executables {missing} are not in {bin_dir} (next to {sys.executable}): "
            "install flwr into this environment"
        )
    return bin_dir


def _prepare_run_folder(work: Path, ports: _Ports, run_config: dict, bin_dir: Path) -> dict[str, str]:
    """The app folder and FLWR_HOME of the run in `work`; returns the processes' environment."""
    (work / "app").mkdir()
    home = work / "flwr_home"
    home.mkdir()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "loopback"\n\n[superlink.loopback]\naddress = "127.0.0.1:{ports.control}"\n'
        "insecure = true\n"
    )
    write_app(work / "app", run_config)
    return {
        **os.environ,
        "FLWR_HOME": str(home),
        "PYTHONPATH": os.pathsep.join([str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")]),
        "PATH": os.pathsep.join([str(bin_dir), os.environ.get("PATH", "")]),
    }


class _LoopbackProcesses:
    """The SuperLink and SuperNodes of one run, each in its own session; all stopped on exit."""

    def __init__(self, work: Path, env: dict[str, str], ports: _Ports, bin_dir: Path):
        self.work, self.env, self.ports, self.bin_dir = work, env, ports, bin_dir
        self.log_path = work / "processes.log"
        self.log = open(self.log_path, "ab")
        self.procs: list[subprocess.Popen] = []
        self.superlink: Optional[subprocess.Popen] = None
        self.supernodes: list[subprocess.Popen] = []
        self.started = False  # set once the ServerApp reported that every ClientApp answered

    def __enter__(self) -> _LoopbackProcesses:
        return self

    def _start(self, cmd: list[str]) -> subprocess.Popen:
        proc = subprocess.Popen(
            cmd, env=self.env, cwd=self.work, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.procs.append(proc)
        return proc

    def start(self, n_clients: int) -> None:
        ports, loopback = self.ports, "127.0.0.1"
        self.superlink = self._start(
            [
                str(self.bin_dir / "flower-superlink"),
                "--insecure",
                "--disable-runtime-dependency-installation",
                "--fleet-api-address",
                f"{loopback}:{ports.fleet}",
                "--serverappio-api-address",
                f"{loopback}:{ports.serverappio}",
                "--control-api-address",
                f"{loopback}:{ports.control}",
                "--database",
                str(self.work / "state.db"),
            ]
        )
        self.supernodes = [
            self._start(
                [
                    str(self.bin_dir / "flower-supernode"),
                    "--insecure",
                    "--superlink",
                    f"{loopback}:{ports.fleet}",
                    "--clientappio-api-address",
                    f"{loopback}:{ports.clientappio[client]}",
                    "--node-config",
                    f"partition-id={client}",
                ]
            )
            for client in range(n_clients)
        ]

    def fail(self, reason: str) -> RuntimeError:
        return RuntimeError(
            f"Flower deployment run {self.work.name}: {reason}\n"
            f"  last lines of {self.log_path}:\n{_log_tail(self.log_path)}"
        )

    def check(self) -> None:
        """Raise at once when the SuperLink exited, or a SuperNode did before the run started."""
        if self.superlink.poll() is not None:
            raise self.fail(f"the SuperLink exited with code {self.superlink.returncode}")
        if not self.started:  # after the start, a lost node is the server's business (round timeouts)
            for client, node in enumerate(self.supernodes):
                if node.poll() is not None:
                    raise self.fail(
                        f"the SuperNode of client {client} exited with code {node.returncode} before the run started"
                    )

    def submit(self, deadline: float, timeout: float) -> int:
        """`flwr run` the app until the SuperLink accepts it; returns Flower's run id."""
        while True:
            self.check()
            if time.monotonic() > deadline:
                raise self.fail(f"flwr run was not accepted within {timeout:g} s")
            time.sleep(1)  # the SuperLink needs a moment to listen
            submit = subprocess.run(
                [str(self.bin_dir / "flwr"), "run", str(self.work / "app"), "loopback"],
                env=self.env,
                cwd=self.work,
                capture_output=True,
                text=True,
                timeout=120,
            )
            self.log.write((submit.stdout + submit.stderr).encode())
            self.log.flush()
            found = re.search(r"started run (\d+)", submit.stdout + submit.stderr)
            if submit.returncode == 0 and found:
                return int(found.group(1))

    def __exit__(self, *exc) -> None:
        for proc in self.procs:  # each started in its own session: stop it and its app subprocesses
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for proc in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        # App processes (flwr-serverapp / flwr-clientapp) may outlive their parents: stop the ones
        # attached to this run's own API addresses, by pid.
        _stop_app_processes(self.ports.app_addresses)
        self.log.close()


def _wait_for_result(
    files: RunFiles,
    procs: _LoopbackProcesses,
    flower_run_id: int,
    deadline: float,
    timeout: float,
    on_event: Optional[Callable[[dict], None]],
) -> dict:
    """Follow the run's events until the ServerApp's result; raise at once on any reason it cannot come."""
    seen = 0

    def follow() -> None:
        nonlocal seen
        for event in files.read_events(seen):
            seen += 1
            if event["event"] == "started":
                procs.started = True
            elif event["event"] == "row" and on_event is not None:
                on_event(event["row"])

    while (result := files.read_result()) is None:
        error = files.read_error()
        if error is not None:
            raise procs.fail(f"the ServerApp failed: {error}")
        follow()
        procs.check()
        status = _serverapp_task_status(procs.work / "state.db", flower_run_id)
        if status is not None and files.read_result() is None and files.read_error() is None:
            sub_status, details = status
            raise procs.fail(
                f"the ServerApp ended ({sub_status or 'finished'}) without a result"
                + (f": {details}" if details else "")
            )
        if time.monotonic() > deadline:
            raise procs.fail(f"no result from the ServerApp after {timeout:g} s")
        time.sleep(0.5)
    follow()
    with np.load(files.result_path.with_suffix(".npz")) as arrays:
        result["weights"] = {k: arrays[k] for k in arrays.files}
    return result


def run_on_loopback(
    settings_json: str,
    strategy_json: str,
    rounds: int,
    n_clients: int,
    target_accuracy: float = -1.0,
    client_weighting: str = "equal",
    timeout: float = 600.0,
    workdir: str | None = None,
    run_name: str | None = None,
    on_event: Optional[Callable[[dict], None]] = None,
) -> dict:
    """Run the scheduler over a loopback SuperLink with `n_clients` SuperNodes; return the ServerApp's result.
    `workdir` holds one folder per run (`run_name`, fresh each time); `on_event` gets each history row live."""
    base = Path(workdir) if workdir else Path(tempfile.gettempdir()) / "flwr-loopback"
    work = base / (run_name or new_run_name())
    work.mkdir(parents=True, exist_ok=False)  # never a folder another run has written to
    files = RunFiles(work, secrets.token_hex(8))
    ports = _Ports.free(n_clients)
    run_config = {
        "settings": settings_json,
        "strategy": strategy_json,
        "rounds": int(rounds),
        "target-accuracy": float(target_accuracy),
        "client-weighting": client_weighting,
        "timeout": float(timeout),
        "run-folder": str(work),
        "run-nonce": files.nonce,
    }
    bin_dir = _flower_bin()
    env = _prepare_run_folder(work, ports, run_config, bin_dir)
    with _LoopbackProcesses(work, env, ports, bin_dir) as procs:
        procs.start(n_clients)
        deadline = time.monotonic() + timeout
        flower_run_id = procs.submit(deadline, timeout)
        return _wait_for_result(files, procs, flower_run_id, deadline, timeout, on_event)
