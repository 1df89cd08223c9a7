"""ParallelQA-style questions written for this project over the invented knowledge base, and scoring.

Each question needs several independent lookups plus arithmetic (or a comparison done in the
sandboxed Python tool), like the paper's ParallelQA; a few need a chain (find the city, then look
it up) to exercise dependencies. Every question carries its reference plan in the plan grammar
(used only by the scripted oracle that isolates the executor) and its answer computed from the
knowledge base. Scoring follows the paper: numbers within ±10%, else normalized string match.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from components.tools.knowledge_base import KnowledgeBase


@dataclass(frozen=True)
class Question:
    qid: str
    template: str
    text: str
    answer: float | str
    plan: tuple[str, ...]  # reference plan lines (without numbers), last one join()
    lookups: int  # independent searches
    parallel: bool  # True when at least two calls can run at once
    distractors: tuple[str, ...] = ()  # wrong candidates named in the question (text answers)


def _q(qid, template, text, answer, plan, lookups, parallel=True, distractors=()) -> Question:
    return Question(qid, template, text, answer, tuple(plan) + ("join()",), lookups, parallel, tuple(distractors))


def _search(attr_words: str, name: str) -> str:
    return f'search("{attr_words} of {name}")'


def _python_pick(names: list[str], best: str) -> str:
    """The sandboxed-Python step that names the entity with the max/min looked-up value ($1..$n)."""
    mapping = ", ".join(f"'{n}': ${k}" for k, n in enumerate(names, 1))
    return f'python("d = {{{mapping}}}; print({best}(d, key=d.get))")'


def _sum_of_results(n: int) -> str:
    return " + ".join(f"${k}" for k in range(1, n + 1))


def _calculate_mean(n: int) -> str:
    return f'calculate("({_sum_of_results(n)}) / {n}")'


# Every question built in this process, by text: lets the scripted oracle (llm.script) find the
# reference plan of a question it is asked, whatever knowledge-base seed built it.
REGISTRY: dict[str, Question] = {}


def build_questions(kb: KnowledgeBase, per_template: int = 6, seed: int = 0) -> list[Question]:
    """16 templates x `per_template` questions (96 by default), deterministic for a seed, in
    round-robin order over the templates (so the first 16 cover every template once)."""
    built = _build(kb, per_template, seed)
    questions = [built[t * per_template + i] for i in range(per_template) for t in range(len(built) // per_template)]
    REGISTRY.update({q.text: q for q in questions})
    return questions


def _build(kb: KnowledgeBase, per_template: int, seed: int) -> list[Question]:
    """The 16 templates in a fixed order (the draws of one seeded generator depend on it)."""
    make = _Templates(kb, per_template, seed)
    _narrow_templates(make, kb)
    _wide_templates(make, kb)
    make.headquarters_population(kb.of_kind("company"))
    return make.out


def _narrow_templates(make: _Templates, kb: KnowledgeBase) -> None:
    """Two to four independent lookups, then arithmetic or a comparison."""
    cities, mountains = kb.of_kind("city"), kb.of_kind("mountain")
    rivers, companies = kb.of_kind("river"), kb.of_kind("company")
    make.pair(
        "sum_population",
        cities,
        "What is the combined population of {a} and {b}?",
        ("population", "population"),
        "$1 + $2",
        lambda a, b: a.attributes["population"] + b.attributes["population"],
    )
    make.pair(
        "height_difference",
        mountains,
        "How many meters taller is {a} than {b}?",
        ("height", "height"),
        "$1 - $2",
        lambda a, b: a.attributes["height_m"] - b.attributes["height_m"],
        order=lambda m: -m.attributes["height_m"],
    )
    make.pair(
        "area_ratio",
        cities,
        "How many times the area of {b} is the area of {a}?",
        ("area", "area"),
        "$1 / $2",
        lambda a, b: a.attributes["area_km2"] / b.attributes["area_km2"],
    )
    make.aggregate(
        "mean_elevation",
        cities,
        3,
        "elevation_m",
        "elevation",
        "mean",
        "What is the average elevation in meters of {names}?",
    )
    make.aggregate(
        "total_employees", companies, 4, "employees", "employees", "sum", "How many employees do {names} have in total?"
    )
    make.superlative("longest_river", rivers, 3, "length_km", "length", "max", "Which river is the longest")
    make.pair(
        "founding_gap",
        companies,
        "How many years apart were {a} and {b} founded?",
        ("founding year", "founding year"),
        "abs($1 - $2)",
        lambda a, b: abs(a.attributes["founded"] - b.attributes["founded"]),
    )
    make.pair(
        "population_density",
        cities,
        "What is the population density of {a} in people per square kilometer?",
        ("population", "area"),
        "$1 / $2",
        lambda a, b: a.attributes["population"] / a.attributes["area_km2"],
        same_entity=True,
    )
    make.aggregate(
        "total_revenue",
        companies,
        3,
        "revenue_musd",
        "revenue",
        "sum",
        "What is the total revenue in million USD of {names}?",
    )


def _wide_templates(make: _Templates, kb: KnowledgeBase) -> None:
    """Wider fan-out (5-8 independent lookups): where planning once instead of once per call matters most."""
    cities, mountains = kb.of_kind("city"), kb.of_kind("mountain")
    rivers, companies = kb.of_kind("river"), kb.of_kind("company")
    make.superlative(
        "most_employees", companies, 5, "employees", "employees", "max", "Which company has the most employees", True
    )
    make.aggregate(
        "mean_height", mountains, 6, "height_m", "height", "mean", "What is the average height in meters of {names}?"
    )
    make.superlative("oldest_city", cities, 5, "founded", "founding year", "min", "Which city was founded first", True)
    make.aggregate(
        "total_discharge",
        rivers,
        6,
        "discharge_m3s",
        "discharge",
        "sum",
        "What is the total discharge in m3/s of {names}?",
    )
    # The paper's widest case: Movie Recommendation's 8 parallel searches (its 3.74x).
    make.aggregate(
        "population_of_eight",
        cities,
        8,
        "population",
        "population",
        "sum",
        "What is the combined population of {names}?",
    )
    make.superlative(
        "highest_revenue", companies, 8, "revenue_musd", "revenue", "max", "Which company has the highest revenue", True
    )


def _listed(names: list[str]) -> str:
    return f"{', '.join(names[:-1])} and {names[-1]}"


class _Templates:
    """Builds `per_template` questions per template from one seeded generator, never drawing the
    same entities twice for a template."""

    def __init__(self, kb: KnowledgeBase, per_template: int, seed: int) -> None:
        self.kb, self.per_template = kb, per_template
        self.rng = random.Random(seed)
        self.drawn: set[tuple] = set()
        self.out: list[Question] = []

    def pick(self, template: str, pool: list, k: int, distinct: str | None = None) -> list:
        """k distinct entities, never the same set twice for the same template; with `distinct`,
        no two share that attribute's value (a max/min question must have one right answer)."""
        for _ in range(1000):
            chosen = self.rng.sample(pool, k)
            key = (template, frozenset(e.name for e in chosen))
            if distinct and len({e.attributes[distinct] for e in chosen}) < k:
                continue
            if key not in self.drawn:
                self.drawn.add(key)
                return chosen
        raise ValueError(f"not enough entities for {self.per_template} distinct questions")

    def pair(self, template, pool, question, words, expression, answer, order=None, same_entity=False) -> None:
        """Two lookups and one calculation: '{a}'/'{b}' in `question`, `answer(a, b)` the gold value.
        `order` sorts the drawn pair; `same_entity`: both lookups are about one entity (a is b)."""
        for i in range(self.per_template):
            chosen = self.pick(template, pool, 1 if same_entity else 2)
            a, b = (chosen[0], chosen[0]) if same_entity else sorted(chosen, key=order) if order else chosen
            plan = [_search(words[0], a.name), _search(words[1], b.name), f'calculate("{expression}")']
            text = question.format(a=a.name, b=b.name)
            self.out.append(_q(f"{template}-{i}", template, text, answer(a, b), plan, 2))

    def aggregate(self, template, pool, k, attribute, words, kind, question) -> None:
        """'<question with {names}>': k lookups of `attribute`, then their sum or mean by the calculator."""
        for i in range(self.per_template):
            chosen = self.pick(template, pool, k)
            names = [e.name for e in chosen]
            total = sum(e.attributes[attribute] for e in chosen)
            step = _calculate_mean(k) if kind == "mean" else f'calculate("{_sum_of_results(k)}")'
            plan = [_search(words, n) for n in names] + [step]
            text = question.format(names=_listed(names))
            self.out.append(_q(f"{template}-{i}", template, text, total / k if kind == "mean" else total, plan, k))

    def superlative(self, template, pool, k, attribute, words, best, question, distinct=False) -> None:
        """'<question>: A, B or C?': k lookups of `attribute`, then a sandboxed max/min picks the name."""
        for i in range(self.per_template):
            chosen = self.pick(template, pool, k, distinct=attribute if distinct else None)
            names = [e.name for e in chosen]
            winner = (max if best == "max" else min)(chosen, key=lambda e: e.attributes[attribute]).name
            plan = [_search(words, n) for n in names] + [_python_pick(names, best)]
            text = f"{question}: {', '.join(names[:-1])} or {names[-1]}?"
            losers = [n for n in names if n != winner]
            self.out.append(_q(f"{template}-{i}", template, text, winner, plan, k, distractors=losers))

    def headquarters_population(self, companies: list) -> None:
        """A chain: find the company's headquarters, then look up that city's population."""
        for i in range(self.per_template):
            (c,) = self.pick("headquarters_population", companies, 1)
            hq = self.kb.get(c.attributes["headquarters"])
            text = f"What is the population of the city where {c.name} is headquartered?"
            plan = [_search("headquarters", c.name), 'search("population of $1")']
            template = "headquarters_population"
            self.out.append(_q(f"{template}-{i}", template, text, hq.attributes["population"], plan, 1, parallel=False))


def reference_plan_text(question: Question, start: int = 1) -> str:
    """The reference plan in the planner's grammar, numbered from `start`."""
    return "\n".join(f"{start + i}. {line}" for i, line in enumerate(question.plan)) + "<END_OF_PLAN>"


# ------------------------------------------------------------------ scoring
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:[eE][-+]?\d+)?")
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def first_number(text: str) -> float | None:
    m = _NUMBER.search(text)
    if not m:
        return None
    try:
        return float(m.group(0).replace(",", ""))
    except ValueError:
        return None


def normalize(text: str) -> str:
    text = _ARTICLES.sub(" ", str(text).lower())
    return " ".join(re.sub(r"[^a-z0-9 ]+", " ", text).split())


def is_correct(
    answer: str | None, gold: float | str, tolerance: float = 0.10, distractors: tuple[str, ...] = ()
) -> bool:
    """Numeric gold: the answer's first number is within ±10%. Text gold: normalized match, or the
    gold name inside the answer ('It is the X River.') with none of the wrong candidates."""
    if answer is None:
        return False
    if isinstance(gold, (int, float)):
        value = first_number(answer)
        if value is None:
            return False
        return abs(value - gold) <= tolerance * abs(gold) if gold else abs(value) <= tolerance
    a, g = normalize(answer), normalize(gold)
    if not g:
        return False
    if a == g:
        return True
    contains = lambda name: re.search(rf"\b{re.escape(normalize(name))}\b", a) is not None  # noqa: E731
    return contains(gold) and not any(contains(d) for d in distractors)
