"""What every benchmark shares: machine facts, targets with computed `met`, and the result file.

Each benchmark writes benchmarks/results/<name>.json and a plot next to
it, and logs both to MLflow (experiment `benchmarks`, one run per benchmark invocation).
"""

from __future__ import annotations

import argparse
import json
import operator
import os
import platform
import re
import sys
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mlsys.environment import apply_environment_defaults

apply_environment_defaults()  # environment defaults, before MLflow (and what it imports) reads them
import torch  # noqa: E402  (after the environment defaults)

from mlsys.tracking import close_run, flatten, open_run  # noqa: E402  (after the environment defaults)

RESULTS_DIR = Path(__file__).resolve().parent / "results"
_OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    "<": operator.lt,
    ">=": operator.ge,
    ">": operator.gt,
}


def machine_info(device: str = "cpu") -> dict[str, Any]:
    cpu_model = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model,
        "torch": torch.__version__.split("+")[0],
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "device": device,
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def target(name: str, value: float, goal: float, op: str) -> dict[str, Any]:
    """A goal from the issue with its measured value; `met` is computed, never written by hand."""
    if op not in _OPS:
        raise ValueError(f"op must be one of {sorted(_OPS)}, got {op!r}")
    value = float(value)
    return {"name": name, "value": value, "goal": goal, "op": op, "met": bool(_OPS[op](value, goal))}


def parse_mode(description: str, argv: Iterable[str] | None = None) -> argparse.Namespace:
    """`--quick` (a few minutes on 2 cores) or `--full` (what the README quotes); plus --tracking-uri."""
    parser = argparse.ArgumentParser(description=description)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="small sizes, a few minutes on 2 cores")
    mode.add_argument("--full", action="store_true", help="the sizes the README quotes")
    parser.add_argument("--tracking-uri", default=None, help="MLflow store (default: the project's mlflow/)")
    parser.add_argument("--no-mlflow", action="store_true", help="write the JSON and plot only")
    args = parser.parse_args(list(argv) if argv is not None else None)
    if not args.full:
        args.quick = True
    return args


def write_result(
    name: str,
    results: dict[str, Any],
    targets: list[dict[str, Any]],
    figure=None,
    args: argparse.Namespace | None = None,
    extra_artifacts: Iterable[Path] = (),
    device: str = "cpu",
) -> Path:
    """Write benchmarks/results/<name>.json (+ <name>.png) and log both to MLflow."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    mode = "full" if args is not None and getattr(args, "full", False) else "quick"
    payload = {
        "benchmark": name,
        "command": f"python -m benchmarks.{name} --{mode}",
        "argv": sys.argv[1:],
        "mode": mode,
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine_info(device),
        "results": results,
        "targets": targets,
    }
    json_path = RESULTS_DIR / f"{name}.json"
    json_path.write_text(json.dumps(payload, indent=2, default=_jsonable))
    files = [json_path, *extra_artifacts]
    if figure is not None:
        png = RESULTS_DIR / f"{name}.png"
        figure.savefig(png, dpi=120, bbox_inches="tight")
        files.append(png)
    if args is None or not getattr(args, "no_mlflow", False):
        _log_to_mlflow(name, payload, files, getattr(args, "tracking_uri", None))
    for t in targets:
        print(f"target {t['name']}: {t['value']:.4g} {t['op']} {t['goal']} -> {'met' if t['met'] else 'NOT met'}")
    print(f"wrote {json_path}")
    return json_path


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def _metric_name(name: str) -> str:
    """MLflow accepts letters, digits, _ - . space : / in metric names; map anything else to _."""
    return re.sub(r"[^A-Za-z0-9_\-. :/]", "_", name)


def _log_to_mlflow(name: str, payload: dict, files: list[Path], tracking_uri: str | None) -> None:
    tracker = open_run(tracking_uri, "benchmarks", run_name=name, tags={"benchmark": name, "mode": payload["mode"]})
    try:
        tracker.log_params({"command": payload["command"], "machine": payload["machine"]})
        numeric = {_metric_name(k): v for k, v in flatten(payload["results"]).items() if isinstance(v, (int, float))}
        tracker.log_metrics(numeric)
        tracker.log_metrics({f"target.{_metric_name(t['name'])}": t["value"] for t in payload["targets"]})
        tracker.set_tags({f"target_met.{_metric_name(t['name'])}": t["met"] for t in payload["targets"]})
        for path in files:
            tracker.log_artifact(path)
    finally:
        close_run(tracker)


def bandwidth_bars(ax, table: dict[str, dict[str, Any]], bandwidth_gbs: float, title: str) -> None:
    """Grouped bars of achieved GB/s (`table[shape][method]["gb_per_s"]`) beside the memory bandwidth
    measured in the same run (the matvec kernels' physical bound)."""
    shapes = list(table)
    methods = [m for m, row in table[shapes[0]].items() if isinstance(row, dict) and "gb_per_s" in row]
    width = 0.8 / max(1, len(methods))
    for j, method in enumerate(methods):
        ax.bar(
            [i + j * width for i in range(len(shapes))],
            [table[s][method]["gb_per_s"] for s in shapes],
            width,
            label=method,
        )
    ax.axhline(bandwidth_gbs, ls="--", c="k", label="memory bandwidth (sum of 512 MiB)")
    ax.set_xticks([i + (len(methods) - 1) * width / 2 for i in range(len(shapes))], shapes)
    ax.set(title=title, ylabel="GB/s")
