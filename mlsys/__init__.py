"""The platform every flow runs on: CLI, Hydra composition, the Prefect flow path, MLflow tracking,
task runners, progress and the process environment. Importing it changes nothing; entry points
(`mlsys/__main__.py`, `flows/entries.py`, `benchmarks/`, the test session) apply the environment
defaults themselves."""
