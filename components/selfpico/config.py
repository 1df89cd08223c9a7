"""The `sp_predictor` config group: which value predictor (`_target_`) and the LLM-guided one's settings.

conf/sp_predictor/{as_is,naive,rule_based,llm}.yaml name the class; `build_predictor` builds it, and
hands the LLM to a predictor whose constructor takes one (the LLM-guided predictor), with the
rule-based predictor as its fallback.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Optional

from components.checks import class_named
from components.llm.base import LLM
from components.selfpico.predictors import Predictor, RuleBasedPredictor


@dataclass
class PredictorConfig:
    _target_: str = "components.selfpico.predictors.RuleBasedPredictor"  # AsIs | Naive | RuleBased | LLM Predictor
    max_tokens: Optional[int] = None  # LLM-guided only: a value is one short expression; None: the class's default
    few_shot: Optional[bool] = None  # LLM-guided only; None: few-shot for the packaged model, zero-shot for a tuned one
    candidates: Optional[int] = None  # LLM-guided only: values asked per name, the furthest-running kept; None: default
    retry_temperature: Optional[float] = None  # LLM-guided only: a reply refused on the host is asked again
    # sampled at this temperature (0: greedy); None: the class's default

    def __post_init__(self) -> None:
        predictor_class(self)  # an unknown `_target_` fails at composition, naming the key


def predictor_class(cfg: PredictorConfig) -> type[Predictor]:
    """The Predictor class `cfg._target_` names."""
    return class_named("predictor._target_", cfg._target_, Predictor)


def predictor_needs_llm(cfg: PredictorConfig) -> bool:
    return "llm" in inspect.signature(predictor_class(cfg)).parameters


def build_predictor(cfg: PredictorConfig, llm: Optional[LLM] = None, tuned_model: bool = False) -> Predictor:
    """The predictor `cfg` configures; unset (None) fields take the class's defaults. An LLM-guided one gets
    `llm`, few-shot prompts unless the model was tuned for the task (`tuned_model`: it was trained
    zero-shot, examples would only be copied), and the rule-based predictor for replies with no value."""
    chosen = predictor_class(cfg)
    kwargs = {k: v for k, v in vars(cfg).items() if k != "_target_" and v is not None}
    if not predictor_needs_llm(cfg):
        return chosen(**kwargs)
    if llm is None:
        raise ValueError(f"predictor {cfg._target_} needs an LLM")
    kwargs.setdefault("few_shot", not tuned_model)
    return chosen(llm, fallback=RuleBasedPredictor(), **kwargs)
