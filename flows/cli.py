"""`mlsys`: one command line for every flow.

    mlsys list                              flows, their config groups and options
    mlsys run <flow> [key=value ...]        Hydra overrides; -m for sweeps; --cfg job to print
    mlsys deployments                       serve every flow as a Prefect deployment (needs a server)
    mlsys server                            a local Prefect server on 127.0.0.1:4200
    mlsys ui                                the MLflow UI on the project's store, 127.0.0.1:5000
"""
from __future__ import annotations

import os
import subprocess
import sys

import tasks  # noqa: F401  (environment defaults)
from tasks.environment import PROJECT_ROOT

USAGE = __doc__


def _config_groups() -> dict[str, list[str]]:
    from flows.platform import CONF_DIR

    groups: dict[str, list[str]] = {}
    for folder in sorted(p for p in CONF_DIR.rglob("*") if p.is_dir()):
        options = sorted(f.stem for f in folder.glob("*.yaml"))
        if options:
            groups[str(folder.relative_to(CONF_DIR))] = options
    return groups


def list_flows() -> None:
    from flows.platform import discover_flows

    specs = sorted(discover_flows().values(), key=lambda s: (s.order, s.name))
    print("Flows (mlsys run <flow> key=value ...):")
    for spec in specs:
        print(f"  {spec.name:<14} {spec.flow.description or ''}")
    print("\nConfig groups (override with group=option):")
    for group, options in _config_groups().items():
        print(f"  {group:<22} {', '.join(options)}")


def run_flow(name: str, argv: list[str]) -> None:
    """Hand the rest of the command line to Hydra (overrides, -m, --cfg, --help) for conf/<name>.yaml."""
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import DictConfig

    from flows.platform import CONF_DIR, get_spec, run, to_typed

    get_spec(name)  # unknown flow: clear error before Hydra starts
    sweep_parent: dict[str, object] = {}

    def job(cfg: DictConfig) -> None:
        typed = to_typed(cfg)
        if HydraConfig.get().mode == RunMode.MULTIRUN and typed.tracking.parent_run_id is None:
            typed.tracking.parent_run_id = _sweep_parent_run(name, typed, sweep_parent)
        result = run(typed)
        _print_result(result)

    defaults = [
        "hydra/job_logging=none",  # keep Prefect's console format (Hydra would take the root logger)
        "hydra/hydra_logging=none",
        f"hydra.run.dir={PROJECT_ROOT}/outputs/{name}/${{now:%Y-%m-%d_%H-%M-%S}}",
        f"hydra.sweep.dir={PROJECT_ROOT}/outputs/{name}-sweep/${{now:%Y-%m-%d_%H-%M-%S}}",
    ]
    # Hydra's parser wants options first and all overrides together after them.
    overrides = [a for a in argv if not a.startswith("-") and ("=" in a or a.startswith("~"))]
    options = [a for a in argv if a not in overrides]
    given = {a.split("=", 1)[0] for a in overrides}
    defaults = [d for d in defaults if d.split("=", 1)[0] not in given]
    sys.argv = [f"mlsys run {name}"] + options + overrides + defaults
    try:
        hydra.main(config_path=str(CONF_DIR), config_name=name, version_base="1.3")(job)()
    finally:
        if sweep_parent:
            from tasks.tracking import close_run

            close_run(sweep_parent["tracker"])


def _sweep_parent_run(name: str, typed, cache: dict) -> str:
    """One MLflow parent run per `-m` sweep; each sweep member nests under it."""
    if "tracker" not in cache:
        from tasks.tracking import open_run

        cache["tracker"] = open_run(typed.tracking.uri, typed.tracking.experiment or name,
                                    run_name=f"{name}-sweep", tags={"flow": name, "sweep": "true"})
    return cache["tracker"].run_id


def _print_result(result: dict) -> None:
    metrics = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in result["metrics"].items())
    print(f"\n{result['flow']}: {metrics}\nMLflow run: {result['link']}")


def serve_deployments() -> None:
    """Serve one deployment per flow (`<flow>/default`) from this process; needs PREFECT_API_URL."""
    from prefect import serve
    from prefect.deployments.runner import EntrypointType

    import flows.entries  # noqa: F401  (module-path entrypoints)
    from flows.platform import discover_flows

    if not os.environ.get("PREFECT_API_URL"):
        sys.exit("mlsys deployments: set PREFECT_API_URL to a Prefect server (start one with `mlsys server`)")
    deployments = [spec.entry.to_deployment(name="default", entrypoint_type=EntrypointType.MODULE_PATH)
                   for spec in discover_flows().values()]
    serve(*deployments)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print(USAGE)
        return
    command, rest = argv[0], argv[1:]
    if command == "list":
        list_flows()
    elif command == "run":
        if not rest:
            sys.exit("mlsys run: name a flow (see `mlsys list`)")
        try:
            run_flow(rest[0], rest[1:])
        except KeyError as err:
            sys.exit(f"mlsys run: {err.args[0]}")
    elif command == "deployments":
        serve_deployments()
    elif command == "server":
        # The UI is off for the temporary per-process servers (start-up cost); on for this one.
        env = {**os.environ, "PREFECT_UI_ENABLED": "true"}
        subprocess.run([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", *rest],
                       check=False, env=env)
    elif command == "ui":
        store = PROJECT_ROOT / "mlflow"
        store.mkdir(exist_ok=True)
        subprocess.run([sys.executable, "-m", "mlflow", "ui", "--host", "127.0.0.1", "--port", "5000", "--workers", "1",
                        "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}",
                        "--default-artifact-root", (store / "artifacts").as_uri(), *rest], check=False)
    else:
        sys.exit(f"mlsys: unknown command {command!r}\n{USAGE}")
