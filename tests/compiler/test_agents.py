"""LLMCompiler, ReAct and parallel function calling end to end on the real tools with a scripted LLM
(plumbing, not model quality): answers, replanning, malformed plans, and that LLMCompiler overlaps
the calls ReAct serializes."""

from concurrent.futures import ThreadPoolExecutor
from threading import Barrier

import pytest

from components.compiler import LLMCompiler, ReActAgent, ThreadSubmit, parse_final
from components.compiler.agents import ParallelFunctionCalling
from components.compiler.evaluation import AgentSettings, build_agent, evaluate, summarize
from components.compiler.parallelqa import build_questions, is_correct
from components.compiler.plan import dependency_levels
from components.compiler.prompts import parallel_fc_messages, prompt_kind
from components.compiler.scripted import ServedModelLatency, SimulatedServedLLM, observed_value, parallelqa_oracle
from components.llm import ScriptedLLM
from components.tools import build_knowledge_base, build_toolbox


@pytest.fixture(scope="module")
def setup():
    kb = build_knowledge_base(0)
    questions = build_questions(kb)
    toolbox = build_toolbox(0, search_latency_s=0.1)
    submit = ThreadSubmit(toolbox)
    yield kb, questions, {n: t.description for n, t in toolbox.tools.items()}, submit
    submit.close()


def test_question_set_is_large_varied_and_answers_come_from_the_knowledge_base(setup):
    kb, questions, _, _ = setup
    assert len(questions) >= 50 and len({q.template for q in questions}) == 16
    assert len({q.text for q in questions}) == len(questions)
    assert sum(q.parallel for q in questions) >= 50
    # the first round of the round-robin covers every template: a short run sees all shapes
    assert len({q.template for q in questions[:16]}) == 16
    q = next(q for q in questions if q.template == "sum_population")
    names = [line.split(" of ")[1].rstrip('")') for line in q.plan[:2]]
    assert q.answer == sum(kb.get(n).attributes["population"] for n in names)


def _entities_of(question, kb):
    """The entities the question's searches look up (the names after ' of ')."""
    return [kb.get(line.split(" of ", 1)[1].rstrip('")')) for line in question.plan if line.startswith("search(")]


def test_wide_fan_out_templates_answer_from_the_knowledge_base(setup):
    kb, questions, _, _ = setup
    by_template = {}
    for q in questions:
        by_template.setdefault(q.template, []).append(q)
    for q in by_template["most_employees"]:
        entities = _entities_of(q, kb)
        values = [e.attributes["employees"] for e in entities]
        assert q.lookups == len(entities) == 5 and len(set(values)) == 5  # one right answer
        assert q.answer == max(entities, key=lambda e: e.attributes["employees"]).name
        assert q.answer not in q.distractors and len(q.distractors) == 4
    for q in by_template["oldest_city"]:
        entities = _entities_of(q, kb)
        assert q.lookups == len(entities) == 5 and len({e.attributes["founded"] for e in entities}) == 5
        assert q.answer == min(entities, key=lambda e: e.attributes["founded"]).name
    for q in by_template["mean_height"]:
        entities = _entities_of(q, kb)
        assert q.lookups == len(entities) == 6
        assert q.answer == pytest.approx(sum(e.attributes["height_m"] for e in entities) / 6)
        assert q.plan[-2] == 'calculate("($1 + $2 + $3 + $4 + $5 + $6) / 6")'
    for q in by_template["total_discharge"]:
        entities = _entities_of(q, kb)
        assert q.lookups == len(entities) == 6
        assert q.answer == sum(e.attributes["discharge_m3s"] for e in entities)
    assert sum(q.lookups >= 5 for q in questions) >= 20


def test_every_agent_answers_every_template_correctly_with_the_oracle(setup):
    _, questions, tools, submit = setup
    llm = ScriptedLLM(parallelqa_oracle)
    agents = {m: build_agent(m, llm, tools, submit, AgentSettings()) for m in ("llmcompiler", "react", "parallel_fc")}
    rows = evaluate(questions[:16], agents)  # one question per template
    wrong = [(r["qid"], r["method"], r["answer"], r["gold"], r["errors"]) for r in rows if not r["correct"]]
    assert not wrong
    summary = summarize(rows)
    assert summary["llmcompiler"]["llm_calls_mean"] == 2  # one plan, one join
    assert summary["react"]["llm_calls_mean"] > 3  # one call per action, plus Finish
    for q in questions[:16]:  # function calling: one turn per wave of the plan, plus Finish
        row = next(r for r in rows if r["qid"] == q.qid and r["method"] == "parallel_fc")
        assert row["llm_calls"] == len(dependency_levels(q.plan[:-1])) + 1
        assert row["tool_calls"] == len(q.plan) - 1
    # 2-6 independent 0.1 s searches: overlapped by LLMCompiler, one after another in ReAct.
    assert summary["speedup_median"] > 1
    assert {"speedup_median_vs_parallel_fc", "accuracy_delta_vs_parallel_fc"} <= set(summary)


def test_parallel_function_calling_runs_a_turns_calls_together_and_reports_bad_ones(setup):
    """Every Action line of a turn is submitted before any is awaited; a malformed or unknown one
    becomes its own observation, in order, and the others still run."""

    kb, _, tools, _ = setup
    toolbox, pool, started = build_toolbox(0), ThreadPoolExecutor(4), []
    both_searches_running = Barrier(2, timeout=10)

    def run(tool, args, kwargs):
        if tool == "search":
            both_searches_running.wait()  # opens only when both searches are in flight at once
        return toolbox.call(tool, args, kwargs)

    def submit(tool, args, kwargs):
        started.append(args[0])
        return pool.submit(run, tool, args, kwargs)

    a, b = kb.of_kind("city")[:2]
    llm = ScriptedLLM(
        [
            f'Thought: both at once.\nAction: search("area of {a.name}")\nAction: fly("moon")\n'
            f'Action: search("area of {b.name}")\nAction: calculate("1 +")',
            "Thought: done.\nAction: Finish(ok)",
        ]
    )
    result = ParallelFunctionCalling(llm, tools, submit).run("q")
    pool.shutdown()
    assert result.answer == "ok" and result.llm_calls == 2 and result.tool_calls == 3
    assert started == [f"area of {a.name}", f"area of {b.name}", "1 +"]
    observations = result.trace[0]["observation"].split("\n")
    assert len(observations) == 4 and "unknown tool 'fly'" in observations[1]
    assert (
        f"{a.attributes['area_km2']:,.1f}" in observations[0] and f"{b.attributes['area_km2']:,.1f}" in observations[2]
    )
    assert any("unknown tool" in e for e in result.errors) and any("calculate failed" in e for e in result.errors)
    # the second turn reads one Observation line per action, in the order written
    second = llm.requests[1][-1]["content"]
    assert second.count("Observation:") == 4 and second.index(a.name + " area") < second.index(b.name + " area")


def test_parallel_function_calling_prompt_shows_examples_in_waves():
    messages = parallel_fc_messages("Q?", ["search(q)", "calculate(e)"], "")
    assert prompt_kind(messages) == "parallel_fc"
    combined = messages[-2]["content"]  # the last example: two parallel searches, then the sum
    turns = combined.split("Thought:")[1:]
    assert len(turns) == 3 and turns[0].count("Action: search") == 2
    assert 'calculate("120000 + 80500")' in turns[1] and "Finish(200500)" in turns[2]


def test_replan_path_runs_a_second_plan_that_continues_numbering(setup):
    kb, _, tools, submit = setup
    city = kb.of_kind("city")[0]
    plans = iter(
        [
            '1. search("mayor of Nowhereville")\n2. join()<END_OF_PLAN>',
            f'3. search("population of {city.name}")\n4. calculate("$3 * 2")\n5. join()<END_OF_PLAN>',
        ]
    )
    joins = iter(
        [
            "Thought: the search failed.\nAction: Replan(find the population instead)",
            "Thought: done.\nAction: Finish(twice the population)",
        ]
    )
    llm = ScriptedLLM(lambda m: next(plans) if m[0]["content"].startswith("Given a user query") else next(joins))
    result = LLMCompiler(llm, tools, submit, max_replans=1).run("double the population?")
    assert result.replans == 1 and result.answer == "twice the population" and result.llm_calls == 4
    assert [t["idx"] for t in result.trace[1]["tasks"]] == [3, 4, 5]
    assert result.trace[1]["tasks"][1]["observation"] == str(2 * city.attributes["population"])
    replan_prompt = llm.requests[2][-1]["content"]  # the second planner call sees round one and the reason
    assert "Nowhereville" in replan_prompt and "find the population instead" in replan_prompt


def test_replanning_stops_at_max_replans(setup):
    _, _, tools, submit = setup
    llm = ScriptedLLM(lambda m: "1. join()" if m[0]["content"].startswith("Given") else "Action: Replan(again)")
    result = LLMCompiler(llm, tools, submit, max_replans=2).run("q")
    assert result.replans == 2 and result.answer is None and result.llm_calls == 6
    assert "no replans left" in result.errors[-1]


def test_malformed_plan_lines_are_reported_to_the_joiner_not_crashes(setup):
    _, _, tools, submit = setup
    llm = ScriptedLLM(
        [
            '1. search("population of X"\n2. fly("moon")\nThought: hmm\n3. calculate("1 + 1")\n4. join()',
            "Action: Finish(2)",
        ]
    )
    result = LLMCompiler(llm, tools, submit, max_replans=0).run("q")
    assert result.answer == "2"
    assert any("plan line 1" in e for e in result.errors) and any("unknown tool 'fly'" in e for e in result.errors)
    joiner_prompt = llm.requests[1][-1]["content"]
    assert "Plan errors" in joiner_prompt and "Observation: 2" in joiner_prompt


def test_react_reports_invalid_actions_and_recovers(setup):
    kb, _, tools, submit = setup
    city = kb.of_kind("city")[1]
    llm = ScriptedLLM(
        [
            "Thought: hmm, no action here",
            "Action: teleport(1)",
            f'Thought: look it up.\nAction: search("area of {city.name}")',
            "Action: Finish(done)",
        ]
    )
    result = ReActAgent(llm, tools, submit).run("q")
    assert result.answer == "done" and result.tool_calls == 1 and result.llm_calls == 4
    assert "Invalid" in result.trace[0]["observation"] and "unknown tool" in result.trace[1]["observation"]
    assert f"{city.attributes['area_km2']:,.1f}" in result.trace[2]["observation"]


def test_react_gives_up_after_max_steps(setup):
    _, _, tools, submit = setup
    result = ReActAgent(ScriptedLLM(lambda m: 'Action: calculate("1+1")'), tools, submit, max_steps=3).run("q")
    assert result.answer is None and result.tool_calls == 3 and "max_steps=3" in result.errors[-1]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Thought: ok\nAction: Finish(42)", ("finish", "42")),
        ('Action: Finish("Mock River")', ("finish", "Mock River")),
        ("Action: Replan(need the area)", ("replan", "need the area")),
        ("I think it is 42", None),
    ],
)
def test_parse_final(text, expected):
    assert parse_final(text) == expected


@pytest.mark.parametrize(
    "answer, gold, ok",
    [
        ("1,200,071", 1200071, True),
        ("about 1.1e6 people", 1200071, True),
        ("900000", 1200071, False),
        ("The Jorvel River.", "Jorvel River", True),
        ("jorvel river", "Jorvel River", True),
        ("Jorvel River or Cortor River", "Jorvel River", False),
        (None, 3, False),
        ("no idea", 3, False),
    ],
)
def test_scoring_numeric_within_ten_percent_else_normalized_match(answer, gold, ok):
    assert is_correct(answer, gold, distractors=("Cortor River",)) is ok


def test_observed_value_reads_numbers_and_names():
    assert observed_value("Velmora population: 1,234 people") == "1234"
    assert observed_value("Acme headquarters: Velmora") == "Velmora"
    assert observed_value("42.5") == "42.5"


class _WordTokenizer:
    """A stand-in tokenizer: one token per word, chat template = the contents joined."""

    def apply_chat_template(self, messages, **_):
        return {"input_ids": " ".join(m["content"] for m in messages).split()}

    def encode(self, text, add_special_tokens=False):
        return text.split()


def test_served_latency_model_is_one_function_of_prompt_and_generated_tokens():
    latency = ServedModelLatency(ttft_s=0.3, prefill_s_per_token=1e-4, decode_s_per_token=0.015)
    assert latency.first_token_s(0) == 0.3
    assert latency.first_token_s(1000) == pytest.approx(0.4)


def test_simulated_served_llm_counts_tokenizer_tokens_and_streams_lines():
    zero = ServedModelLatency(0.0, 0.0, 0.0)
    llm = SimulatedServedLLM(lambda m: "1. search(x)\n2. join()", zero, tokenizer=_WordTokenizer())
    messages = [{"role": "system", "content": "a b c"}, {"role": "user", "content": "d e"}]
    assert list(llm.stream_chat(messages)) == ["1. search(x)\n", "2. join()"]
    done = llm.chat(messages, stop=["2."])
    assert done.text == "1. search(x)\n" and done.prompt_tokens == 5 and done.completion_tokens == 2
    assert llm.usage.calls == 2 and llm.usage.prompt_tokens == 10 and llm.usage.completion_tokens == 6
