"""Agent policies for the InterCode environments, after the paper's experiments.

- `GoldReplay`: executes the gold solution and submits (no LLM): the sanity check that the
  environment and reward give 1 for a correct episode.
- `TryAgain(n)`: each turn the model writes one command; it is executed and scored (upstream calls
  submit after every action), and the output and reward go back to the model; the episode ends at
  reward 1 or after n turns; its score is the best reward seen. `SingleTurn` is TryAgain(1).
- `ReAct`: Thought / Action / Observation with actions `execute[code]` and `submit`; the reward is
  only known on submit (no reward feedback), as in the paper's ReAct runs.
- `PlanAndSolve`: the model first writes a numbered plan; each step then becomes one command,
  executed and scored like TryAgain; the score is the best reward over the steps.

A turn whose response holds no code is an invalid action (the model is told how to format code);
so is an action that fails to execute. Every policy returns an `Episode` with the whole trajectory.
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass, field
from typing import Optional

from components.checks import at_least, class_named
from components.intercode.env import SKIP, SUBMIT, InterCodeEnv
from components.llm.base import LLM

SETTINGS = {"sql": "SQLite database", "bash": "Bourne-again shell (bash) in a Linux sandbox"}
OBSERVATION_CHARS = 1000  # what the model sees of one output: upstream truncates to ~1000 chars
SQL_START = re.compile(r"^\s*(select|with|show|desc|describe|pragma|insert|update|delete|create|drop)\b", re.I)


@dataclass
class Turn:
    action: str
    observation: str
    reward: Optional[float]  # None where the policy gets no reward feedback (ReAct before submit)
    valid: bool  # code was found and executed without error
    thought: Optional[str] = None


@dataclass
class Episode:
    task_id: str
    env: str
    hardness: str
    query: str
    policy: str
    turns: list[Turn] = field(default_factory=list)
    reward: float = 0.0
    plan: Optional[list[str]] = None
    llm_calls: int = 0
    completion_tokens: int = 0
    wall_seconds: float = 0.0
    error: Optional[str] = None

    @property
    def success(self) -> bool:
        return self.reward == 1.0

    @property
    def invalid_fraction(self) -> float:
        return sum(not t.valid for t in self.turns) / len(self.turns) if self.turns else 0.0

    def as_dict(self) -> dict:
        return {
            **asdict(self),
            "success": self.success,
            "n_turns": len(self.turns),
            "invalid_fraction": self.invalid_fraction,
        }


def extract_code(text: str, language: str) -> Optional[str]:
    """The command in a model response: a fenced block first (one left open because the response
    was cut at max_tokens counts up to the end); else a bare line that looks like code."""
    fenced = re.findall(r"```[ \t]*([A-Za-z]*)[ \t]*\n?(.*?)```", text, re.S)
    for tag, body in fenced:
        if body.strip() and tag.lower() in ("", language, "sh", "shell", "sqlite", "mysql"):
            return body.strip()
    if fenced and fenced[0][1].strip():
        return fenced[0][1].strip()
    unterminated = re.search(r"```[ \t]*[A-Za-z]*[ \t]*\n(.+)$", text, re.S)
    if unterminated and "```" not in unterminated.group(1) and unterminated.group(1).strip():
        return unterminated.group(1).strip()
    lines = [line.strip() for line in text.strip().splitlines() if line.strip() and not line.strip().startswith("```")]
    first = lines[0] if lines else ""
    if language == "sql" and SQL_START.match(first):
        return re.sub(r"```[A-Za-z]*", "", text).strip().split("\n\n")[0].strip()  # up to a blank line
    if language == "bash" and first and not first.endswith((".", ":", "?")) and len(first.split()) <= 30:
        return first.strip("`")
    return None


def _clip(observation: str) -> str:
    observation = observation if observation.strip() else "No output"
    return observation if len(observation) <= OBSERVATION_CHARS else observation[:OBSERVATION_CHARS] + " ..."


@dataclass
class PolicyConfig:
    """conf/ic_policy/<option>.yaml: which agent policy (`_target_`, a Policy class) and its budget."""

    _target_: str = "components.intercode.policies.TryAgain"  # GoldReplay | TryAgain | ReAct | PlanAndSolve
    max_turns: int = 10  # TryAgain/ReAct: turns; PlanAndSolve: plan steps executed (the paper: 10 turns)
    max_tokens: int = 256  # per model response: one query or command

    def __post_init__(self) -> None:
        policy_class(self)  # an unknown `_target_` fails at composition, naming the key
        at_least("max_turns", self.max_turns, 1)
        at_least("max_tokens", self.max_tokens, 1)


class Policy:
    name = "policy"
    uses_llm = True  # the flow builds an LLM only for the policies that ask for one

    def run(self, env: InterCodeEnv, index: int) -> Episode:
        query, info = env.reset(index)
        task = env.tasks[index]
        episode = Episode(task.id, env.language, task.hardness, query, self.name)
        start = time.monotonic()
        llm: Optional[LLM] = getattr(self, "llm", None)
        calls0 = llm.usage.calls if llm else 0
        tokens0 = llm.usage.completion_tokens if llm else 0
        try:
            self._play(env, episode)
        except Exception as err:  # an LLM timeout or backend failure ends this episode, not the run
            episode.error = f"{type(err).__name__}: {err}"
        finally:
            if llm is not None:
                episode.llm_calls = llm.usage.calls - calls0
                episode.completion_tokens = llm.usage.completion_tokens - tokens0
            episode.wall_seconds = time.monotonic() - start
        return episode

    def _play(self, env: InterCodeEnv, episode: Episode) -> None:
        raise NotImplementedError

    @staticmethod
    def _act(env: InterCodeEnv, code: str, score: bool) -> Turn:
        observation, _, _, _, info = env.step(code)
        reward = env.evaluate()[0] if score else None
        return Turn(code, observation, reward, bool(info.get("action_executed")))

    def _scored_turn(self, env: InterCodeEnv, episode: Episode, response: str) -> Optional[Turn]:
        """Execute and score the command in `response` and keep the episode's best reward; a response
        with no command is recorded as an invalid turn, and None is returned for it."""
        code = extract_code(response, env.language)
        found = code is not None and code.strip() not in (SUBMIT, SKIP)
        turn = self._act(env, code, score=True) if found else Turn(response.strip(), "", 0.0, False)
        episode.turns.append(turn)
        episode.reward = max(episode.reward, turn.reward or 0.0)
        return turn if found else None


class GoldReplay(Policy):
    name = "gold"
    uses_llm = False

    def __init__(self, max_turns: int = 1, max_tokens: int = 256):
        """A replay needs no budget: the arguments are taken so every ic_policy option builds alike."""

    def _play(self, env: InterCodeEnv, episode: Episode) -> None:
        episode.turns.append(self._act(env, env.task.gold, score=False))
        _, episode.reward, _, _, _ = env.step(SUBMIT)


class TryAgain(Policy):
    """Up to `max_turns` commands, each executed and scored, with output and reward fed back."""

    def __init__(self, llm: LLM, max_turns: int = 10, max_tokens: int = 256):
        self.llm, self.max_turns, self.max_tokens = llm, max_turns, max_tokens
        self.name = "single_turn" if max_turns == 1 else f"try_again_{max_turns}"

    def system_prompt(self, language: str) -> str:
        lang = language.upper()
        explore = (
            "Use SELECT name FROM sqlite_master WHERE type='table' (or SHOW TABLES) and "
            "PRAGMA table_info(<table>) (or DESCRIBE <table>) to learn the schema."
            if language == "sql"
            else "The files of the task are under /testbed."
        )
        return (
            f"You are a {lang} code generator helping me answer a question using {lang}. "
            f"Interact with a {SETTINGS[language]} using {lang} commands to come up with the answer.\n"
            f"Answer with one {lang} command only, formatted as:\n```{language}\nYour {lang} code here\n```\n"
            f"{explore}\nAfter each command you get its output and a reward between 0 and 1 that says how "
            f"close your command is to the correct answer. Try to reach a reward of 1."
        )

    def _play(self, env: InterCodeEnv, episode: Episode) -> None:
        lang = env.language
        messages = [
            {"role": "system", "content": self.system_prompt(lang)},
            {"role": "user", "content": f'Query: "{episode.query}"'},
        ]
        for _ in range(self.max_turns):
            response = self.llm.chat(messages, max_tokens=self.max_tokens).text
            turn = self._scored_turn(env, episode, response)
            if turn is None:
                feedback = (
                    f"No {lang.upper()} code was found in your last response. Your response should be a "
                    f"{lang.upper()} command formatted as:\n```{lang}\nYour code here\n```"
                )
            else:
                feedback = (
                    f"Output: {_clip(turn.observation)}\nReward: {turn.reward:.2f}\n"
                    f'Here is the query again: "{episode.query}"\nTry something different to get a reward of 1.'
                )
            if episode.reward == 1.0:
                break
            messages += [{"role": "assistant", "content": response}, {"role": "user", "content": feedback}]
        env.step(SUBMIT)


def SingleTurn(llm: LLM, max_tokens: int = 256) -> TryAgain:  # noqa: N802 - a policy constructor
    return TryAgain(llm, max_turns=1, max_tokens=max_tokens)


REACT_DEMOS = {
    "sql": """Question: What are the names and grades of the high schoolers?
Thought 1: I should find out which tables exist.
Action 1: execute[SELECT name FROM sqlite_master WHERE type = 'table']
Observation 1: [('friend',), ('highschooler',), ('likes',)]
Thought 2: I should look at the columns of highschooler.
Action 2: execute[PRAGMA table_info(highschooler)]
Observation 2: [(0, 'id', 'INTEGER', 0, None, 1), (1, 'name', 'TEXT', 0, None, 0), (2, 'grade', 'INTEGER', 0, None, 0)]
Thought 3: I can select name and grade now.
Action 3: execute[SELECT name, grade FROM highschooler]
Observation 3: [('John', 12), ('Haley', 10)]
Thought 4: This answers the question.
Action 4: submit
""",
    "bash": """Question: Count all the lines of all php files in the /testbed directory recursively
Thought 1: I should find the php files and count their lines together.
Action 1: execute[find /testbed -name "*.php" -type f -exec cat {} + | wc -l]
Observation 1: 2
Thought 2: The output is the total number of lines. I can submit.
Action 2: submit
""",
}


class ReAct(Policy):
    """Interleaved Thought / Action / Observation; `execute[code]` or `submit`; no reward feedback."""

    def __init__(self, llm: LLM, max_turns: int = 10, max_tokens: int = 200):
        self.llm, self.max_turns, self.max_tokens = llm, max_turns, max_tokens
        self.name = "react"

    def _play(self, env: InterCodeEnv, episode: Episode) -> None:
        lang = env.language
        system = (
            f"Interact with a {SETTINGS[lang]} using {lang.upper()} queries to answer a question.\n"
            "Use interleaving Thought, Action, Observation steps. Thought can reason about the current "
            f"situation, and Action can be two types:\n(1) execute[code], which executes {lang.upper()} code\n"
            "(2) submit, which indicates that the previous observation is the answer\n"
            f"Here is an example.\n{REACT_DEMOS[lang]}"
        )
        transcript = f"Question: {episode.query}\n"
        for step in range(1, self.max_turns + 1):
            prompt = transcript + f"Thought {step}:"
            response = self.llm.chat(
                [{"role": "system", "content": system}, {"role": "user", "content": prompt}],
                max_tokens=self.max_tokens,
                stop=[f"\nObservation {step}:", "\nObservation:"],
            ).text
            thought, action = self._parse(response, step)
            if action == SUBMIT:
                break
            if action is None:
                turn = Turn(response.strip(), "", None, False, thought)
                observation = "Invalid action: use execute[<code>] or submit"
            else:
                turn = self._act(env, action, score=False)
                turn.thought = thought
                observation = _clip(turn.observation)
            episode.turns.append(turn)
            transcript += (
                f"Thought {step}: {thought}\nAction {step}: "
                f"{'execute[' + action + ']' if action else response.strip()}\n"
                f"Observation {step}: {observation}\n"
            )
        _, episode.reward, _, _, _ = env.step(SUBMIT)

    @staticmethod
    def _parse(response: str, step: int) -> tuple[str, Optional[str]]:
        thought = re.split(r"\n?Action\s*\d*\s*:", response, maxsplit=1)[0].strip()
        match = re.search(r"Action\s*\d*\s*:\s*(.*)", response, re.S)
        if not match:
            return thought, None
        action = match.group(1).strip()
        if action.lower().startswith(SUBMIT):
            return thought, SUBMIT
        exec_match = re.match(r"execute\s*\[(.*)\]", action, re.S)
        if exec_match and exec_match.group(1).strip():
            return thought, exec_match.group(1).strip()
        return thought, None


class PlanAndSolve(Policy):
    """A numbered plan first, then one command per step (executed and scored), best reward kept."""

    def __init__(self, llm: LLM, max_turns: int = 5, max_tokens: int = 256):
        self.llm, self.max_steps, self.max_tokens = llm, max_turns, max_tokens  # a turn is one plan step
        self.name = "plan_solve"

    def _play(self, env: InterCodeEnv, episode: Episode) -> None:
        lang = env.language
        messages = [
            {
                "role": "system",
                "content": "For the following question, first understand the problem and devise a plan to solve it, "
                f"then carry out the plan step by step. The plan is a short numbered list of {lang.upper()} "
                f"commands to run against a {SETTINGS[lang]}. Write only the numbered plan.",
            },
            {"role": "user", "content": f"Question: {episode.query}"},
        ]
        plan_text = self.llm.chat(messages, max_tokens=self.max_tokens).text
        plan = [s.strip() for s in re.findall(r"^\s*\d+[.)]\s*(.+)$", plan_text, re.M)][: self.max_steps]
        episode.plan = plan or [plan_text.strip() or "answer the question"]
        messages += [
            {"role": "assistant", "content": plan_text},
            {
                "role": "user",
                "content": f"Now execute your plan. For each step answer with one "
                f"{lang.upper()} command only, as ```{lang}\ncode\n```.",
            },
        ]
        observation = None
        for step in episode.plan:
            prompt = (f"Observation: {_clip(observation)}\n" if observation is not None else "") + f"Step: {step}"
            messages.append({"role": "user", "content": prompt})
            response = self.llm.chat(messages, max_tokens=self.max_tokens).text
            messages.append({"role": "assistant", "content": response})
            turn = self._scored_turn(env, episode, response)
            no_code = f"No {lang.upper()} code was found in your last response."
            observation = no_code if turn is None else turn.observation
            if episode.reward == 1.0:
                break
        env.step(SUBMIT)


def policy_class(cfg: PolicyConfig) -> type[Policy]:
    """The Policy class `cfg._target_` names."""
    return class_named("ic_policy._target_", cfg._target_, Policy)


def build_policy(cfg: PolicyConfig, llm: Optional[LLM] = None) -> Policy:
    """The policy `cfg` configures; `llm` is required by every policy but the gold replay."""
    chosen = policy_class(cfg)
    budget = {"max_turns": cfg.max_turns, "max_tokens": cfg.max_tokens}
    if not chosen.uses_llm:
        return chosen(**budget)
    if llm is None:
        raise ValueError(f"policy {cfg._target_} needs an LLM")
    return chosen(llm, **budget)
