"""The five LLM agents of the co-scientist (the sixth, Proximity, needs no LLM: see proximity.py).

Every agent call is a `Work` item: a self-contained, JSON-serialisable description (kind, task id,
payload with every text the prompt needs). `AgentSuite.run(work)` turns it into an `AgentResult` on
whatever worker runs it (a thread, a Prefect task, a Dask worker) without touching the state, so
the supervisor alone writes the database. Prompts live in prompts/*.md as string.Template files.

Model output is parsed leniently and never trusted: an unparseable verdict is reported as
`malformed` (the tournament then leaves the ratings alone) instead of raising.
"""

from __future__ import annotations

import re
import string
import threading
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from components.checks import at_least
from components.llm.base import LLM
from components.llm.config import LLMConfig
from components.llm.factory import build_llm

PROMPT_DIR = Path(__file__).resolve().parent / "prompts"
KINDS = ("generate", "reflect", "rank", "evolve", "meta_review")
# Generation's angles of attack (the paper's Generation explores literature, debates, assumptions
# and research expansion): varying the angle keeps a deterministic model from repeating itself.
GENERATION_APPROACHES = (
    "a molecular or cellular mechanism nobody has tested yet",
    "an intervention whose effect could be measured in an experiment",
    "an assumption the field takes for granted that might be wrong",
    "an analogy with a neighbouring field",
    "a measurable biomarker or readout that would discriminate between explanations",
    "a simple model system in which the effect could be isolated",
)
EVOLUTION_STRATEGIES = {
    "refine": "keep the core idea of the best parent and fix the weaknesses its review names.",
    "combine": "merge the strongest elements of the parents into one coherent hypothesis.",
    "simplify": "state the best parent's idea more simply, so that it is easier to test.",
    "out_of_box": "take the parents as inspiration for a clearly different, unconventional direction.",
}


@cache
def _template(name: str) -> string.Template:
    path = PROMPT_DIR / f"{name}.md"
    if not path.exists():
        raise FileNotFoundError(f"prompt file {path} is missing")
    return string.Template(path.read_text())


def render(name: str, **fields: Any) -> str:
    """Fill prompts/<name>.md; a missing field raises KeyError naming it."""
    return _template(name).substitute({k: ("" if v is None else str(v)) for k, v in fields.items()})


@dataclass
class AgentSettings:
    """What every agent call asks of the LLM."""

    max_tokens: int = 160  # one hypothesis paragraph or one verdict; SmolLM2 runs ~14 tok/s on 2 cores
    temperature: float = 0.7  # some diversity between generations; verdicts are parsed, not sampled twice

    def __post_init__(self) -> None:
        at_least("agents.max_tokens", self.max_tokens, 1)
        at_least("agents.temperature", self.temperature, 0)


@dataclass
class AgentSpec:
    """Everything a worker needs to play the agents: the goal and the LLM's config (picklable)."""

    goal: str
    constraints: str = ""
    prior_ideas: list[str] = field(default_factory=list)
    agents: AgentSettings = field(default_factory=AgentSettings)
    llm: LLMConfig = field(default_factory=LLMConfig)
    base_dir: str | None = None  # where a relative llm.cache_dir lands


@dataclass
class Work:
    kind: str  # one of KINDS
    task_id: str  # unique and stable across resumes: results are committed under it once
    payload: dict[str, Any]
    estimated_calls: int = 1  # LLM calls this work makes (debates make several)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown work kind {self.kind!r}; kinds: {KINDS}")


@dataclass
class AgentResult:
    task_id: str
    kind: str
    output: dict[str, Any]
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    malformed: bool = False  # the model's answer could not be parsed into what the agent needed
    transcript: list[str] = field(default_factory=list)

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


# ----------------------------------------------------------------------------- parsing
_HYP = re.compile(r"HYPOTHESIS\s*[:\-]\s*(.+)", re.I | re.S)
_SCORE = {
    name: re.compile(rf"{name}\s*[:=]\s*\**\s*([1-5])", re.I) for name in ("correctness", "novelty", "testability")
}
_VERDICT = re.compile(r"VERDICT\s*[:=]\s*\**\s*(accept|reject)", re.I)
_CRITIQUE = re.compile(r"CRITIQUE\s*[:=]\s*(.+)", re.I | re.S)
_BETTER = re.compile(r"BETTER\s*[:=]\s*\**\s*(?:hypothesis\s*)?#?\s*([12])\b", re.I)
_BETTER_PROSE = re.compile(r"hypothesis\s*#?\s*([12])\s+is\s+(?:the\s+)?better", re.I)
_REASON = re.compile(r"REASON\s*[:=]\s*(.+)", re.I)
_FEEDBACK = re.compile(r"FEEDBACK\s*[:=]\s*(.+)", re.I | re.S)
MIN_HYPOTHESIS_CHARS = 20  # shorter answers are not a hypothesis (empty, "OK", a lone number)
MAX_HYPOTHESIS_CHARS = 2000  # a runaway answer is cut, not stored whole


def parse_hypothesis(text: str) -> str | None:
    match = _HYP.search(text)
    body = (match.group(1) if match else text).strip()
    # A model that keeps going after its paragraph starts another field: keep the first paragraph.
    body = re.split(r"\n\s*\n|\n(?=[A-Z_]{4,}\s*:)", body)[0].strip()
    if len(body) < MIN_HYPOTHESIS_CHARS:
        return None
    return body[:MAX_HYPOTHESIS_CHARS]


def parse_review(text: str) -> tuple[dict[str, Any], bool]:
    """Scores, verdict and critique; `malformed` when no field parsed (the hypothesis is kept)."""
    scores = {name: int(m.group(1)) for name, rx in _SCORE.items() if (m := rx.search(text))}
    verdict_match = _VERDICT.search(text)
    critique_match = _CRITIQUE.search(text)
    malformed = not scores and verdict_match is None
    critique = (critique_match.group(1) if critique_match else text).strip()[:600]
    # Fail open: an unreadable review does not reject a hypothesis the tournament can still judge.
    verdict = verdict_match.group(1).lower() if verdict_match else "accept"
    return {"scores": scores, "verdict": verdict, "critique": critique}, malformed


def parse_verdict(text: str) -> int | None:
    """1 or 2 for the better hypothesis, or None when the answer names neither or both."""
    found = {m.group(1) for m in _BETTER.finditer(text)}
    if not found:
        found = {m.group(1) for m in _BETTER_PROSE.finditer(text)}
    return int(found.pop()) if len(found) == 1 else None


def _reason(text: str) -> str:
    m = _REASON.search(text)
    return (m.group(1) if m else text).strip()[:400]


# ----------------------------------------------------------------------------- agents
class AgentSuite:
    """Generation, Reflection, Ranking, Evolution and Meta-review, all through one `LLM`."""

    def __init__(
        self,
        llm: LLM,
        goal: str,
        constraints: str = "",
        prior_ideas: list[str] | None = None,
        max_tokens: int = 256,
        temperature: float = 0.7,
    ):
        if not goal or not goal.strip():
            raise ValueError("the research goal is empty")
        self.llm = llm
        self.goal = goal.strip()
        self.constraints = constraints or "none"
        self.prior_ideas = "; ".join(prior_ideas or []) or "none"
        self.max_tokens = max_tokens
        self.temperature = temperature

    def run(self, work: Work) -> AgentResult:
        handler = getattr(self, f"_{work.kind}")
        result = AgentResult(work.task_id, work.kind, {})
        handler(work.payload, result)
        return result

    def _ask(self, prompt: str, result: AgentResult, max_tokens: int | None = None) -> str:
        completion = self.llm.chat(
            [{"role": "user", "content": prompt}],
            max_tokens=max_tokens or self.max_tokens,
            temperature=self.temperature,
        )
        result.calls += 1
        result.prompt_tokens += completion.prompt_tokens
        result.completion_tokens += completion.completion_tokens
        result.transcript.append(completion.text)
        return completion.text

    def _generate(self, p: dict, result: AgentResult) -> None:
        text = self._ask(
            render(
                "generation",
                goal=self.goal,
                constraints=self.constraints,
                approach=p.get("approach") or GENERATION_APPROACHES[0],
                prior_ideas=self.prior_ideas,
                existing=p.get("existing") or "none",
                feedback=p.get("feedback") or "none",
            ),
            result,
        )
        hypothesis = parse_hypothesis(text)
        result.output = {"hypothesis": hypothesis}
        result.malformed = hypothesis is None

    def _evolve(self, p: dict, result: AgentResult) -> None:
        strategy = p["strategy"]
        parents = "\n".join(f"- {t}" for t in p["parent_texts"])
        reviews = "\n".join(f"- {r}" for r in p.get("parent_reviews", [])) or "none"
        text = self._ask(
            render(
                "evolution",
                goal=self.goal,
                constraints=self.constraints,
                strategy=strategy,
                strategy_hint=EVOLUTION_STRATEGIES[strategy],
                parents=parents,
                reviews=reviews,
                feedback=p.get("feedback") or "none",
            ),
            result,
        )
        hypothesis = parse_hypothesis(text)
        result.output = {"hypothesis": hypothesis, "parents": p["parents"], "strategy": strategy}
        result.malformed = hypothesis is None

    def _reflect(self, p: dict, result: AgentResult) -> None:
        text = self._ask(
            render("reflection", goal=self.goal, hypothesis=p["text"], feedback=p.get("feedback") or "none"), result
        )
        review, malformed = parse_review(text)
        result.output = {"hypothesis_id": p["hypothesis_id"], **review}
        result.malformed = malformed

    def _rank(self, p: dict, result: AgentResult) -> None:
        fields = dict(goal=self.goal, hypothesis_1=p["text_a"], hypothesis_2=p["text_b"])
        if p.get("debate"):
            turns = int(p["turns"])
            transcript: list[str] = []
            for turn in range(1, turns + 1):
                side = 1 if turn % 2 else 2
                argument = self._ask(
                    render(
                        "ranking_debate_turn",
                        turn=turn,
                        turns=turns,
                        side=side,
                        transcript="\n".join(transcript) or "(none yet)",
                        **fields,
                    ),
                    result,
                )
                transcript.append(f"Advocate of {side}: {argument.strip()[:800]}")
            text = self._ask(
                render("ranking_debate_verdict", transcript="\n".join(transcript), **fields),
                result,
                max_tokens=min(self.max_tokens, 128),
            )
        else:
            text = self._ask(
                render(
                    "ranking_single",
                    review_1=p.get("review_a") or "none",
                    review_2=p.get("review_b") or "none",
                    **fields,
                ),
                result,
                max_tokens=min(self.max_tokens, 128),
            )
        better = parse_verdict(text)
        winner = None if better is None else (p["a"] if better == 1 else p["b"])
        result.output = {
            "a": p["a"],
            "b": p["b"],
            "debate": bool(p.get("debate")),
            "winner": winner,
            "reason": _reason(text),
        }
        result.malformed = winner is None

    def _meta_review(self, p: dict, result: AgentResult) -> None:
        text = self._ask(
            render(
                "meta_review",
                goal=self.goal,
                reviews="\n".join(f"- {r}" for r in p["reviews"]) or "none",
                reasons="\n".join(f"- {r}" for r in p["reasons"]) or "none",
            ),
            result,
        )
        m = _FEEDBACK.search(text)
        feedback = (m.group(1) if m else text).strip()[:1200]
        result.output = {"feedback": feedback or None}
        result.malformed = not feedback


_suites: dict[str, AgentSuite] = {}
_suites_lock = threading.Lock()


def agent_suite(spec: AgentSpec) -> AgentSuite:
    """The AgentSuite for `spec` in this process, built once (the embedded model loads once; a Dask
    worker builds its own from the picklable spec instead of receiving a pickled model)."""
    key = repr(asdict(spec))
    with _suites_lock:
        if key not in _suites:
            llm = build_llm(spec.llm, base_dir=spec.base_dir)
            settings = spec.agents
            _suites[key] = AgentSuite(
                llm, spec.goal, spec.constraints, spec.prior_ideas, settings.max_tokens, settings.temperature
            )
        return _suites[key]
