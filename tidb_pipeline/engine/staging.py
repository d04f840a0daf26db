"""The one staging path: local Parquet files (`replication.wire.ParquetFiles`) -> PUT on a stage -> COPY.

The built-in landing, the backfill and the lab's connector stand-in all write the two landing columns'
JSON texts as Parquet string columns and load them with `replication.landing.stage_file_statements`
(one COPY with `PARSE_JSON`) into a table of their own; what happens to those rows next is theirs.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from tidb_pipeline.replication.landing import stage_file_statements
from tidb_pipeline.resources.warehouse import Warehouse


def put_file(warehouse: Warehouse, path: str, stage_dir: str) -> str:
    """PUT one local file under `stage_dir` (`@<stage>/<folder>/`); returns the staged file's path."""
    # Parquet files are compressed inside (Snappy); AUTO_COMPRESS would gzip them again, at level 9.
    warehouse.execute(f"PUT 'file://{path}' {stage_dir} AUTO_COMPRESS = FALSE")
    return stage_dir + os.path.basename(path)


def copy_file(warehouse: Warehouse, rows_table: str, stage_file: str) -> None:
    """COPY one staged Parquet file into `rows_table` (its two VARIANT landing columns)."""
    for stmt in stage_file_statements(rows_table, stage_file):
        warehouse.execute(stmt)


def remove_staged(warehouse: Warehouse, stage_path: str, log: logging.Logger | Any) -> None:
    """REMOVE staged files once loaded; a failure is logged (a file left costs storage only)."""
    try:
        warehouse.execute(f"REMOVE {stage_path}")
    except Exception as exc:  # noqa: BLE001 - housekeeping after the commit
        log.warning("could not remove staged files %s: %s", stage_path, exc)


class Stager:
    """A `FileSink`: PUTs each finished file and COPYs it into `rows_table`; keeps counts and time taken."""

    def __init__(self, warehouse: Warehouse, rows_table: str, stage_dir: str) -> None:
        self.warehouse, self.rows_table, self.stage_path = warehouse, rows_table, stage_dir
        self.files = self.rows = 0
        self.seconds = 0.0

    def __call__(self, path: str, rows: int) -> None:
        started = time.perf_counter()
        copy_file(self.warehouse, self.rows_table, put_file(self.warehouse, path, self.stage_path))
        self.files += 1
        self.rows += rows
        self.seconds += time.perf_counter() - started
