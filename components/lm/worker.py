"""One rank of an lm_train job under torchrun: `python -m torch.distributed.run ... -m components.lm.worker JOB`.

JOB is the TrainJob JSON the lm_train task wrote. Every rank trains its part; rank 0 appends each
step's metrics as a JSON line to `metrics_file` (the task tails it into the flow's MLflow run) and
writes the run's result to `result_file` when training is done.
"""

from __future__ import annotations

import json
import logging
import sys
import warnings
from pathlib import Path

from components.lm import distributed
from components.lm.trainer import TrainJob, run_training

# FSDP2 warns when a wrapped block returns a view; our GPT blocks return their K/V views beside the
# hidden state and nothing modifies either in place, so the warning (twice per rank) is noise here.
warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m torch.distributed.run ... -m components.lm.worker JOB.json", file=sys.stderr)
        return 2
    job = TrainJob.from_json(Path(argv[0]).read_text())
    ranks, device = distributed.init_process_group(job.strategy, job.device)
    job.device = device
    logging.basicConfig(level=logging.INFO, format=f"[rank{ranks.rank}] %(levelname)s %(message)s")
    logger = logging.getLogger("lm_train")
    if ranks.rank == 0:
        logger.info("%d processes, strategy %s, device %s", ranks.world_size, ranks.strategy, device)
    metrics = open(job.metrics_file, "a", encoding="utf-8") if ranks.rank == 0 and job.metrics_file else None

    def on_metrics(step: int, values: dict) -> None:
        if metrics is not None:
            metrics.write(json.dumps({"step": step, "metrics": values}) + "\n")
            metrics.flush()

    try:
        result = run_training(job, on_metrics, logger, ranks)
        if ranks.rank == 0 and job.result_file:
            tmp = Path(job.result_file).with_suffix(".tmp")
            tmp.write_text(json.dumps(result, indent=1))
            tmp.replace(job.result_file)
    finally:
        if metrics is not None:
            metrics.close()
    distributed.close_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
