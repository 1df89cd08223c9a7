"""The exit-adapter draft: the native target's first layers + a trained adapter, its files, training and settings."""

from __future__ import annotations

import json

import pytest
import torch

from components.checks import ConfigError
from components.decoding.config import ModelsConfig
from components.decoding.draft_data import (
    DraftTraining,
    ReadOut,
    TeacherReplies,
    corpus_sequences,
    exit_trunk,
    reply_start,
    split_states,
    teacher_replies,
)
from components.decoding.exit_adapter import (
    META_FILE,
    WEIGHTS_FILE,
    ExitAdapter,
    ExitAdapterSettings,
    evaluate_exit,
    exit_states,
    reply_states,
    save_exit_adapter,
    train_exit_adapter,
)
from components.decoding.models import load_draft, native_first_layers, tiny_llama
from tests.decoding.test_decoding import greedy_accepts_matching_ar
from tests.quant.test_native import needs_kernel

SPECULATIVE = ["sd", "pearl", "pearl_no_pre", "pearl_no_post"]
PROMPTS = [[1, 5, 9, 3], [1, 7, 7, 7, 12], [4, 20, 21, 22, 1, 20], [30]]


def _states(target, layers=1, n=12, tokens=24):
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, 64, (4,), generator=gen).tolist() for _ in range(n)]
    return exit_states(target.lean, layers, teacher_replies(target.lean, prompts, tokens))


@pytest.fixture(scope="module")
def trained(native_tiny, tmp_path_factory):
    """An adapter at layer 1 of the tiny target, trained briefly and saved: (folder, losses, before, after)."""
    train, val = split_states(_states(native_tiny), 0.25, seed=0)
    head = ReadOut.of(native_tiny.lean)
    adapter = ExitAdapter(64, 32)
    before = evaluate_exit(adapter, val, head)
    settings = DraftTraining(steps=150, batch_positions=32, lr=3e-3)
    losses = train_exit_adapter(adapter, train, head, settings, seed=0)
    after = evaluate_exit(adapter, val, head)
    folder = save_exit_adapter(adapter, 1, tmp_path_factory.mktemp("adapter"), {"target": native_tiny.name})
    return folder, losses, before, after


def test_an_untrained_adapter_is_the_layer_skip_draft(native_tiny, tmp_path):
    """The adapter starts at the identity: the draft then computes the plain first-layers draft."""
    folder = save_exit_adapter(ExitAdapter(64, 16), 2, tmp_path)
    draft = load_draft("exit_adapter", native_tiny, str(folder))
    ids = torch.tensor([PROMPTS[2]])
    got, _ = draft.forward(ids, None)
    ref, _ = native_first_layers(native_tiny, 2).forward(ids, None)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-4 * float(ref.abs().max()))


@needs_kernel
def test_the_compiled_exit_equals_the_torch_exit(native_tiny):
    """Without a head the compiled call returns the residual stream the torch path computes, in steps too."""
    ids = torch.tensor([PROMPTS[2] + PROMPTS[0]])
    outs = {}
    for fused in (True, False):
        trunk = exit_trunk(native_tiny.lean, 2)
        trunk.fused = fused
        block, cache = trunk.forward(ids[:, :6])
        step, cache = trunk.forward(ids[:, 6:7], cache)
        outs[fused] = torch.cat([block, step], 1)
        assert outs[fused].shape == (1, 7, 64) and bool(trunk._plan) == fused
    torch.testing.assert_close(outs[True], outs[False], rtol=0, atol=2e-3 * float(outs[False].abs().max()))


def test_training_lowers_the_kl_to_the_target(trained):
    _, losses, before, after = trained
    assert sum(losses[-20:]) / 20 < 0.8 * sum(losses[:20]) / 20  # the training loss falls
    assert after["kl"] < before["kl"]  # and so does the held-out KL
    assert after["agreement"] >= before["agreement"]


@pytest.mark.parametrize("method", SPECULATIVE)
def test_greedy_with_the_exit_adapter_equals_autoregressive(native_tiny, trained, method):
    draft = load_draft("exit_adapter", native_tiny, str(trained[0]))
    accepted = greedy_accepts_matching_ar(native_tiny, draft, method, 3, PROMPTS, new_tokens=24)
    assert accepted > 0  # the verify path is exercised


def test_a_missing_or_bad_adapter_file_is_named(native_tiny, trained, tmp_path):
    with pytest.raises(FileNotFoundError, match=META_FILE):
        load_draft("exit_adapter", native_tiny, str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="adapter's folder"):
        load_draft("exit_adapter", native_tiny, None)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / META_FILE).write_text((trained[0] / META_FILE).read_text())
    (bad / WEIGHTS_FILE).write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match=str(bad / WEIGHTS_FILE)):
        load_draft("exit_adapter", native_tiny, str(bad))
    (bad / META_FILE).write_text("{}")
    with pytest.raises(ValueError, match=str(bad / META_FILE)):
        load_draft("exit_adapter", native_tiny, str(bad))
    wide = save_exit_adapter(ExitAdapter(128, 8), 1, tmp_path / "wide")
    with pytest.raises(ValueError, match="hidden size 128"):
        load_draft("exit_adapter", native_tiny, str(wide))
    deep = tmp_path / "deep"
    save_exit_adapter(ExitAdapter(64, 8), 1, deep)
    meta = json.loads((deep / META_FILE).read_text())
    (deep / META_FILE).write_text(json.dumps({**meta, "layers": 3}))
    with pytest.raises(ValueError, match="at layer 3"):
        load_draft("exit_adapter", native_tiny, str(deep))


def test_the_exit_adapter_needs_the_native_target():
    with pytest.raises(ValueError, match="native target"):
        load_draft("exit_adapter", tiny_llama(vocab_size=32, layers=2), "/anywhere")


@pytest.mark.parametrize(
    "build,named",
    [
        (lambda: ModelsConfig(target="tiny_random", draft="exit_adapter"), "models.draft='exit_adapter'"),
        (lambda: ModelsConfig(draft_adapter_registered_name=""), "models.draft_adapter_registered_name"),
        (lambda: ExitAdapterSettings(layers=0), "adapter.layers=0"),
        (lambda: ExitAdapterSettings(width=0), "adapter.width=0"),
        (lambda: DraftTraining(steps=0), "train.steps=0"),
        (lambda: DraftTraining(lr=0.0), "train.lr=0.0"),
        (lambda: DraftTraining(val_fraction=0.9), "train.val_fraction=0.9"),
        (lambda: TeacherReplies(count=1), "replies.count=1"),
        (lambda: TeacherReplies(max_tokens=1), "replies.max_tokens=1"),
    ],
)
def test_bad_settings_are_named(build, named):
    with pytest.raises(ConfigError, match=named.replace("(", r"\(").replace(".", r"\.")):
        build()
    assert ModelsConfig(draft="exit_adapter").draft == "exit_adapter"


def test_split_keeps_whole_sequences_on_each_side():
    states = [(torch.full((3, 2), float(i)), torch.zeros(3, 2)) for i in range(10)]
    train, val = split_states(states, 0.2, seed=1)
    assert len(train) == 8 and len(val) == 2
    assert {float(s[0][0, 0]) for s in train}.isdisjoint({float(s[0][0, 0]) for s in val})
    with pytest.raises(ValueError, match="at least 2 sequences"):
        split_states(states[:1], 0.2, seed=1)


def test_teacher_reply_files_are_read_in_name_order_and_cut(tmp_path):
    for i, text in enumerate(["a b c d e", "f g", "h i j"]):
        (tmp_path / f"sample_{i:06d}.txt").write_text(text)
    (tmp_path / "notes.md").write_text("not a reply")
    got = corpus_sequences(tmp_path, lambda text: [ord(ch) for ch in text.split()[0]] * 9, 2, 4)
    assert got == [[ord("a")] * 4, [ord("f")] * 4]
    with pytest.raises(FileNotFoundError, match="replies.corpus: .*nowhere"):
        corpus_sequences(tmp_path / "nowhere", list, 10, 10)
    with pytest.raises(ValueError, match="holds 1 .txt files"):
        corpus_sequences(tmp_path, list, 1, 10)


def test_only_reply_positions_are_kept():
    header = [7, 8]
    assert reply_start([1, 7, 8, 3, 7, 8, 5, 6], header) == 6  # after the last header: the assistant's turn
    assert reply_start([1, 2, 3], header) == 0  # no chat header (a code prompt): the whole file
    states = [(torch.arange(8.0)[:, None], torch.zeros(8, 1)), (torch.arange(3.0)[:, None], torch.zeros(3, 1))]
    kept = reply_states(states, [6, 0])
    assert kept[0][0].flatten().tolist() == [5.0, 6.0, 7.0]  # position 5 predicts the reply's first token
    assert kept[1][0].shape[0] == 3 and kept[0][1].shape[0] == 3
