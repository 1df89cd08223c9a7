"""Progress lines with rate and ETA (lm_train reports them every log_every steps)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mlsys.progress import Progress, format_duration


def _clocked(total, every, start=0):
    now = [100.0]
    lines: list[str] = []
    progress = Progress(total, "train", every=every, start=start, clock=lambda: now[0], emit=lines.append)
    return progress, now, lines


def test_eta_from_the_measured_rate():
    progress, now, lines = _clocked(total=300, every=10)
    now[0] += 20.0  # 10 steps in 20 s
    progress.update(10, {"loss": 3.21, "note": "text is not shown"})
    assert lines == ["train: step 10/300 (3%), 2.00 s/step, ETA 9m40s, loss=3.21"]
    progress.update(11, {"loss": 3.0})  # between reports: silent
    assert len(lines) == 1


def test_resumed_run_measures_only_its_own_steps_and_reports_the_last():
    progress, now, lines = _clocked(total=25, every=10, start=20)
    now[0] += 0.25
    progress.update(25)
    assert lines == ["train: step 25/25 (100%), 20.0 steps/s, took 0s"]


@pytest.mark.parametrize("total,every", [(-1, 10), (10, 0)])
def test_bad_settings_are_named(total, every):
    with pytest.raises(ValueError, match="train: progress needs"):
        Progress(total, "train", every=every)


@given(st.floats(min_value=0, max_value=1e6, allow_nan=False))
def test_duration_format_is_monotone_in_its_parts(seconds):
    text = format_duration(seconds)
    assert text.endswith(("s", "m")) and text[0].isdigit()
