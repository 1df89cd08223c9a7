"""The bounds the decoding benchmark reports."""
from __future__ import annotations

import pytest

from components.decoding.bench import alpha_needed, expected_tokens, leviathan_speedup, overlapped_speedup


def test_leviathan_formula():
    assert expected_tokens(0.0, 4) == 1.0 and expected_tokens(1.0, 4) == 5
    assert leviathan_speedup(0.8, 4, 0.1) == pytest.approx((1 - 0.8 ** 5) / 0.2 / 1.4)
    assert leviathan_speedup(0.0, 3, 0.5) < 1  # a useless draft only costs time


def test_overlap_beats_sequential_and_alpha_needed_is_monotone():
    assert overlapped_speedup(0.7, 4, 0.2) > leviathan_speedup(0.7, 4, 0.2)
    assert alpha_needed(2.0, 0.1, overlapped_speedup) < alpha_needed(2.0, 0.1, leviathan_speedup)
    assert alpha_needed(2.0, 0.05, leviathan_speedup) <= alpha_needed(2.0, 0.3, leviathan_speedup)
    assert alpha_needed(100.0, 0.1, leviathan_speedup) == 1.0  # unreachable
