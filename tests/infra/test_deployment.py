"""The deployment path of docs/PLATFORM.md on loopback: a Prefect server, `prefect deploy --all` from
prefect.yaml, a process worker, `prefect deployment run` with an override; the flow-run id it prints
is the `prefect.flow_run_id` tag of the MLflow run (one flow run, no wrapper)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from mlsys.environment import PROJECT_ROOT
from tests.infra.flow_under_test import FAST_OVERRIDES, FLOW

PREFECT = [sys.executable, "-m", "prefect"]
pytestmark = pytest.mark.slow  # a real server, a deploy and a worker: ~3-5 min on 2 shared cores


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


def test_prefect_yaml_deploy_worker_and_deployment_run(tmp_path: Path):
    api = f"http://127.0.0.1:{_free_port()}/api"
    mlflow_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_API_URL": api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PWD": str(PROJECT_ROOT),
    }
    server_env = {k: v for k, v in env.items() if k != "PREFECT_API_URL"}
    port = api.rsplit(":", 1)[1].split("/")[0]
    server = subprocess.Popen(
        PREFECT + ["server", "start", "--host", "127.0.0.1", "--port", port],
        env=server_env,
        stdout=open(tmp_path / "server.log", "w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    worker = None
    try:
        _wait_healthy(api, server, 240)
        pool = subprocess.run(
            PREFECT + ["work-pool", "create", "mlsys-process", "--type", "process"],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert pool.returncode == 0, pool.stdout + pool.stderr
        deploy = subprocess.run(
            PREFECT + ["--no-prompt", "deploy", "--all"],
            cwd=PROJECT_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert deploy.returncode == 0, deploy.stdout[-3000:] + deploy.stderr[-3000:]
        worker = subprocess.Popen(
            PREFECT + ["worker", "start", "--pool", "mlsys-process"],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=open(tmp_path / "worker.log", "w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        overrides = FAST_OVERRIDES + [f"tracking.uri={mlflow_uri}", f"work_dir={tmp_path / 'work'}", "seed=42"]
        proc = subprocess.run(
            PREFECT
            + [
                "deployment",
                "run",
                f"{FLOW}/default",
                "--param",
                f"overrides={json.dumps(overrides)}",
                "--watch",
                "--watch-timeout",
                "600",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=700,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr + (tmp_path / "worker.log").read_text()[-4000:]
        assert "Completed" in proc.stdout
        printed_id = re.search(r"UUID:\s*([0-9a-f-]{36})", proc.stdout).group(1)
    finally:
        if worker is not None:
            _stop(worker)
        _stop(server)
    client = MlflowClient(tracking_uri=mlflow_uri)
    runs = client.search_runs([client.get_experiment_by_name(FLOW).experiment_id])
    assert [r.data.params["seed"] for r in runs] == ["42"]
    assert runs[0].info.status == "FINISHED"
    assert runs[0].data.tags["prefect.flow_run_id"] == printed_id
