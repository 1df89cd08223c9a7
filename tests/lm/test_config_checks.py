"""lm_train's config is checked when it is composed, before anything trains, moves or writes; a fresh
run leaves an earlier run's checkpoints where they are until it has committed one of its own."""

from __future__ import annotations

import pytest

from components.checks import ConfigError
from components.lm.launch import MetricsTail
from mlsys.flow import compose, run
from tests.lm.test_flow import TINY


def test_checkpoint_every_negative_fails_at_composition():
    with pytest.raises(ConfigError, match=r"checkpoint.every=-1: must be >= 1"):
        compose("lm_train", ["checkpoint.every=-1"])
    with pytest.raises(ConfigError, match=r"checkpoint.every=0"):
        compose("lm_train", ["checkpoint.every=0"])


def test_keep_last_zero_fails_at_composition(tmp_path):
    with pytest.raises(ConfigError, match=r"checkpoint.keep_last=0: must be >= 1"):
        compose("lm_train", [f"work_dir={tmp_path}", "checkpoint.keep_last=0"])
    assert not any(tmp_path.iterdir())  # nothing was created, let alone moved


def test_work_dir_that_is_a_file_fails_at_composition(tmp_path):
    with pytest.raises(ConfigError, match=r"work_dir=.*/etc/hostname.*is a file, not a folder"):
        compose("lm_train", ["work_dir=/etc/hostname"])
    inside_a_file = tmp_path / "a_file"
    inside_a_file.write_text("x")
    with pytest.raises(ConfigError, match="work_dir"):
        compose("lm_train", [f"work_dir={inside_a_file}/sub/dir"])
    with pytest.raises(ConfigError, match="checkpoint.dir"):
        compose("lm_train", [f"checkpoint.dir={inside_a_file}"])


def test_unknown_model_fails_at_composition():
    with pytest.raises(
        ConfigError,
        match=r"model._target_='components.lm.model.build_rnn': must be one of "
        r"'components.lm.model.build_gpt', 'components.lm.smollm2.build_for_training'",
    ):
        compose("lm_train", ["model._target_=components.lm.model.build_rnn"])


@pytest.mark.parametrize(
    "override, key",
    [
        (["launcher=torchrun", "launcher.nproc=0"], "launcher.nproc"),
        (["launcher=torchrun", "launcher.strategy=zero3"], "launcher.strategy"),
        (["launcher.nproc=2"], "launcher.nproc=2: more than one process needs launcher=torchrun"),
        (["launcher=torchrun", "launcher.nnodes=2"], "launcher.rdzv_endpoint=None: launcher.nnodes=2 needs"),
        (["launcher=torchrun", "launcher.rdzv_endpoint=node0"], "launcher.rdzv_endpoint='node0': must be host:port"),
        (["launcher=torchrun", "launcher.rdzv_endpoint=node0:0"], "port=0: must be between 1 and 65535"),
        (["resume=/no/such/step_00000010"], "resume='/no/such/step_00000010': must be 'latest' or an existing"),
        (["checkpoint.buffer_slots=0"], "checkpoint.buffer_slots"),
        (["checkpoint.host_buffer_mb=0"], "checkpoint.host_buffer_mb"),
        (["log_every=0"], "log_every"),
    ],
)
def test_bad_launcher_and_checkpoint_values_fail_at_composition(override, key):
    with pytest.raises(ConfigError, match=key.replace("[", r"\[")):
        compose("lm_train", override)


def test_a_good_multi_node_launcher_composes():
    cfg = compose(
        "lm_train",
        ["launcher=torchrun", "launcher.nnodes=2", "launcher.rdzv_endpoint=node0:29400", "launcher.strategy=fsdp"],
    )
    assert (cfg.launcher.nproc, cfg.launcher.nnodes, cfg.launcher.strategy) == (2, 2, "fsdp")


def test_fresh_run_failing_before_its_first_checkpoint_keeps_the_earlier_run(prefect_harness, flow_overrides, tmp_path):
    """Before: a fresh run moved the earlier run's checkpoints aside first, then failed (here: its
    checkpoint does not fit a 1 MB host buffer), so `resume=latest` found nothing and started at 0."""
    run(compose("lm_train", flow_overrides + TINY))
    folder = tmp_path / "lm_train" / "checkpoints"
    with pytest.raises(Exception, match="does not fit the host buffer"):
        run(compose("lm_train", flow_overrides + TINY + ["checkpoint.host_buffer_mb=1"]))
    assert sorted(p.name for p in (folder / "tiny").iterdir()) == ["step_00000005", "step_00000006"]
    assert not list(folder.glob("tiny.replaced-*"))
    resumed = run(compose("lm_train", flow_overrides + TINY + ["resume=latest", "train.iters=7"]))
    assert resumed["metrics"]["start_step"] == 6


def test_metrics_tail_forwards_complete_lines_only(tmp_path):
    path = tmp_path / "metrics.jsonl"
    got = []
    tail = MetricsTail(path)
    tail.forward(lambda step, m: got.append((step, m)))  # no file yet: nothing
    path.write_text('{"step": 1, "metrics": {"train_loss": 2.5}}\n{"step": 2, "metr')
    tail.forward(lambda step, m: got.append((step, m)))
    assert got == [(1, {"train_loss": 2.5})]
    with open(path, "a") as fh:
        fh.write('ics": {"train_loss": 2.25, "note": "\\u00e9\\n"}}\n')
    tail.forward(lambda step, m: got.append((step, m)))
    assert got == [(1, {"train_loss": 2.5}), (2, {"train_loss": 2.25, "note": "é\n"})]
