"""The embedded backend: one short real generation with SmolLM2-135M-Instruct (offline, CPU)."""

import threading

import pytest

from components.llm.embedded import EmbeddedLLM, PrefixCache, load_smollm2, sampling_seed

QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]


@pytest.fixture(scope="module")
def llm():
    return EmbeddedLLM(max_concurrency=1, threads=1)


def test_greedy_generation_streams_the_same_text_it_returns(llm):
    result = llm.chat(QUESTION, max_tokens=8)
    assert result.text.strip() and "Paris" in result.text  # greedy 135M model: it does know this one
    assert result.prompt_tokens > 10 and 0 < result.completion_tokens <= 8
    pieces = list(llm.stream_chat(QUESTION, max_tokens=8))
    assert len(pieces) > 1 and "".join(pieces) == result.text  # real token-by-token streaming, deterministic
    assert llm.usage.calls == 2 and llm.usage.completion_tokens == 2 * result.completion_tokens


def test_stop_sequence_ends_generation_early(llm):
    full = llm.chat(QUESTION, max_tokens=8).text
    word = full.split()[1]
    stopped = llm.chat(QUESTION, max_tokens=8, stop=[word])
    assert stopped.text == full[: full.index(word)] and stopped.finish_reason == "stop"
    assert stopped.completion_tokens < llm.chat(QUESTION, max_tokens=8).completion_tokens or len(full.split()) == 2


def test_weights_load_once_per_process_even_from_threads():
    results = []
    threads = [threading.Thread(target=lambda: results.append(load_smollm2()[0])) for _ in range(3)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert all(model is results[0] for model in results)


def test_unknown_model_name_is_a_clear_error():
    with pytest.raises(ValueError, match="only SmolLM2-135M-Instruct"):
        EmbeddedLLM(model="gpt-9")


def test_prefix_cache_reuses_shared_prompt_prefixes_without_changing_the_output(llm):
    system = {"role": "system", "content": "You are a terse assistant. " * 6}
    cold = EmbeddedLLM(prefix_cache_entries=0)
    hits = llm.prefix_cache.hits
    for question in ("Name a color.", "Name a fruit."):
        messages = [system, {"role": "user", "content": question}]
        assert llm.chat(messages, max_tokens=5).text == cold.chat(messages, max_tokens=5).text
    assert llm.prefix_cache.hits > hits  # the second prompt reused the first one's system-prompt KV


class FakeKV:
    def __init__(self, n):
        self.n = n

    def get_seq_length(self):
        return self.n

    def crop(self, k):
        assert k < 0
        self.n += k


def test_prefix_cache_lookup_crops_to_the_shared_prefix_and_subsumes_extended_prompts():
    cache = PrefixCache(max_entries=2, min_prefix=2)
    cache.store([1, 2, 3, 4], FakeKV(4))
    kv, n = cache.lookup([1, 2, 3, 9, 9])
    assert n == 3 and kv.get_seq_length() == 3
    kv, n = cache.lookup([1, 2, 3, 4])  # identical prompt: the last token is still fed
    assert n == 3
    assert cache.lookup([7, 8, 9]) == (None, 0)
    cache.store([1, 2, 3, 4, 5, 6], FakeKV(6))  # extends the first entry: replaces it
    cache.store([5, 5, 5], FakeKV(3))
    assert len(cache._entries) == 2 and cache.lookup([1, 2, 3, 4, 5, 6, 7])[1] == 6


def test_sampling_is_reproducible_per_prompt_and_independent_across_prompts(llm):
    """temperature > 0: the same request answers the same; two prompts that differ only in a few
    tokens do not share one random stream (they did: the co-scientist's generations all came out alike)."""
    a = [{"role": "user", "content": "Propose one hypothesis about gut bacteria and immunotherapy (angle A)."}]
    b = [{"role": "user", "content": "Propose one hypothesis about gut bacteria and immunotherapy (angle B)."}]
    first = llm.chat(a, max_tokens=24, temperature=1.0).text
    assert llm.chat(a, max_tokens=24, temperature=1.0).text == first
    assert llm.chat(b, max_tokens=24, temperature=1.0).text != first


def test_sampling_seed_mixes_the_seed_and_every_prompt_token():
    base = sampling_seed(0, [1, 2, 3])
    assert sampling_seed(0, [1, 2, 3]) == base and 0 <= base < 2**63
    assert len({base, sampling_seed(1, [1, 2, 3]), sampling_seed(0, [1, 2, 4]), sampling_seed(0, [12, 3])}) == 4
