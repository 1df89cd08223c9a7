"""A sampled speculative run that checks every cache it built (shared by the draft tests)."""

from __future__ import annotations

from components.decoding.cache import SequenceRunner
from components.decoding.sampling import SamplingParams


def assert_caches_consistent_after_sampling(decoder, prompt: str, max_new: int, seed: int = 3) -> None:
    """Generates with temperature 1, recording every SequenceRunner the decoder makes; both accepted
    and rejected draft tokens must occur, and every runner's caches must agree with its tokens."""
    runners = []
    original = SequenceRunner.__init__

    def spy(self, model, **kwargs):
        original(self, model, **kwargs)
        runners.append(self)

    SequenceRunner.__init__ = spy
    try:
        _, st = decoder.generate(prompt, max_new, SamplingParams(temperature=1.0), seed=seed)
    finally:
        SequenceRunner.__init__ = original
    assert st.draft_tokens_verified > st.draft_tokens_accepted > 0  # both accepts and rejects happened
    for runner in runners:
        runner.check_consistent()
