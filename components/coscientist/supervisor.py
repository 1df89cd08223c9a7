"""The Supervisor: an asynchronous task queue that spends a compute budget on agent work.

The loop keeps up to `max_parallel` agent calls in flight through an injected
`submit(work) -> concurrent.futures.Future` (a thread pool by default; Prefect tasks or Dask
workers in the flow) and, whenever one finishes, commits its result to the state and schedules
more. Which work comes next:
  1. every new hypothesis is reviewed first (Reflection), so new hypotheses enter the tournament
     as soon as possible;
  2. until `initial_hypotheses` exist, Generation;
  3. otherwise a draw weighted by `weights` among the kinds that can run now: Ranking (needs two
     active hypotheses; pairing rules in elo.py), Evolution (needs ranked parents), Generation, and
     Meta-review (after `meta_review_every` new reviews and matches).
New work is issued only while the finished spend plus what is in flight plus its own estimate
fits the budget, so the budget (LLM calls, tokens, or both) is never overrun by more than the
token spread of calls already in flight. Proximity runs in the supervisor on every new hypothesis:
a restatement of an existing one is stored as a duplicate and never reviewed or ranked.
"""

from __future__ import annotations

import concurrent.futures as cf
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from components.coscientist.agents import EVOLUTION_STRATEGIES, GENERATION_APPROACHES, AgentResult, AgentSuite, Work
from components.coscientist.elo import EloConfig, Player, choose_pair, pair_key
from components.coscientist.proximity import Proximity
from components.coscientist.state import TournamentState

Submit = Callable[[Work], cf.Future]


class FutureBridge:
    """A `Submit` over an orchestrator's own submit (`work -> a future with .result()`, e.g. a Prefect
    task's `.submit`): a small pool of waiter threads turns its futures into concurrent.futures ones,
    which the supervisor's loop waits on. Use as a context manager (the waiters finish on exit)."""

    def __init__(self, submit: Callable[[Work], Any], max_parallel: int) -> None:
        self._submit = submit
        self._waiters = cf.ThreadPoolExecutor(max_parallel, thread_name_prefix="cosci-wait")

    def __call__(self, work: Work) -> cf.Future:
        return self._waiters.submit(self._submit(work).result)

    def close(self) -> None:
        self._waiters.shutdown(wait=True)

    def __enter__(self) -> FutureBridge:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass
class Budget:
    calls: int | None = 60  # LLM calls for the whole run (a debate spends turns + 1)
    tokens: int | None = None  # prompt + completion tokens; None: no token limit

    def __post_init__(self) -> None:
        if self.calls is None and self.tokens is None:
            raise ValueError("budget needs calls or tokens (or both); both are null")
        for name in ("calls", "tokens"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"budget.{name} must be positive, got {value}")


@dataclass
class WorkWeights:
    """Relative share of the budget for each kind of optional work (reviews of new hypotheses come first)."""

    generate: float = 1.0  # fresh ideas keep the pool diverse
    rank: float = 4.0  # matches are what turn reviews into a reliable order: the bulk of the compute
    evolve: float = 1.0  # improve the current best
    meta_review: float = 0.5  # rare: it summarises many reviews at once


@dataclass
class SupervisorConfig:
    max_parallel: int = 4  # agent calls in flight at once (threads / Dask workers doing LLM calls)
    initial_hypotheses: int = 6  # generation before anything else is chosen by weight
    weights: WorkWeights = field(default_factory=WorkWeights)
    meta_review_every: int = 12  # new reviews + matches between two meta-reviews
    evolution_pool: int = 4  # parents are drawn from this many top-rated hypotheses
    existing_in_prompt: int = 8  # hypotheses shown to Generation so it does not repeat them
    max_consecutive_failures: int = 5  # agent calls raising in a row before the run stops with an error


class Supervisor:
    def __init__(
        self,
        state: TournamentState,
        agents: AgentSuite,
        proximity: Proximity,
        budget: Budget,
        cfg: SupervisorConfig | None = None,
        elo: EloConfig | None = None,
        submit: Submit | None = None,
        on_commit: Callable[[Work, AgentResult, dict], None] | None = None,
        seed: int = 0,
    ):
        self.state, self.agents, self.proximity, self.budget = state, agents, proximity, budget
        self.cfg = cfg or SupervisorConfig()
        self.elo = elo or EloConfig()
        if self.cfg.max_parallel < 1:
            raise ValueError(f"max_parallel must be >= 1, got {self.cfg.max_parallel}")
        self.state.elo = self.elo  # one Elo configuration for pairing and updates
        self._own_pool = None
        if submit is None:
            self._own_pool = cf.ThreadPoolExecutor(self.cfg.max_parallel, thread_name_prefix="cosci-agent")
            submit = lambda work: self._own_pool.submit(self.agents.run, work)  # noqa: E731
        self.submit = submit
        self.on_commit = on_commit
        self.seed = seed  # with the persisted task counter, seeds every scheduling draw (resumable)
        self._sim_cache: tuple[tuple[str, ...], np.ndarray] | None = None

    # ------------------------------------------------------------------ the loop
    def run(self) -> dict[str, Any]:
        inflight: dict[cf.Future, Work] = {}
        failures = 0
        try:
            for work in self.state.pending_work():  # resume: re-run what a previous run left in flight
                inflight[self.submit(work)] = work
            while True:
                while len(inflight) < self.cfg.max_parallel:
                    work = self.next_work(list(inflight.values()))
                    if work is None:
                        break
                    inflight[self.submit(work)] = work
                if not inflight:
                    break
                done, _ = cf.wait(list(inflight), return_when=cf.FIRST_COMPLETED)
                for future in sorted(done, key=lambda f: inflight[f].task_id):
                    work = inflight.pop(future)
                    try:
                        result = future.result()
                    except Exception as exc:  # an agent call failed (network, model error): record, go on
                        self.state.mark_failed(work, f"{type(exc).__name__}: {exc}")
                        failures += 1
                        if failures >= self.cfg.max_consecutive_failures:
                            raise RuntimeError(f"{failures} agent calls failed in a row; last: {exc!r}") from exc
                        continue
                    failures = 0
                    self.commit(work, result)
        finally:
            if self._own_pool is not None:
                self._own_pool.shutdown(wait=True, cancel_futures=True)
        return self.summary()

    def commit(self, work: Work, result: AgentResult) -> dict:
        embedding, duplicate_of = None, None
        text = result.output.get("hypothesis") if work.kind in ("generate", "evolve") else None
        if text:
            if self.proximity.backend != "tfidf":
                embedding = self.proximity.embed([text])[0]
            existing = self.state.hypotheses(statuses=("new", "active", "rejected"))
            duplicate_of = self.proximity.find_duplicate(text, embedding, existing)
        effect = self.state.commit(result, embedding, duplicate_of)
        if self.on_commit is not None and effect.get("applied"):
            self.on_commit(work, result, effect)
        return effect

    # ------------------------------------------------------------------ scheduling
    def remaining_calls(self, inflight: list[Work]) -> float:
        spent = self.state.spent()
        busy = sum(w.estimated_calls for w in inflight)
        left = float("inf") if self.budget.calls is None else self.budget.calls - spent["calls"] - busy
        if self.budget.tokens is not None:
            per_call = spent["tokens"] / spent["calls"] if spent["calls"] else self.agents.max_tokens * 2
            left = min(left, (self.budget.tokens - spent["tokens"]) / max(per_call, 1.0) - busy)
        return left

    def next_work(self, inflight: list[Work]) -> Work | None:
        left = self.remaining_calls(inflight)
        if left < 1:
            return None
        rng = random.Random(f"{self.seed}-{self.state.get_meta('seq', '0')}")
        hyps = self.state.hypotheses()
        feedback = self.state.latest_feedback()

        # 1. New hypotheses are reviewed first.
        reviewing = {w.payload["hypothesis_id"] for w in inflight if w.kind == "reflect"}
        for h in hyps:
            if h["status"] == "new" and h["id"] not in reviewing:
                return self.state.issue(
                    "reflect", {"hypothesis_id": h["id"], "text": h["text"], "feedback": feedback}, 1
                )

        # 2. Seed the pool.
        generating = sum(1 for w in inflight if w.kind == "generate")
        produced = sum(1 for h in hyps if h["source"] == "generation")
        if produced + generating < self.cfg.initial_hypotheses:
            return self._generate(hyps, feedback, rng)

        # 3. Weighted choice among what can run now.
        active = [h for h in hyps if h["status"] == "active"]
        options: dict[str, float] = {"generate": self.cfg.weights.generate}
        pairing = self._pairing(active, inflight, rng, left)
        if pairing is not None:
            options["rank"] = self.cfg.weights.rank
        ranked = [h for h in active if h["matches"] > 0]
        if len(ranked) >= 2:
            options["evolve"] = self.cfg.weights.evolve
        if self._meta_review_due(inflight):
            options["meta_review"] = self.cfg.weights.meta_review
        kinds = [k for k, w in options.items() if w > 0]
        if not kinds:
            return None
        kind = rng.choices(kinds, weights=[options[k] for k in kinds], k=1)[0]
        if kind == "generate":
            return self._generate(hyps, feedback, rng)
        if kind == "rank":
            return self._rank(pairing, {h["id"]: h for h in active})
        if kind == "evolve":
            return self._evolve(ranked, rng, feedback)
        return self._meta_review()

    def _generate(self, hyps: list[dict], feedback: str | None, rng: random.Random) -> Work:
        shown = [h["text"][:200] for h in hyps if h["status"] in ("new", "active")][-self.cfg.existing_in_prompt :]
        existing = "\n".join(f"- {t}" for t in shown) or "none"
        approach = rng.choice(GENERATION_APPROACHES)
        return self.state.issue("generate", {"existing": existing, "feedback": feedback, "approach": approach}, 1)

    def _pairing(self, active: list[dict], inflight: list[Work], rng: random.Random, left: float):
        if len(active) < 2:
            return None
        players = [Player(h["id"], h["elo"], h["matches"]) for h in active]
        busy = {pair_key(w.payload["a"], w.payload["b"]) for w in inflight if w.kind == "rank"}
        met: dict[tuple[str, str], int] = {}
        for m in self.state.matches():
            key = pair_key(m["a"], m["b"])
            met[key] = met.get(key, 0) + 1
        pairing = choose_pair(players, self.elo, rng, self._similarity(active), met, busy)
        if pairing is not None and pairing.debate and left < self.elo.debate_turns + 1:
            pairing = type(pairing)(pairing.a, pairing.b, False)  # not enough budget left for a debate
        return pairing

    def _similarity(self, active: list[dict]) -> dict[tuple[str, str], float]:
        ids = tuple(h["id"] for h in active)
        if self._sim_cache is None or self._sim_cache[0] != ids:
            sims = self.proximity.similarities([h["text"] for h in active], [h["embedding"] for h in active])
            self._sim_cache = (ids, sims)
        sims = self._sim_cache[1]
        return {pair_key(ids[i], ids[j]): float(sims[i, j]) for i in range(len(ids)) for j in range(i + 1, len(ids))}

    def _rank(self, pairing, by_id: dict[str, dict]) -> Work:
        reviews = self.state.reviews()
        a, b = by_id[pairing.a], by_id[pairing.b]
        payload = {
            "a": a["id"],
            "b": b["id"],
            "text_a": a["text"],
            "text_b": b["text"],
            "review_a": reviews.get(a["id"], {}).get("critique"),
            "review_b": reviews.get(b["id"], {}).get("critique"),
            "debate": pairing.debate,
            "turns": self.elo.debate_turns,
        }
        return self.state.issue("rank", payload, self.elo.debate_turns + 1 if pairing.debate else 1)

    def _evolve(self, ranked: list[dict], rng: random.Random, feedback: str | None) -> Work:
        pool = sorted(ranked, key=lambda h: (-h["elo"], h["id"]))[: self.cfg.evolution_pool]
        strategy = rng.choice(sorted(EVOLUTION_STRATEGIES))
        parents = (
            rng.sample(pool, 2) if strategy == "combine" else [pool[0] if rng.random() < 0.5 else rng.choice(pool)]
        )
        reviews = self.state.reviews()
        payload = {
            "parents": [p["id"] for p in parents],
            "parent_texts": [p["text"] for p in parents],
            "parent_reviews": [reviews.get(p["id"], {}).get("critique", "") for p in parents],
            "strategy": strategy,
            "feedback": feedback,
        }
        return self.state.issue("evolve", payload, 1)

    def _meta_review_due(self, inflight: list[Work]) -> bool:
        if any(w.kind == "meta_review" for w in inflight):
            return False
        last = self.state.db.execute("SELECT COALESCE(MAX(seq),0) AS s FROM tasks WHERE kind='meta_review'").fetchone()[
            "s"
        ]
        new = self.state.db.execute(
            "SELECT COUNT(*) AS n FROM tasks WHERE kind IN ('reflect','rank') AND status='done' AND finished_seq > ?",
            (last,),
        ).fetchone()["n"]
        return new >= self.cfg.meta_review_every

    def _meta_review(self) -> Work:
        reviews = [r["critique"][:300] for r in self.state.reviews().values()][-10:]
        reasons = [m["reason"][:300] for m in self.state.matches() if m["reason"]][-10:]
        return self.state.issue("meta_review", {"reviews": reviews, "reasons": reasons}, 1)

    # ------------------------------------------------------------------ results
    def ranking(self) -> list[dict]:
        active = self.state.hypotheses(statuses=("active",))
        return sorted(active, key=lambda h: (-h["elo"], h["id"]))

    def progress(self) -> dict[str, float]:
        """What the run has spent and how the pool stands, after each committed result."""
        spent = self.state.spent()
        active = self.state.hypotheses(statuses=("active",))
        return {
            "spent_calls": spent["calls"],
            "spent_tokens": spent["tokens"],
            "hypotheses": len(self.state.hypotheses()),
            "active": len(active),
            "top_elo": max((h["elo"] for h in active), default=self.elo.initial),
        }

    def summary(self) -> dict[str, Any]:
        hyps = self.state.hypotheses()
        matches = self.state.matches()
        spent = self.state.spent()
        by_status: dict[str, int] = {}
        for h in hyps:
            by_status[h["status"]] = by_status.get(h["status"], 0) + 1
        ranking = self.ranking()
        return {
            "hypotheses": len(hyps),
            "by_status": by_status,
            "matches": len(matches),
            "debates": sum(m["debate"] for m in matches),
            "void_matches": sum(m["winner"] is None for m in matches),
            "meta_reviews": len(self.state.meta_reviews()),
            "spent": spent,
            "tasks": self.state.task_counts(),
            "top": [{"id": h["id"], "elo": round(h["elo"], 1), "matches": h["matches"]} for h in ranking[:5]],
            "proximity_backend": self.proximity.backend,
        }
