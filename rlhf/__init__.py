"""The RLHF platform's one import name.

The repository keeps the folders of its design card, each mapped into this package by pyproject.toml:

    rlhf_core/  -> rlhf.core     the algorithm (torch, transformers, pandas; no Prefect, MLflow or Hydra)
    tasks/      -> rlhf.tasks    Prefect tasks: one per step, paths in, paths out
    flows/      -> rlhf.flows    Prefect flows: the iteration DAG, the campaign, schedules, Prefect's settings
    conf/       -> rlhf.conf     the Hydra config tree
    rlhf/cli/      rlhf.cli      the `rlhf` command
    rlhf/record/   rlhf.record   a campaign on disk: its directories, lock, summary.json and report
    rlhf/tracking.py             MLflow: runs, metrics, artifacts, the model registry

Layers (enforced by tests/unit/test_layers.py): core <- tasks <- flows <- cli; the record and tracking
are used by the flows and the CLI only. docs/design.md explains each room.
"""
