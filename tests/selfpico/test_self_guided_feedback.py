"""The self-guided loop's use of execution feedback: replies the feedback already rules out are
refused on the host, lines that never ran are explored with the model, and the model's candidates
are chosen by execution even with no fallback."""

from __future__ import annotations

import json
import types

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from components.llm import ScriptedLLM
from components.selfpico.executor import Snippet, execute_snippet
from components.selfpico.predictors import (
    LLMPredictor,
    PredictionRequest,
    RuleBasedPredictor,
    rejected_type,
    value_type,
)


def _outcome(action, value) -> str:
    """The executor's feedback for `action(value)`'s exception, as it words it."""
    try:
        action(value)
    except Exception as exc:  # noqa: BLE001 - the exception is the test's subject
        return f"{type(exc).__name__}: {exc} (line `x = f(v)`)"
    raise AssertionError("no exception")


@pytest.mark.parametrize(
    "action, value",
    [
        (json.loads, [1, 2]),
        (json.loads, {"a": 1}),
        (json.loads, types.SimpleNamespace()),
        (lambda v: v[0], 5),
        (lambda v: {v: 1}, [1]),
        (lambda v: {v: 1}, {"k": 2}),
        (lambda v: v(), [1]),
        (len, 3),
        (lambda v: "a" in v, 3),
        (lambda v: [1] * v, 2.5),
        (lambda v: v.items(), [1]),
        (lambda v: open(v), 2.5),  # noqa: SIM115 - raises before opening anything
    ],
)
def test_the_type_an_exception_rejects_is_read_from_its_message(action, value):
    assert rejected_type(_outcome(action, value)) == type(value).__name__


@pytest.mark.parametrize(
    "outcome",
    [
        "it ran 3 of the 9 lines; line `print(x)` never ran",
        "TypeError: '>' not supported between instances of 'NoneType' and 'float' (line `if a > b:`)",
        "ValueError: dictionary update sequence element #0 has length 8; 2 is required (line `d = dict(x)`)",
        "",
        "(line `",
    ],
)
def test_outcomes_naming_no_rejected_type_give_none(outcome):
    assert rejected_type(outcome) is None


_LITERALS = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=60, deadline=None)
@given(_LITERALS)
def test_a_literal_replys_type_is_the_type_of_its_value(value):
    assert value_type(repr(value)) == type(value).__name__


@pytest.mark.parametrize("code", ["", "value = 3", "foo(1)", "x +", "lambda", "'unclosed"])
def test_code_whose_syntax_does_not_tell_its_type_gives_none(code):
    assert value_type(code) is None


def test_a_reply_of_the_type_the_exception_rejected_is_refused_and_asked_again():
    llm = ScriptedLLM(["[3, 4]", "'{\"users\": []}'"])
    predictor = LLMPredictor(llm, host_checks=1, few_shot=False)
    failed = ("[1, 2]", _outcome(json.loads, [1, 2]))
    request = PredictionRequest("name#raw", "data = json.loads(raw)\n", "data = json.loads(raw)", [failed])
    assert predictor.predict(request) == "'{\"users\": []}'"
    assert predictor.refused_replies == 1 and "cannot use a list" in llm.requests[1][-1]["content"]


def test_a_type_is_refused_only_when_the_failed_value_was_of_that_type():
    llm = ScriptedLLM(["[3, 4]"])
    predictor = LLMPredictor(llm, host_checks=0, few_shot=False)
    # the exception names int, but the failed value was a list (its element was the int): a list may come again
    failed = ("[1]", "TypeError: 'int' object is not subscriptable (line `row['a']`)")
    request = PredictionRequest("name#rows", "for row in rows:\n    print(row['a'])\n", "", [failed])
    assert predictor.predict(request) == "[3, 4]" and predictor.refused_replies == 0


def test_a_repeated_value_is_refused_and_the_model_asked_again_sampling():
    temperatures = []

    class Recording(ScriptedLLM):
        def _chat(self, messages, max_tokens, temperature, stop):
            temperatures.append(temperature)
            return super()._chat(messages, max_tokens, temperature, stop)

    llm = Recording(["'a'", "'b'"])
    predictor = LLMPredictor(llm, host_checks=1, few_shot=False, retry_temperature=0.7)
    tried = [("'a'", "it ran 0 of the 1 lines")]
    request = PredictionRequest("name#s", "print(s.upper())\n", "print(s.upper())", tried)
    assert predictor.predict(request) == "'b'"
    assert temperatures == [0.0, 0.7] and "tried already" in llm.requests[1][-1]["content"]


def test_when_every_reply_is_refused_the_fallback_stands_in_and_is_counted():
    llm = ScriptedLLM(lambda messages: "'a'")
    predictor = LLMPredictor(llm, host_checks=2, few_shot=False, fallback=RuleBasedPredictor())
    request = PredictionRequest("name#s", "print(s.upper())\n", "", [("'a'", "it ran 0 of the 1 lines")])
    assert predictor.predict(request) == RuleBasedPredictor().predict(request)
    assert predictor.last_from_fallback and predictor.fallback_values == 1 and llm.usage.calls == 3


def test_lines_that_never_ran_are_explored_with_the_deciding_value(sandbox):
    code = "n = 0\nfor row in rows:\n    n += row\nif mode == 'fast':\n    print('fast')\nprint(n)\n"

    def reply(messages):
        text = messages[-1]["content"]
        if "`rows`" in messages[1]["content"]:
            return "[1, 2]"
        return "'fast'" if "never ran" in text else "'slow'"

    llm = ScriptedLLM(reply)
    predictor = LLMPredictor(llm, fallback=RuleBasedPredictor(), host_checks=0, candidates=1, few_shot=False)
    report = execute_snippet(Snippet("t", code), predictor, sandbox)
    assert report.coverage == 1.0 and report.final_status == "ok" and report.explored == 1
    assert report.values["name#mode"] == "'fast'" and report.values["name#rows"] == "[1, 2]"
    asked = [m[-1]["content"] for m in llm.requests if "never ran" in m[-1]["content"]]
    assert len(asked) == 1 and "print('fast')" in asked[0] and "5 of the 6 lines" in asked[0]


def test_an_explored_value_that_fails_or_runs_no_further_is_dropped(sandbox):
    code = "if mode == 'fast':\n    print('fast')\nprint(mode.upper())\n"
    replies = iter(["'slow'", "7"])
    llm = ScriptedLLM(lambda messages: next(replies))
    predictor = LLMPredictor(llm, host_checks=0, candidates=1, few_shot=False)
    report = execute_snippet(Snippet("t", code), predictor, sandbox)
    # 7 takes no branch and fails at mode.upper(): the first value stays, its run is the best
    assert report.values["name#mode"] == "'slow'" and report.explored == 0 and report.executed_lines == 2
    assert report.final_status == "ok" and not report.errors


def test_with_no_fallback_the_models_candidates_are_chosen_by_execution(sandbox):
    code = "n = 0\nfor row in rows:\n    if row['size'] > 10:\n        n += 1\nprint(n)\n"
    llm = ScriptedLLM(["[{'size': 1}]", "[{'size': 50}]"])
    report = execute_snippet(Snippet("t", code), LLMPredictor(llm, host_checks=0, candidates=2), sandbox, explore=0)
    assert report.coverage == 1.0 and report.values["name#rows"] == "[{'size': 50}]" and report.fallbacks == 0
