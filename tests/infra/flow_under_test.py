"""The real system flow the platform tests drive end to end, with overrides that keep it fast.

`federated` fans its clients' local training out as Prefect tasks, so `runner=dask` really sends
work to Dask workers.
"""

FLOW = "federated"
FAST_OVERRIDES = ["rounds=2", "clients=3"]
METRIC = "top_accuracy"
