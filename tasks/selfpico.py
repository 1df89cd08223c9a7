"""Prefect tasks of the `selfpico` flow: gather snippets, execute a batch of them in the sandbox."""

from __future__ import annotations

from dataclasses import asdict, is_dataclass
from typing import Any

from prefect import task

from components.sandbox import Sandbox, SandboxLimits
from components.selfpico.executor import Snippet, execute_snippet
from components.selfpico.predictors import Predictor, RuleBasedPredictor
from components.selfpico.snippets import heldout_snippets, package_function_snippets, user_snippets, written_snippets
from tasks.llm import build_llm

_LLM_PREDICTOR = "components.selfpico.predictors.LLMPredictor"


def build_predictor(predictor_cfg: Any, llm_cfg: Any = None) -> Predictor:
    """Instantiate the predictor `_target_` names; the LLM-guided one gets the configured LLM."""
    from hydra.utils import instantiate

    values = asdict(predictor_cfg) if is_dataclass(predictor_cfg) else dict(predictor_cfg)
    values = {k: v for k, v in values.items() if v is not None}
    if values["_target_"] == _LLM_PREDICTOR:
        values["llm"] = build_llm(llm_cfg)
        if "few_shot" not in values:  # a tuned model was trained zero-shot: examples would only be copied
            values["few_shot"] = not getattr(llm_cfg, "model_path", None)
        values["fallback"] = RuleBasedPredictor()  # a reply with no code at all still yields a value
    return instantiate(values)


@task(name="selfpico-load-snippets")
def load_snippets(
    written: bool,
    written_limit: int | None,
    package_modules: list[str],
    package_count: int,
    seed: int,
    user: str | None = None,
    heldout: bool = False,
) -> list[Snippet]:
    """The user's snippets (`user`: folder, file or glob) alone when given; else the held-out set, or the
    written snippets plus package function bodies."""
    if user:
        return user_snippets(user)
    if heldout:
        return heldout_snippets()
    chosen = written_snippets()[:written_limit] if written else []
    if package_count:
        chosen += package_function_snippets(package_modules, package_count, seed=seed)
    if not chosen:
        raise ValueError("selfpico: no snippets selected (written=false and package_count=0)")
    return chosen


@task(name="selfpico-execute-batch")
def execute_batch(
    snippets: list[Snippet], predictor_cfg: Any, llm_cfg: Any, limits: dict, max_runs: int, max_retries: int
) -> list[dict]:
    """Execute a batch of snippets with one predictor; every run happens in the sandbox."""
    predictor = build_predictor(predictor_cfg, llm_cfg)
    sandbox = Sandbox(SandboxLimits(**limits))
    reports = [
        execute_snippet(s, predictor, sandbox, max_runs=max_runs, max_retries=max_retries).as_dict() for s in snippets
    ]
    llm = getattr(predictor, "llm", None)
    usage = llm.usage.as_dict() if llm is not None else {}
    for report in reports:
        report["origin"] = next(s.origin for s in snippets if s.id == report["snippet_id"])
        report["expected_error"] = next(s.expected_error for s in snippets if s.id == report["snippet_id"])
    return [{**r, "batch_llm_usage": usage} for r in reports]
