"""SelfPiCo: instrumentation keeps semantics, values are injected and cached, feedback retries, coverage."""

from __future__ import annotations

import types
import warnings

import pytest

from components.llm import ScriptedLLM
from components.selfpico.executor import Snippet, execute_snippet, run_once
from components.selfpico.instrument import InstrumentationError, instrument
from components.selfpico.predictors import (
    AsIsPredictor,
    LLMPredictor,
    NaivePredictor,
    PredictionRequest,
    RuleBasedPredictor,
    parse_value_code,
)
from components.selfpico.snippets import package_function_snippets, written_snippets

# Programs with no undefined names: the instrumented version must print exactly the same.
COMPLETE_PROGRAMS = [
    "import math\nprint(math.sqrt(16), [i * i for i in range(5)])\n",
    "class A:\n    k = 2\n    j = k + 1\n    def f(self, x):\n        return self.k * x\nprint(A().f(3), A.j)\n",
    "def gen(n):\n    for i in range(n):\n        yield i\nprint(sum(gen(10)))\n",
    "d = {'a': 1}\ntry:\n    d['b']\nexcept KeyError as e:\n    print('missing', e)\nfinally:\n    print('done')\n",
    "from collections import Counter\nc = Counter('hello')\nprint(sorted(c.items()))\n"
    "x = 0\nwhile x < 3:\n    x += 1\nelse:\n    print(x)\n",
    "import os.path\nprint(os.path.join('a', 'b'), (lambda y: y + 1)(1))\n"
    "match 3:\n    case 3:\n        print('three')\n",
]


@pytest.mark.parametrize("program", COMPLETE_PROGRAMS)
def test_instrumentation_keeps_semantics(program, sandbox):
    original = sandbox.run_python(program)
    assert original.ok, original.stderr
    trace, stdout = run_once(instrument(program), {}, sandbox)
    assert trace["status"] == "ok"
    assert stdout.rsplit("\n@@pico-", 1)[0].rstrip("\n") == original.stdout.rstrip("\n")


def test_markers_count_statements_and_map_lines():
    inst = instrument("a = 1\nif a:\n    b = 2\nelse:\n    b = 3\nprint(b)\n")
    assert inst.n_markers == 5
    assert sorted(inst.marker_lines.values()) == [1, 2, 3, 5, 6]


def test_function_body_is_wrapped_and_lines_map_to_the_body():
    inst = instrument("y = x + 1\nreturn y\n")
    assert inst.wrapped and sorted(inst.marker_lines.values()) == [1, 2]


@pytest.mark.parametrize("code", ["async def f():\n    await g()\n", "_pico_n_ = 1\n", "def f(:\n"])
def test_unsupported_code_is_refused_clearly(code):
    with pytest.raises(InstrumentationError):
        instrument(code)


def test_as_is_stops_at_the_first_undefined_name(sandbox):
    report = execute_snippet(Snippet("s", "a = 1\nb = missing + a\nprint(b)\n"), AsIsPredictor(), sandbox)
    assert report.final_status == "missing" and report.executed_markers == 2 and report.coverage == pytest.approx(2 / 3)


def test_a_name_keeps_one_value_for_the_whole_run(sandbox):
    snippet = Snippet("cache", "first = thing\nsecond = thing\nprint(first is second)\n")
    report = execute_snippet(snippet, NaivePredictor(), sandbox)
    assert report.coverage == 1.0 and report.predictions == 1
    trace, stdout = run_once(instrument(snippet.code), report.values, sandbox)
    assert "True" in stdout


def test_rule_based_uses_usage_then_names():
    rule = RuleBasedPredictor()
    snippet = "words = text.lower().split()\nfor r in records:\n    print(r)\nhandler(1)\nprint(n + 1)\n"

    def value(name, code=snippet):
        return eval(rule.predict(PredictionRequest(f"name#{name}", code, "")), {"types": types})

    assert isinstance(value("text"), str) and isinstance(value("records"), list)
    assert callable(value("handler")) and type(value("n")) is int and value("is_ready", "print(1)") is True
    assert "ModuleType" in rule.predict(PredictionRequest("import#nothere", "import nothere", ""))


def test_rule_based_executes_more_than_as_is(sandbox):
    snippets = written_snippets()[:6]
    as_is = [execute_snippet(s, AsIsPredictor(), sandbox).coverage for s in snippets]
    rule = [execute_snippet(s, RuleBasedPredictor(), sandbox).coverage for s in snippets]
    assert sum(rule) > sum(as_is)


def test_llm_feedback_retries_a_failing_value_with_its_error(sandbox):
    # First answer is code that raises when evaluated; the second prompt must carry that error.
    llm = ScriptedLLM(["```python\nundefined_helper()\n```", "[3, 1, 2]"])
    snippet = Snippet("fb", "print(sorted(values))\n")
    report = execute_snippet(snippet, LLMPredictor(llm), sandbox)
    assert report.coverage == 1.0 and report.retries == 1 and report.values == {"name#values": "[3, 1, 2]"}
    retry = llm.requests[1]
    assert retry[-2] == {"role": "assistant", "content": "undefined_helper()"}
    assert "NameError" in retry[-1]["content"]


def test_llm_feedback_stops_after_max_retries(sandbox):
    llm = ScriptedLLM([f"{n}/0" for n in range(1, 9)])
    report = execute_snippet(Snippet("stuck", "print(v)\n"), LLMPredictor(llm), sandbox, max_retries=3)
    assert report.retries == 3 and llm.usage.calls == 4 and report.final_status == "bad_value"


def test_a_model_repeating_its_failed_value_is_refused_and_its_retries_end(sandbox):
    llm = ScriptedLLM(lambda messages: "1/0")
    predictor = LLMPredictor(llm, host_checks=2)
    report = execute_snippet(Snippet("stuck", "print(v)\n"), predictor, sandbox, max_retries=3)
    # the first retry's replies (greedy, then sampled twice) all repeat the failed value: no value, stop
    assert report.retries == 1 and llm.usage.calls == 4 and predictor.refused_replies == 3
    assert report.final_status == "bad_value"


def test_runtime_type_error_is_recorded_with_its_line(sandbox):
    snippet = next(s for s in written_snippets() if s.id == "so_concat_age")
    report = execute_snippet(snippet, RuleBasedPredictor(), sandbox)
    assert [e.error_type for e in report.errors] == ["TypeError"] and report.errors[0].line == 2


def test_parse_value_code():
    assert parse_value_code("```python\n[1, 2]\n```") == "[1, 2]"
    assert parse_value_code("value = 'abc'") == "'abc'"
    with pytest.raises(ValueError):
        parse_value_code("   \n")
    with warnings.catch_warnings():  # a reply Python compiles only with a SyntaxWarning prints nothing
        warnings.simplefilter("error")
        assert parse_value_code("[1, 2][0, 1]") == "[1, 2][0, 1]"


def test_hostile_snippet_stays_inside_the_sandbox(sandbox, tmp_path):
    marker = tmp_path / "escaped.txt"
    snippet = Snippet("hostile", f"open({str(marker)!r}, 'w').write('x')\nprint(open('/work/main/README.md').read())\n")
    report = execute_snippet(snippet, RuleBasedPredictor(), sandbox)
    assert not marker.exists()
    assert (
        report.coverage < 1.0
        and report.errors
        and report.errors[0].error_type in {"FileNotFoundError", "OSError", "PermissionError"}
    )


def test_package_snippets_are_extracted_from_installed_source():
    snippets = package_function_snippets(["textwrap", "shlex"], count=5, seed=1)
    assert len(snippets) == 5 and all(s.origin.startswith("package:") for s in snippets)
    assert snippets == package_function_snippets(["textwrap", "shlex"], count=5, seed=1)
    with pytest.raises(ValueError, match="no_such_module_xyz"):
        package_function_snippets(["no_such_module_xyz"], count=1)


def test_parse_value_code_finds_python_in_prose_and_repairs_a_dropped_quote():
    assert parse_value_code("You can use this:\n`[1, 2, 3]`") == "[1, 2, 3]"
    assert parse_value_code('The quick brown fox"') == '"The quick brown fox"'
    with pytest.raises(ValueError):
        parse_value_code("You can use the filter function to do it.")


def test_llm_prompt_is_few_shot_turns_ending_with_the_request():
    messages = LLMPredictor(ScriptedLLM(["1"])).build_messages(
        PredictionRequest("name#rows", "print(rows)", "print(rows)")
    )
    assert messages[0]["role"] == "system" and messages[-1]["role"] == "user"
    assert [m["role"] for m in messages[1:-1]] == ["user", "assistant"] * 3
    assert "`rows`" in messages[-1]["content"] and "print(rows)" in messages[-1]["content"]
