"""lm_train end to end through Hydra + Prefect + MLflow on a tiny config, then resume=latest."""

from __future__ import annotations

import json

import pytest
import torch
from mlflow.tracking import MlflowClient

from components.lm.model import GPT, GPTConfig
from components.lm.trainer import warm_start
from mlsys.flow import compose, get_spec, run
from mlsys.tracking import load_registered_model_dir

TINY = [
    "corpus.roots=[stdlib]",
    "corpus.max_chars=200000",
    "corpus.val_fraction=0.2",
    "train.iters=6",
    "train.batch_size=2",
    "train.block_size=32",
    "train.warmup_iters=2",
    "train.eval_every=6",
    "train.eval_batches=1",
    "model.n_layer=1",
    "model.n_embd=32",
    "model.n_head=2",
    "model.block_size=32",
    "run_name=tiny",
    "sample_tokens=4",
    "log_every=2",
    "checkpoint.keep_last=2",
    "checkpoint.every=1",
]


def test_flow_end_to_end_with_mlflow_and_resume(prefect_harness, flow_overrides, mlflow_uri, tmp_path):
    result = run(compose("lm_train", flow_overrides + TINY))
    client = MlflowClient(mlflow_uri)
    first = client.get_run(result["run_id"])
    assert first.info.status == "FINISHED"
    assert first.data.params["checkpoint.every"] == "1" and first.data.params["model.n_layer"] == "1"
    assert first.data.metrics["checkpoints"] == 6 and first.data.metrics["start_step"] == 0
    assert first.data.metrics["val_perplexity"] > 1
    assert len(client.get_metric_history(result["run_id"], "train_loss")) == 3  # steps 2, 4, 6
    artifacts = {a.path for a in client.list_artifacts(result["run_id"])}
    assert {"model", "samples", "summary.json"} <= artifacts
    assert "model/MLmodel" in {a.path for a in client.list_artifacts(result["run_id"], "model")}  # a pyfunc model
    versions = client.search_model_versions("name='lm-draft'")
    assert [v.run_id for v in versions] == [result["run_id"]]
    saved = load_registered_model_dir("lm-draft", mlflow_uri, version=versions[0].version)
    assert {p.name for p in saved.iterdir()} == {"config.json", "model.safetensors"}  # the folder, as saved
    checkpoints = sorted(p.name for p in (tmp_path / "lm_train" / "checkpoints" / "tiny").iterdir())
    assert checkpoints == ["step_00000005", "step_00000006"]

    # resume=latest with a longer schedule continues from step 6.
    resumed = run(compose("lm_train", flow_overrides + TINY + ["resume=latest", "train.iters=8"]))
    second = client.get_run(resumed["run_id"])
    assert second.data.metrics["start_step"] == 6 and second.data.metrics["checkpoints"] == 2
    assert second.data.tags["resumed_from"].endswith("step_00000006")
    summary = json.loads(
        client.download_artifacts(resumed["run_id"], "summary.json", str(tmp_path))
        and (tmp_path / "summary.json").read_text()
    )
    assert summary["train"]["final_step"] == 8

    # A fresh run in the same folder sets the earlier run's checkpoints aside instead of mixing with them.
    run(compose("lm_train", flow_overrides + TINY + ["train.iters=3"]))
    folder = tmp_path / "lm_train" / "checkpoints"
    assert sorted(p.name for p in (folder / "tiny").iterdir()) == ["step_00000002", "step_00000003"]
    [aside] = folder.glob("tiny.replaced-*")
    assert sorted(p.name for p in aside.iterdir()) == ["step_00000007", "step_00000008"]

    # train.init_from starts from a saved model's weights: at a learning rate of 1e-12 they come out unchanged.

    source = tmp_path / "lm_train" / "tiny"
    run(
        compose(
            "lm_train",
            flow_overrides
            + TINY
            + [
                f"train.init_from={source}",
                "run_name=tiny_warm",
                "train.lr=1e-12",
                "train.min_lr=1e-13",
                "train.iters=2",
                "checkpoint.every=2",
            ],
        )
    )
    for (name, got), want in zip(
        GPT.from_folder(tmp_path / "lm_train" / "tiny_warm").state_dict().items(),
        GPT.from_folder(source).state_dict().values(),
    ):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-9, msg=name)


def test_demo_overrides_compose():
    spec = get_spec("lm_train")
    cfg = compose("lm_train", spec.demo_overrides)
    # demo scale: at most ~26k training tokens through a 2-layer model (seconds of training, not minutes)
    assert cfg.train.iters * cfg.train.batch_size * cfg.train.block_size <= 26_000 and cfg.model.n_layer <= 2


def test_wrong_key_is_named():
    with pytest.raises(Exception, match="train.bogus"):
        compose("lm_train", ["train.bogus=1"])


def test_init_from_a_different_architecture_is_named(tmp_path):
    GPT(GPTConfig(vocab_size=64, block_size=16, n_layer=1, n_head=2, n_embd=16)).save(tmp_path / "small")
    with pytest.raises(ValueError, match="n_embd=16.*set the model.\\* overrides"):
        warm_start(
            GPT(GPTConfig(vocab_size=64, block_size=16, n_layer=1, n_head=2, n_embd=32)), str(tmp_path / "small")
        )
    with pytest.raises(ValueError, match="init_from and train.init_from_teacher"):
        compose("lm_train", ["train.init_from=x", "train.init_from_teacher=true", "train.distill_alpha=1"])


@pytest.mark.slow
def test_flow_under_torchrun_two_processes_logs_rank0_metrics_and_resumes(
    prefect_harness, flow_overrides, mlflow_uri, tmp_path
):
    two = ["launcher=torchrun", "launcher.nproc=2"]
    result = run(compose("lm_train", flow_overrides + TINY + two))
    client = MlflowClient(mlflow_uri)
    data = client.get_run(result["run_id"]).data
    assert data.params["launcher.nproc"] == "2" and data.params["launcher.strategy"] == "ddp"
    assert [m.step for m in client.get_metric_history(result["run_id"], "train_loss")] == [2, 4, 6]
    assert data.metrics["checkpoints"] == 6 and data.metrics["val_perplexity"] > 1
    last = tmp_path / "lm_train" / "checkpoints" / "tiny" / "step_00000006"
    assert sorted(p.name for p in last.glob("*.shard")) == ["rank00000.shard", "rank00001.shard"]
    assert {a.path for a in client.list_artifacts(result["run_id"], "model")} == {
        "model/config.json",
        "model/model.safetensors",
    }
    resumed = run(compose("lm_train", flow_overrides + TINY + two + ["resume=latest", "train.iters=8"]))
    assert client.get_run(resumed["run_id"]).data.metrics["start_step"] == 6

    # A fresh 2-process run stages its checkpoints until its first commit, then sets the earlier run aside.
    run(compose("lm_train", flow_overrides + TINY + two + ["train.iters=3"]))
    folder = tmp_path / "lm_train" / "checkpoints"
    assert sorted(p.name for p in (folder / "tiny").iterdir()) == ["step_00000002", "step_00000003"]
    assert len(list((folder / "tiny" / "step_00000002").glob("*.shard"))) == 2
    [aside] = folder.glob("tiny.replaced-*")
    assert sorted(p.name for p in aside.iterdir()) == ["step_00000007", "step_00000008"]
    assert not list(folder.glob("tiny.incoming-*"))
