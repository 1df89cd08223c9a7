"""Where an lm_train job runs: in this process, or on torchrun's processes (one or several nodes).

`LaunchSettings._target_` names the launcher class; both take every field of the settings and run a
`TrainJob` with `run(job, on_metrics, logger) -> result dict`. Under torchrun the launcher streams the
workers' output to `logger`, tails rank 0's metrics into `on_metrics`, and stops every rank when the
caller is cancelled or fails.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Optional

import torch

from components.checks import ConfigError, at_least, in_range, one_of
from components.lm.distributed import STRATEGIES, TorchrunSettings, process_tree, torchrun_command
from components.lm.trainer import TrainJob, locate, run_training

PROJECT_ROOT = Path(__file__).resolve().parents[2]  # torchrun's workers import components from here
LOCAL = "components.lm.launch.LocalLauncher"
TORCHRUN = "components.lm.launch.TorchrunLauncher"

OnMetrics = Callable[[int, dict], Any]


@dataclass
class LaunchSettings:
    _target_: str = LOCAL  # LocalLauncher: train in the caller's process; TorchrunLauncher: torchrun's processes
    nproc: int = 1  # processes per node (torchrun)
    nnodes: int = 1  # nodes; > 1 needs rdzv_endpoint and a work_dir every node sees at the same path
    strategy: str = "ddp"  # ddp: replicas, rank 0's shard holds the model; fsdp: FSDP2 fully_shard, every rank its part
    rdzv_endpoint: Optional[str] = None  # host:port of the c10d rendezvous; None on one node (--standalone)
    rdzv_id: Optional[str] = None  # the job's id on every node; None: the run name

    def __post_init__(self) -> None:
        one_of("launcher._target_", self._target_, (LOCAL, TORCHRUN))
        one_of("launcher.strategy", self.strategy, STRATEGIES)
        at_least("launcher.nproc", self.nproc, 1)
        at_least("launcher.nnodes", self.nnodes, 1)
        if self._target_ == LOCAL and self.nproc * self.nnodes > 1:
            raise ConfigError("launcher.nproc", self.nproc, "more than one process needs launcher=torchrun")
        if self.rdzv_endpoint is not None:
            match = re.fullmatch(r"(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):(\d+)", self.rdzv_endpoint)
            if match is None:
                raise ConfigError("launcher.rdzv_endpoint", self.rdzv_endpoint, "must be host:port")
            in_range("launcher.rdzv_endpoint port", int(match.group(2)), 1, 65535)
        elif self.nnodes > 1:
            raise ConfigError(
                "launcher.rdzv_endpoint",
                None,
                f"launcher.nnodes={self.nnodes} needs the host:port every node meets at (e.g. node0:29400)",
            )

    def build(self) -> LocalLauncher | TorchrunLauncher:
        """The launcher `_target_` names, given every field."""
        fields = {k: v for k, v in vars(self).items() if k != "_target_"}
        return locate(self._target_)(**fields)


class LocalLauncher:
    """Trains in the calling process (one process, no torch.distributed)."""

    def __init__(self, **settings: Any):
        self.settings = settings

    def run(self, job: TrainJob, on_metrics: OnMetrics, logger) -> dict:
        device = job.device if job.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        return run_training(replace(job, device=device, strategy="none"), on_metrics=on_metrics, logger=logger)


class TorchrunLauncher:
    """Starts `python -m torch.distributed.run` for this node and follows the job to its end."""

    def __init__(self, nproc: int, nnodes: int, strategy: str, rdzv_endpoint: Optional[str], rdzv_id: Optional[str]):
        self.nproc, self.nnodes, self.strategy = nproc, nnodes, strategy
        self.rdzv_endpoint, self.rdzv_id = rdzv_endpoint, rdzv_id

    def run(self, job: TrainJob, on_metrics: OnMetrics, logger) -> dict:
        launch_dir = Path(job.run_dir).parent / f"{Path(job.run_dir).name}.launch"
        job_file = self._write_job(replace(job, strategy=self.strategy), launch_dir)
        job = TrainJob.from_json(job_file.read_text())
        command = torchrun_command(
            TorchrunSettings(self.nproc, self.nnodes, self.rdzv_endpoint, self.rdzv_id or Path(job.run_dir).name),
            job_file,
        )
        self._log_command(command, logger)
        proc = _start(command)
        tail, reader = _stream_output(proc, logger)
        try:
            _follow(proc, reader, MetricsTail(Path(job.metrics_file)), on_metrics)
        finally:
            _stop_if_running(proc)
        return self._result(proc, Path(job.result_file), tail)

    @staticmethod
    def _write_job(job: TrainJob, launch_dir: Path) -> Path:
        """The job's JSON in a fresh launch folder (the previous launch's metrics and result removed)."""
        if launch_dir.exists():
            shutil.rmtree(launch_dir)
        launch_dir.mkdir(parents=True)
        job = replace(job, metrics_file=str(launch_dir / "metrics.jsonl"), result_file=str(launch_dir / "result.json"))
        job_file = launch_dir / "job.json"
        job_file.write_text(job.to_json())
        return job_file

    def _log_command(self, command: list[str], logger) -> None:
        logger.info("starting %s", " ".join(command))
        if self.nnodes > 1:
            logger.info(
                "on each other node (this work_dir on shared storage, the project at the same path) run: "
                "cd %s && PYTHONPATH=%s %s",
                PROJECT_ROOT,
                PROJECT_ROOT,
                " ".join(command),
            )

    def _result(self, proc: subprocess.Popen, result_file: Path, tail: collections.deque) -> dict:
        if proc.returncode != 0 or not result_file.exists():
            missing = "" if result_file.exists() else " without a result"
            raise RuntimeError(
                f"torchrun ({self.nproc} x {self.nnodes} processes) exited with "
                f"{proc.returncode}{missing}; its last lines:\n" + "\n".join(tail)
            )
        return json.loads(result_file.read_text())


def _start(command: list[str]) -> subprocess.Popen:
    path = os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")]))
    return subprocess.Popen(
        command,
        cwd=PROJECT_ROOT,
        env={**os.environ, "PYTHONPATH": path},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
        start_new_session=True,
    )


def _stream_output(proc: subprocess.Popen, logger, keep: int = 40) -> tuple[collections.deque, threading.Thread]:
    """Every output line to `logger` from a thread; the last `keep` lines stay for an error message."""
    tail: collections.deque = collections.deque(maxlen=keep)

    def stream() -> None:
        for line in proc.stdout:
            tail.append(line.rstrip())
            logger.info("%s", line.rstrip())

    reader = threading.Thread(target=stream, name="torchrun-log", daemon=True)
    reader.start()
    return tail, reader


def _follow(proc: subprocess.Popen, reader: threading.Thread, metrics: MetricsTail, on_metrics: OnMetrics) -> None:
    while proc.poll() is None:
        metrics.forward(on_metrics)
        time.sleep(0.25)
    reader.join(timeout=10)
    metrics.forward(on_metrics)


def _stop_if_running(proc: subprocess.Popen) -> None:
    """The caller was cancelled or failed while torchrun runs: stop every rank."""
    if proc.poll() is not None:
        return
    workers = process_tree(proc.pid)  # before torchrun exits and its workers lose their parent
    proc.terminate()  # torchrun forwards SIGTERM to its workers
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=30)
    for pid in workers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


class MetricsTail:
    """Reads the JSON lines rank 0 appends, complete lines only."""

    def __init__(self, path: Path):
        self.path, self.offset, self.partial = path, 0, ""

    def forward(self, log: OnMetrics) -> None:
        if not self.path.exists():
            return
        with open(self.path, encoding="utf-8") as fh:
            fh.seek(self.offset)
            chunk = fh.read()
            self.offset = fh.tell()
        lines = (self.partial + chunk).split("\n")
        self.partial = lines.pop()
        for line in lines:
            if line.strip():
                record = json.loads(line)
                log(int(record["step"]), record["metrics"])
