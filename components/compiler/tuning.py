"""Teaching a small model the agents' formats: transcripts to fine-tune on, and the fine-tuning loop.

SmolLM2-135M, the only model shipped offline, cannot plan from few-shot examples (it copies them:
~0% accuracy for both agents). The LLMCompiler authors met the same wall with small models and
fine-tuned them on synthetic function-calling plans (TinyAgent, Erdogan et al. 2024: TinyLlama-1.1B
and Wizard-2-7B tuned for LLMCompiler). This module does that here, at 135M scale:

- `oracle_transcripts` runs LLMCompiler AND ReAct with the scripted oracle (reference plans, ReAct
  steps that copy observed values, a joiner that reads the last observation) on questions over
  *other* invented knowledge bases (other seeds: other entity names and numbers) and records every
  LLM call as a chat: the prompt the agent sent + the oracle's reply. Both methods' calls come from
  the same questions, so neither is tuned more than the other.
- `tune` fine-tunes the top layers of a causal LM on those chats (loss on the replies only).

The `tune_agent` flow runs both and saves the tuned layers (`smollm2.save_tuned`).

The tuned model learns the 16 question shapes of `parallelqa`, not general planning: it is a
specialised planner/actor, as TinyAgent's are, and is evaluated on entities it never saw.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import torch

from components.checks import ConfigError, at_least, positive
from components.compiler.evaluation import AgentSettings, build_agent
from components.compiler.fetching import ThreadSubmit
from components.compiler.parallelqa import build_questions
from components.compiler.prompts import prompt_kind
from components.compiler.scripted import parallelqa_oracle
from components.llm.base import ScriptedLLM
from components.lm import smollm2
from components.lm.training import warmup_cosine
from components.tools import build_knowledge_base, build_toolbox

Messages = list[dict[str, str]]
EVAL_KB_SEED = 0  # the knowledge base compile_calls and the benchmark ask about: never tuned on


@dataclass
class TranscriptConfig:
    """Which questions the oracle answers to make the training chats."""

    kb_seeds: list[int] = field(default_factory=lambda: list(range(1, 9)))  # other invented names and numbers
    per_template: int = 2  # questions per template and knowledge base: 16 x 2 x 8 = 256 questions
    react_steps: Optional[int] = None  # ReAct calls kept per question (Finish always); None: all of them

    def __post_init__(self) -> None:
        if not self.kb_seeds or EVAL_KB_SEED in self.kb_seeds:
            evaluated = (
                f"must not include {EVAL_KB_SEED}: compile_calls and the benchmark evaluate on that knowledge base"
            )
            reason = evaluated if self.kb_seeds else "is empty: nothing to tune on"
            raise ConfigError("transcripts.kb_seeds", self.kb_seeds, reason)
        at_least("transcripts.per_template", self.per_template, 1)
        if self.react_steps is not None:
            at_least("transcripts.react_steps", self.react_steps, 1)


def oracle_transcripts(
    kb_seeds: Iterable[int], per_template: int = 2, few_shot: bool = False, exclude_names: Iterable[str] = ()
) -> list[Messages]:
    """Every LLM call both agents make on questions over each knowledge base `kb_seeds`, answered by
    the oracle, as chats ending with the assistant's reply. Questions naming any of `exclude_names`
    (the evaluation knowledge base's entities) are skipped."""
    chats: list[Messages] = []

    def recording(messages: Messages) -> str:
        reply = parallelqa_oracle(messages)
        chats.append([dict(m) for m in messages] + [{"role": "assistant", "content": reply}])
        return reply

    excluded = [name.lower() for name in exclude_names]
    settings = AgentSettings(few_shot=few_shot)
    llm = ScriptedLLM(recording)
    for seed in kb_seeds:
        toolbox = build_toolbox(seed)
        tools = {n: t.description for n, t in toolbox.tools.items()}
        submit = ThreadSubmit(toolbox, max_workers=8)
        try:
            agents = [build_agent(m, llm, tools, submit, settings) for m in ("llmcompiler", "react")]
            for question in build_questions(build_knowledge_base(seed), per_template=per_template, seed=seed):
                if any(name in question.text.lower() for name in excluded):
                    continue
                for agent in agents:
                    agent.run(question.text)
        finally:
            submit.close()
    return chats


def count_kinds(chats: Sequence[Messages]) -> dict[str, int]:
    """How many chats are planner, joiner and ReAct calls."""

    kinds = [prompt_kind(c) for c in chats]
    return {k: kinds.count(k) for k in ("planner", "joiner", "react")}


def transcript_provenance(spec: TranscriptConfig, chats: list) -> dict:
    """Where the chats came from, for tuning.json."""
    return {
        "kb_seeds": list(spec.kb_seeds),
        "per_template": spec.per_template,
        "react_steps_per_question": spec.react_steps or "all",
        "transcripts": count_kinds(chats),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def subsample_react(chats: Sequence[Messages], keep: int, rng: random.Random) -> list[Messages]:
    """Every planner and joiner chat; of each ReAct episode `keep` calls, always including the last
    (Finish). An episode's calls share the question and grow one step at a time."""

    out: list[Messages] = []
    episode: list[Messages] = []

    def flush() -> None:
        if episode:
            chosen = {len(episode) - 1} | set(rng.sample(range(len(episode) - 1), min(keep - 1, len(episode) - 1)))
            out.extend(episode[i] for i in sorted(chosen))
            episode.clear()

    for chat in chats:
        if prompt_kind(chat) != "react":
            flush()
            out.append(chat)
            continue
        if episode and episode[-1][1]["content"].split("\n", 1)[0] != chat[1]["content"].split("\n", 1)[0]:
            flush()  # a new question
        episode.append(chat)
    flush()
    return out


def encode_chat(tokenizer, chat: Messages) -> tuple[list[int], int]:
    """(token ids of the whole chat, index where the reply starts): the loss covers the reply and the
    end-of-turn token after it, so the tuned model also learns to stop."""
    prompt = tokenizer.apply_chat_template(chat[:-1], add_generation_prompt=True, tokenize=True, return_dict=True)[
        "input_ids"
    ]
    full = tokenizer.apply_chat_template(chat, tokenize=True, return_dict=True)["input_ids"]
    if full[: len(prompt)] != prompt:
        raise ValueError("the chat template renders the prompt differently inside the full chat")
    return full, len(prompt)


@dataclass
class TuneSettings:
    train_layers: int = 12  # top decoder layers trained (+ final norm); the rest and the tied embedding stay frozen
    lr: float = 1e-4  # AdamW peak; warm-up then cosine decay to 10%
    warmup_steps: int = 10
    epochs: float = 1.0  # passes over the transcripts (fractional: a share of the last pass)
    batch_tokens: int = 2048  # padded tokens per optimizer step (sequences of similar length batched)
    minutes: float | None = None  # stop early after this much training time
    # matmuls in bfloat16 under autocast (weights and AdamW stay float32): on AVX512-BF16 cores and
    # GPUs a step takes ~60% of the float32 time (benchmarks/tuning_step.py). auto: bf16 where the
    # device has fast bf16 kernels
    precision: str = "auto"  # auto | bf16 | fp32
    seed: int = 0

    def __post_init__(self) -> None:
        at_least("train.train_layers", self.train_layers, 1)
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ConfigError("train.precision", self.precision, "must be auto, bf16 or fp32")
        positive("train.lr", self.lr)
        at_least("train.warmup_steps", self.warmup_steps, 0)
        positive("train.epochs", self.epochs)
        at_least("train.batch_tokens", self.batch_tokens, 1)
        if self.minutes is not None:
            positive("train.minutes", self.minutes)


@dataclass
class TuneReport:
    steps: int = 0
    sequences: int = 0
    tokens: int = 0
    seconds: float = 0.0
    losses: list[float] = field(default_factory=list)  # mean reply-token loss per step
    stopped_early: bool = False
    trained: list[str] = field(default_factory=list)  # names of the parameters the loop changed
    matmul_dtype: str = "float32"  # what `precision` resolved to on the device the loop ran on


def _batches(examples: Sequence[tuple[list[int], int]], batch_tokens: int, rng: random.Random) -> list[list[int]]:
    """Index batches of similar lengths (little padding), in random order."""
    order = sorted(range(len(examples)), key=lambda i: len(examples[i][0]))
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i in order:
        n = len(examples[i][0])
        if current and max(longest, n) * (len(current) + 1) > batch_tokens:
            batches.append(current)
            current, longest = [], 0
        current.append(i)
        longest = max(longest, n)
    if current:
        batches.append(current)
    rng.shuffle(batches)
    return batches


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The dtype `tune` runs its matmuls in (None: float32, no autocast)."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    try:  # oneDNN's own test for fast bf16 kernels on this CPU (AVX512-BF16 / AMX)
        return torch.bfloat16 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else None
    except (AttributeError, RuntimeError):
        return None


def matmul_autocast(dtype: torch.dtype | None, device: torch.device):
    """The context `tune` runs a step's forward in: autocast to `dtype`, or plain float32 when None."""
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def train_top_layers(model, train_layers: int) -> list[torch.nn.Parameter]:
    """Freeze a transformers causal LM except its top `train_layers` decoder layers and final norm
    (the tied embedding stays frozen); returns the parameters left trainable."""
    layers = model.model.layers
    if not 1 <= train_layers <= len(layers):
        raise ValueError(f"train_layers must be in 1..{len(layers)}, got {train_layers}")
    for p in model.parameters():
        p.requires_grad_(False)
    params = [p for module in [*layers[-train_layers:], model.model.norm] for p in module.parameters()]
    for p in params:
        p.requires_grad_(True)
    return params


def reply_loss(model, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of the reply tokens (labels != -100), as `model(..., labels=labels).loss`,
    with the LM head applied only where a label is: the replies are a few % of the tokens, and the
    49k-word head over every prompt position is over a quarter of a float32 step (`benchmarks/tuning_step.py`)."""
    hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state[:, :-1]
    targets = labels[:, 1:]
    scored = targets != -100
    logits = model.lm_head(hidden[scored]).float()
    return torch.nn.functional.cross_entropy(logits, targets[scored])


def tune(
    model,
    examples: Sequence[tuple[list[int], int]],
    settings: TuneSettings,
    pad_id: int,
    log: Callable[[str], None] = print,
    on_step: Callable[[int, dict], None] | None = None,
) -> TuneReport:
    """Fine-tune the top `train_layers` decoder layers of a transformers causal LM in place on
    (ids, reply_start) examples; cross-entropy on reply tokens only. `on_step(step, metrics)` after
    every optimizer step (reply_loss, lr, tokens_per_s)."""

    torch.manual_seed(settings.seed)
    rng = random.Random(settings.seed)
    params = train_top_layers(model, settings.train_layers)
    optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=0.0)

    plan: list[list[int]] = []
    whole, part = int(settings.epochs), settings.epochs - int(settings.epochs)
    for _ in range(whole):
        plan += _batches(examples, settings.batch_tokens, rng)
    if part > 0:
        extra = _batches(examples, settings.batch_tokens, rng)
        plan += extra[: max(1, round(part * len(extra)))]
    total = len(plan)

    def lr_at(step: int) -> float:
        return settings.lr * warmup_cosine(step, settings.warmup_steps, total, floor=0.1)

    report = TuneReport(trained=[n for n, p in model.named_parameters() if p.requires_grad])
    device = next(model.parameters()).device
    dtype = autocast_dtype(settings.precision, device)
    report.matmul_dtype = str(dtype or torch.float32).removeprefix("torch.")
    log(f"matmuls in {report.matmul_dtype} (precision={settings.precision}) on {device}")
    model.train()
    start = time.perf_counter()
    for step, batch in enumerate(plan):
        if settings.minutes is not None and time.perf_counter() - start > 60 * settings.minutes:
            report.stopped_early = True
            log(f"time budget of {settings.minutes} min spent after {step} of {total} steps")
            break
        longest = max(len(examples[i][0]) for i in batch)
        ids = torch.full((len(batch), longest), pad_id, dtype=torch.long)
        labels = torch.full((len(batch), longest), -100, dtype=torch.long)
        mask = torch.zeros((len(batch), longest), dtype=torch.long)
        for row, i in enumerate(batch):
            seq, reply_start = examples[i]
            ids[row, : len(seq)] = torch.tensor(seq)
            labels[row, reply_start : len(seq)] = torch.tensor(seq[reply_start:])
            mask[row, : len(seq)] = 1
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        with matmul_autocast(dtype, device):
            loss = reply_loss(model, ids.to(device), mask.to(device), labels.to(device))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        report.steps += 1
        report.sequences += len(batch)
        report.tokens += int(mask.sum())
        report.losses.append(float(loss.detach()))
        rate = report.tokens / max(time.perf_counter() - start, 1e-9)
        if on_step is not None:
            on_step(step, {"reply_loss": report.losses[-1], "lr": lr_at(step), "tokens_per_s": rate})
        if step % 10 == 0 or step == total - 1:
            log(f"step {step + 1}/{total} loss {report.losses[-1]:.3f} lr {lr_at(step):.2e} {rate:.0f} tok/s")
    report.seconds = time.perf_counter() - start
    model.eval()
    return report


def tune_smollm2_on_chats(
    chats: Sequence[Messages],
    settings: TuneSettings,
    out_dir,
    log: Callable[[str], None],
    on_step: Callable[[int, dict], None],
) -> dict:
    """SmolLM2's top layers tuned on the chats' replies; only the tuned tensors saved to `out_dir`.
    Returns the folder, the report and the token counts (for the caller's tuning.json)."""

    tokenizer = smollm2.load_tokenizer()
    examples = [encode_chat(tokenizer, chat) for chat in chats]
    model = smollm2.load_model(dtype="float32")
    report = tune(
        model, examples, settings, pad_id=tokenizer.pad_token_id or tokenizer.eos_token_id, log=log, on_step=on_step
    )
    folder = smollm2.save_tuned(model, out_dir, report.trained)
    return {
        "folder": folder,
        "report": report,
        "tokens": sum(len(ids) for ids, _ in examples),
        "reply_tokens": sum(len(ids) - start for ids, start in examples),
        "base": f"SmolLM2-135M-Instruct ({smollm2.GGUF_NAME}, dequantized)",
    }


def tune_and_save(
    chats: Sequence[Messages],
    settings: TuneSettings,
    out_dir,
    provenance: dict,
    log: Callable[[str], None],
    on_step: Callable[[int, dict], None],
) -> dict:
    """What both tune flows do: SmolLM2's top layers tuned on the chats' replies, the tuned tensors
    saved with tuning.json (`provenance`: where the chats came from; settings; the loss curve).
    Returns {"folder", "summary"} (the summary is tuning.json's content)."""
    tuned = tune_smollm2_on_chats(chats, settings, out_dir, log=log, on_step=on_step)
    report, folder = tuned["report"], tuned["folder"]
    summary = {
        "base": tuned["base"],
        **provenance,
        "tokens": tuned["tokens"],
        "reply_tokens": tuned["reply_tokens"],
        "settings": asdict(settings),
        "report": {**asdict(report), "losses": [round(x, 4) for x in report.losses]},
    }
    (Path(folder) / "tuning.json").write_text(json.dumps(summary, indent=1))
    return {"folder": str(folder), "summary": summary}


def tuning_metrics(summary: dict, folder: str) -> dict[str, float]:
    """The figures both tune flows report: tokens, steps, the reply loss at the start and at the end
    (mean of the last tenth of the steps: less noisy than one step), the saved size."""
    report = summary["report"]
    losses = report["losses"]
    tail = losses[-max(1, len(losses) // 10) :]
    return {
        "tokens": float(summary["tokens"]),
        "steps": float(report["steps"]),
        "first_reply_loss": losses[0] if losses else float("nan"),
        "final_reply_loss": sum(tail) / len(tail) if tail else float("nan"),
        "saved_mb": folder_size_mb(folder),
    }


def folder_size_mb(folder: str) -> float:
    return sum(p.stat().st_size for p in Path(folder).iterdir()) / 2**20
