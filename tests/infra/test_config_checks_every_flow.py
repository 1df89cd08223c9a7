"""Every flow checks its config at composition: a bad value fails naming the key, before anything runs."""

import pytest

from components.checks import ConfigError
from mlsys.flow import compose, discover_flows

BAD = [
    ("gcn_train", ["epochs=0"], "epochs=0"),
    ("gcn_train", ["fanouts=[]"], "fanouts"),
    ("gcn_train", ["lr=0"], "lr=0"),
    ("gcn_train", ["graph.homophily=1.5"], "homophily"),
    ("compile_calls", ["methods=[llmcompiler,plan_and_pray]"], "methods"),
    ("compile_calls", ["questions=0"], "questions=0"),
    ("compile_calls", ["agent.react_max_steps=0"], "agent.react_max_steps=0"),
    ("coscientist", ["elo.k_min=-1"], "elo.k_min=-1"),
    ("coscientist", ["proximity.backend=bert"], "proximity.backend='bert'"),
    ("coscientist", ["proximity.duplicate_threshold=1.5"], "proximity.duplicate_threshold"),
    ("coscientist", ["report_top=0"], "report_top=0"),
    ("decode_bench", ["bench.repeats=0"], "bench.repeats=0"),
    ("decode_bench", ["bench.sd_gammas=[0,2]"], "bench.sd_gammas"),
    ("decode_bench", ["bench.code_prompts=0", "bench.chat_prompts=0"], "at least one prompt"),
    ("tune_agent", ["train.lr=-1e-4"], "train.lr"),
    ("tune_agent", ["smoke_questions=-1"], "smoke_questions=-1"),
]


def _message(flow: str, overrides: list[str]) -> str:
    with pytest.raises(Exception) as info:
        compose(flow, overrides)
    chain, err = [], info.value
    while err is not None:  # OmegaConf may wrap the dataclass's own error
        chain.append(str(err))
        err = err.__cause__ or err.__context__
    return " | ".join(chain)


@pytest.mark.parametrize("flow,overrides,named", BAD, ids=[f"{f}:{' '.join(o)}" for f, o, _ in BAD])
def test_bad_value_fails_at_composition_naming_the_key(flow, overrides, named):
    assert named in _message(flow, overrides)


@pytest.mark.parametrize("flow", sorted(set(discover_flows()) - {"suite"}))
def test_every_flow_refuses_a_work_dir_that_is_a_file(flow, tmp_path):
    afile = tmp_path / "hostname"
    afile.write_text("not a folder")
    assert "is a file, not a folder" in _message(flow, [f"work_dir={afile}"])


@pytest.mark.parametrize("flow", ["gcn_train", "serve", "selfpico"])
def test_every_flow_refuses_an_unknown_device(flow):
    assert "device='gpu'" in _message(flow, ["device=gpu"])


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)
