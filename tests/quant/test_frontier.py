"""The frontier benchmark's comparisons on synthetic rows: uniform at the same bits, the targets, the default."""

import json
import math

import pytest

from benchmarks.common import RESULTS_DIR
from benchmarks.quant_frontier import FLOW_SCHEME, summarize, uniform_at
from mlsys.flow import compose


def _row(label, bits, ppl, scheme, windows=4, budget=None, head_bits=4, spread=0.0):
    nll = math.log(ppl) * 100
    window_nll = [nll + spread * (i - (windows - 1) / 2) for i in range(windows)]
    return {
        "label": label,
        "bits_per_weight": bits,
        "perplexity": ppl,
        "window_nll": window_nll,
        "window_tokens": [100] * windows,
        "tokens": 100 * windows,
        "perplexity_ci95": (ppl * 0.9, ppl * 1.1),
        "scheme": scheme,
        "budget": budget,
        "head_bits": head_bits,
        "spec": {"frac_high": 0.5},
    }


def test_uniform_at_interpolates_log_perplexity_between_the_nearest_widths():
    pts = [_row("u2", 2.5, 1000.0, "uniform"), _row("u3", 3.5, 100.0, "uniform"), _row("u4", 4.5, 20.0, "uniform")]
    mid = uniform_at(3.0, pts)
    assert mid["between"] == ["u2", "u3"] and mid["perplexity"] == pytest.approx(math.sqrt(1000 * 100))
    assert uniform_at(4.5, pts)["perplexity"] == pytest.approx(20.0)
    assert uniform_at(4.0, pts)["between"] == ["u3", "u4"]


def _frontier(range_ppl, fisher_ppl):
    rows = {
        "fp32": _row("fp32", 32.0, 20.0, "reference", head_bits=None),
        "uniform2": _row("uniform2", 2.5, 1000.0, "uniform", head_bits=2),
        "uniform3": _row("uniform3", 3.5, 100.0, "uniform", head_bits=3),
        "uniform4": _row("uniform4", 4.5, 21.0, "uniform"),
    }
    budgets = sorted(range_ppl)
    for b in budgets:
        rows[f"range@{b}"] = _row(f"range@{b}", b, range_ppl[b], "range", budget=b)
        rows[f"fisher@{b}"] = _row(f"fisher@{b}", b, fisher_ppl[b], "fisher", budget=b)
        rows[f"random@{b}"] = _row(f"random@{b}", b, range_ppl[b] * 2, "random", budget=b)
    return rows, {"budgets": budgets, "windows": 4, "calibration_windows": 2}


def test_targets_follow_the_measured_rows():
    # uniform at 3.0 = sqrt(1000 * 100) = 316; at 4.0 = sqrt(100 * 21) = 45.8; at 4.4 ~ 24.4
    rows, cfg = _frontier({3.0: 300.0, 4.0: 40.0, 4.4: 23.0}, {3.0: 200.0, 4.0: 30.0, 4.4: 21.9})
    results, targets = summarize(rows, cfg, 0.0)
    by_name = {t["name"]: t for t in targets}
    assert by_name["frontier_budgets"]["value"] == 3 and not by_name["frontier_budgets"]["met"]
    assert by_name["mixed_beats_uniform_at_every_budget"]["met"]
    # default: least-bits fisher point within 10% of the Q4_1 model (20 -> <= 22): 4.4 (21.9), not 4.0 (30)
    assert results["default_budget"]["bits_per_weight"] == 4.4
    assert by_name["default_budget_ppl_ratio_vs_q4"]["value"] == pytest.approx(21.9 / 20.0)
    assert results["range_beats_random_at_every_budget"] == 1


def test_one_budget_worse_than_uniform_fails_the_claim_and_is_named():
    rows, cfg = _frontier({3.0: 300.0, 4.0: 50.0, 4.4: 23.0}, {3.0: 200.0, 4.0: 30.0, 4.4: 23.5})
    results, targets = summarize(rows, cfg, 0.0)
    by_name = {t["name"]: t for t in targets}
    assert by_name["mixed_beats_uniform_at_every_budget"]["value"] == 0
    assert any("range: NOT better than uniform" in note and "4.0" in note for note in results["notes"])
    # no fisher point is within 10%: the default falls back to the uniform 4-bit end of the frontier
    assert results["default_budget"]["label"] == "uniform4"


def test_the_flow_default_budget_is_the_committed_frontier_choice(flow_overrides):
    path = RESULTS_DIR / "quant_frontier.json"
    if not path.exists():
        pytest.skip("no frontier result in this checkout")
    chosen = json.loads(path.read_text())["results"]["default_budget"]
    assert chosen["scheme"] == FLOW_SCHEME
    cfg = compose("quantize", flow_overrides)
    assert cfg.quant.budget == chosen["budget"] and cfg.quant_method.score == "fisher"
