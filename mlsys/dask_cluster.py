"""The LocalCluster behind `runner=dask`, with a shutdown that lets worker processes exit by themselves.

A nanny gives its worker process 4 s (0.8 x its close timeout of 5 s) to exit after the stop
message, then kills it: "Worker process still alive after 4.0 seconds, killing" and "was killed by
signal 9" at the end of every run on this 2-core machine, where a worker that has imported torch
and Prefect takes 4-6 s to finish (measured: 3.8 s and 5.5 s). Closing the workers first, each
with `WORKER_EXIT_TIMEOUT_S`, lets them exit cleanly; one that hangs is still killed after that.
"""

from __future__ import annotations

import asyncio

from distributed import LocalCluster

WORKER_EXIT_TIMEOUT_S = 30.0  # a worker process that has not exited by then is killed


class GracefulLocalCluster(LocalCluster):
    """LocalCluster whose close waits up to WORKER_EXIT_TIMEOUT_S for each worker process to exit."""

    async def _close(self) -> None:
        workers = [w for w in self.workers.values() if w.status.name not in ("closing", "closed", "failed")]
        await asyncio.gather(*(w.close(timeout=WORKER_EXIT_TIMEOUT_S) for w in workers), return_exceptions=True)
        await super()._close()
