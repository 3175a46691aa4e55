"""The work drkit does, as plain functions: the CLI and the Prefect flows both call these."""
