"""`mlsys` / `python -m mlsys`: the entry point applies the environment defaults, then runs the CLI."""

from mlsys.environment import apply_environment_defaults


def main() -> None:
    # Prefect reads its settings when it is first imported: the defaults go in before the CLI imports it.
    apply_environment_defaults()
    from mlsys.cli import main as cli_main  # noqa: PLC0415  (after the environment defaults, see above)

    cli_main()


if __name__ == "__main__":
    main()
