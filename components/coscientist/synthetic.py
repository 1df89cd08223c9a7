"""A research task family with HIDDEN TRUE QUALITY, and a simulated LLM that plays every agent on
it with controlled noise. It exists to measure the tournament (benchmarks/) and to drive the
agent plumbing in tests; its answers are synthetic and never presented as a model's output.

A hypothesis picks one option in each of `slots` slots (catalyst, solvent, ...); its true quality
is the sum of hidden per-option values, so it is computable from the text. The simulated model:
  - Generation: a random hypothesis; with probability `restate_rate` it restates one of the
    existing hypotheses shown in the prompt in other words (a duplicate Proximity should catch);
  - Evolution: mutates (refine / simplify / out_of_box) or crosses over (combine) its parents;
  - Reflection: scores, accept (reject the clearly poor), and a critique naming the weakest slot;
  - Ranking: picks the truly better hypothesis, wrong with probability `judge_noise`, and with
    probability `malformed_rate` answers something unparseable;
  - Meta-review: a fixed-format summary.
Each call may sleep `latency_s` (a remote model's round trip) outside any lock, so parallel
workers overlap their waits as they would against a remote endpoint.
"""

from __future__ import annotations

import hashlib
import random
import re
import threading
import time
from collections.abc import Sequence

from components.llm.base import LLM, Completion, Messages

SLOT_NAMES = ["catalyst", "solvent", "temperature regime", "additive", "support", "readout"]
OPTIONS = [
    ["platinum", "nickel", "copper", "iron", "cobalt"],
    ["water", "ethanol", "acetonitrile", "toluene", "glycerol"],
    ["cryogenic", "ambient", "warm", "hot", "pulsed"],
    ["zeolite", "graphene", "alumina", "silica", "chitosan"],
    ["nanowire", "mesh", "pellet", "film", "foam"],
    ["fluorescence", "calorimetry", "spectroscopy", "chromatography", "impedance"],
]
TEMPLATES = [
    "HYPOTHESIS: A {0} catalyst in {1} under {2} conditions, doped with {3} on a {4} support, raises yield; "
    "test it by {5} against a blank run.",
    "HYPOTHESIS: We propose that {4}-supported {0}, used in {1} with {3} as additive at {2} temperature, "
    "improves conversion, which {5} measurements would confirm.",
    "HYPOTHESIS: Conversion increases when {3} is added to {0} on a {4} in {1}; "
    "run at {2} settings and read out with {5}.",
    "HYPOTHESIS: Selectivity improves if the reaction runs in {1} at {2} temperature over {0} dispersed on a {4} "
    "with {3}, as {5} would show.",
    "HYPOTHESIS: The {3} additive stabilises {0} sites on a {4}, so in {1} at {2} temperature turnover rises; "
    "{5} tracks it.",
    "HYPOTHESIS: Run it {2}: {0} on {4} with {3}, dissolved in {1}, should beat the baseline when checked by {5}.",
]
# A restatement says the same thing in other words: the surface changes, the content does not.
REWORDINGS = [
    ("raises yield", "increases the yield"),
    ("test it by", "this can be tested with"),
    ("We propose that", "Our proposal is that"),
    ("improves conversion", "boosts conversion"),
    ("Conversion increases", "Conversion goes up"),
    ("Selectivity improves", "Selectivity gets better"),
    ("turnover rises", "turnover increases"),
    ("should beat", "ought to outperform"),
]
_WORD_SLOT = {word: (slot, i) for slot, words in enumerate(OPTIONS) for i, word in enumerate(words)}
_WORD_RX = re.compile(r"\b(" + "|".join(sorted(_WORD_SLOT, key=len, reverse=True)) + r")\b", re.I)


class SyntheticScience:
    """The hidden ground truth: per-option values and the text <-> choice mapping."""

    def __init__(self, seed: int = 0, slots: int = 6):
        rng = random.Random(seed)
        self.slots = slots
        self.values = [[rng.gauss(0.0, 1.0) for _ in OPTIONS[s]] for s in range(slots)]

    def render(self, choice: Sequence[int], restated: bool = False) -> str:
        """The hypothesis text; its phrasing follows from its content, so only a restatement
        (`restated`: reworded framing, same content) says the same thing differently."""
        words = [OPTIONS[s][c] for s, c in enumerate(choice)]
        template = int(hashlib.sha256(repr(tuple(choice)).encode()).hexdigest()[:8], 16) % len(TEMPLATES)
        text = TEMPLATES[template].format(*words)
        if restated:
            for old, new in REWORDINGS:
                text = text.replace(old, new)
        return text

    def parse(self, text: str) -> tuple[int, ...] | None:
        found: dict[int, int] = {}
        for m in _WORD_RX.finditer(text):
            slot, i = _WORD_SLOT[m.group(1).lower()]
            found.setdefault(slot, i)
        return tuple(found[s] for s in range(self.slots)) if len(found) == self.slots else None

    def quality(self, text: str) -> float | None:
        choice = self.parse(text)
        return None if choice is None else sum(self.values[s][c] for s, c in enumerate(choice))

    def random_choice(self, rng: random.Random) -> tuple[int, ...]:
        return tuple(rng.randrange(len(OPTIONS[s])) for s in range(self.slots))


class SyntheticLLM(LLM):
    """Plays the co-scientist's agents on a SyntheticScience task (see the module docstring)."""

    name = "synthetic"
    model = "synthetic-judge"

    def __init__(
        self,
        science: SyntheticScience,
        judge_noise: float = 0.2,
        malformed_rate: float = 0.0,
        restate_rate: float = 0.0,
        latency_s: float = 0.0,
        seed: int = 0,
    ):
        super().__init__()
        for name, p in (
            ("judge_noise", judge_noise),
            ("malformed_rate", malformed_rate),
            ("restate_rate", restate_rate),
        ):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be a probability, got {p}")
        self.science, self.judge_noise, self.malformed_rate = science, judge_noise, malformed_rate
        self.restate_rate, self.latency_s, self.seed = restate_rate, latency_s, seed
        self._calls = 0
        self._lock = threading.Lock()
        self.judgements = 0
        self.wrong_judgements = 0

    def _rng(self, prompt: str) -> random.Random:
        with self._lock:
            self._calls += 1
            n = self._calls
        digest = hashlib.sha256(f"{self.seed}|{n}|{prompt}".encode()).hexdigest()
        return random.Random(int(digest[:16], 16))

    def _chat(self, messages: Messages, max_tokens: int, temperature: float, stop) -> Completion:
        prompt = messages[-1]["content"]
        rng = self._rng(prompt)
        if self.latency_s:
            time.sleep(self.latency_s)  # the remote round trip, outside any lock
        text = self.respond(prompt, rng)
        return Completion(
            text,
            prompt_tokens=int(len(prompt.split()) * 1.3),
            completion_tokens=int(len(text.split()) * 1.3) + 1,
            model=self.model,
        )

    # ------------------------------------------------------------------ the agents' answers
    def respond(self, prompt: str, rng: random.Random) -> str:
        head = prompt[:80]
        if "Generation agent" in head:
            return self._generation(prompt, rng)
        if "Evolution agent" in head:
            return self._evolution(prompt, rng)
        if "Reflection agent" in head:
            return self._reflection(prompt)
        if "Meta-review agent" in head:
            return "FEEDBACK: - reviews often flag a weak readout; pick a more sensitive one.\n- ..."
        if "taking part in a scientific debate" in head:
            side = re.search(r"advocate of hypothesis (\d)", prompt)
            return f"ARGUMENT: hypothesis {side.group(1) if side else 1} has the stronger mechanism."
        if "Ranking agent" in head or "judge of a scientific debate" in head:
            return self._verdict(prompt, rng)
        return "I am not sure what is asked."

    def _generation(self, prompt: str, rng: random.Random) -> str:
        existing = _section(prompt, "Hypotheses already proposed (do not repeat them):", "Feedback from")
        shown = [c for c in (self.science.parse(line) for line in existing.splitlines()) if c]
        if shown and rng.random() < self.restate_rate:
            return self.science.render(rng.choice(shown), restated=True)
        return self.science.render(self.science.random_choice(rng))

    def _evolution(self, prompt: str, rng: random.Random) -> str:
        parents_text = _section(prompt, "Parent hypotheses:", "Their reviews:")
        parents = [c for c in (self.science.parse(line) for line in parents_text.splitlines()) if c]
        if not parents:
            return self.science.render(self.science.random_choice(rng))
        if "combine" in prompt[:200] and len(parents) >= 2:
            child = [rng.choice(pair) for pair in zip(*parents)]
        else:
            child = list(parents[0])
            slot = rng.randrange(self.science.slots)
            child[slot] = rng.randrange(len(OPTIONS[slot]))
        return self.science.render(child)

    def _reflection(self, prompt: str) -> str:
        text = _section(prompt, "Hypothesis:", "Answer in exactly")
        choice = self.science.parse(text)
        if choice is None:
            return "VERDICT: reject\nCRITIQUE: the hypothesis does not name all its parts."
        q = self.science.quality(text)
        weakest = min(range(self.science.slots), key=lambda s: self.science.values[s][choice[s]])
        score = max(1, min(5, int(round(3 + q / 2))))
        verdict = "reject" if q < -4.0 else "accept"  # only the clearly poor are filtered out
        return (
            f"CORRECTNESS: {score}\nNOVELTY: 3\nTESTABILITY: 4\nVERDICT: {verdict}\n"
            f"CRITIQUE: the {SLOT_NAMES[weakest]} is the weakest choice; try another."
        )

    def _verdict(self, prompt: str, rng: random.Random) -> str:
        if rng.random() < self.malformed_rate:
            return rng.choice(["Both are interesting.", "BETTER: 1 and BETTER: 2", "BETTER: maybe", ""])
        q1 = self.science.quality(_section(prompt, "Hypothesis 1:", "\n"))
        q2 = self.science.quality(_section(prompt, "Hypothesis 2:", "\n"))
        truth = 1 if (q1 or -1e9) >= (q2 or -1e9) else 2
        wrong = rng.random() < self.judge_noise
        with self._lock:
            self.judgements += 1
            self.wrong_judgements += int(wrong)
        better = (3 - truth) if wrong else truth
        return f"REASON: hypothesis {better} has the more plausible mechanism.\nBETTER: {better}"


def _section(text: str, start: str, end: str) -> str:
    i = text.find(start)
    if i < 0:
        return ""
    i += len(start)
    j = text.find(end, i)
    return text[i : j if j >= 0 else len(text)]


_SCRIPT_PLAYER = SyntheticLLM(SyntheticScience(seed=0), judge_noise=0.2, malformed_rate=0.05, restate_rate=0.2)


def script(messages: Messages) -> str:
    """`llm=scripted llm.script=components.coscientist.synthetic.script`: the synthetic task's
    answers through the shared scripted backend (plumbing demos and tests; not model output)."""
    prompt = messages[-1]["content"]
    return _SCRIPT_PLAYER.respond(prompt, _SCRIPT_PLAYER._rng(prompt))
