"""The papers' algorithms as plain Python/PyTorch: no Prefect, Hydra or MLflow imports here."""
