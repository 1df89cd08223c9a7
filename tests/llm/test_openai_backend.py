"""The `openai` backend against a fake OpenAI-compatible server on loopback (started and stopped here)."""

import threading

import pytest

from components.llm.base import LLMError, LLMTimeoutError
from components.llm.cache import ResponseCache
from components.llm.openai_compat import OpenAICompatibleLLM
from tests.llm.fake_openai import FakeOpenAI

HELLO = [{"role": "user", "content": "hello there"}]


@pytest.fixture
def server():
    with FakeOpenAI() as fake:
        yield fake


def make(server, **kwargs):
    kwargs.setdefault("backoff_s", 0.01)
    return OpenAICompatibleLLM(model="fake-model", base_url=server.base_url, **kwargs)


def test_chat_returns_text_and_counts_tokens(server):
    llm = make(server)
    result = llm.chat(HELLO, max_tokens=32, stop=["there"])
    assert result.text == "echo: hello "  # the stop sequence is applied to whatever the server sent
    assert result.prompt_tokens == 2 and result.completion_tokens == 3 and result.model == "fake-model"
    body = server.requests[0]["body"]
    assert body["max_tokens"] == 32 and body["stop"] == ["there"] and body["temperature"] == 0.0
    assert llm.usage.as_dict()["calls"] == 1 and llm.usage.total_tokens == 5


def test_streaming_yields_pieces_and_takes_usage_from_the_last_chunk(server):
    llm = make(server)
    pieces = list(llm.stream_chat([{"role": "user", "content": "one two three"}]))
    assert len(pieces) == 4 and "".join(pieces) == "echo: one two three"
    assert llm.usage.prompt_tokens == 3 and llm.usage.completion_tokens == 4
    assert server.requests[0]["body"]["stream"] is True


def test_transient_failures_are_retried_then_succeed(server):
    server.fail_next = [503, 429]
    llm = make(server, retries=2)
    assert llm.chat(HELLO).text == "echo: hello there"
    assert len(server.requests) == 3


def test_retries_exhausted_is_a_clear_error(server):
    server.fail_next = [500, 500]
    with pytest.raises(LLMError, match="failed after 2 attempts"):
        make(server, retries=1).chat(HELLO)


def test_client_errors_are_not_retried(server):
    server.required_key = "right-key"
    with pytest.raises(LLMError, match="HTTP 401"):
        make(server, api_key="wrong-key", retries=3).chat(HELLO)
    assert len(server.requests) == 1
    assert make(server, api_key="right-key").chat(HELLO).text.startswith("echo")


def test_timeout_raises_timeout_error(server):
    server.delay_s = 1.0
    with pytest.raises(LLMTimeoutError, match="timeout_s=0.2"):
        make(server, timeout_s=0.2, retries=0).chat(HELLO)


def test_cache_replays_identical_requests_without_the_server(server, tmp_path):
    llm = make(server, cache=ResponseCache(tmp_path))
    first = llm.chat(HELLO)
    second = llm.chat(HELLO)
    other = llm.chat(HELLO, max_tokens=7)  # different parameters: a different key
    assert second.text == first.text and second.cached and not first.cached
    assert len(server.requests) == 2 and llm.usage.cached_calls == 1
    # a fresh client on the same folder (a rerun) is also served from disk
    rerun = make(server, cache=ResponseCache(tmp_path))
    assert rerun.chat(HELLO).cached and len(server.requests) == 2 and other.text == first.text


def test_concurrency_limit_bounds_requests_in_flight(server):
    server.delay_s = 0.2
    llm = make(server, max_concurrency=2)
    threads = [threading.Thread(target=llm.chat, args=(HELLO,)) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert server.peak_in_flight == 2 and llm.usage.calls == 6


def test_base_url_and_key_from_environment(server, monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "env-key")
    llm = OpenAICompatibleLLM(model="m")
    llm.chat(HELLO)
    assert server.requests[0]["auth"] == "Bearer env-key"
    monkeypatch.delenv("OPENAI_BASE_URL")
    with pytest.raises(LLMError, match="OPENAI_BASE_URL"):
        OpenAICompatibleLLM(model="m")
