"""Wiring only: the project's Dagster definitions, the component instances of its `dg` defs folder."""

import warnings
from pathlib import Path

import dagster as dg

import tidb_pipeline.location

with warnings.catch_warnings():
    # dagster's defs-folder loader calls its own preview/beta APIs and would warn once per asset.
    warnings.simplefilter("ignore", dg.BetaWarning)
    warnings.simplefilter("ignore", dg.PreviewWarning)
    # The project root holds pyproject.toml and tidb_pipeline.yaml; in a wheel install it is site-packages,
    # and TIDB_PIPELINE_CONFIG names the config instead (the Docker image sets it).
    defs = dg.ComponentTree.from_module(
        defs_module=tidb_pipeline.location, project_root=Path(__file__).resolve().parents[1]
    ).build_defs()
