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
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from components.compiler.parallelqa import REGISTRY, Question
from components.compiler.plan import dependency_levels, substitute
from components.compiler.prompts import prompt_kind
from components.llm.base import Completion, ScriptedLLM, cut_at_stop
from components.lm.smollm2 import load_tokenizer

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
    user = messages[-1]["content"]
    question_text = user.split("\n", 1)[0].removeprefix("Question:").strip()
    question = REGISTRY.get(question_text)
    kind = prompt_kind(messages)
    if kind == "planner":
        return _plan(question, user)
    if kind == "joiner":
        return _join(user)
    if kind == "react":
        return _react_step(question, user)
    if kind == "parallel_fc":
        return _parallel_fc_turn(question, user)
    raise ValueError("parallelqa_oracle: not a planner, joiner, ReAct or parallel function-calling prompt")


def _plan(question: Question | None, user: str) -> str:
    if question is None:
        return "Thought: I do not know this question.\n1. join()<END_OF_PLAN>"
    # After a replan, continue the numbering of the earlier rounds (shown in the context).
    offset = max((int(i) for i in _IDS.findall(user.split("\n", 1)[-1])), default=0)
    shift = lambda m: f"${int(m.group(1)) + offset}"  # noqa: E731
    lines = [f"{offset + k}. " + re.sub(r"[$](\d+)", shift, step) for k, step in enumerate(question.plan, 1)]
    return (
        "Thought: look up the independent facts in parallel, then combine them.\n" + "\n".join(lines) + "<END_OF_PLAN>"
    )


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
    call = substitute(calls[step], dict(enumerate(values, 1)))
    return f"Thought: I need step {step + 1}.\nAction: {call}"


def _parallel_fc_turn(question: Question | None, user: str) -> str:
    """The next wave of the reference plan, every call of it at once, with the values observed so
    far written in; Finish with the last plan step's value once every wave has run."""
    if question is None:
        return "Thought: I do not know this question.\nAction: Finish(unknown)"
    calls = question.plan[:-1]  # without join()
    waves = dependency_levels(calls)
    issued = [i for wave in waves for i in wave]  # observations arrive in this order
    values = {issued[k] + 1: observed_value(o) for k, o in enumerate(_OBS.findall(user))}  # by step number
    pending = next((wave for wave in waves if wave[0] + 1 not in values), None)
    if pending is None:
        return f"Thought: I have the answer.\nAction: Finish({values.get(len(calls), 'unknown')})"
    actions = [substitute(calls[i], values) for i in pending]
    return "Thought: these calls can run now.\n" + "\n".join(f"Action: {a}" for a in actions)


@dataclass(frozen=True)
class ServedModelLatency:
    """How long one call to a served model takes: the same function for every call of every method.

    first token = `ttft_s` + `prefill_s_per_token` x prompt tokens; then `decode_s_per_token` per
    generated token. The defaults describe a hosted GPT-3.5-class API as the paper used it:
    - ttft_s 0.3: the fixed part of time-to-first-token (network round trip, queueing, scheduling);
      public API trackers report ~0.3-0.6 s TTFT for such models on short prompts;
    - prefill_s_per_token 1e-4: ~10k prompt tokens/s, the prefill rate of an 8B model on one
      A100/H100 with vLLM; it charges ReAct for re-reading its growing transcript every step;
    - decode_s_per_token 0.015: ~65 tokens/s single-stream decoding, typical of hosted APIs.
    The benchmark sweeps ttft_s to show how the comparison depends on it.
    """

    ttft_s: float = 0.3
    prefill_s_per_token: float = 1e-4
    decode_s_per_token: float = 0.015

    def first_token_s(self, prompt_tokens: int) -> float:
        return self.ttft_s + self.prefill_s_per_token * prompt_tokens


class SimulatedServedLLM(ScriptedLLM):
    """A scripted LLM (e.g. `parallelqa_oracle`) whose calls take as long as a served model's would
    under `latency`, with tokens counted by a real BPE tokenizer (SmolLM2's 49k vocabulary, applied
    through its chat template as the embedded backend does), so the prompt and completion token
    figures are tokens, not words. Streaming sends the response line by line, each line after its
    decode time, as a model would. For benchmarks of the executor only: never model output."""

    def __init__(self, script, latency: ServedModelLatency, tokenizer=None) -> None:
        super().__init__(script)
        self.latency = latency
        if tokenizer is None:
            tokenizer = load_tokenizer()
        self._tokenizer = tokenizer

    def _prompt_tokens(self, messages) -> int:
        return len(
            self._tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)[
                "input_ids"
            ]
        )

    def _tokens(self, text: str) -> int:
        return len(self._tokenizer.encode(text, add_special_tokens=False))

    def _chat(self, messages, max_tokens: int, temperature: float, stop: Sequence[str] | None) -> Completion:
        start = time.perf_counter()  # counting tokens takes time too: it is part of the budget
        text = cut_at_stop(self._next_text(messages), stop)[0]
        prompt_tokens, completion_tokens = self._prompt_tokens(messages), self._tokens(text)
        _sleep_until(
            start + self.latency.first_token_s(prompt_tokens) + self.latency.decode_s_per_token * completion_tokens
        )
        return Completion(text, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, model="scripted")

    def _stream(self, messages, max_tokens, temperature, stop, stats) -> Iterator[str]:
        start = time.perf_counter()
        text = self._next_text(messages)
        stats.prompt_tokens, stats.model = self._prompt_tokens(messages), "scripted"
        due = start + self.latency.first_token_s(stats.prompt_tokens)
        for line in text.splitlines(keepends=True) or [""]:
            tokens = self._tokens(line)
            due += self.latency.decode_s_per_token * tokens
            _sleep_until(due)
            stats.completion_tokens += tokens
            yield line


def _sleep_until(deadline: float) -> None:
    remaining = deadline - time.perf_counter()
    if remaining > 0:
        time.sleep(remaining)
