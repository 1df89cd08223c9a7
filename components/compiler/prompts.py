"""Prompts: the planner (tool descriptions + few-shot plans), the joiner, and the ReAct baseline.

Wording follows the reference implementation (SqueezeAILab/LLMCompiler: planner.py, joiner prompt,
react prompt) shortened for a small model. The few-shot examples use entities that are NOT in the
knowledge base (so copying an example never answers a question) and are the same for LLMCompiler
and ReAct, written in each one's format, so neither method sees more help than the other.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from components.compiler.plan import END_OF_PLAN, dependency_levels, substitute

Messages = list[dict[str, str]]


@dataclass(frozen=True)
class Example:
    question: str
    plan: list[str]  # plan lines, last one join()
    observations: list[str]  # what each non-join line returned (the text the model reads)
    values: list[str]  # what each returned as a value (what $N stands for)
    answer: str
    thought: str = ""


# Order matters for a small model, which copies the nearest example: the chain (rarest shape)
# first, the most common shape (parallel lookups + arithmetic) last.
EXAMPLES = (
    Example(
        question="What is the population of the city where Acme Tools is headquartered?",
        plan=['search("headquarters of Acme Tools")', 'search("population of $1")', "join()"],
        observations=["Acme Tools headquarters: Examplia", "Examplia population: 120,000 people"],
        values=["Examplia", "120000"],
        answer="120000",
        thought="The city must be found first; its population depends on it.",
    ),
    Example(
        question="Which river is the longest: Demo River, Mock River or Toy River?",
        plan=[
            'search("length of Demo River")',
            'search("length of Mock River")',
            'search("length of Toy River")',
            "python(\"d = {'Demo River': $1, 'Mock River': $2, 'Toy River': $3}; print(max(d, key=d.get))\")",
            "join()",
        ],
        observations=[
            "Demo River length: 410 km",
            "Mock River length: 1,250 km",
            "Toy River length: 95 km",
            "Mock River",
        ],
        values=["410", "1250", "95", "Mock River"],
        answer="Mock River",
    ),
    Example(
        question="What is the combined population of Examplia and Samplestad?",
        plan=[
            'search("population of Examplia")',
            'search("population of Samplestad")',
            'calculate("$1 + $2")',
            "join()",
        ],
        observations=["Examplia population: 120,000 people", "Samplestad population: 80,500 people", "200500"],
        values=["120000", "80500", "200500"],
        answer="200500",
        thought="The two populations can be looked up in parallel, then added.",
    ),
)

PLANNER_SYSTEM = """Given a user query, create a plan to solve it with the utmost parallelizability. \
Each plan step is one action from the following {n} types:
{tools}
{join_n}. join(): collects the results of the previous actions; always the last action.

Guidelines:
- Each action has a unique ID, strictly increasing: 1., 2., 3., ...
- Inputs are constants or outputs of earlier actions; write $ID for the output of action ID.
- Independent actions must not depend on each other, so that they run in parallel.
- Call join() last and then write {end}.
- Only use the actions above. Write one action per line and nothing else."""

JOINER_SYSTEM = """Solve a question answering task. You are given the results of a plan that was \
executed to answer the question.
- Thought: reason about the question based on the observations in one or two sentences.
- If the observations answer the question, answer concisely with Action: Finish(<answer>).
- If they do not, Action: Replan(<what is missing>) to plan again.
Respond in the format:
Thought: <reasoning>
Action: Finish(<answer>) or Replan(<reason>)"""

REACT_SYSTEM = """Answer the question by interleaving Thought, Action and Observation steps. \
An Action is one of:
{tools}
{finish_n}. Finish(answer): returns the final answer and ends the task.
Write one Thought and one Action, then stop: the Observation will be given to you. Use the \
actual values from earlier observations in later actions."""


# OpenAI-style parallel function calling, the paper's other baseline: each turn the model emits every
# call it can make now (they run in parallel), reads all their results, and is called again.
PARALLEL_FC_SYSTEM = """Answer the question by calling functions. In each turn write one Thought, then \
every Action that can run now, one per line: the actions of a turn run in parallel. An Action is one of:
{tools}
{finish_n}. Finish(answer): returns the final answer and ends the task.
Then stop: one Observation per action, in order, will be given to you. Use the actual values from \
earlier observations in later actions."""


def prompt_kind(messages: Messages) -> str | None:
    """'planner', 'joiner', 'react' or 'parallel_fc': which agent call a chat is, read off its system prompt."""
    system = messages[0]["content"] if messages and messages[0].get("role") == "system" else ""
    for kind, template in (
        ("planner", PLANNER_SYSTEM),
        ("joiner", JOINER_SYSTEM),
        ("react", REACT_SYSTEM),
        ("parallel_fc", PARALLEL_FC_SYSTEM),
    ):
        if system.startswith(template.split("\n")[0][:40]):
            return kind
    return None


def _plan_text(example: Example) -> str:
    lines = [f"Thought: {example.thought}"] if example.thought else []
    lines += [f"{i}. {step}" for i, step in enumerate(example.plan, 1)]
    return "\n".join(lines) + END_OF_PLAN


def _numbered(tool_descriptions: list[str]) -> str:
    return "\n".join(f"{i}. {d}" for i, d in enumerate(tool_descriptions, 1))


def _few_shot(system: str, examples: tuple[Example, ...], render, user: str) -> Messages:
    """System instructions, one user/assistant pair per example (`render` writes the answer), the request."""
    messages: Messages = [{"role": "system", "content": system}]
    for ex in examples:
        messages += [
            {"role": "user", "content": f"Question: {ex.question}"},
            {"role": "assistant", "content": render(ex)},
        ]
    messages.append({"role": "user", "content": user})
    return messages


def planner_messages(
    question: str, tool_descriptions: list[str], context: str = "", examples: tuple[Example, ...] = EXAMPLES
) -> Messages:
    """The planner's chat: system instructions, one user/assistant pair per example, the question.
    `context`: the previous rounds' plans, results and the joiner's reason, when replanning."""
    system = PLANNER_SYSTEM.format(
        n=len(tool_descriptions) + 1,
        tools=_numbered(tool_descriptions),
        join_n=len(tool_descriptions) + 1,
        end=END_OF_PLAN,
    )
    user = f"Question: {question}"
    if context:
        user += (
            f"\n\nPrevious attempts (their actions keep their IDs; number new actions after them "
            f"and you may use their $ID outputs):\n{context}\nNow write a new plan."
        )
    return _few_shot(system, examples, _plan_text, user)


def scratchpad(steps: list[tuple[str, str]]) -> str:
    """Executed actions and their observations, as the joiner and the replanner read them."""
    return "\n".join(f"{call}\nObservation: {obs}" for call, obs in steps)


def joiner_messages(question: str, steps: list[tuple[str, str]], examples: tuple[Example, ...] = EXAMPLES) -> Messages:
    messages: Messages = [{"role": "system", "content": JOINER_SYSTEM}]
    for ex in examples[-2:]:  # the two most common shapes
        ex_steps = [(f"{i}. {call}", obs) for i, (call, obs) in enumerate(zip(ex.plan, ex.observations), 1)]
        messages += [
            {"role": "user", "content": f"Question: {ex.question}\n{scratchpad(ex_steps)}"},
            {
                "role": "assistant",
                "content": f"Thought: The observations answer the question.\nAction: Finish({ex.answer})",
            },
        ]
    messages.append({"role": "user", "content": f"Question: {question}\n{scratchpad(steps)}"})
    return messages


def react_messages(
    question: str, tool_descriptions: list[str], trajectory: str, examples: tuple[Example, ...] = EXAMPLES
) -> Messages:
    return _step_messages(REACT_SYSTEM, _react_text, question, tool_descriptions, trajectory, examples)


def parallel_fc_messages(
    question: str, tool_descriptions: list[str], trajectory: str, examples: tuple[Example, ...] = EXAMPLES
) -> Messages:
    return _step_messages(PARALLEL_FC_SYSTEM, _parallel_fc_text, question, tool_descriptions, trajectory, examples)


def _step_messages(system_template, example_text, question, tool_descriptions, trajectory, examples) -> Messages:
    """The chat of an agent that acts step by step (ReAct, parallel function calling): its system
    prompt over the tools, the worked examples, the question with the trajectory so far."""
    system = system_template.format(tools=_numbered(tool_descriptions), finish_n=len(tool_descriptions) + 1)
    user = f"Question: {question}" + (f"\n{trajectory}" if trajectory else "")
    return _few_shot(system, examples, example_text, user)


def _parallel_fc_text(example: Example) -> str:
    """An example solved turn by turn: each turn calls every step whose inputs are known."""
    calls = [_concrete(example, call) for call in example.plan[:-1]]  # without join()
    out = []
    for wave in dependency_levels(example.plan[:-1]):
        thought = "I can now make these calls at once." if len(wave) > 1 else _react_thought(calls[wave[0]])
        out.append(
            f"Thought: {thought}\n"
            + "\n".join(f"Action: {calls[i]}" for i in wave)
            + "\n"
            + "\n".join(f"Observation: {example.observations[i]}" for i in wave)
        )
    out.append(f"Thought: I have the answer.\nAction: Finish({example.answer})")
    return "\n".join(out)


def _concrete(example: Example, call: str) -> str:
    """A plan step with the values its `$N` stand for written in, as a model without `$N` writes it."""
    return substitute(call, dict(enumerate(example.values, 1)))


def _react_text(example: Example) -> str:
    """An example solved step by step: values observed are written into later actions."""
    out = []
    for call, obs in zip(example.plan, example.observations):
        concrete = _concrete(example, call)
        out.append(f"Thought: {_react_thought(concrete)}\nAction: {concrete}\nObservation: {obs}")
    out.append(f"Thought: I have the answer.\nAction: Finish({example.answer})")
    return "\n".join(out)


def _react_thought(call: str) -> str:
    """A thought that says what the step is for (a small model copies 'I need step 1' forever)."""
    search = re.match(r'search\("(.*)"\)', call)
    if search:
        return f"I need the {search.group(1)}."
    if call.startswith("calculate"):
        return "I have all the numbers; now I calculate the result."
    return "I have all the values; now I compare them."
