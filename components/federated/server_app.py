"""Flower ServerApp (thin): its main loop is `flower_driver.serve`, driving the scheduler over the Grid."""
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from components.federated.flower_driver import FlowerRun, flower_run_from_run_config, serve


def make_server_app(run: FlowerRun) -> ServerApp:
    """A ServerApp bound to one prepared run (scheduler, settings, evaluation); the result lands in `run.result`."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        serve(grid, run)

    return app


# Deployment (SuperLink + SuperNodes): the run comes from the run config; the result goes to a file.
app = ServerApp()


@app.main()
def deployment_main(grid: Grid, context: Context) -> None:
    import json
    import math
    from pathlib import Path

    import numpy as np

    result = serve(grid, flower_run_from_run_config(dict(context.run_config)))
    np.savez(Path(str(context.run_config["result-path"])).with_suffix(".npz"), **result.weights)
    clean = lambda v: None if isinstance(v, float) and not math.isfinite(v) else v  # noqa: E731
    Path(str(context.run_config["result-path"])).write_text(json.dumps({
        "summary": {k: clean(v) for k, v in result.summary.items()}, "history": result.history,
        "records": [r.__dict__ for r in result.records], "lost": result.lost_jobs}))
