"""LLMCompiler (Kim et al., ICML 2024): planner -> streaming plan parser -> Task Fetching Unit -> joiner,
with replanning, and a ReAct baseline on the same tools. No orchestrator imports: the executor is
injected as a `submit(tool, args, kwargs)` callable."""

from components.compiler.agents import AgentResult, LLMCompiler, ReActAgent, parse_final
from components.compiler.fetching import TaskFetchingUnit, ThreadSubmit
from components.compiler.plan import PlanParseError, StreamingPlanParser, Task, parse_plan

__all__ = [
    "AgentResult",
    "LLMCompiler",
    "PlanParseError",
    "ReActAgent",
    "StreamingPlanParser",
    "Task",
    "TaskFetchingUnit",
    "ThreadSubmit",
    "parse_final",
    "parse_plan",
]
