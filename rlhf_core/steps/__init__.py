"""Step runners: load a step's inputs, run the algorithm, write its output directory atomically with a
``manifest.json``. Plain functions of dataclass configs and paths; ``tasks/`` wraps them for Prefect and
MLflow, the CLI calls them directly."""
