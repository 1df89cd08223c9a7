"""The `llm` config group: every option composes into the one LLMConfig type, wrong keys fail, and
build_llm / log_llm_usage work from it."""

import pytest

from components.llm.base import log_llm_usage
from components.llm.config import LLMConfig, redacted
from components.llm.factory import build_llm
from mlsys.flow import compose
from tests.llm.fake_openai import FakeOpenAI

TARGETS = {
    "embedded": "components.llm.factory.embedded",
    "openai": "components.llm.factory.openai_compatible",
    "scripted": "components.llm.factory.scripted",
}


@pytest.mark.parametrize("option", sorted(TARGETS))
def test_every_llm_option_composes_into_llm_config(option):
    cfg = compose("compile_calls", [f"llm={option}"])
    assert isinstance(cfg.llm, LLMConfig) and cfg.llm._target_ == TARGETS[option]


@pytest.mark.parametrize(
    "override, named", [("llm.modle=x", "llm.modle"), ("llm.timeout_s=soon", "llm.timeout_s"), ("llm=gpt", "llm")]
)
def test_wrong_key_value_or_option_fails_naming_it(override, named):
    with pytest.raises(Exception, match=named.replace(".", r"\.")):
        compose("compile_calls", [override])


def test_openai_option_builds_a_working_client_from_overrides():
    with FakeOpenAI() as server:
        cfg = compose(
            "compile_calls",
            ["llm=openai", f"llm.base_url={server.base_url}", "llm.model=served", "llm.max_concurrency=2"],
        )
        llm = build_llm(cfg.llm)
        assert llm.chat([{"role": "user", "content": "hi"}]).text == "echo: hi"
        assert server.requests[0]["body"]["model"] == "served"


def test_scripted_option_and_relative_cache_dir(tmp_path):
    cfg = compose("compile_calls", ["llm=scripted", "llm.responses=[first,second]", "llm.cache_dir=llm_cache"])
    llm = build_llm(cfg.llm, base_dir=tmp_path)
    assert llm.complete("a").text == "first" and llm.complete("a").text == "first"  # second from the cache
    assert (tmp_path / "llm_cache").is_dir() and llm.usage.cached_calls == 1


def test_scripted_needs_responses_or_script_and_script_must_import():
    with pytest.raises(ValueError, match="llm.responses"):
        build_llm(LLMConfig(_target_=TARGETS["scripted"]))
    with pytest.raises(ValueError, match="cannot import 'no.such.fn'"):
        build_llm(LLMConfig(_target_=TARGETS["scripted"], script="no.such.fn"))
    with pytest.raises(ValueError, match="not an importable factory"):
        build_llm(LLMConfig(_target_="components.llm.factory.nothing"))


def test_usage_is_logged_as_metrics_and_keys_are_redacted():
    logged = []

    class Recorder:
        def log_metrics(self, metrics, step=None):
            logged.append((metrics, step))

    llm = build_llm(LLMConfig(_target_=TARGETS["scripted"], responses=["one two"]))
    llm.complete("x")
    metrics = log_llm_usage(Recorder(), llm, prefix="agent.llm", step=3)
    assert logged == [(metrics, 3)] and metrics["agent.llm.calls"] == 1 and metrics["agent.llm.completion_tokens"] == 2
    assert redacted(LLMConfig(api_key="sk-secret"))["api_key"] == "***"
