"""A local knowledge base of invented entities and the `search` tool over it.

The entities (cities, mountains, rivers, companies) are generated from a seed, with invented names,
so no model can answer from memory: every fact has to come through the tool, as in the paper's
Wikipedia-search benchmarks. Each entity has numeric and text attributes.

`search("population of Velmora")` finds the entity named in the query and the attribute its words
ask for and returns that value (a number stays a number for later `$N` use); a query naming only the
entity returns its whole record as text.
"""

from __future__ import annotations

import difflib
import random
import re
from dataclasses import dataclass, field

from components.tools.base import Tool, ToolResult

_SYLLABLES = [
    "vel",
    "mor",
    "quen",
    "thal",
    "ar",
    "dun",
    "sil",
    "bre",
    "cor",
    "ven",
    "lis",
    "tor",
    "nar",
    "ith",
    "ost",
    "ka",
    "rel",
    "um",
    "bas",
    "fen",
    "gal",
    "hed",
    "jor",
    "pim",
    "zan",
    "wic",
    "yel",
]
_COUNTRIES = ["Arvenia", "Bostrel", "Calidor", "Dunmark", "Esselt"]
_RANGES = ["Grey Spine", "Iron Teeth", "Sunward Peaks"]
_SECTORS = ["Systems", "Foods", "Motors", "Labs", "Energy"]

# attribute -> (unit shown, words that ask for it)
ATTRIBUTES: dict[str, tuple[str, tuple[str, ...]]] = {
    "population": ("people", ("population", "inhabitants", "people", "residents", "populous")),
    "area_km2": ("km2", ("area", "square", "km2", "size")),
    "founded": ("", ("founded", "founding", "established", "year", "old")),
    "elevation_m": ("m", ("elevation", "altitude", "above sea")),
    "height_m": ("m", ("height", "tall", "high")),
    "first_ascent": ("", ("ascent", "climbed", "summited")),
    "length_km": ("km", ("length", "long")),
    "discharge_m3s": ("m3/s", ("discharge", "flow", "water")),
    "employees": ("", ("employees", "staff", "workers", "employ", "work")),
    "revenue_musd": ("million USD", ("revenue", "sales", "turnover")),
    "country": ("", ("country", "nation")),
    "mayor": ("", ("mayor",)),
    "range": ("", ("range",)),
    "headquarters": ("", ("headquarters", "headquartered", "hq", "based")),
    "mouth_city": ("", ("mouth", "flows into", "ends")),
}


@dataclass
class Entity:
    name: str
    kind: str  # city | mountain | river | company
    attributes: dict = field(default_factory=dict)

    def describe(self) -> str:
        return f"{self.name} ({self.kind}): " + "; ".join(_statement(k, v) for k, v in self.attributes.items())


def _label(attr: str) -> str:
    for unit in ("_km2", "_m3s", "_musd", "_km", "_m"):
        if attr.endswith(unit):
            attr = attr[: -len(unit)]
    return attr.replace("_", " ")


def _statement(attr: str, value) -> str:
    unit = ATTRIBUTES[attr][0]
    return f"{_label(attr)} {_fmt(attr, value)}{' ' + unit if unit else ''}"


def _fmt(attr: str, value) -> str:
    if attr in ("founded", "first_ascent"):  # years read without thousands separators
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.1f}"
    return str(value)


class KnowledgeBase:
    def __init__(self, entities: list[Entity]) -> None:
        self.entities = {e.name.lower(): e for e in entities}

    def __len__(self) -> int:
        return len(self.entities)

    def get(self, name: str) -> Entity:
        return self.entities[name.lower()]

    def of_kind(self, kind: str) -> list[Entity]:
        return [e for e in self.entities.values() if e.kind == kind]

    def find_entity(self, query: str) -> Entity | None:
        """The entity whose full name occurs in the query (longest first), else the closest name."""
        q = _norm(query)
        named = [e for key, e in self.entities.items() if re.search(rf"\b{re.escape(_norm(key))}\b", q)]
        if named:
            return max(named, key=lambda e: len(e.name))
        words = q.split()
        candidates = {_norm(k): e for k, e in self.entities.items()}
        for n in (3, 2, 1):  # try word n-grams against names: tolerates small misspellings
            grams = [" ".join(words[i : i + n]) for i in range(len(words) - n + 1)]
            for gram in grams:
                close = difflib.get_close_matches(gram, candidates, n=1, cutoff=0.85)
                if close:
                    return candidates[close[0]]
        return None

    def search(self, query: str) -> ToolResult:
        if not isinstance(query, str) or not query.strip():
            raise ValueError("search needs a query string such as 'population of Velmora'")
        entity = self.find_entity(query)
        if entity is None:
            return ToolResult(error=f"no entity found for {query!r}")
        # Words of the entity's own name ("Mount", "Systems") must not be read as attribute words.
        q = _norm(re.sub(re.escape(entity.name), " ", query, flags=re.IGNORECASE))
        wanted = [a for a in entity.attributes if any(re.search(rf"\b{re.escape(w)}", q) for w in ATTRIBUTES[a][1])]
        if len(wanted) >= 1:
            attr = wanted[0]
            value, unit = entity.attributes[attr], ATTRIBUTES[attr][0]
            return ToolResult(
                value=value, text=f"{entity.name} {_label(attr)}: {_fmt(attr, value)}{' ' + unit if unit else ''}"
            )
        return ToolResult(value=entity.name, text=entity.describe())


def _norm(text: str) -> str:
    return re.sub(r"[^a-z0-9 ]+", " ", text.lower()).strip()


def _name(rng: random.Random, used: set[str], parts: int) -> str:
    while True:
        name = "".join(rng.choice(_SYLLABLES) for _ in range(parts)).capitalize()
        if name.lower() not in used and len(name) >= 5:
            used.add(name.lower())
            return name


def build_knowledge_base(
    seed: int = 0, cities: int = 12, mountains: int = 8, rivers: int = 8, companies: int = 10
) -> KnowledgeBase:
    """Invent a knowledge base; the same seed gives the same entities and numbers."""
    rng = random.Random(seed)
    used: set[str] = set()
    entities: list[Entity] = []
    city_names = [_name(rng, used, rng.choice((2, 3))) for _ in range(cities)]
    for name in city_names:
        entities.append(
            Entity(
                name,
                "city",
                {
                    "population": rng.randrange(20_000, 3_000_000),
                    "area_km2": round(rng.uniform(40, 900), 1),
                    "founded": rng.randrange(1100, 1950),
                    "elevation_m": rng.randrange(5, 2400),
                    "country": rng.choice(_COUNTRIES),
                    "mayor": f"{_name(rng, used, 2)} {_name(rng, used, 2)}",
                },
            )
        )
    for _ in range(mountains):
        entities.append(
            Entity(
                f"Mount {_name(rng, used, 2)}",
                "mountain",
                {
                    "height_m": rng.randrange(1500, 8600),
                    "first_ascent": rng.randrange(1780, 1990),
                    "range": rng.choice(_RANGES),
                    "country": rng.choice(_COUNTRIES),
                },
            )
        )
    for _ in range(rivers):
        entities.append(
            Entity(
                f"{_name(rng, used, 2)} River",
                "river",
                {
                    "length_km": rng.randrange(80, 4200),
                    "discharge_m3s": rng.randrange(30, 9000),
                    "mouth_city": rng.choice(city_names),
                    "country": rng.choice(_COUNTRIES),
                },
            )
        )
    for _ in range(companies):
        entities.append(
            Entity(
                f"{_name(rng, used, 2)} {rng.choice(_SECTORS)}",
                "company",
                {
                    "employees": rng.randrange(50, 250_000),
                    "revenue_musd": round(rng.uniform(5, 90_000), 1),
                    "founded": rng.randrange(1850, 2020),
                    "headquarters": rng.choice(city_names),
                },
            )
        )
    return KnowledgeBase(entities)


def search_tool(kb: KnowledgeBase, latency_s: float = 0.0) -> Tool:
    return Tool(
        name="search",
        description="search(query: str) -> fact: looks up one attribute of one entity in the knowledge base, "
        'e.g. search("population of Velmora") or search("height of Mount Korvath").',
        fn=kb.search,
        latency_s=latency_s,
    )
