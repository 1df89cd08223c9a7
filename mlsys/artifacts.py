"""Prefect artifacts (the flow run's Artifacts tab): a view of results that are already in MLflow,
so creating one never fails the run."""

from __future__ import annotations

from typing import Any

from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.logging import get_run_logger


def artifact_key(text: str) -> str:
    """Prefect artifact keys are lowercase letters, digits and dashes."""
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")


def publish_table(key: str, rows: list[dict], description: str) -> None:
    """A table artifact, one row per dict; values that are not plain scalars are shown as text."""
    table = [{k: _cell(v) for k, v in r.items()} for r in rows]
    try:
        create_table_artifact(table=table, key=artifact_key(key), description=description)
    except Exception as err:  # a view of results already in MLflow: never fail the run
        get_run_logger().warning("Prefect artifact %s not created: %s", artifact_key(key), err)


def publish_markdown(key: str, markdown: str, description: str) -> None:
    """A markdown artifact (e.g. the suite's summary table)."""
    try:
        create_markdown_artifact(markdown=markdown, key=artifact_key(key), description=description)
    except Exception as err:  # a view of results already in MLflow: never fail the run
        get_run_logger().warning("Prefect artifact %s not created: %s", artifact_key(key), err)


def _cell(value: Any) -> Any:
    return value if isinstance(value, (int, float, str, bool)) or value is None else str(value)
