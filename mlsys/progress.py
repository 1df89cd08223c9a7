"""Progress of a long task, with rate and ETA, in the console and the Prefect run's logs.

A line every `every` steps (and at the last): `lm-train: step 120/300 (40%), 2.10 s/step, ETA 6m18s,
loss=3.21`. Prefect's run logger sends it to both the console and the flow run's logs in the UI;
outside a run it goes to this module's logger.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Optional

from prefect.exceptions import MissingContextError
from prefect.logging import get_run_logger


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _run_logger() -> logging.Logger | logging.LoggerAdapter:
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger(__name__)


class Progress:
    """`update(step, values)` after each step; reports every `every` steps from `start` to `total`."""

    def __init__(
        self,
        total: int,
        label: str,
        every: int = 10,
        start: int = 0,
        clock: Callable[[], float] = time.monotonic,
        emit: Optional[Callable[[str], None]] = None,
    ):
        if total < 0 or every < 1:
            raise ValueError(f"{label}: progress needs total >= 0 and every >= 1, got total={total}, every={every}")
        self.total, self.label, self.every, self.start = total, label, every, start
        self._clock = clock
        self._began = clock()
        self._emit = emit or (lambda line: _run_logger().info("%s", line))
        self.last_line: Optional[str] = None

    def line(self, step: int, values: Mapping[str, Any] | None = None) -> str:
        done = max(0, step - self.start)
        elapsed = self._clock() - self._began
        per_step = elapsed / done if done else float("nan")
        remaining = max(0, self.total - step)
        share = 100.0 * step / self.total if self.total else 100.0
        parts = [f"{self.label}: step {step}/{self.total} ({share:.0f}%)"]
        if done:
            parts.append(f"{per_step:.2f} s/step" if per_step >= 0.1 else f"{1 / per_step:.1f} steps/s")
            parts.append(
                f"ETA {format_duration(per_step * remaining)}" if remaining else f"took {format_duration(elapsed)}"
            )
        shown = [f"{k}={v:.4g}" for k, v in (values or {}).items() if isinstance(v, (int, float))][:4]
        return ", ".join(parts + shown)

    def update(self, step: int, values: Mapping[str, Any] | None = None) -> None:
        if step % self.every == 0 or step == self.total:
            self.last_line = self.line(step, values)
            self._emit(self.last_line)
