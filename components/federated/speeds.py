"""Client speed models: seconds per local step for each client, in virtual time.

The paper samples each client's time per step once from a distribution (homogeneous, normal with
sigma = 0.3 mu, exponential). `jitter` adds per-round noise; `DriftingSpeeds` changes some clients'
speeds mid-run (so the scheduler's momentum speed estimate has something to track).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

GIVEN = "given"  # the user's own per-client seconds per step (a list, or a file: see read_step_times)


class StepTimesError(ValueError):
    """A user's step-time list or file that cannot be used; names the file, line and value."""


def check_step_times(values: Sequence, n_clients: int, source: str = "step_times") -> list[float]:
    """The user's seconds per local step, one per client: finite numbers > 0, exactly `n_clients` of them."""
    out = []
    for client, value in enumerate(values):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise StepTimesError(f"{source}: client {client}: {value!r} is not a number of seconds > 0")
        out.append(float(value))
    if len(out) != n_clients:
        raise StepTimesError(f"{source}: {len(out)} step times for {n_clients} clients (one per client)")
    return out


def read_step_times(path: str, n_clients: int) -> list[float]:
    """Per-client seconds per step from a file: a JSON list, or one number per line ('#' starts a comment)."""
    file = Path(path).expanduser()
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise StepTimesError(f"step_times_file {file}: cannot be read ({err})") from None
    if text.lstrip().startswith("["):
        try:
            values = json.loads(text)
        except json.JSONDecodeError as err:
            raise StepTimesError(f"{file}, line {err.lineno}: not valid JSON ({err.msg})") from None
        return check_step_times(values, n_clients, str(file))
    values = []
    for number, line in enumerate(text.splitlines(), start=1):
        word = line.split("#", 1)[0].strip()
        if not word:
            continue
        try:
            value = float(word)
        except ValueError:
            raise StepTimesError(f"{file}, line {number}: {word!r} is not a number") from None
        if not math.isfinite(value) or value <= 0:
            raise StepTimesError(f"{file}, line {number}: {word!r} is not a number of seconds > 0")
        values.append(value)
    return check_step_times(values, n_clients, str(file))


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


# A speed model: (n_clients, mean, rng, sigma_ratio, given step times) -> seconds per local step per client.
# conf/fed_speed/*.yaml names one of the four below as `_target_`.
StepTimeSampler = Callable[[int, float, np.random.Generator, float, Sequence[float]], np.ndarray]
FLOOR_RATIO = 0.1  # drawn step times stay above 0.1 x mean: no client is free


def homogeneous_step_times(n_clients: int, mean: float, rng, sigma_ratio: float = 0.3, given=()) -> np.ndarray:
    """Every client takes `mean` seconds per step."""
    return np.full(n_clients, float(mean))


def normal_step_times(n_clients: int, mean: float, rng, sigma_ratio: float = 0.3, given=()) -> np.ndarray:
    """N(mean, (sigma_ratio * mean)^2) per client, as the paper (sigma = 0.3 mu)."""
    return np.maximum(rng.normal(mean, sigma_ratio * mean, n_clients), FLOOR_RATIO * mean)


def exponential_step_times(n_clients: int, mean: float, rng, sigma_ratio: float = 0.3, given=()) -> np.ndarray:
    """Exponential with mean `mean` per client: a few very slow clients."""
    return np.maximum(rng.exponential(mean, n_clients), FLOOR_RATIO * mean)


def given_step_times(n_clients: int, mean: float, rng, sigma_ratio: float = 0.3, given=()) -> np.ndarray:
    """The user's own seconds per step (`given`), one per client; nothing is drawn."""
    return np.asarray(check_step_times(list(given), n_clients), dtype=np.float64)


SAMPLERS: dict[str, StepTimeSampler] = {
    "homogeneous": homogeneous_step_times,
    "normal": normal_step_times,
    "exponential": exponential_step_times,
    GIVEN: given_step_times,
}


def _sampler(kind: str | StepTimeSampler) -> StepTimeSampler:
    if callable(kind):
        return kind
    if kind not in SAMPLERS:
        raise ValueError(f"unknown speed model {kind!r}; choose one of {tuple(SAMPLERS)}")
    return SAMPLERS[kind]


def sample_step_times(
    kind: str | StepTimeSampler, n_clients: int, mean: float = 1.0, seed: int = 0, sigma_ratio: float = 0.3
) -> np.ndarray:
    """Per-client seconds per step with mean `mean` from a speed model (a name or a sampler)."""
    return _sampler(kind)(n_clients, mean, np.random.default_rng(seed), sigma_ratio, ())


def make_speeds(
    kind: str | StepTimeSampler,
    n_clients: int,
    mean: float = 1.0,
    seed: int = 0,
    *,
    sigma_ratio: float = 0.3,
    jitter: float = 0.0,
    drift_time: Optional[float] = None,
    drift_fraction: float = 0.0,
    drift_factor: float = 1.0,
    step_times: Optional[Sequence[float]] = None,
) -> ClientSpeeds:
    """Sample a speed model (or take the `step_times` given, kind "given"); with `drift_time`, the fastest
    `drift_fraction` of clients slow down by `drift_factor`."""
    times = _sampler(kind)(n_clients, mean, np.random.default_rng(seed), sigma_ratio, step_times or ())
    drifting: Sequence[int] = ()
    if drift_time is not None and drift_fraction > 0:
        count = max(1, int(round(drift_fraction * n_clients)))
        drifting = tuple(int(c) for c in np.argsort(times)[:count])
    return ClientSpeeds(times, jitter, drift_time, drifting, drift_factor)
