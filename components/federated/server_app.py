"""Flower ServerApp (thin): its main loop is `flower_driver.serve`, driving the scheduler over the Grid."""

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from components.federated.flower_driver import FlowerRun, flower_run_from_run_config, serve
from components.federated.loopback import RunFiles


def make_server_app(run: FlowerRun) -> ServerApp:
    """A ServerApp bound to one prepared run (scheduler, settings, evaluation); the result lands in `run.result`."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        serve(grid, run)

    return app


# Deployment (SuperLink + SuperNodes): the run comes from the run config; progress, the result or the
# reason it failed go to files in the run's own folder, each stamped with the run's nonce.
app = ServerApp()


@app.main()
def deployment_main(grid: Grid, context: Context) -> None:
    files = RunFiles.from_run_config(dict(context.run_config))
    try:
        run = flower_run_from_run_config(dict(context.run_config))
        run.on_started = lambda: files.append_event({"event": "started"})
        run.on_event = lambda row: files.append_event({"event": "row", "row": row})
        files.write_result(serve(grid, run))
    except BaseException as err:
        files.write_error(err)
        raise
