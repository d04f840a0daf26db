"""Wiring only: the project's Dagster definitions."""

import dagster as dg

defs = dg.Definitions()
