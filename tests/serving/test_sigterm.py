"""SIGTERM to `python -m mlsys run serve`: the in-flight request is drained to its end, the Prefect
run ends Completed, MLflow's FINISHED, and every process the flow started (the temporary Prefect
server included) is gone."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from mlflow.tracking import MlflowClient

from components.processes import descendants
from components.serving.server import free_port
from mlsys.environment import PROJECT_ROOT


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow  # the flow's temporary Prefect server takes 15-60 s to start on this machine
def test_sigterm_drains_the_request_ends_completed_and_stops_the_temporary_prefect_server(tmp_path):
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "flows",
        "run",
        "serve",
        "models.target=tiny_random",
        "models.draft=layerskip",
        "models.draft_layers=1",
        "models.served_name=tiny",
        f"port={port}",
        "smoke_test=false",
        "decoding=ar",
        "connections.drain_s=60",
        f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
        f"work_dir={tmp_path / 'work'}",
    ]
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}  # its own temporary server
    with open(tmp_path / "flow.log", "w") as log:  # the child keeps its own copy of the descriptor
        flow = subprocess.Popen(command, cwd=PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 400
        while True:
            assert flow.poll() is None, (tmp_path / "flow.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the server did not come up"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(1)
        started = set(descendants(flow.pid))
        assert started, "the flow started no temporary Prefect server?"
        events = []
        body = {"model": "tiny", "prompt": "drain me", "max_tokens": 200, "stream": True, "temperature": 0.9}
        with httpx.stream("POST", f"http://127.0.0.1:{port}/v1/completions", json=body, timeout=120) as response:
            lines = response.iter_lines()
            events.append(next(lines))
            flow.send_signal(signal.SIGTERM)
            events.extend(lines)
        assert flow.wait(180) == 0
    finally:
        if flow.poll() is None:
            flow.kill()
            flow.wait(30)
    output = (tmp_path / "flow.log").read_text()
    assert "data: [DONE]" in events  # the in-flight request finished
    finish = [json.loads(e[6:]) for e in events if e.startswith("data: {")][-1]
    assert finish["choices"][0]["finish_reason"] == "length"
    assert "Flow run" in output and "Finished in state Completed()" in output.split("stop requested")[-1]
    assert "Crashed" not in output
    assert not [pid for pid in started if _alive(pid)], "processes the flow started outlived it"

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert [r.info.status for r in runs] == ["FINISHED"]
