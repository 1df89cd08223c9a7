"""What Prefect's start-up costs a fresh process here: temporary server vs a running server vs no Prefect.

Each sample is a new Python process that imports Prefect and runs one trivial flow with two tasks
(the shape of `mlsys run`); methods alternate within each repeat. The ephemeral mode is what a
process pays without PREFECT_API_URL; that cost is paid once per process, which is why `suite`
runs every flow in one process and the tests share one session-scoped server.
"""

from __future__ import annotations

import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

from matplotlib.figure import Figure

from benchmarks.common import parse_mode, write_result

SNIPPET = """
import time; t0 = time.perf_counter()
from prefect import flow, task
@task
def one(x): return x + 1
@flow
def trivial(): return [f.result() for f in [one.submit(1), one.submit(2)]]
{call}
print("ELAPSED", time.perf_counter() - t0)
"""
CALLS = {"ephemeral_server": "trivial()", "running_server": "trivial()", "no_prefect_fn": "trivial.fn()"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sample(mode: str, home: str, api_url: str | None) -> float:
    env = {**os.environ, "PREFECT_HOME": home, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    if mode == "running_server":
        env["PREFECT_API_URL"] = api_url
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", SNIPPET.format(call=CALLS[mode]).replace("trivial.fn()", "[one.fn(1), one.fn(2)]")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    wall = time.perf_counter() - start
    if out.returncode != 0:
        raise RuntimeError(f"{mode} failed: {out.stderr[-2000:]}")
    return wall


def main() -> None:
    args = parse_mode(__doc__.splitlines()[0])
    repeats = 3 if args.quick else 7
    home = tempfile.mkdtemp(prefix="prefect-overhead-")
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    server = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env={**os.environ, "PREFECT_HOME": home},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        server_start = time.perf_counter()
        while True:
            try:
                urllib.request.urlopen(f"{api}/health", timeout=2)
                break
            except OSError as err:
                if time.perf_counter() - server_start > 300:
                    raise TimeoutError("prefect server did not start") from err
                time.sleep(0.5)
        server_ready_s = time.perf_counter() - server_start
        samples: dict[str, list[float]] = {m: [] for m in CALLS}
        for mode in CALLS:  # warm-up: file caches, the server's first queries
            _sample(mode, home, api)
        for _ in range(repeats):
            for mode in CALLS:
                samples[mode].append(_sample(mode, home, api))
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
    median = {m: statistics.median(v) for m, v in samples.items()}
    overhead_ephemeral = median["ephemeral_server"] - median["no_prefect_fn"]
    overhead_server = median["running_server"] - median["no_prefect_fn"]
    results = {
        "process_wall_s_median": median,
        "samples_s": samples,
        "server_start_s": server_ready_s,
        "ephemeral_overhead_s": overhead_ephemeral,
        "running_server_overhead_s": overhead_server,
        "ratio_ephemeral_vs_running_server": median["ephemeral_server"] / median["running_server"],
        "note": "each sample is a fresh process: import + one flow with two tasks; 2 shared cores",
    }
    fig = Figure(figsize=(6, 3.5))  # no pyplot: no GUI backend, no global figure state
    ax = fig.subplots()
    ax.bar(list(median), list(median.values()), color=["tab:red", "tab:blue", "tab:gray"])
    ax.set_ylabel("seconds per process (median)")
    ax.set_title("Prefect start-up cost of one `mlsys run`-shaped process")
    write_result("prefect_overhead", results, [], figure=fig, args=args)  # the issue sets no goal: measure


if __name__ == "__main__":
    main()
