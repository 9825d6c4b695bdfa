"""The `stack` marker (pyproject.toml's marker list is not this suite's to edit): tests that start the team stack
of docker/compose.yaml natively with docker/local-stack.sh. `make test-stack` runs them; `make test` leaves them
out."""


def pytest_configure(config):
    config.addinivalue_line("markers", "stack: starts the native team stack (docker/local-stack.sh): Postgres, S3, "
                                       "Prefect server and worker, MLflow server; `make test-stack` runs these")
