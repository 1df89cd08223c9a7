"""Elo updates and the tournament's pairing rules (components/coscientist/elo.py)."""

import random
from collections import Counter

import pytest

from components.coscientist.elo import EloConfig, Player, choose_pair, expected_score, k_for, pair_key, update_elo


def test_expected_score_is_symmetric_and_favours_the_higher_rating():
    assert expected_score(1200, 1200) == pytest.approx(0.5)
    assert expected_score(1400, 1200) == pytest.approx(1 / (1 + 10 ** (-200 / 400)))
    assert expected_score(1400, 1200) + expected_score(1200, 1400) == pytest.approx(1.0)


def test_update_moves_k_times_surprise_and_is_zero_sum_with_one_k():
    a, b = update_elo(1200, 1200, 1.0, k=32)
    assert (a, b) == pytest.approx((1216, 1184))
    # An upset moves ratings more than an expected win.
    upset_a, _ = update_elo(1100, 1300, 1.0, k=32)
    expected_a, _ = update_elo(1300, 1100, 1.0, k=32)
    assert upset_a - 1100 > expected_a - 1300 > 0
    a, b = update_elo(1250, 1180, 0.0, k=24)
    assert a + b == pytest.approx(1250 + 1180)
    with pytest.raises(ValueError, match="score_a"):
        update_elo(1200, 1200, 1.5, k=32)


def test_k_shrinks_from_k_factor_to_k_min_as_a_hypothesis_plays():
    cfg = EloConfig(k_factor=32, k_min=12, k_halving_matches=8)
    assert k_for(0, cfg) == 32
    assert k_for(8, cfg) == pytest.approx(22)
    assert 12 < k_for(200, cfg) < 13
    assert k_for(5, EloConfig(k_factor=32, k_min=32)) == 32  # plain fixed-K Elo
    # Each side moves by its own K.
    a, b = update_elo(1200, 1200, 1.0, k=32, k_b=12)
    assert (a, b) == pytest.approx((1216, 1194))


def _players():
    return [Player("old1", 1300, 20), Player("old2", 1250, 20), Player("old3", 1150, 20), Player("new", 1200, 0)]


def test_new_hypotheses_are_paired_first():
    rng = random.Random(0)
    cfg = EloConfig(top_k=0)  # isolate the "new" preference
    firsts = Counter(choose_pair(_players(), cfg, rng).a for _ in range(2000))
    assert firsts["new"] > 0.5 * 2000  # weight 3/1 vs 3/21 for each veteran


def test_top_hypotheses_are_preferred_over_the_rest():
    rng = random.Random(1)
    players = [Player(f"h{i}", 1400 - 20 * i, 10) for i in range(8)]
    firsts = Counter(choose_pair(players, EloConfig(top_k=2, w_new=1.0, w_top=2.0), rng).a for _ in range(4000))
    assert min(firsts["h0"], firsts["h1"]) > 2 * max(firsts[f"h{i}"] for i in range(2, 8))


def test_similar_hypotheses_meet_more_often_and_repeats_are_discouraged():
    players = [Player("a", 1200, 5), Player("b", 1200, 5), Player("c", 1200, 5)]
    sims = {pair_key("a", "b"): 0.95, pair_key("a", "c"): 0.05, pair_key("b", "c"): 0.05}
    cfg = EloConfig(w_new=1.0, w_top=0.0, w_similar=4.0, w_close=0.1, top_k=0)
    rng = random.Random(2)
    pairs = Counter(pair_key(p.a, p.b) for p in (choose_pair(players, cfg, rng, sims) for _ in range(3000)))
    assert pairs[pair_key("a", "b")] > 2 * pairs[pair_key("a", "c")]
    # The same pair played many times already: the similar pair loses its advantage.
    met = {pair_key("a", "b"): 50}
    pairs = Counter(pair_key(p.a, p.b) for p in (choose_pair(players, cfg, rng, sims, met) for _ in range(3000)))
    assert pairs[pair_key("a", "b")] < pairs[pair_key("a", "c")]


def test_debates_only_between_top_hypotheses_with_enough_matches():
    cfg = EloConfig(top_k=2, debate_min_matches=2, w_new=0.0, w_top=1.0, w_similar=0.0, w_close=1.0)
    rng = random.Random(3)
    players = [Player("t1", 1400, 5), Player("t2", 1390, 5), Player("low", 1000, 5)]
    for _ in range(200):
        pairing = choose_pair(players, cfg, rng)
        assert pairing.debate == ({pairing.a, pairing.b} == {"t1", "t2"})
    fresh = [Player("t1", 1400, 1), Player("t2", 1390, 5)]
    assert not choose_pair(fresh, cfg, rng).debate  # t1 has played once: single-turn comparison


def test_pairs_in_flight_are_skipped_and_too_few_players_give_none():
    rng = random.Random(4)
    players = _players()[:2]
    assert choose_pair(players, EloConfig(), rng, busy_pairs={pair_key("old1", "old2")}) is None
    assert choose_pair(players[:1], EloConfig(), rng) is None
    three = _players()[:3]
    for _ in range(50):
        p = choose_pair(three, EloConfig(), rng, busy_pairs={pair_key("old1", "old2")})
        assert pair_key(p.a, p.b) != pair_key("old1", "old2")


def test_default_schedule_debates_only_the_established_top_pair():
    cfg = EloConfig()
    rng = random.Random(5)
    veterans = [Player(f"h{i}", 1400 - 30 * i, cfg.debate_min_matches) for i in range(6)]
    for _ in range(300):
        pairing = choose_pair(veterans, cfg, rng)
        assert pairing.debate == ({pairing.a, pairing.b} == {"h0", "h1"})
    # The top pair before it has the evidence behind it: single-turn comparisons only.
    early = [Player(p.id, p.elo, cfg.debate_min_matches - 1) for p in veterans]
    assert not any(choose_pair(early, cfg, rng).debate for _ in range(300))


def test_default_top_priority_leaves_every_hypothesis_its_share_of_matches():
    # Everyone has played the same: the top pair is preferred as first player, yet not starving the rest.
    cfg = EloConfig()
    players = [Player(f"h{i}", 1400 - 30 * i, 20) for i in range(8)]
    rng = random.Random(6)
    firsts = Counter(choose_pair(players, cfg, rng).a for _ in range(8000))
    top, rest = min(firsts["h0"], firsts["h1"]), max(firsts[f"h{i}"] for i in range(2, 8))
    assert 1.5 * rest < top < 4 * rest
