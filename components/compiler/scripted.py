"""A scripted stand-in for the LLM on ParallelQA questions: writes each question's reference plan,
ReAct's steps with the values it has observed, and a joiner answer read off the last observation.

It isolates the executor: with it, both agents make the same (correct) decisions, so differences
in latency come from planning and scheduling alone, and accuracy checks the plumbing ($N
substitution, dependencies, observation passing), never a model. Use it through
`llm=scripted llm.script=components.compiler.scripted.parallelqa_oracle`. It is never presented as
model output.
"""
from __future__ import annotations

import re

from components.compiler.parallelqa import REGISTRY, Question
from components.compiler.prompts import JOINER_SYSTEM, PLANNER_SYSTEM, REACT_SYSTEM

_PLANNER, _JOINER, _REACT = (s.split("\n")[0][:40] for s in (PLANNER_SYSTEM, JOINER_SYSTEM, REACT_SYSTEM))
_OBS = re.compile(r"^Observation:\s*(.*)$", re.MULTILINE)
_IDS = re.compile(r"^(\d+)\.\s", re.MULTILINE)


def observed_value(observation: str) -> str:
    """What a step returned, as a person reading the observation would copy it into the next call:
    the number after 'Name attribute:' or the text after the colon, else the observation itself."""
    head, sep, tail = observation.partition(":")
    value = tail.strip() if sep and not observation.startswith("Error") else observation.strip()
    number = re.match(r"-?\d[\d,]*(?:\.\d+)?", value)
    return number.group(0).replace(",", "") if number else value


def parallelqa_oracle(messages: list[dict[str, str]]) -> str:
    system, user = messages[0]["content"], messages[-1]["content"]
    question_text = user.split("\n", 1)[0].removeprefix("Question:").strip()
    question = REGISTRY.get(question_text)
    if system.startswith(_PLANNER):
        return _plan(question, user)
    if system.startswith(_JOINER):
        return _join(user)
    if system.startswith(_REACT):
        return _react_step(question, user)
    raise ValueError("parallelqa_oracle: not a planner, joiner or ReAct prompt")


def _plan(question: Question | None, user: str) -> str:
    if question is None:
        return "Thought: I do not know this question.\n1. join()<END_OF_PLAN>"
    # After a replan, continue the numbering of the earlier rounds (shown in the context).
    offset = max((int(i) for i in _IDS.findall(user.split("\n", 1)[-1])), default=0)
    shift = lambda m: f"${int(m.group(1)) + offset}"  # noqa: E731
    lines = [f"{offset + k}. " + re.sub(r"[$](\d+)", shift, step) for k, step in enumerate(question.plan, 1)]
    return "Thought: look up the independent facts in parallel, then combine them.\n" + "\n".join(lines) + "<END_OF_PLAN>"


def _join(user: str) -> str:
    observations = _OBS.findall(user)
    if not observations:
        return "Thought: nothing was observed.\nAction: Replan(no observations)"
    last = observations[-1]
    if last.startswith("Error") or last.startswith("skipped"):
        return f"Thought: the last step failed.\nAction: Replan({last})"
    return f"Thought: the last observation answers the question.\nAction: Finish({last})"


def _react_step(question: Question | None, user: str) -> str:
    if question is None:
        return "Thought: I do not know this question.\nAction: Finish(unknown)"
    values = [observed_value(o) for o in _OBS.findall(user)]
    step = len(values)
    calls = question.plan[:-1]  # without join()
    if step >= len(calls):
        return f"Thought: I have the answer.\nAction: Finish({values[-1] if values else 'unknown'})"
    call = re.sub(r"[$](\d+)", lambda m: values[int(m.group(1)) - 1], calls[step])
    return f"Thought: I need step {step + 1}.\nAction: {call}"
