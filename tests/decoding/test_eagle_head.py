"""The EAGLE-style head: its shapes, the target's states handed to it, exactness of SD / PEARL with it,
training, its files and its settings."""

from __future__ import annotations

import json

import pytest
import torch

from components.checks import ConfigError
from components.decoding.bench import greedy_agreement, in_run_alpha
from components.decoding.cache import SequenceRunner
from components.decoding.config import ModelsConfig
from components.decoding.draft_data import DraftTraining, split_states, teacher_replies
from components.decoding.eagle_head import (
    META_FILE,
    WEIGHTS_FILE,
    EagleHead,
    EagleHeadDraft,
    EagleHeadSettings,
    eagle_sequences,
    evaluate_eagle,
    frequent_tokens,
    save_eagle_head,
    train_eagle_head,
)
from components.decoding.engine import build_decoder
from components.decoding.models import NativeCausalLM, load_draft, tiny_llama
from components.quant.native import LeanLlama
from mlsys.flow import compose
from tests.decoding._sampled import assert_caches_consistent_after_sampling
from tests.decoding.test_decoding import greedy_accepts_matching_ar
from tests.decoding.test_exit_adapter import PROMPTS, SPECULATIVE


def odd_target() -> NativeCausalLM:
    """Odd sizes on the torch path: hidden 18, 3 heads of 6 over 1 KV head, vocabulary 37."""
    hf = tiny_llama(vocab_size=37, hidden=18, layers=2, heads=3, kv_heads=1, dtype=torch.float32)
    return NativeCausalLM(LeanLlama.from_hf(hf, "odd"))


def _data(target, n=12, tokens=20):
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, target.vocab_size, (4,), generator=gen).tolist() for _ in range(n)]
    sequences = teacher_replies(target.lean, prompts, tokens)
    return eagle_sequences(target.lean, sequences, [4] * n)


@pytest.fixture(scope="module")
def trained(native_tiny, tmp_path_factory):
    """A head over the tiny target, trained briefly and saved: (folder, losses, before, after)."""
    train, val = split_states(_data(native_tiny), 0.25, seed=0)
    weight = native_tiny.lean.head.dequantize().float()
    torch.manual_seed(0)
    head = EagleHead(native_tiny.lean.shape)
    before = evaluate_eagle(head, val, weight)
    settings = DraftTraining(steps=40, batch_positions=48, lr=3e-3)
    losses = train_eagle_head(head, train, weight, settings, EagleHeadSettings(), seed=0)
    after = evaluate_eagle(head, val, weight)
    folder = save_eagle_head(head, tmp_path_factory.mktemp("head"), {"target": native_tiny.name})
    return folder, losses, before, after


def test_shapes_at_odd_sizes_full_and_restricted_read_out():
    target = odd_target()
    for vocab_ids in (None, torch.tensor([0, 3, 5, 36])):
        torch.manual_seed(0)
        head = EagleHead(target.lean.shape, vocab_ids)
        k, v = head.new_kv(7)
        states = head(torch.randn(7, 18), torch.randn(7, 18), k, v, 0)
        assert states.shape == (7, 18)
        assert head.logits(states, torch.randn(37, 18)).shape == (7, 37 if vocab_ids is None else 4)
        draft = EagleHeadDraft(target.lean, head)
        logits, cache = draft.forward(torch.tensor([[1, 2, 3, 4, 5]]), None)
        step, cache = draft.forward(torch.tensor([[6]]), cache)
        assert logits.shape == (1, 5, 37) and step.shape == (1, 1, 37) and draft.cache_length(cache) == 6
        if vocab_ids is not None:  # tokens outside the read-out set get probability 0
            outside = torch.ones(37, dtype=torch.bool)
            outside[vocab_ids] = False
            assert bool(torch.isinf(logits[0][:, outside]).all()) and bool(torch.isfinite(logits[0][:, ~outside]).all())


@pytest.mark.parametrize("compiled", [True, False])
def test_the_target_hands_the_states_its_head_reads_with_its_own_logits(native_tiny, compiled):
    """forward_states returns forward's logits exactly, and states whose read-out through the head is them."""
    lean = native_tiny.lean if compiled else LeanLlama.from_hf(tiny_llama(vocab_size=40, hidden=16, layers=2), "fp")
    ids = torch.tensor(PROMPTS[2] + PROMPTS[0])
    ref, cache = lean.forward(ids[:6])
    step, _ = lean.forward(ids[6:7], cache)
    got, states, cache = lean.forward_states(ids[:6])
    got_step, states_step, _ = lean.forward_states(ids[6:7], cache)
    assert torch.equal(got, ref) and torch.equal(got_step, step)
    assert states.shape == (6, lean.shape.hidden) and states_step.shape == (1, lean.shape.hidden)
    dense = lean.head.dequantize().float()
    torch.testing.assert_close(states @ dense.T, ref[0], rtol=0, atol=0.05 * float(ref.abs().max()))


def test_handed_states_give_the_teacher_forced_prediction_and_replace_the_heads_own():
    """With the target's states handed, the draft computes what training computes (teacher forcing); the
    positions it first drafted from its own predictions are recomputed once the target's states arrive."""
    target = odd_target()
    torch.manual_seed(1)
    head = EagleHead(target.lean.shape)
    draft = EagleHeadDraft(target.lean, head)
    tokens = [1, 5, 9, 3, 7, 8, 2]
    _, states, _ = target.forward_states(torch.tensor([tokens]), None)
    seq = eagle_sequences(target.lean, [tokens], [0])[0]
    k, v = head.new_kv(len(tokens))
    before = torch.cat([torch.zeros(1, 18), seq.states[:-1]])
    expected = draft.read_out(head(before, seq.embeds, k, v, 0))

    runner = SequenceRunner(draft)
    runner.logits_for(tokens[:4])  # no states yet: the head runs on its own predictions
    runner.logits_for(tokens[:5])
    cache = draft.take_target_states(runner.cache, tokens, 0, states[:5])
    runner.cache = cache
    got = runner.logits_for(tokens)  # positions 1..4 recomputed from the target's states, 5..6 new
    assert cache.exact == 6  # positions 0..5 read the target's state before them; 6 reads the head's own
    torch.testing.assert_close(got[0], expected[5], rtol=1e-4, atol=1e-4)
    fresh = SequenceRunner(draft)
    fresh.cache = draft.take_target_states(None, tokens, 0, states)
    torch.testing.assert_close(fresh.logits_for(tokens), expected, rtol=1e-4, atol=1e-4)


def test_training_lowers_the_loss(trained):
    """The training loss falls, and so does the held-out state error (a random tiny target's next-token
    distribution is noise: its held-out cross-entropy is no signal at this size)."""
    _, losses, before, after = trained
    assert sum(losses[-10:]) / 10 < 0.9 * sum(losses[:10]) / 10
    assert after["smooth_l1"] < before["smooth_l1"]


@pytest.mark.parametrize("method", SPECULATIVE)
def test_greedy_with_the_eagle_head_equals_autoregressive(native_tiny, trained, method):
    draft = load_draft("eagle_head", native_tiny, str(trained[0]))
    accepted = greedy_accepts_matching_ar(native_tiny, draft, method, 3, PROMPTS, new_tokens=24)
    assert accepted > 0  # the verify path is exercised


def test_greedy_with_a_restricted_read_out_equals_autoregressive():
    target = odd_target()
    torch.manual_seed(2)
    draft = EagleHeadDraft(target.lean, EagleHead(target.lean.shape, torch.arange(0, 37, 3)))
    for method in ("sd", "pearl"):
        greedy_accepts_matching_ar(target, draft, method, 2, PROMPTS, new_tokens=12)


def test_frequent_tokens_count_reply_positions_only():
    got = frequent_tokens([[9, 9, 9, 1, 1, 2], [9, 2, 2, 2]], [3, 1], 2, vocab=10)
    assert got.tolist() == [1, 2]  # 2: four times, 1: twice in the replies; 9 only in the prompts (and once)


def test_bad_input_and_files_are_named(native_tiny, trained, tmp_path):
    head = EagleHead(odd_target().lean.shape)
    k, v = head.new_kv(4)
    with pytest.raises(ValueError, match=r"must both be \[T, 18\]"):
        head(torch.zeros(3, 18), torch.zeros(2, 18), k, v, 0)
    with pytest.raises(ValueError, match="exceed the head's cache of 4"):
        head(torch.zeros(3, 18), torch.zeros(3, 18), k, v, 2)
    with pytest.raises(ValueError, match=r"read-out tokens must lie in \[0, 37\)"):
        EagleHead(odd_target().lean.shape, torch.tensor([40]))
    with pytest.raises(ValueError, match="hidden size 18"):
        EagleHeadDraft(native_tiny.lean, head)
    with pytest.raises(FileNotFoundError, match=META_FILE):
        load_draft("eagle_head", native_tiny, str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="head's folder"):
        load_draft("eagle_head", native_tiny, None)
    with pytest.raises(ValueError, match="native target"):
        load_draft("eagle_head", tiny_llama(vocab_size=32, layers=2), str(trained[0]))
    with pytest.raises(ValueError, match="does not hand them"):
        build_decoder("sd", tiny_llama(vocab_size=64, layers=2), load_draft("eagle_head", native_tiny, str(trained[0])))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / META_FILE).write_text((trained[0] / META_FILE).read_text())
    (bad / WEIGHTS_FILE).write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match=str(bad / WEIGHTS_FILE)):
        load_draft("eagle_head", native_tiny, str(bad))
    (bad / META_FILE).write_text(json.dumps({"hidden": 64}))
    with pytest.raises(ValueError, match=str(bad / META_FILE)):
        load_draft("eagle_head", native_tiny, str(bad))


@pytest.mark.parametrize(
    "build,named",
    [
        (lambda: ModelsConfig(target="tiny_random", draft="eagle_head"), "models.draft='eagle_head'"),
        (lambda: ModelsConfig(draft_eagle_registered_name=""), "models.draft_eagle_registered_name"),
        (lambda: EagleHeadSettings(vocab=-1), "eagle.vocab=-1"),
        (lambda: EagleHeadSettings(cls_weight=-0.5), "eagle.cls_weight=-0.5"),
        (lambda: EagleHeadSettings(noise=-1.0), "eagle.noise=-1.0"),
    ],
)
def test_bad_settings_are_named(build, named):
    with pytest.raises(ConfigError, match=named.replace("(", r"\(").replace(".", r"\.")):
        build()
    assert ModelsConfig(draft="eagle_head").draft == "eagle_head"


def test_the_draft_train_config_composes_the_eagle_head(flow_overrides):
    cfg = compose("draft_train", flow_overrides + ["draft=eagle_head", "eagle.vocab=512"])
    assert cfg.draft.kind == "eagle_head" and cfg.eagle.vocab == 512
    assert cfg.folder_name == "eagle_head" and cfg.model_name == "eagle-head"
    assert compose("draft_train", flow_overrides).folder_name == "exit_adapter"
    with pytest.raises(Exception, match="draft.kind"):
        compose("draft_train", flow_overrides + ["draft.kind=medusa"])


def test_the_benchmark_measures_it_with_the_targets_states(native_tiny, trained):
    """Teacher-forced α gets the target's states over the same prefix; PEARL's in-run α reproduces AR."""
    draft = load_draft("eagle_head", native_tiny, str(trained[0]))
    sequences = [(p, native_tiny.lean.greedy(p, 12)) for p in PROMPTS[:3]]
    with pytest.raises(ValueError, match="needs the target"):
        greedy_agreement(draft, sequences)
    hits = total = 0
    for prompt, generated in sequences:
        tokens = list(prompt) + list(generated)
        _, states, _ = native_tiny.forward_states(torch.tensor([tokens[:-1]]), None)
        cache = draft.take_target_states(None, tokens[:-1], 0, states)
        predicted = draft.forward(torch.tensor([tokens[:-1]]), cache)[0][0, len(prompt) - 1 :].argmax(-1)
        hits, total = hits + int((predicted == torch.tensor(generated)).sum()), total + len(generated)
    assert greedy_agreement(draft, sequences, native_tiny) == hits / total
    run = in_run_alpha(native_tiny, draft, sequences, c=0.3, threads=2)
    assert run["greedy_mismatches"] == 0 and run["gamma"] == 3 and 0 <= run["alpha_in_run"] <= 1


def test_caches_stay_consistent_through_a_sampled_pearl_run(native_tiny, trained):
    draft = load_draft("eagle_head", native_tiny, str(trained[0]))
    decoder = build_decoder("pearl", native_tiny, draft, gamma=3, parallel=False)
    assert_caches_consistent_after_sampling(decoder, PROMPTS[2], 40)


def test_serve_finds_the_flows_eagle_head_folder(tmp_path):
    from tasks.serve import _resolve_draft_source  # noqa: PLC0415  (Prefect: only this test needs it)

    folder = tmp_path / "draft_train" / "eagle_head"
    folder.mkdir(parents=True)
    assert _resolve_draft_source(ModelsConfig(draft="eagle_head"), tmp_path, None) == ("eagle_head", str(folder))
    models = ModelsConfig(draft="eagle_head", draft_path="elsewhere")
    assert _resolve_draft_source(models, tmp_path, None) == ("eagle_head", "elsewhere")
