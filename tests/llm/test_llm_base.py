"""The backend-independent part of the LLM interface: stop sequences (also across streamed pieces),
usage accounting, the response cache, the concurrency limit, bad requests."""

import threading
import time

import pytest

from components.llm import LLM, Completion, LLMError, ResponseCache, ScriptedLLM
from components.llm.base import StopFilter

MSG = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("pieces", [["abc", "STOP", "def"], ["ab", "cS", "TO", "Pdef"], list("abcSTOPdef")])
def test_stop_filter_never_emits_a_stop_sequence_even_split_across_pieces(pieces):
    f = StopFilter(["STOP", "Observation:"])
    out = "".join(f.feed(p) for p in pieces) + f.flush()
    assert out == "abc" and f.stopped


def test_stop_filter_holds_back_only_possible_prefixes():
    f = StopFilter(["END"])
    assert f.feed("fooE") == "foo"  # "E" could start END
    assert f.feed("X") == "EX"  # it did not
    assert f.flush() == ""


def test_scripted_chat_stream_and_usage():
    llm = ScriptedLLM(["line one\nline two\nEND more", "second"])
    pieces = list(llm.stream_chat(MSG, stop=["END"]))
    assert pieces == ["line one\n", "line two\n"]
    assert llm.chat(MSG).text == "second"
    usage = llm.usage.as_dict()
    assert (
        usage["calls"] == 2
        and usage["completion_tokens"] > 0
        and usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    )
    with pytest.raises(RuntimeError, match="ran out of responses"):
        llm.chat(MSG)


def test_stream_closed_early_is_still_accounted():
    llm = ScriptedLLM(["a\nb\nc\n"])
    stream = llm.stream_chat(MSG)
    assert next(stream) == "a\n"
    stream.close()
    assert llm.usage.calls == 1 and llm.usage.completion_tokens == 1


def test_scripted_function_sees_the_messages():
    llm = ScriptedLLM(lambda messages: messages[-1]["content"].upper())
    assert llm.complete("shout").text == "SHOUT" and llm.requests[0][-1]["content"] == "shout"


def test_cache_is_keyed_by_request_and_survives_a_new_instance(tmp_path):
    first = ScriptedLLM(["answer A", "answer B"], cache=ResponseCache(tmp_path))
    assert first.chat(MSG).text == "answer A"
    assert first.chat(MSG).text == "answer A"  # replayed: the script is not consumed
    assert first.chat(MSG, temperature=0.5).text == "answer B"  # other params, other key
    rerun = ScriptedLLM([], cache=ResponseCache(tmp_path))  # a rerun needs no model at all
    assert rerun.chat(MSG).text == "answer A" and rerun.usage.cached_calls == 1
    assert list(rerun.stream_chat(MSG)) == ["answer A"]


def test_cache_ignores_corrupt_entries(tmp_path):
    cache = ResponseCache(tmp_path)
    llm = ScriptedLLM(["fresh", "fresh again"], cache=cache)
    llm.chat(MSG)
    for path in tmp_path.glob("*/*.json"):
        path.write_text("{not json")
    assert llm.chat(MSG).text == "fresh again"


class SlowLLM(LLM):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.active = self.peak = 0
        self.lock = threading.Lock()

    def _chat(self, messages, max_tokens, temperature, stop):
        with self.lock:
            self.active += 1
            self.peak = max(self.peak, self.active)
        time.sleep(0.05)
        with self.lock:
            self.active -= 1
        return Completion("ok", 1, 1)


def test_max_concurrency_limits_backend_calls():
    llm = SlowLLM(max_concurrency=2)
    threads = [threading.Thread(target=llm.chat, args=(MSG,)) for _ in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert llm.peak <= 2 and llm.usage.calls == 8
    with pytest.raises(ValueError, match="max_concurrency"):
        SlowLLM(max_concurrency=0)


@pytest.mark.parametrize("bad", [[], "hello", [{"role": "user"}], [{"content": "x"}], [{"role": "user", "content": 3}]])
def test_malformed_messages_get_a_clear_error(bad):
    with pytest.raises(LLMError, match="messages"):
        ScriptedLLM(["x"]).chat(bad)
