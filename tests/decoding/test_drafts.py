"""The drafts the pipeline builds: prompt lookup (n-gram copy), and drafts made from the native Q4_1 target."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from components.decoding.cache import SequenceRunner, wrap_model
from components.decoding.engine import METHODS, AutoregressiveDecoder, build_decoder
from components.decoding.lookup import LookupCache, PromptLookupDraft
from components.decoding.models import load_draft, load_target, tiny_llama
from components.decoding.sampling import SamplingParams
from components.decoding.workers import split_threads
from tests.decoding.conftest import tiny_gpt
from tests.decoding.test_decoding import _chi_square_p, _exact_joint, greedy_accepts_matching_ar, sample_two_tokens

SPECULATIVE = [m for m in METHODS if m != "ar"]


def _brute_force_proposal(tokens: list[int], max_ngram: int) -> int:
    """The token after the latest earlier occurrence of the longest n-gram ending `tokens`."""
    for n in range(min(max_ngram, len(tokens)), 0, -1):
        suffix = tokens[-n:]
        for start in range(len(tokens) - n - 1, -1, -1):  # occurrences that have a token after them
            if tokens[start : start + n] == suffix:
                return tokens[start + n]
    return tokens[-1]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 5), min_size=1, max_size=40), st.integers(1, 4))
def test_lookup_proposes_what_followed_the_latest_match(tokens, max_ngram):
    cache = LookupCache(max_ngram)
    for i, token in enumerate(tokens):
        cache.append(token)
        assert cache.proposal() == _brute_force_proposal(tokens[: i + 1], max_ngram)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 7), min_size=2, max_size=30), st.data())
def test_lookup_rollback_equals_a_fresh_history(tokens, data):
    draft = PromptLookupDraft(vocab_size=8, max_ngram=3)
    logits, cache = draft.forward(torch.tensor([tokens]), None)
    keep = data.draw(st.integers(1, len(tokens) - 1))
    cache = draft.crop(cache, keep)
    assert draft.cache_length(cache) == keep
    extra = data.draw(st.lists(st.integers(0, 7), min_size=1, max_size=5))
    after, _ = draft.forward(torch.tensor([extra]), cache)
    fresh, _ = draft.forward(torch.tensor([tokens[:keep] + extra]), None)
    assert torch.equal(after[0], fresh[0, keep:])
    assert torch.equal(logits[0].argmax(-1), logits[0].exp().argmax(-1))  # one-hot rows: a point mass each


def test_lookup_rejects_tokens_outside_its_vocabulary():
    with pytest.raises(ValueError, match="outside the vocabulary of 8"):
        PromptLookupDraft(vocab_size=8).forward(torch.tensor([[3, 8]]), None)
    with pytest.raises(ValueError, match="max_ngram"):
        PromptLookupDraft(vocab_size=8, max_ngram=0)


REPETITIVE = [[1, 5, 9, 3, 1, 5, 9], [1, 7, 7, 7], [1, 20, 21, 22, 1, 20, 21], [4, 4, 4, 4, 4, 4]]


@pytest.mark.parametrize("method", SPECULATIVE)
def test_greedy_with_prompt_lookup_equals_autoregressive(method):
    target = tiny_llama(vocab_size=32, hidden=32, layers=2, seed=3)
    draft = load_draft("prompt_lookup", target, ngram=3)
    accepted = greedy_accepts_matching_ar(target, draft, method, 4, REPETITIVE, new_tokens=40)
    assert accepted > 0  # a random model falls into loops: copying from the context gets accepted


def test_sampled_output_with_a_point_mass_draft_follows_the_target():
    """Prompt lookup's q is a point mass; the verdict must still give exactly the target's law."""
    target = tiny_gpt(vocab_size=16, n_layer=2, seed=0, scale=12)
    params = SamplingParams(temperature=3.0)  # flat enough that the copied token is neither sure nor impossible
    prompt = [1, 2, 3, 1, 2]
    law = _exact_joint(target, prompt, params)
    decoder = build_decoder("pearl", target, PromptLookupDraft(16, max_ngram=2), gamma=2, parallel=False)
    samples, acceptance = sample_two_tokens(decoder, prompt, params)
    assert 0.01 < acceptance < 0.99  # both verdicts happen
    assert _chi_square_p(samples, law) > 1e-3


def test_load_draft_names_the_choices():
    target = tiny_llama(vocab_size=32, layers=2)
    with pytest.raises(ValueError, match="prompt_lookup"):
        load_draft("beam", target)
    with pytest.raises(ValueError, match="native target"):
        load_draft("requantized", target)


@pytest.mark.slow
@pytest.mark.parametrize("draft_source", ["prompt_lookup", "layerskip", "requantized"])
def test_native_target_decodes_every_method_like_autoregressive(draft_source):
    """The served default (native Q4_1 SmolLM2 through the integer kernel) with each draft built from it."""
    target = load_target("smollm2_q4_native")
    draft = load_draft(draft_source, target, layers=4, bits=2)
    prompt = [1, 504, 3458, 30, 2107, 33, 504, 3458, 30]
    expected, _ = AutoregressiveDecoder(target).generate(prompt, 12)
    for method in SPECULATIVE:
        decoder = build_decoder(method, target, draft, gamma=3, parallel=True)
        try:
            assert decoder.generate(prompt, 12)[0] == expected, (draft_source, method)
        finally:
            decoder.close()
    runner = SequenceRunner(draft)
    assert runner.logits_for(prompt).shape == (len(prompt), 49152)


@pytest.mark.parametrize("total", [1, 2, 3, 8])
def test_a_draft_that_needs_no_core_leaves_every_core_to_the_target(total):
    lookup = PromptLookupDraft(vocab_size=50)
    assert split_threads(total, 0.5, lookup) == (1, total)
    model_draft = tiny_llama(vocab_size=50, hidden=32, layers=1)
    draft, target = split_threads(total, 0.5, wrap_model(model_draft))
    assert draft >= 1 and target >= 1 and draft + target == max(2, total)
