"""Tuning a small model to the agents' formats: the oracle transcripts, their encoding, the loop,
and loading the tuned folder through the embedded backend."""

from __future__ import annotations

import random

import pytest
import torch

from components.checks import ConfigError
from components.compiler.evaluation import build_agent
from components.compiler.parallelqa import build_questions
from components.compiler.plan import END_OF_PLAN
from components.compiler.prompts import prompt_kind
from components.compiler.tuning import (
    TuneSettings,
    autocast_dtype,
    encode_chat,
    oracle_transcripts,
    reply_loss,
    subsample_react,
    tune,
)
from components.decoding.models import tiny_llama
from components.llm.embedded import EmbeddedLLM
from components.llm.factory import build_llm
from components.lm.smollm2 import load_tokenizer
from components.tools import build_knowledge_base
from mlsys.environment import PROJECT_ROOT
from mlsys.flow import compose


@pytest.fixture(scope="module")
def chats():
    return oracle_transcripts([3], per_template=1)


def test_transcripts_record_every_call_of_both_agents_without_examples(chats):
    questions = build_questions(build_knowledge_base(3), per_template=1, seed=3)
    kinds = [prompt_kind(c) for c in chats]
    # one plan and one join per question (the oracle never replans); ReAct: one call per plan step
    # (lookups, then the arithmetic or comparison, then Finish)
    assert kinds.count("planner") == kinds.count("joiner") == len(questions)
    assert kinds.count("react") == sum(len(q.plan) for q in questions)
    for chat in chats:
        assert [m["role"] for m in chat] == ["system", "user", "assistant"]  # no few-shot pairs
        if prompt_kind(chat) == "planner":
            assert chat[-1]["content"].endswith(END_OF_PLAN) and "join()" in chat[-1]["content"]
    finishes = [c[-1]["content"] for c in chats if prompt_kind(c) == "react" and "Finish(" in c[-1]["content"]]
    assert len(finishes) == len(questions)


def test_questions_naming_excluded_entities_are_skipped():
    names = [e.name for e in build_knowledge_base(3).entities.values()]
    assert oracle_transcripts([3], per_template=1, exclude_names=names) == []


def test_encoding_puts_the_reply_and_its_end_of_turn_after_the_prompt(chats):
    tokenizer = load_tokenizer()
    ids, start = encode_chat(tokenizer, chats[0])
    reply = tokenizer.decode(ids[start:])
    assert reply.startswith(chats[0][-1]["content"]) and "<|im_end|>" in reply
    assert chats[0][-1]["content"] not in tokenizer.decode(ids[:start])


def test_tuning_lowers_the_reply_loss_and_trains_only_the_top_layers():
    model = tiny_llama(vocab_size=64, hidden=32, layers=3, dtype=torch.float32)
    gen = torch.Generator().manual_seed(0)
    examples = [(torch.randint(3, 64, (24,), generator=gen).tolist(), 12) for _ in range(4)]
    frozen = model.model.layers[0].self_attn.q_proj.weight.clone()
    embed = model.model.embed_tokens.weight.clone()
    top = model.model.layers[-1].mlp.up_proj.weight.clone()

    def reply_loss():
        with torch.no_grad():
            ids = torch.tensor([e[0] for e in examples])
            labels = ids.clone()
            labels[:, :12] = -100
            return float(model(input_ids=ids, labels=labels).loss)

    before = reply_loss()
    report = tune(
        model,
        examples,
        TuneSettings(train_layers=1, lr=3e-3, warmup_steps=1, epochs=30, batch_tokens=96),
        pad_id=0,
        log=lambda _: None,
    )
    assert report.steps == 30 and report.tokens == 30 * 4 * 24
    assert reply_loss() < 0.5 * before
    assert torch.equal(model.model.layers[0].self_attn.q_proj.weight, frozen)
    assert torch.equal(model.model.embed_tokens.weight, embed)
    assert not torch.equal(model.model.layers[-1].mlp.up_proj.weight, top)
    with pytest.raises(ValueError, match="train_layers"):
        tune(model, examples, TuneSettings(train_layers=9), pad_id=0)


@pytest.mark.parametrize("lengths", [(7, 7), (5, 11, 2), (13,)])
def test_reply_loss_equals_the_models_own_loss_on_padded_batches(lengths):
    # the head applied only at reply positions must give the loss the full-vocabulary head gives
    model = tiny_llama(vocab_size=50, hidden=16, layers=2, dtype=torch.float32)
    gen = torch.Generator().manual_seed(1)
    longest = max(lengths)
    ids = torch.zeros((len(lengths), longest), dtype=torch.long)
    labels = torch.full_like(ids, -100)
    mask = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        ids[row, :n] = torch.randint(1, 50, (n,), generator=gen)
        labels[row, n // 2 : n] = ids[row, n // 2 : n]
        mask[row, :n] = 1
    expected = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    assert torch.allclose(reply_loss(model, ids, mask, labels), expected, rtol=1e-5, atol=1e-6)


def test_precision_is_checked_and_resolved():
    with pytest.raises(ConfigError, match="train.precision"):
        TuneSettings(precision="fp16")
    cpu = torch.device("cpu")
    assert autocast_dtype("fp32", cpu) is None and autocast_dtype("bf16", cpu) is torch.bfloat16
    assert autocast_dtype("auto", cpu) in (None, torch.bfloat16)
    examples = [(list(range(3, 19)), 8)] * 2
    for precision, dtype in (("bf16", "bfloat16"), ("fp32", "float32")):
        model = tiny_llama(vocab_size=32, hidden=16, layers=2, dtype=torch.float32)
        report = tune(model, examples, TuneSettings(train_layers=1, precision=precision), pad_id=0, log=lambda _: None)
        assert report.matmul_dtype == dtype and report.steps == 1 and report.losses[0] > 0


def test_embedded_backend_loads_a_tuned_folder(tmp_path):
    tokenizer = load_tokenizer()
    model = tiny_llama(len(tokenizer), hidden=16, layers=1, heads=2, dtype=torch.float32)
    model.save_pretrained(tmp_path / "tuned")
    tokenizer.save_pretrained(tmp_path / "tuned")
    llm = EmbeddedLLM(model_path=str(tmp_path / "tuned"), prefix_cache_entries=0)
    out = llm.chat([{"role": "user", "content": "hi"}], max_tokens=4)
    assert out.completion_tokens <= 4 and out.prompt_tokens > 3  # a random 1-layer model: its text is noise
    assert llm.cache_identity()["model_path"] == str(tmp_path / "tuned")  # cached replies never mix models
    with pytest.raises(FileNotFoundError, match="model_path"):
        EmbeddedLLM(model_path=str(tmp_path / "missing"))


def test_react_subsample_keeps_every_plan_and_join_and_each_final_step(chats):
    kept = subsample_react(chats, 2, random.Random(0))
    kinds = [prompt_kind(c) for c in chats]
    kept_kinds = [prompt_kind(c) for c in kept]
    assert kept_kinds.count("planner") == kinds.count("planner") and kept_kinds.count("joiner") == kinds.count("joiner")
    react = [c for c in kept if prompt_kind(c) == "react"]
    finishes = [c for c in react if "Finish(" in c[-1]["content"]]
    assert len(finishes) == kinds.count("planner")  # every question's last ReAct step is kept
    assert len(react) == 2 * len(finishes)  # and exactly one other step of each (all questions have >= 3)


def test_flow_config_runs_a_tuned_model_without_examples():
    cfg = compose("compile_calls", ["agent.few_shot=false", "llm.model_path=data/no_such_model", "llm.threads=null"])
    agent = build_agent("react", llm=None, tools={}, submit=None, settings=cfg.agent)
    assert agent.examples == ()
    with pytest.raises(FileNotFoundError, match=str(PROJECT_ROOT / "data" / "no_such_model")):
        build_llm(cfg.llm)  # relative paths resolve under the project root, wherever the flow runs


def test_each_tuning_flow_composes_its_own_precision_and_takes_an_override():
    # tune_agent keeps the float32 arithmetic its benchmarked model was tuned with; tune_selfpico
    # takes bf16 where the device has it
    assert compose("tune_agent").train.precision == "fp32"
    assert compose("tune_selfpico").train.precision == "auto"
    assert compose("tune_agent", ["train.precision=auto"]).train.precision == "auto"
    with pytest.raises(ConfigError, match="train.precision"):
        compose("tune_selfpico", ["train.precision=half"])
