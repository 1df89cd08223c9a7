from dataclasses import dataclass
from prefect import task
from flows.platform import FlowConfig, system_flow
from tasks.runners import fan_out

@task
def square(x: int) -> int:
    return x * x

@dataclass
class ScratchConfig(FlowConfig):
    n: int = 4

@system_flow(name="scratch", config=ScratchConfig, demo=["n=2"], summary_metric="total")
def scratch(cfg, tracker):
    """Scratch flow."""
    vals = fan_out(square, [{"x": i} for i in range(cfg.n)])
    for i, v in enumerate(vals):
        tracker.log_metrics({"sq": v}, step=i)
    tracker.log_dict({"vals": vals}, "vals.json")
    return {"total": float(sum(vals))}
