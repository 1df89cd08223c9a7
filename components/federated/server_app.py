"""Flower ServerApp (thin): its main loop is `flower_driver.serve`, driving the scheduler over the Grid."""
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from components.federated.flower_driver import FlowerRun, serve


def make_server_app(run: FlowerRun) -> ServerApp:
    """A ServerApp bound to one prepared run (scheduler, settings, evaluation); the result lands in `run.result`."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        serve(grid, run)

    return app
