"""A real Prefect server on loopback, the flows served as deployments, one triggered with an override."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from mlflow.tracking import MlflowClient

from tests.infra.flow_under_test import FAST_OVERRIDES, FLOW

PREFECT = [sys.executable, "-m", "prefect"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"prefect server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(1)
    raise TimeoutError(f"prefect server at {url} not healthy after {seconds}s")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def test_deployment_run_with_override_completes(tmp_path: Path):
    api = f"http://127.0.0.1:{_free_port()}/api"
    mlflow_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_API_URL": api,
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    server_env = {k: v for k, v in env.items() if k != "PREFECT_API_URL"}
    port = api.rsplit(":", 1)[1].split("/")[0]
    server = subprocess.Popen(PREFECT + ["server", "start", "--host", "127.0.0.1", "--port", port],
                              env=server_env, stdout=open(tmp_path / "server.log", "w"), stderr=subprocess.STDOUT,
                              start_new_session=True)
    served = None
    try:
        _wait_healthy(api, server, 180)
        served = subprocess.Popen([sys.executable, "-m", "flows", "deployments"], env=env,
                                  stdout=open(tmp_path / "serve.log", "w"), stderr=subprocess.STDOUT,
                                  start_new_session=True)
        overrides = FAST_OVERRIDES + [f"tracking.uri={mlflow_uri}", f"work_dir={tmp_path / 'work'}", "seed=42"]
        deadline = time.monotonic() + 120
        while True:  # the serve process registers the deployments a few seconds after start
            proc = subprocess.run(PREFECT + ["deployment", "run", f"{FLOW}/default", "--param",
                                             f"overrides={json.dumps(overrides)}", "--watch",
                                             "--watch-timeout", "300"],
                                  env=env, capture_output=True, text=True, timeout=400)
            if proc.returncode == 0 or time.monotonic() > deadline or "not found" not in proc.stdout + proc.stderr:
                break
            time.sleep(3)
        assert proc.returncode == 0, proc.stdout + proc.stderr + (tmp_path / "serve.log").read_text()[-3000:]
        assert "Completed" in proc.stdout
    finally:
        if served is not None:
            _stop(served)
        _stop(server)
    client = MlflowClient(tracking_uri=mlflow_uri)
    exp = client.get_experiment_by_name(FLOW)
    runs = client.search_runs([exp.experiment_id])
    assert [r.data.params["seed"] for r in runs] == ["42"]
    assert runs[0].info.status == "FINISHED" and runs[0].data.tags["prefect.flow_run_id"]
