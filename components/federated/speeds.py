"""Client speed models: seconds per local step for each client, in virtual time.

The paper samples each client's time per step once from a distribution (homogeneous, normal with
sigma = 0.3 mu, exponential). `jitter` adds per-round noise; `DriftingSpeeds` changes some clients'
speeds mid-run (so the scheduler's momentum speed estimate has something to track).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

SPEED_MODELS = ("homogeneous", "normal", "exponential")


@dataclass
class ClientSpeeds:
    """Per-client mean seconds per step, optional per-round jitter and an optional mid-run drift."""

    step_times: np.ndarray  # seconds per local step, one per client
    jitter: float = 0.0  # relative std of per-round noise on a round's duration
    drift_time: Optional[float] = None  # virtual time at which the drifting clients change speed
    drift_clients: Sequence[int] = ()
    drift_factor: float = 1.0  # their step time is multiplied by this after drift_time

    def step_time(self, client: int, now: float) -> float:
        base = float(self.step_times[client])
        if self.drift_time is not None and now >= self.drift_time and client in self.drift_clients:
            return base * self.drift_factor
        return base

    def duration(self, client: int, steps: int, now: float, rng: np.random.Generator) -> float:
        """Virtual seconds that `steps` local steps started at `now` take (speed fixed at the start)."""
        noise = max(0.1, 1.0 + self.jitter * rng.standard_normal()) if self.jitter > 0 else 1.0
        return steps * self.step_time(client, now) * noise


def sample_step_times(kind: str, n_clients: int, mean: float = 1.0, seed: int = 0,
                      sigma_ratio: float = 0.3, floor_ratio: float = 0.1) -> np.ndarray:
    """Per-client seconds per step with mean `mean`; kept above `floor_ratio * mean` (no free clients)."""
    rng = np.random.default_rng(seed)
    if kind == "homogeneous":
        times = np.full(n_clients, mean)
    elif kind == "normal":
        times = rng.normal(mean, sigma_ratio * mean, n_clients)
    elif kind == "exponential":
        times = rng.exponential(mean, n_clients)
    else:
        raise ValueError(f"unknown speed model {kind!r}; choose one of {SPEED_MODELS}")
    return np.maximum(times, floor_ratio * mean)


def make_speeds(kind: str, n_clients: int, mean: float = 1.0, seed: int = 0, *, sigma_ratio: float = 0.3,
                jitter: float = 0.0, drift_time: Optional[float] = None, drift_fraction: float = 0.0,
                drift_factor: float = 1.0) -> ClientSpeeds:
    """Sample a speed model; with `drift_time`, the fastest `drift_fraction` of clients slow down by `drift_factor`."""
    times = sample_step_times(kind, n_clients, mean, seed, sigma_ratio)
    drifting: Sequence[int] = ()
    if drift_time is not None and drift_fraction > 0:
        count = max(1, int(round(drift_fraction * n_clients)))
        drifting = tuple(int(c) for c in np.argsort(times)[:count])
    return ClientSpeeds(times, jitter, drift_time, drifting, drift_factor)
