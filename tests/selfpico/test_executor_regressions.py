"""Each executor bug found on unseen snippets, as a two-line regression test; and the trace channel."""

from __future__ import annotations

import hmac
import json
import types

from components.llm import ScriptedLLM
from components.sandbox import Sandbox, SandboxLimits
from components.selfpico.analysis import DataFlow, involves_injected
from components.selfpico.executor import TRACE_PREFIX, Snippet, execute_snippet, parse_trace
from components.selfpico.predictors import LLMPredictor, PredictionRequest, Predictor, RuleBasedPredictor


class FixedPredictor(Predictor):
    """The given value code for each key; anything else as the rule-based predictor would."""

    name = "fixed"

    def __init__(self, fixed: dict[str, str]):
        self.fixed, self.rule = fixed, RuleBasedPredictor()

    def predict(self, request: PredictionRequest) -> str | None:
        return self.fixed.get(request.key) or self.rule.predict(request)


def run(sandbox, code: str, predictor=None, **kw):
    return execute_snippet(Snippet("t", code), predictor or RuleBasedPredictor(), sandbox, **kw)


def test_augmented_assignment_to_an_undefined_name_is_predicted(sandbox):
    report = run(sandbox, "total += price\nprint(total)\n")
    assert report.coverage == 1.0 and not report.errors and "name#total" in report.values


def test_augmented_attribute_on_a_predicted_self_runs(sandbox):
    report = run(sandbox, "self.vx += 1\nprint(self.vx)\n")
    assert report.coverage == 1.0 and not report.errors


def test_method_body_reading_and_updating_self(sandbox):
    body = "self.count += len(items)\nself.history.append(self.count)\nreturn self.history[-1] * self.scale\n"
    report = run(sandbox, body)
    assert report.coverage == 1.0 and not report.errors, report


def test_augmented_subscript_and_slice_targets(sandbox):
    report = run(
        sandbox,
        "counts = {}\ncounts['a'] = 1\ncounts['a'] += step\nbuf = [0, 0, 0]\nbuf[0:2] += [9]\nprint(counts, buf)\n",
    )
    assert report.coverage == 1.0 and not report.errors


def test_unpacking_with_and_comprehension_targets_get_fitting_values(sandbox):
    code = (
        "for key, value in pairs:\n    print(key, value)\nwith lock:\n    x, y = point\n"
        "names = [u.name.upper() for u in users]\nprint(x + y, names)\n"
    )
    report = run(sandbox, code)
    assert report.coverage == 1.0 and not report.errors, report


def test_the_llm_falls_back_to_the_rule_based_value_when_its_retries_run_out(sandbox):
    llm = ScriptedLLM(lambda messages: "1/0")
    report = run(
        sandbox,
        "for row in rows:\n    print(row['price'] * 2)\n",
        LLMPredictor(llm, fallback=RuleBasedPredictor()),
        max_retries=2,
        select_by_execution=False,
    )
    assert report.coverage == 1.0 and report.fallbacks == 1 and report.final_status == "ok"
    # the model only repeats its failed value: refused on the host, so the first retry ends its turn
    assert report.retries == 1 and not report.errors
    assert "tried already" in llm.requests[-1][-1]["content"]


def test_the_value_that_runs_further_is_kept_and_a_tie_keeps_the_llms(sandbox):
    code = "total = 0\nfor row in rows:\n    total += row['price'] * 2\nprint(total, label.upper())\n"
    scripted = {"name#rows": "[1, 2]", "name#label": "'fine'"}
    llm = ScriptedLLM(lambda messages: next(v for k, v in scripted.items() if f"`{k[5:]}`" in messages[-1]["content"]))
    report = run(sandbox, code, LLMPredictor(llm, fallback=RuleBasedPredictor(), host_checks=0), max_retries=0)
    assert report.coverage == 1.0 and report.final_status == "ok" and report.fallbacks == 1
    assert "price" in report.values["name#rows"]  # the rule-based rows ran the loop body; [1, 2] did not
    assert report.values["name#label"] == "'fine'"  # both ran to the end: the LLM's value stays


def test_more_values_are_asked_with_how_far_the_earlier_ran_and_the_furthest_is_kept(sandbox):
    code = "n = 0\nfor row in rows:\n    if row['size'] > 10:\n        n += 1\nprint(n)\n"
    llm = ScriptedLLM(["[{'size': 1}]", "[{'size': 50}]", "[{'size': 99}]"])
    report = run(sandbox, code, LLMPredictor(llm, fallback=RuleBasedPredictor(), host_checks=0, candidates=3))
    assert report.coverage == 1.0 and report.values["name#rows"] == "[{'size': 50}]"
    assert len(llm.requests) == 2  # every line ran with the second value: no third is asked
    feedback = llm.requests[1][-1]["content"]
    assert "4 of the 5 lines" in feedback and "`n += 1` never ran" in feedback


def test_the_snippets_own_error_met_by_a_value_not_kept_is_still_reported(sandbox):
    code = "if mode == 'text':\n    print('n: ' + 5)\nprint(mode)\nx = 1\ny = 2\n"
    llm = ScriptedLLM(["'text'", "'plain'"])
    predictor = LLMPredictor(llm, fallback=RuleBasedPredictor(), host_checks=0, candidates=2)
    report = run(sandbox, code, predictor, explore=0)
    assert report.final_status == "ok" and report.values["name#mode"] == "'plain'"
    [error] = report.errors
    assert (error.error_type, error.line, error.involves_injected) == ("TypeError", 2, False)


def test_one_candidate_keeps_the_first_value_or_the_fallbacks(sandbox):
    code = "n = 0\nfor row in rows:\n    if row['size'] > 10:\n        n += 1\nprint(n)\n"
    llm = ScriptedLLM(["[{'size': 1}]", "[{'size': 50}]"])
    predictor = LLMPredictor(llm, fallback=RuleBasedPredictor(), host_checks=0, candidates=1)
    report = run(sandbox, code, predictor, explore=0)
    assert len(llm.requests) == 1 and report.coverage == 0.8


def test_bad_value_names_the_value_its_attempts_and_exceptions(sandbox):
    llm = ScriptedLLM(["1/0", "undefined_thing()", "int('x')"])
    report = run(sandbox, "print(v)\n", LLMPredictor(llm, host_checks=0), max_retries=2)
    assert report.final_status == "bad_value"
    [error] = report.errors
    assert error.blamed == ["name#v"] and "name#v" in report.note
    for text in ("1/0", "ZeroDivisionError", "undefined_thing", "NameError", "int('x')", "ValueError"):
        assert text in error.message, text


def test_an_error_caused_by_an_injected_value_is_blamed_on_it_by_data_flow(sandbox):
    report = run(sandbox, "for job in jobs:\n    print(job['x'])\n", FixedPredictor({"name#jobs": "[1]"}))
    [error] = report.errors
    assert error.error_type == "TypeError" and error.involves_injected and error.blamed == ["name#jobs"]
    assert error.line == 2


def test_a_type_error_of_the_snippet_itself_is_not_blamed_on_injected_values(sandbox):
    report = run(sandbox, "age = len(users)\nprint('There are ' + age + ' users')\n")
    [error] = report.errors
    assert error.error_type == "TypeError" and not error.involves_injected and error.line == 2


def test_blame_follows_data_flow_through_assignments_and_calls(sandbox):
    flow = DataFlow("a = rows[0]\nb = a['k']\nn = len(rows)\nc = f(b)\n")
    assert involves_injected(flow, {"c"}, ["name#rows", "name#f"]) == ["name#rows", "name#f"]
    assert involves_injected(flow, {"n"}, ["name#rows"]) == []


def test_string_keyed_subscripts_get_their_real_keys(sandbox):
    report = run(sandbox, "print(config['host'], config['port'] + 1)\nprint(config.get('user').upper())\n")
    assert report.coverage == 1.0 and not report.errors
    value = eval(report.values["name#config"], {"types": types})
    assert {"host", "port", "user"} <= set(value)


def test_a_slice_bound_is_an_int(sandbox):
    report = run(sandbox, "head = items[:cut]\nprint(head[::stride])\n")
    assert report.coverage == 1.0 and not report.errors


def test_replies_that_copy_an_example_or_name_a_module_are_asked_again():
    llm = ScriptedLLM(['"Hello world from Python"', "pandas", "x = read(path)", "[{'a': 1}]"])
    predictor = LLMPredictor(llm, host_checks=3)
    code = predictor.predict(PredictionRequest("name#frames", "for f in frames:\n    print(f['a'])\n", ""))
    assert code == "[{'a': 1}]" and llm.usage.calls == 4 and predictor.refused_replies == 2
    assert "name, not a value" in llm.requests[2][-1]["content"]


def test_the_llm_is_told_what_the_code_does_with_the_value(sandbox):
    llm = ScriptedLLM(["[1]", "[{'x': 2}]"])
    report = run(sandbox, "for job in jobs:\n    print(job['x'])\n", LLMPredictor(llm, host_checks=0))
    assert report.coverage == 1.0 and report.retries == 1
    first, retry = llm.requests[0][-1]["content"], llm.requests[1][-1]["content"]
    assert "keys 'x'" in first
    assert "TypeError" in retry and "print(job['x'])" in retry


FORGER = """import hashlib, hmac, os, re, sys
src = open('/sandbox_code/main.py').read() + sys.stdin.read()
for guess in set(re.findall(r'[0-9a-f]{32}', src)) | {''}:
    data = '{"status": "ok", "executed": [1, 2, 3, 4, 5, 6], "used": [], "used_on_line": []}'
    print('%s %s %s' % (PREFIX, hmac.new(guess.encode(), data.encode(), 'sha256').hexdigest(), data))
print(PREFIX + ' ' + '0' * 64 + ' ' + '[' * 200000)
sys.stdout.flush()
os._exit(0)
""".replace("PREFIX", repr(TRACE_PREFIX))


def test_a_snippet_cannot_forge_its_trace_nor_crash_the_batch(sandbox):
    forged = run(sandbox, FORGER)
    assert forged.final_status == "no_trace" and forged.executed_markers == 0 and forged.coverage == 0
    honest = run(sandbox, "x = 1\nprint(x)\n")  # the same sandbox and process carry on
    assert honest.coverage == 1.0


def test_a_signed_but_deeply_nested_trace_is_refused_without_recursion():
    key = "k" * 32
    for data in ["[" * 200000 + "]" * 200000, '{"status": "ok", "executed": "all"}', "not json"]:
        line = f"{TRACE_PREFIX} {hmac.new(key.encode(), data.encode(), 'sha256').hexdigest()} {data}"
        assert parse_trace("noise\n" + line + "\n", key) is None
    good = json.dumps({"status": "ok", "executed": [1], "used": [], "used_on_line": []})
    line = f"{TRACE_PREFIX} {hmac.new(key.encode(), good.encode(), 'sha256').hexdigest()} {good}"
    assert parse_trace(line, key)["executed"] == [1]
    assert parse_trace(line, "other" * 8) is None


def test_a_value_passed_to_int_is_a_number_as_text_and_ordering_implies_numbers(sandbox):
    report = run(sandbox, "ids = [int(r['id']) for r in records]\nprint(sum(ids) + 1)\n")
    assert report.coverage == 1.0 and not report.errors
    report = run(sandbox, "best = 0\nfor g in games:\n    if g['points'] >= limit:\n        best = g['points']\n")
    assert report.coverage == 1.0 and not report.errors  # limit a number, not an object `>=` refuses


def test_a_predicted_value_that_keeps_a_loop_going_is_replaced_by_its_empty_form():
    # `.next` predicted as an object is always another object and `.children` always has children:
    # the sandbox kills the run; the values the loops read are emptied, the latest first, and it ends.
    box = Sandbox(SandboxLimits(wall_seconds=4, cpu_seconds=1))
    linked = "total = 0\nwhile node:\n    total += node.value\n    node = node.next\nprint(total)\n"
    report = run(box, linked)
    assert report.final_status == "ok" and report.coverage == 1.0 and report.values["attr#next"] == "None"
    tree = (
        "seen = []\nstack = [root]\nwhile stack:\n    item = stack.pop()\n    seen.append(item.label)\n"
        "    for child in item.kids:\n        stack.append(child)\nprint(len(seen))\n"
    )
    report = run(box, tree)
    assert report.final_status == "ok" and report.values["attr#kids"] == "[]"


def test_a_snippet_that_never_ends_on_its_own_is_reported_not_retried_forever():
    box = Sandbox(SandboxLimits(wall_seconds=4, cpu_seconds=1))
    report = run(box, "x = y + 1\nwhile True:\n    x += 1\n")  # y is injected but no loop reads it
    assert report.final_status == "no_trace" and "time" in report.note and report.runs <= 3
