"""Prefect tasks of the `draft_train` flow: teacher replies, the target's states over them, train the
exit adapter or the EAGLE head, record and register it.

The target (a LeanLlama over packed weights) and the states pass between tasks in process
(cache_policy=NO_CACHE: hashing tensors for a cache key would cost more than the step).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from components.decoding.draft_data import (
    DraftTraining,
    ReadOut,
    TeacherReplies,
    corpus_sequences,
    reply_start,
    split_states,
    teacher_replies,
)
from components.decoding.eagle_head import (
    EagleHead,
    EagleHeadDraft,
    EagleHeadSettings,
    eagle_sequences,
    evaluate_eagle,
    frequent_tokens,
    save_eagle_head,
    train_eagle_head,
)
from components.decoding.engine import measure_cost_ratio
from components.decoding.exit_adapter import (
    ExitAdapter,
    ExitAdapterDraft,
    ExitAdapterSettings,
    evaluate_exit,
    exit_states,
    reply_states,
    save_exit_adapter,
    train_exit_adapter,
)
from components.decoding.models import native_causal_lm
from components.lm import smollm2
from components.lm.teacher_prompts import topical_chats
from components.quant.native import LeanLlama, load_native_smollm2
from components.serving.text import HFTextCodec
from mlsys.progress import Progress
from mlsys.tracking import Tracker

ASSISTANT_HEADER = "<|im_start|>assistant\n"  # SmolLM2's chat template opens the reply with it


@task(name="draft-load-target", cache_policy=NO_CACHE)
def load_target(path: Optional[str]) -> LeanLlama:
    """The native Q4_1 target (the packaged SmolLM2 GGUF, or the GGUF at `path`)."""
    return load_native_smollm2(path)


@task(name="draft-teacher-replies", cache_policy=NO_CACHE)
def teacher_sequences(target: LeanLlama, replies: TeacherReplies, out_dir: str) -> dict:
    """Token sequences to learn on: the teacher-reply corpus when configured, else the target's greedy
    replies to the teacher prompts, written now (also as text files under `out_dir`, the corpus format)."""
    tokenizer = smollm2.load_tokenizer()

    def encode(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    if replies.corpus:
        sequences = corpus_sequences(replies.corpus, encode, replies.max_files, replies.max_tokens)
        header = encode(ASSISTANT_HEADER)
        get_run_logger().info("%d teacher replies read from %s", len(sequences), replies.corpus)
        return {"sequences": sequences, "starts": [reply_start(s, header) for s in sequences], "source": replies.corpus}
    chats = topical_chats()
    chats = chats[:: max(1, len(chats) // replies.count)][: replies.count]  # spread over the topics
    prompts = [
        tokenizer.apply_chat_template([{"role": "user", "content": c}], add_generation_prompt=True, tokenize=False)
        for c in chats
    ]
    stop_ids = HFTextCodec(tokenizer).eos_ids
    progress = Progress(len(prompts), "teacher-replies", every=8)
    sequences, starts, folder = [], [], Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    for i, prompt in enumerate(prompts):
        prompt_ids = encode(prompt)
        seq = teacher_replies(target, [prompt_ids], replies.new_tokens, stop_ids)[0][: replies.max_tokens]
        sequences.append(seq)
        starts.append(len(prompt_ids))
        (folder / f"sample_{i:06d}.txt").write_text(tokenizer.decode(seq), encoding="utf-8")
        progress.update(i + 1, {"tokens": float(sum(map(len, sequences)))})
    return {"sequences": sequences, "starts": starts, "source": str(folder)}


@task(name="draft-train-adapter", cache_policy=NO_CACHE)
def train_adapter(
    target: LeanLlama,
    sequences: list[list[int]],
    starts: list[int],
    adapter_cfg: ExitAdapterSettings,
    train_cfg: DraftTraining,
    seed: int,
    out_dir: str,
    tracker: Tracker,
) -> dict:
    """The target's states at the exit layer and its last layer over the replies of `sequences` (from
    `starts` on), the adapter trained on
    the KL there, evaluated on held-out sequences against the untrained adapter (the plain layer-skip
    draft), its cost c measured, and saved to `out_dir`."""
    torch.manual_seed(seed)
    states = reply_states(exit_states(target, adapter_cfg.layers, sequences), starts)
    train, val = split_states(states, train_cfg.val_fraction, seed)
    head = ReadOut.of(target)
    adapter = ExitAdapter(target.shape.hidden, adapter_cfg.width, target.shape.eps)
    before = evaluate_exit(adapter, val, head)
    progress = Progress(train_cfg.steps, "exit-adapter", every=25)

    def log(step: int, metrics: dict) -> None:
        progress.update(step, metrics)
        tracker.log_metrics(metrics, step=step)

    losses = train_exit_adapter(adapter, train, head, train_cfg, seed=seed, log=log)
    after = evaluate_exit(adapter, val, head)
    draft = ExitAdapterDraft(target, adapter, adapter_cfg.layers)
    cost = measure_cost_ratio(native_causal_lm(target), draft, sequences[0][:32], steps=5)
    metrics = {
        "val_agreement": after["agreement"],  # teacher-forced greedy α of the draft
        "val_agreement_layerskip": before["agreement"],  # the same first layers with no adapter
        "val_agreement_gain": after["agreement"] - before["agreement"],
        "val_kl": after["kl"],
        "val_kl_layerskip": before["kl"],
        "train_kl_first": sum(losses[:25]) / len(losses[:25]),
        "train_kl_last": sum(losses[-25:]) / len(losses[-25:]),
        "train_positions": float(sum(s[0].shape[0] for s in train)),
        "val_positions": after["positions"],
        "draft_cost_c": cost["draft_step_s"] / cost["target_step_s"],  # the α map's c: draft step / target step
    }
    meta = {"target": target.name, "sequences": len(sequences), **metrics}
    save_exit_adapter(adapter, adapter_cfg.layers, out_dir, meta)
    get_run_logger().info(
        "exit adapter at layer %d: greedy agreement %.3f (no adapter: %.3f), c %.2f -> %s",
        adapter_cfg.layers,
        after["agreement"],
        before["agreement"],
        metrics["draft_cost_c"],
        out_dir,
    )
    return {"metrics": metrics, "folder": out_dir}


@task(name="draft-train-eagle", cache_policy=NO_CACHE)
def train_eagle(
    target: LeanLlama,
    sequences: list[list[int]],
    starts: list[int],
    eagle_cfg: EagleHeadSettings,
    train_cfg: DraftTraining,
    seed: int,
    out_dir: str,
    tracker: Tracker,
) -> dict:
    """The target's states (last layer, final norm) over the replies of `sequences`, the EAGLE head trained on
    them (smooth L1 on the next state + cross-entropy to the target's next-token distribution), evaluated on
    held-out sequences against the untrained head, its cost c measured, and saved to `out_dir`."""
    torch.manual_seed(seed)
    data = eagle_sequences(target, sequences, starts)
    train, val = split_states(data, train_cfg.val_fraction, seed)
    vocab_ids = None
    if eagle_cfg.vocab:  # the read-out tokens: the most frequent in the training replies only
        vocab_ids = frequent_tokens(
            [s.tokens.tolist() for s in train], [s.start for s in train], eagle_cfg.vocab, target.vocab_size
        )
    head = EagleHead(target.shape, vocab_ids)
    head_weight = target.head.dequantize().float()
    before = evaluate_eagle(head, val, head_weight)
    progress = Progress(train_cfg.steps, "eagle-head", every=25)

    def log(step: int, metrics: dict) -> None:
        progress.update(step, metrics)
        tracker.log_metrics(metrics, step=step)

    losses = train_eagle_head(head, train, head_weight, train_cfg, eagle_cfg, seed=seed, log=log)
    after = evaluate_eagle(head, val, head_weight)
    draft = EagleHeadDraft(target, head)
    cost = measure_cost_ratio(native_causal_lm(target), draft, sequences[0][:32], steps=5)
    metrics = {
        "val_agreement": after["agreement"],  # teacher-forced greedy α of the head (one step, the target's states)
        "val_agreement_untrained": before["agreement"],
        "val_agreement_gain": after["agreement"] - before["agreement"],
        "val_smooth_l1": after["smooth_l1"],
        "val_ce": after["ce"],
        "train_loss_first": sum(losses[:25]) / len(losses[:25]),
        "train_loss_last": sum(losses[-25:]) / len(losses[-25:]),
        "train_positions": float(sum(s.positions for s in train)),
        "val_positions": after["positions"],
        "read_out_tokens": float(head.vocab_ids.numel() or target.vocab_size),
        "draft_cost_c": cost["draft_step_s"] / cost["target_step_s"],  # the α map's c: draft step / target step
    }
    save_eagle_head(head, out_dir, {"target": target.name, "sequences": len(sequences), **metrics})
    get_run_logger().info(
        "EAGLE head: greedy agreement %.3f (untrained: %.3f), c %.2f, %d read-out tokens -> %s",
        after["agreement"],
        before["agreement"],
        metrics["draft_cost_c"],
        int(metrics["read_out_tokens"]),
        out_dir,
    )
    return {"metrics": metrics, "folder": out_dir}


@task(name="draft-record", cache_policy=NO_CACHE)
def record_draft(
    tracker: Tracker, trained: dict, replies_source: str, registered_name: str, artifact: str
) -> dict[str, float]:
    """Final figures to MLflow and the draft's folder registered as `registered_name`."""
    tracker.log_metrics(trained["metrics"])
    tracker.set_tags({"teacher_replies": replies_source})
    version = tracker.log_model_dir(trained["folder"], artifact, registered_name=registered_name)
    tracker.set_tags({"registered_model": f"{registered_name}/{version}"})
    return trained["metrics"]
