"""Wiring only: the project's Dagster definitions, from the checked-in table list."""

from tidb_pipeline.config import load_config
from tidb_pipeline.defs import build_defs

defs = build_defs(config=load_config())
