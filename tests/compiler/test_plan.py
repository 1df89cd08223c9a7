"""The plan grammar: chains, fan-out/fan-in, malformed lines, streaming emission order."""

import pytest

from components.compiler.plan import (
    PlanParseError,
    StreamingPlanParser,
    dependency_levels,
    iter_tasks,
    parse_call,
    parse_plan,
    quote_bare_refs,
    references,
    substitute,
)

TOOLS = ["search", "calculate", "python"]


def test_chain_plan_dependencies():
    tasks = parse_plan(
        '1. search("headquarters of Acme")\n2. search("population of $1")\n3. join()<END_OF_PLAN>', TOOLS
    )
    assert [(t.idx, t.tool, t.deps) for t in tasks] == [(1, "search", ()), (2, "search", (1,)), (3, "join", (1, 2))]
    assert tasks[1].args == ("population of $1",)


def test_fan_out_fan_in_with_thoughts_and_brace_refs():
    plan = (
        "Thought: three lookups in parallel.\n"
        '1. search("a")\n2. search("b")\n3. search(query="c")\n'
        'Thought: then combine.\n4. calculate("(${1} + $2 + $3) / 3")\n5. join()<END_OF_PLAN>'
    )
    tasks = parse_plan(plan, TOOLS)
    assert [t.deps for t in tasks] == [(), (), (), (1, 2, 3), (1, 2, 3, 4)]
    assert tasks[0].thought == "three lookups in parallel." and tasks[3].thought == "then combine."
    assert tasks[2].kwargs == {"query": "c"}


def test_bare_refs_outside_quotes_and_dict_braces_inside():
    assert quote_bare_refs('$1, "$2", [$3]') == '"$1", "$2", ["$3"]'
    name, args, _ = parse_call("calculate($1, [$2, 4])")
    assert (name, args) == ("calculate", ("$1", ["$2", 4]))
    code = "d = {'x': $1, 'y': $2}; print(d)"
    assert references(code) == {1, 2}
    assert substitute(code, {1: 5, 2: 7}) == "d = {'x': 5, 'y': 7}; print(d)"  # the dict's own '}' survives


def test_substitute_keeps_whole_values_and_renders_embedded_ones():
    assert substitute("$1", {1: 42.5}) == 42.5
    assert substitute(["$1 + ${2}", {"k": "$2"}], {1: 1, 2: "two"}) == ["1 + two", {"k": "two"}]
    assert substitute("$9 stays", {1: 1}) == "$9 stays"


@pytest.mark.parametrize(
    "line, message",
    [
        ('1. search("unterminated)', "not Python literals"),
        ("1. search(open('/etc/passwd'))", "not Python literals"),  # a call is not a literal: never evaluated
        ('1. browse("x")', "unknown tool 'browse'"),
        ('1. search("$2")', "depends on $2"),
        ('1. search "no parens"', "expected name(arguments)"),
    ],
)
def test_malformed_line_raises_clear_error_naming_the_line(line, message):
    with pytest.raises(PlanParseError) as info:
        parse_plan(line + "\n2. join()", TOOLS)
    assert message in str(info.value) and "plan line 1" in str(info.value)


def test_repeated_and_out_of_order_numbers_are_errors():
    with pytest.raises(PlanParseError, match="used twice"):
        parse_plan('1. search("a")\n1. search("b")', TOOLS)
    with pytest.raises(PlanParseError, match="out of order"):
        parse_plan('2. search("a")\n1. search("b")', TOOLS)


def test_lenient_parser_skips_bad_lines_and_their_dependents_but_keeps_going():
    parser = StreamingPlanParser(TOOLS, strict=False)
    text = (
        '1. search("a")\n2. search(oops\n3. calculate("$2 + 1")\nsome chatter\n'
        '4. calculate("$1 * 2")\n5. join()\n6. search("after join is ignored")'
    )
    tasks = parser.feed(text) + parser.finish()
    assert [t.idx for t in tasks] == [1, 4, 5]
    assert len(parser.errors) == 2 and "plan line 2" in str(parser.errors[0]) and "$2" in str(parser.errors[1])
    assert parser.ignored == ["some chatter"] and parser.done


def test_streaming_emits_each_task_exactly_when_its_line_completes():
    plan = 'Thought: go.\n1. search("x")\n2. search("y")\n3. calculate("$1+$2")\n4. join()<END_OF_PLAN> trailing'
    parser = StreamingPlanParser(TOOLS)
    emitted_at: dict[int, int] = {}
    for pos, ch in enumerate(plan):  # one character at a time, like a token stream
        for task in parser.feed(ch):
            emitted_at[task.idx] = pos
    newlines = [i for i, ch in enumerate(plan) if ch == "\n"]
    assert [emitted_at[i] for i in (1, 2, 3)] == newlines[1:4]  # at the newline ending its line, not later
    assert emitted_at[4] == plan.index("<END_OF_PLAN>") + len("<END_OF_PLAN>") - 1
    assert parser.done and parser.feed("5. search('z')\n") == []


def test_iter_tasks_stops_reading_the_stream_at_join():
    consumed = []

    def stream():
        for piece in ['1. search("a")\n', "2. join()\n", "3. never read\n"]:
            consumed.append(piece)
            yield piece

    tasks = list(iter_tasks(stream(), StreamingPlanParser(TOOLS)))
    assert [t.idx for t in tasks] == [1, 2] and len(consumed) == 2


def test_unterminated_last_line_is_parsed_at_stream_end_and_replan_numbering_continues():
    parser = StreamingPlanParser(TOOLS, known=[1, 2, 3])
    assert parser.feed('4. calculate("$3 * 2")') == []
    (task,) = parser.finish()
    assert task.idx == 4 and task.deps == (3,)


def test_dependency_levels_group_steps_into_waves():
    assert dependency_levels(['search("a")', 'search("b")', 'calculate("$1 + $2")']) == [[0, 1], [2]]
    assert dependency_levels(['search("a")', 'search("x of $1")', 'search("c")', 'calculate("${2} * $3")']) == [
        [0, 2],
        [1],
        [3],
    ]
    assert dependency_levels([]) == []
    with pytest.raises(ValueError, match="step 2"):
        dependency_levels(['search("a")', 'calculate("$2 + 1")'])
