"""Training pieces: distillation loss, a teacher-distilled run, settings validation, SmolLM2 fine-tuning."""

from __future__ import annotations

import pytest
import torch
from mlflow.tracking import MlflowClient

from components.lm.model import GPT, GPTConfig
from components.lm.training import TrainSettings, distillation_loss, train_loop
from mlsys.flow import compose, run
from tests.checkpoint import _tiny


def test_distillation_loss_is_zero_only_for_matching_distributions():
    logits = torch.randn(2, 5, 50)
    assert distillation_loss(logits, logits, 2.0).abs().item() < 1e-6
    assert distillation_loss(logits, logits + torch.randn(2, 5, 50), 2.0).item() > 0.01


def test_distilled_training_moves_the_student_towards_the_teacher():
    torch.manual_seed(3)
    teacher = GPT(GPTConfig(vocab_size=_tiny.VOCAB, block_size=16, n_layer=1, n_head=2, n_embd=32)).eval()
    model, optimizer, scheduler, gen = _tiny.fresh(40)
    s = TrainSettings(
        iters=40,
        batch_size=4,
        block_size=16,
        warmup_iters=2,
        lr=1e-2,
        eval_every=1000,
        distill_alpha=1.0,
        distill_temperature=1.0,
    )
    kls = []
    train_loop(
        model,
        optimizer,
        scheduler,
        _tiny.InMemoryCorpus(),
        s,
        data_generator=gen,
        teacher=teacher,
        on_metrics=lambda step, m: kls.append(m["distill_kl"]),
    )
    assert len(kls) == 40 and sum(kls[-5:]) / 5 < 0.5 * sum(kls[:5]) / 5


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="train.iters"):
        TrainSettings(iters=0)
    with pytest.raises(ValueError, match="distill_alpha"):
        TrainSettings(distill_alpha=2.0)


@pytest.mark.slow
def test_smollm2_fine_tuning_flow(prefect_harness, flow_overrides, mlflow_uri):
    result = run(
        compose(
            "lm_train",
            flow_overrides
            + [
                "model=smollm2_135m",
                "corpus.roots=[stdlib]",
                "corpus.max_chars=200000",
                "corpus.val_fraction=0.2",
                "train.iters=2",
                "train.batch_size=1",
                "train.block_size=32",
                "train.warmup_iters=1",
                "train.lr=2e-5",
                "train.eval_every=2",
                "train.eval_batches=1",
                "run_name=ft",
                "sample_tokens=4",
                "checkpoint.every=1",
            ],
        )
    )
    client = MlflowClient(mlflow_uri)
    run_data = client.get_run(result["run_id"]).data
    assert run_data.metrics["ckpt_bytes"] > 1.5e9  # weights + two AdamW moments in fp32
    assert run_data.metrics["val_perplexity"] < 1000  # a pretrained model, not a random one
    assert client.search_model_versions("name='lm-smollm2-ft'")
