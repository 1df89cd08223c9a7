"""`mlsys`: one command line for every flow.

mlsys list                              flows, their config groups and options
mlsys run <flow> [key=value ...]        Hydra overrides; -m for sweeps; --cfg job to print
mlsys run <flow> --help                 that flow's config groups and every key with its meaning
mlsys promote <model> [version]         move the registry alias @serving (default: the @candidate)
                                        if it passes its quality check [--check 'metric<=goal'] [--force]
mlsys deployments                       serve every flow as a Prefect deployment (needs a server)
mlsys server                            a local Prefect server on 127.0.0.1:4200
mlsys ui                                the MLflow UI on the project's store, 127.0.0.1:5000
mlsys -sc install=bash                  tab completion: eval "$(mlsys -sc install=bash)"
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys

import hydra
import yaml
from omegaconf import DictConfig
from prefect import serve
from prefect.deployments.runner import EntrypointType

from mlsys.compose import CONF_DIR, InvalidConfig, to_typed
from mlsys.environment import PROJECT_ROOT
from mlsys.flow import discover_flows, get_spec, run
from mlsys.schema import describe_fields
from mlsys.tracking import promote

USAGE = __doc__
COMMANDS = ["list", "run", "promote", "deployments", "server", "ui"]


def _config_groups() -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for folder in sorted(p for p in CONF_DIR.rglob("*") if p.is_dir()):
        options = sorted(f.stem for f in folder.glob("*.yaml"))
        if options:
            groups[str(folder.relative_to(CONF_DIR))] = options
    return groups


def flow_groups(name: str) -> list[tuple[str, str, list[str]]]:
    """(group as overridden, default option, options) for the groups in conf/<name>.yaml's defaults."""
    defaults = yaml.safe_load((CONF_DIR / f"{name}.yaml").read_text()).get("defaults", [])
    rows = []
    for entry in defaults:
        if isinstance(entry, dict):
            group, default = next(iter(entry.items()))
            if group.startswith(("override", "/")):
                continue
            folder = CONF_DIR / group.split("@", 1)[0]
            rows.append((group, str(default), sorted(p.stem for p in folder.glob("*.yaml"))))
    return rows


def list_flows() -> None:
    specs = sorted(discover_flows().values(), key=lambda s: (s.order, s.name))
    print("Flows (mlsys run <flow> key=value ...; mlsys run <flow> --help for its keys):")
    for spec in specs:
        print(f"  {spec.name:<14} {spec.flow.description or ''}")
    print("\nConfig groups (override with group=option):")
    for group, options in _config_groups().items():
        print(f"  {group:<22} {', '.join(options)}")


def flow_help(name: str) -> str:
    """What `mlsys run <flow> --help` prints: this flow's groups and keys, with defaults and meanings."""
    spec = get_spec(name)
    lines = [
        f"{name}: {spec.flow.description or ''}",
        "",
        f"Usage: mlsys run {name} [key=value ...] [group=option ...]   (-m: sweep comma lists, "
        "e.g. seed=1,2; --cfg job: print the composed config)",
        "",
    ]
    groups = flow_groups(name)
    if groups:
        lines.append("Config groups (group=option; * = default):")
        width = max(len(g) for g, _, _ in groups)
        for group, default, options in groups:
            shown = ", ".join(f"{o}*" if o == default else o for o in options)
            lines.append(f"  {group:<{width}}  {shown}")
        lines.append("")
    lines.append("Keys (key=value; default; meaning):")
    rows = describe_fields(spec.config_cls, spec.defaults)
    width = min(max(len(k) for k, _, _ in rows), 36)
    for key, default, meaning in rows:
        value = "null" if default is None else str(default)
        value = value if len(value) <= 28 else value[:25] + "..."
        lines.append(f"  {key:<{width}} = {value:<28} {meaning}".rstrip())
    return "\n".join(lines)


def run_flow(name: str, argv: list[str]) -> None:
    """Hand the rest of the command line to Hydra (overrides, --cfg, --info, -sc) for conf/<name>.yaml;
    `-m` sweeps run as one Prefect flow with nested member runs; `--help` prints the flow's keys."""
    spec = get_spec(name)  # unknown flow: clear error before Hydra starts
    if any(a in {"--help", "-h"} for a in argv):
        print(flow_help(name))
        return
    # Hydra's parser wants options first and all overrides together after them.
    overrides = [a for a in argv if not a.startswith("-") and ("=" in a or a.startswith("~"))]
    options = [a for a in argv if a not in overrides]
    if options and set(options) <= {"-m", "--multirun"}:
        try:
            result = spec.flow(overrides=overrides, multirun=True)
        except InvalidConfig as err:
            sys.exit(f"mlsys run {name}: {err}")
        _print_sweep(result)
        return

    def job(cfg: DictConfig) -> None:
        result = run(to_typed(cfg), overrides)
        _print_result(result)

    defaults = [
        "hydra/job_logging=none",  # keep Prefect's console format (Hydra would take the root logger)
        "hydra/hydra_logging=none",
        "hydra.output_subdir=null",  # nothing written under outputs/ for a run
        "hydra.run.dir=.",
    ]
    given = {a.split("=", 1)[0] for a in overrides}
    defaults = [d for d in defaults if d.split("=", 1)[0] not in given]
    sys.argv = [f"mlsys run {name}"] + options + overrides + defaults
    hydra.main(config_path=str(CONF_DIR), config_name=name, version_base="1.3")(job)()


def _format_metrics(metrics: dict) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())


def _print_result(result: dict) -> None:
    print(f"\n{result['flow']}: {_format_metrics(result['metrics'])}\nMLflow run: {result['link']}")


def _print_sweep(result: dict) -> None:
    print(f"\n{result['flow']} sweep, {len(result['members'])} members:")
    for row in result["members"]:
        shown = {k: v for k, v in row.items() if k not in {"member", "run_id"}}
        print(f"  [{row['member']}] {_format_metrics(shown)}")
    print(f"MLflow parent run (comparison table and plot): {result['link']}")


def complete(argv: list[str]) -> None:
    """Shell completion (`-sc install=bash` / `-sc query=bash`): commands and flows here, a flow's
    groups and keys by Hydra (given the line after `mlsys run <flow>`)."""
    query = " ".join(argv)
    if "install=" in query or "uninstall=" in query:
        sys.argv = ["mlsys", *argv]  # Hydra names the completed program after argv[0]
        hydra.main(config_path=str(CONF_DIR), config_name="suite", version_base="1.3")(lambda cfg: None)()
        return
    line = os.environ.get("COMP_LINE", "")
    words = shlex.split(line) if line.strip() else []
    ends_in_space = line.endswith(" ")
    done = words if ends_in_space else words[:-1]  # words already complete
    if len(done) <= 1:
        print(" ".join(COMMANDS))
        return
    if done[1] != "run":
        return
    if len(done) == 2:
        print(" ".join(sorted(discover_flows())))
        return
    flow = done[2]
    if flow not in discover_flows():
        return
    prefix = line.split(flow, 1)[0] + flow
    rest = line[len(prefix) :]
    os.environ["COMP_LINE"] = "mlsys" + rest  # Hydra strips the app name and completes the overrides
    os.environ["COMP_POINT"] = str(len(os.environ["COMP_LINE"]))
    sys.argv = ["mlsys", *argv]
    hydra.main(config_path=str(CONF_DIR), config_name=flow, version_base="1.3")(lambda cfg: None)()


def promote_model(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="mlsys promote",
        description="Move @serving to a model version that "
        "passes its quality check (the check recorded at registration by default).",
    )
    parser.add_argument("model")
    parser.add_argument("version", nargs="?", help="default: the version holding @candidate")
    parser.add_argument("--check", help="metric<=goal on the version's run metrics, e.g. val_perplexity<=300")
    parser.add_argument("--force", action="store_true", help="promote even without / against the check")
    parser.add_argument("--tracking-uri", help="default: the project's SQLite store under mlflow/")
    args = parser.parse_args(argv)
    try:
        version, reason = promote(args.model, args.version, args.check, args.tracking_uri, args.force)
    except (LookupError, ValueError) as err:
        sys.exit(f"mlsys promote: {err}")
    print(f"{args.model} v{version} is now @serving ({reason})")


def serve_deployments() -> None:
    """Serve one deployment per flow (`<flow>/default`) from this process; needs PREFECT_API_URL."""
    import flows.entries  # noqa: F401, PLC0415  (module-path entrypoints; importing it imports every flow)

    if not os.environ.get("PREFECT_API_URL"):
        sys.exit("mlsys deployments: set PREFECT_API_URL to a Prefect server (start one with `mlsys server`)")
    deployments = [
        spec.flow.to_deployment(name="default", entrypoint_type=EntrypointType.MODULE_PATH)
        for spec in discover_flows().values()
    ]
    serve(*deployments)


def mlflow_ui_command(extra: list[str]) -> tuple[list[str], dict]:
    """`mlflow ui` on the project's store: one worker and no job runner (MLflow 3 starts ~12 processes,
    2.6 GB, for its GenAI job executor otherwise)."""
    store = PROJECT_ROOT / "mlflow"
    store.mkdir(exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "ui",
        "--host",
        "127.0.0.1",
        "--port",
        "5000",
        "--workers",
        "1",
        "--backend-store-uri",
        f"sqlite:///{store / 'mlflow.db'}",
        "--default-artifact-root",
        (store / "artifacts").as_uri(),
        *extra,
    ]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    return command, env


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in {"-sc", "--shell-completion"}:
        complete(argv)
        return
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
    elif command == "promote":
        promote_model(rest)
    elif command == "deployments":
        serve_deployments()
    elif command == "server":
        # The UI is off for the temporary per-process servers (start-up cost); on for this one.
        env = {**os.environ, "PREFECT_UI_ENABLED": "true"}
        subprocess.run(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", *rest], check=False, env=env
        )
    elif command == "ui":
        ui_command, env = mlflow_ui_command(rest)
        subprocess.run(ui_command, check=False, env=env)
    else:
        sys.exit(f"mlsys: unknown command {command!r}\n{USAGE}")
