"""FedCompass (Li et al., ICLR 2024) and its baselines, with no orchestration framework imported.

- `task`: plain PyTorch model / data / local training / evaluation (Flower's `task.py` role).
- `partitions`: non-IID splits (class, Dirichlet, dual-Dirichlet).
- `speeds`: virtual client speed models (homogeneous, normal, exponential, drifting).
- `aggregators`: FedAvg and the staleness-weighted server step of FedAsync / FedBuff / FedCompass.
- `schedulers`: `CompassScheduler` and the FedAvg / FedAsync / FedBuff servers, one event interface.
- `simulator`: a deterministic discrete-event driver in virtual time.
- `federation`: builds a run (data split, model, speeds, scheduler) from plain settings.
- `flower_driver`, `client_app`, `server_app`: the same schedulers over real Flower ClientApps;
  `loopback`: SuperLink + SuperNodes on 127.0.0.1 for the deployment mode.
"""
