"""Autoregressive decoding, vanilla speculative decoding, PEARL and PEARL's two ablations.

All speculative methods are one loop, `SpeculativeDecoder`, with two switches from the PEARL paper
(arXiv 2408.11850; reference engine smart-lty/ParallelSpeculativeDecoding):

- pre-verify  (PEARL's strategy 1): while the draft proposes γ tokens, the target runs over the
  not-yet-cached end of the prefix; that pass already gives p for the FIRST draft token, which is
  verified at once. Without it, the draft drafts alone while the target waits.
- post-verify (strategy 2): while the target verifies a block of draft tokens, the draft already
  drafts the next γ tokens after the block. If the whole block is accepted the target's last
  distribution verifies the first new draft token (no bonus token) and the round repeats, so runs
  of accepts extend the draft length without bound (the adaptive draft length). Without it, the
  draft waits for the verdict and an all-accept earns the usual bonus token.

vanilla SD = neither switch; PEARL = both; the ablations = one each.

Every draft token gets the standard verdict with the target's exact conditional p and the q it was
drawn from (accept with probability min(1, p/q), else resample from norm(max(p − q, 0))), so each
emitted token is distributed as the warped target distribution: the output is lossless.
The verdict's random numbers come from a generator reseeded from (seed, round), the scheme that
lets two processes reach the same verdict without exchanging it; here one coordinator decides.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Optional

import torch

from components.decoding.cache import CausalLM, SequenceRunner, wrap_model
from components.decoding.sampling import SamplingParams, accept_draft_token, residual_distribution, sample, warp
from components.decoding.workers import InlinePair, ThreadPair

METHODS = ("ar", "sd", "pearl", "pearl_no_pre", "pearl_no_post")


@dataclass
class DecodeStats:
    """What one generation cost: the figures the benchmark and the server report."""

    method: str = "ar"
    prompt_tokens: int = 0
    new_tokens: int = 0
    rounds: int = 0
    target_forwards: int = 0
    draft_forwards: int = 0
    draft_tokens_verified: int = 0  # draft tokens that received a verdict
    draft_tokens_accepted: int = 0
    seconds: float = 0.0
    target_seconds: float = 0.0  # summed time inside target forwards (overlaps draft time in PEARL)
    draft_seconds: float = 0.0
    finish_reason: str = "length"  # "stop" (EOS / stop condition) | "length"

    @property
    def acceptance_rate(self) -> float:
        """α: fraction of verified draft tokens that the target accepted."""
        return self.draft_tokens_accepted / self.draft_tokens_verified if self.draft_tokens_verified else 0.0

    @property
    def mean_accepted_tokens(self) -> float:
        """MAT: tokens emitted per target forward pass (1.0 for autoregressive decoding)."""
        return self.new_tokens / self.target_forwards if self.target_forwards else 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict:
        return {
            **asdict(self),
            "acceptance_rate": self.acceptance_rate,
            "mean_accepted_tokens": self.mean_accepted_tokens,
            "tokens_per_second": self.tokens_per_second,
        }


def hands_states(model: CausalLM) -> bool:
    """Whether `model` can run as the target of a draft that reads the target's states (EAGLE)."""
    return type(model).forward_states is not CausalLM.forward_states


class _Output:
    """The committed continuation: applies max_new_tokens and the stop tokens as tokens arrive."""

    def __init__(self, prompt: Sequence[int], max_new_tokens: int, stop_ids: Iterable[int]):
        self.seq = list(prompt)
        self.prompt_len = len(prompt)
        self.max_new = max_new_tokens
        self.stop_ids = set(stop_ids)
        self.done = max_new_tokens <= 0
        self.finish_reason = "length"

    @property
    def remaining(self) -> int:
        return self.max_new - (len(self.seq) - self.prompt_len)

    def commit(self, tokens: Sequence[int]) -> list[int]:
        taken: list[int] = []
        for tok in tokens:
            if self.done:
                break
            taken.append(tok)
            if tok in self.stop_ids:
                self.done, self.finish_reason = True, "stop"
            elif len(self.seq) + len(taken) - self.prompt_len >= self.max_new:
                self.done = True
        self.seq.extend(taken)
        return taken


class Decoder:
    """`stream(prompt_ids, ...)` yields lists of newly committed tokens; `generate` collects them."""

    method = "ar"

    def __init__(self, target, draft=None):
        self.target: CausalLM = wrap_model(target)
        self.draft: Optional[CausalLM] = wrap_model(draft) if draft is not None else None
        if self.draft is not None and self.draft.vocab_size != self.target.vocab_size:
            raise ValueError(
                f"draft vocabulary ({self.draft.vocab_size}) differs from the target's "
                f"({self.target.vocab_size}): speculative decoding needs a shared tokenizer"
            )
        if self.draft is not None and self.draft.reads_target_states and not hands_states(self.target):
            raise ValueError(
                f"the draft {self.draft.name} reads the target's hidden states; the target {self.target.name} "
                "does not hand them (forward_states): use the native target"
            )

    @property
    def max_context(self) -> int:
        """The target's context: past the draft's (shorter) context, decoding continues without drafting."""
        return self.target.max_context

    def stream(self, prompt_ids, max_new_tokens, params=SamplingParams(), seed=0, stop_ids=(), stats=None):
        """Yields each round's newly committed tokens (`generate`'s arguments, `stats` filled as it goes)."""
        raise NotImplementedError

    def generate(
        self,
        prompt_ids: Sequence[int],
        max_new_tokens: int,
        params: SamplingParams = SamplingParams(),
        seed: int = 0,
        stop_ids: Iterable[int] = (),
    ) -> tuple[list[int], DecodeStats]:
        stats = DecodeStats(method=self.method)
        tokens: list[int] = []
        for chunk in self.stream(prompt_ids, max_new_tokens, params, seed, stop_ids, stats):
            tokens.extend(chunk)
        return tokens, stats

    def close(self) -> None:
        pass

    @staticmethod
    def _check_prompt(prompt_ids: Sequence[int]) -> None:
        if len(prompt_ids) == 0:
            raise ValueError("the prompt must hold at least one token")


class AutoregressiveDecoder(Decoder):
    """The baseline: one target forward per token."""

    method = "ar"

    def stream(self, prompt_ids, max_new_tokens, params=SamplingParams(), seed=0, stop_ids=(), stats=None):
        self._check_prompt(prompt_ids)
        stats = stats if stats is not None else DecodeStats(method=self.method)
        stats.prompt_tokens = len(prompt_ids)
        out = _Output(prompt_ids, max_new_tokens, stop_ids)
        target = SequenceRunner(self.target)
        rng = torch.Generator().manual_seed(seed)
        start = time.perf_counter()
        try:
            while not out.done:
                p = warp(target.logits_for(out.seq)[-1], params)
                stats.rounds += 1
                chunk = out.commit([sample(p, rng)])
                stats.new_tokens += len(chunk)
                yield chunk
        finally:
            stats.seconds = time.perf_counter() - start
            stats.target_forwards, stats.target_seconds = target.forwards, target.forward_seconds
            stats.finish_reason = out.finish_reason


class SpeculativeDecoder(Decoder):
    """Vanilla SD / PEARL / the ablations, chosen by `pre_verify` and `post_verify`."""

    def __init__(
        self,
        target,
        draft,
        gamma: int = 4,
        pre_verify: bool = True,
        post_verify: bool = True,
        parallel: bool = True,
        draft_threads: int = 1,
        target_threads: int = 1,
    ):
        super().__init__(target, draft)
        if self.draft is None:
            raise ValueError("speculative decoding needs a draft model")
        if gamma < 1:
            raise ValueError(f"gamma (draft tokens per round) must be >= 1, got {gamma}")
        self.gamma = gamma
        self.pre_verify, self.post_verify = pre_verify, post_verify
        self.method = {
            (False, False): "sd",
            (True, True): "pearl",
            (False, True): "pearl_no_pre",
            (True, False): "pearl_no_post",
        }[(pre_verify, post_verify)]
        concurrent = parallel and (pre_verify or post_verify)
        cuda = self.target.device.type == "cuda"
        self.workers = ThreadPair(draft_threads, target_threads, cuda=cuda) if concurrent else InlinePair()

    def close(self) -> None:
        self.workers.close()

    def _propose(
        self, draft: SequenceRunner, context: list[int], gamma: int, params: SamplingParams, rng: torch.Generator
    ) -> tuple[list[int], list[torch.Tensor]]:
        """The draft samples `gamma` tokens after `context`; returns them with the q each came from."""
        context = list(context)
        tokens, qs = [], []
        for _ in range(gamma):
            q = warp(draft.logits_for(context)[-1], params)
            tok = sample(q, rng)
            tokens.append(tok)
            qs.append(q)
            context.append(tok)
        return tokens, qs

    def _draft_budget(self, out: _Output, pending: int) -> int:
        """γ, shortened near max_new_tokens and the context limit (γ never affects the output law)."""
        room = min(self.draft.max_context, self.target.max_context) - len(out.seq) - pending - 1
        return max(0, min(self.gamma, out.remaining - pending, room))

    def stream(self, prompt_ids, max_new_tokens, params=SamplingParams(), seed=0, stop_ids=(), stats=None):
        self._check_prompt(prompt_ids)
        stats = stats if stats is not None else DecodeStats(method=self.method)
        stats.prompt_tokens = len(prompt_ids)
        run = _SpeculativeRun(self, _Output(prompt_ids, max_new_tokens, stop_ids), params, seed, stats)
        try:
            while not run.out.done:
                chunk = run.round()
                if chunk is not None:
                    yield chunk
        finally:
            run.finish()


class _SpeculativeRun:
    """One generation of `SpeculativeDecoder`: the committed output, both runners and the pending block.

    Each `round()` is one synchronisation of the two workers: a pre-verify round when no draft block is
    pending (or the draft drafting alone without pre-verify), else a verification round of the block.
    """

    def __init__(
        self, decoder: SpeculativeDecoder, out: _Output, params: SamplingParams, seed: int, stats: DecodeStats
    ):
        self.decoder, self.out, self.params, self.seed, self.stats = decoder, out, params, seed, stats
        self.target = SequenceRunner(decoder.target, keep_states=decoder.draft.reads_target_states)
        self.draft = SequenceRunner(decoder.draft)
        self.draft_rng = torch.Generator().manual_seed(seed)
        self.verdict_rng = torch.Generator()
        self.block: list[int] = []  # draft tokens after out.seq awaiting the target's verdict
        self.block_q: list[torch.Tensor] = []
        self.start = time.perf_counter()

    def emit(self, tokens: list[int]) -> list[int]:
        chunk = self.out.commit(tokens)
        self.stats.new_tokens += len(chunk)
        return chunk

    def verdict(self, token: int, p: torch.Tensor, q: torch.Tensor) -> Optional[int]:
        """None when the draft token stands, else the token resampled from the residual."""
        self.stats.draft_tokens_verified += 1
        if accept_draft_token(token, p, q, self.verdict_rng):
            self.stats.draft_tokens_accepted += 1
            return None
        return sample(residual_distribution(p, q), self.verdict_rng)

    def propose(self, context: list[int], gamma: int) -> tuple[list[int], list[torch.Tensor]]:
        return self.decoder._propose(self.draft, context, gamma, self.params, self.draft_rng)

    def round(self) -> Optional[list[int]]:
        """One round; the tokens it committed (None: the draft drafted alone, nothing committed yet)."""
        self.stats.rounds += 1
        self.verdict_rng.manual_seed(self.seed * 1_000_003 + self.stats.rounds)  # same reseed on every worker
        return self.verify_block() if self.block else self.start_block()

    def start_block(self) -> Optional[list[int]]:
        """No block pending: draft γ tokens; with pre-verify the target's pass over the prefix end
        meanwhile yields p for the first of them, verified at once."""
        out, decoder = self.out, self.decoder
        gamma = decoder._draft_budget(out, 0)
        if gamma == 0:  # no room to draft (end of budget or context): one target step
            logits = self.target.logits_for(out.seq)[-1]
            self.target.hand_states(self.draft)
            return self.emit([sample(warp(logits, self.params), self.verdict_rng)])
        seq = list(out.seq)
        if not decoder.pre_verify:  # the draft drafts alone; the target waits
            self.block, self.block_q = self.propose(seq, gamma)
            return None
        (drafted, qs), logits = decoder.workers.run(
            lambda: self.propose(seq, gamma), lambda: self.target.logits_for(seq)[-1]
        )
        self.target.hand_states(self.draft)  # both workers are done: an EAGLE draft reads them next round
        resampled = self.verdict(drafted[0], warp(logits, self.params), qs[0])
        if resampled is None:
            self.block, self.block_q = drafted[1:], qs[1:]
            return self.emit([drafted[0]])
        chunk = self.emit([resampled])
        self.draft.rollback(len(out.seq) - 1)
        return chunk

    def verify_block(self) -> list[int]:
        """Verify the pending block; with post-verify the draft drafts the next γ tokens meanwhile."""
        out, decoder = self.out, self.decoder
        seq, pending, pending_q = list(out.seq), self.block, self.block_q
        self.block, self.block_q = [], []
        gamma = decoder._draft_budget(out, len(pending)) if decoder.post_verify else 0
        if gamma > 0:
            (next_block, next_q), logits = decoder.workers.run(
                lambda: self.propose(seq + pending, gamma), lambda: self.target.logits_for(seq + pending)
            )
        else:
            next_block, next_q = [], []
            logits = self.target.logits_for(seq + pending)
        self.target.hand_states(self.draft)
        ps = warp(logits[-(len(pending) + 1) :], self.params)  # p for each block token, then the next
        accepted, resampled = 0, None
        for i, tok in enumerate(pending):
            resampled = self.verdict(tok, ps[i], pending_q[i])
            if resampled is not None:
                break
            accepted += 1
        if resampled is not None:  # first reject: keep the accepted prefix, roll both caches back
            chunk = self.emit(pending[:accepted] + [resampled])
            self.target.rollback(len(out.seq) - 1)
            self.draft.rollback(len(out.seq) - 1)
            return chunk
        chunk = self.emit(pending)
        if out.done:
            return chunk
        if not next_block:  # vanilla SD / no post-verify: the bonus token from the last p
            return chunk + self.emit([sample(ps[-1], self.verdict_rng)])
        # Post-verify: the target's last p verifies the draft's first new token right away.
        resampled = self.verdict(next_block[0], ps[-1], next_q[0])
        if resampled is None:
            self.block, self.block_q = next_block[1:], next_q[1:]
            return chunk + self.emit([next_block[0]])
        chunk = chunk + self.emit([resampled])
        self.draft.rollback(len(out.seq) - 1)
        return chunk

    def finish(self) -> None:
        stats = self.stats
        stats.seconds = time.perf_counter() - self.start
        stats.target_forwards, stats.target_seconds = self.target.forwards, self.target.forward_seconds
        stats.draft_forwards, stats.draft_seconds = self.draft.forwards, self.draft.forward_seconds
        stats.finish_reason = self.out.finish_reason


def build_decoder(
    method: str,
    target,
    draft=None,
    gamma: int = 4,
    parallel: bool = True,
    draft_threads: int = 1,
    target_threads: int = 1,
) -> Decoder:
    """The decoder for a method name in METHODS ("ar", "sd", "pearl", "pearl_no_pre", "pearl_no_post")."""
    if method not in METHODS:
        raise ValueError(f"unknown decoding method {method!r}; choose one of {', '.join(METHODS)}")
    if method == "ar":
        return AutoregressiveDecoder(target)
    pre, post = {
        "sd": (False, False),
        "pearl": (True, True),
        "pearl_no_pre": (False, True),
        "pearl_no_post": (True, False),
    }[method]
    return SpeculativeDecoder(
        target,
        draft,
        gamma=gamma,
        pre_verify=pre,
        post_verify=post,
        parallel=parallel,
        draft_threads=draft_threads,
        target_threads=target_threads,
    )


def step_seconds(model, prompt_ids: Sequence[int], steps: int = 5, threads: Optional[int] = None) -> float:
    """Median seconds of a one-token forward after `prompt_ids` (after an untimed prefill + step)."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        runner = SequenceRunner(wrap_model(model))
        seq = list(prompt_ids)
        runner.logits_for(seq)
        seq.append(seq[-1])
        runner.logits_for(seq)  # first incremental step pays one-off allocations: not timed
        samples = []
        for _ in range(steps):
            seq.append(seq[-1])
            start = time.perf_counter()
            runner.logits_for(seq)
            samples.append(time.perf_counter() - start)
        samples.sort()
        return samples[len(samples) // 2]
    finally:
        torch.set_num_threads(before)


def measure_cost_ratio(target, draft, prompt_ids: Sequence[int], steps: int = 5) -> dict[str, float]:
    """Seconds per one-token forward of each model and c = t_target / t_draft.

    PEARL sets γ ≈ c so that the draft's γ steps take as long as one target verification pass.
    """
    t_target = step_seconds(target, prompt_ids, steps)
    t_draft = step_seconds(draft, prompt_ids, steps)
    ratio = t_target / max(t_draft, 1e-9)
    return {"target_step_s": t_target, "draft_step_s": t_draft, "cost_ratio": ratio, "gamma": max(1, round(ratio))}
